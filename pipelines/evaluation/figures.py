"""Pictures of a generator: sample grids, latent interpolation strips and vector-arithmetic grids, as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from gan_models import interpolate, make_grid, vector_arithmetic
from pipelines.engine.loop import generate
from pipelines.evaluation.evaluator import CONFIDENT, Evaluator
from pipelines.tracking.runs import to_uint8_hwc


def save_png(grid: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8_hwc(grid)).save(path)
    return path


def upscale(grid: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour enlargement, so 32-pixel digits are visible in a viewer."""
    return grid.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2) if factor > 1 else grid


def interpolation_figure(
    generator: nn.Module, latents: torch.Tensor, *, steps: int = 10, mode: str = "slerp"
) -> torch.Tensor:
    """One row per consecutive pair of `latents`: G along the path from z_i to z_{i+1}."""
    rows = [interpolate(latents[i], latents[i + 1], steps=steps, mode=mode) for i in range(len(latents) - 1)]
    return make_grid(generate(generator, torch.cat(rows)), nrow=steps)


def pick_by_class(
    generator: nn.Module, pool: torch.Tensor, evaluator: Evaluator, classes: tuple[int, ...], per_group: int
) -> list[torch.Tensor]:
    """For each class, the latents in `pool` whose samples the evaluator labels as that class most confidently."""
    _, probs = evaluator.predict(generate(generator, pool))
    groups = []
    for c in classes:
        confident = np.where((probs.argmax(axis=1) == c) & (probs.max(axis=1) >= CONFIDENT))[0]
        if len(confident) < per_group:
            name = evaluator.meta["class_names"][c]
            raise ValueError(f"only {len(confident)} confident samples of class {name!r} in {len(pool)} draws")
        best = confident[np.argsort(-probs[confident, c])][:per_group]
        groups.append(pool[torch.from_numpy(best)])
    return groups


def arithmetic_figure(
    generator: nn.Module, groups: list[torch.Tensor], *, noise: float = 0.25, seed: int = 0
) -> torch.Tensor:
    """Radford et al. sec. 6.3. Rows A, B, C: each group's samples, then G(mean z) of the group. Last row:
    G(mean z_A - mean z_B + mean z_C), then the same latent with small noise added (the paper's variations)."""
    a, b, c = groups
    width = max(len(a), len(b), len(c)) + 1
    answer = vector_arithmetic(a, b, c)
    g = torch.Generator().manual_seed(seed)
    noisy = answer.unsqueeze(0) + noise * torch.randn((width - 1, *answer.shape), generator=g)
    rows = [_pad_row(torch.cat([grp, grp.mean(dim=0, keepdim=True)]), width) for grp in (a, b, c)]
    rows.append(torch.cat([answer.unsqueeze(0), noisy]))
    return make_grid(generate(generator, torch.cat(rows)), nrow=width)


def _pad_row(row: torch.Tensor, width: int) -> torch.Tensor:
    # Short rows repeat their last latent so the grid stays rectangular.
    if len(row) >= width:
        return row[:width]
    return torch.cat([row, row[-1:].expand(width - len(row), *row.shape[1:])])
