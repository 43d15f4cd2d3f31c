"""Sample a registered unconditional generator (vanilla GAN, DCGAN) into PNG grids: what `ganpipe sample` and a
pipeline's sample stage write."""

from __future__ import annotations

from pathlib import Path

import torch

from pipelines.engine.loop import sample_grid
from pipelines.evaluation.figures import interpolation_figure, save_png, upscale
from pipelines.tracking.loading import load_generator


def sample_to_png(*, model: str, out: str | Path, n: int = 64, seed: int = 0, interpolate: int = 0, scale: int = 2,
                  tracking_uri: str = "") -> list[Path]:
    """A grid of `n` samples at `out` and, with `interpolate` rows, a latent interpolation strip beside it; the
    paths written, grid first."""
    generator, latent_shape = load_generator(model, tracking_uri=tracking_uri)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, *latent_shape), generator=g)
    written = [save_png(upscale(sample_grid(generator, z), scale), out)]
    if interpolate:
        ends = torch.randn((interpolate + 1, *latent_shape), generator=g)
        strip = Path(out).with_name(Path(out).stem + "-interpolation.png")
        written.append(save_png(upscale(interpolation_figure(generator, ends), scale), strip))
    return written
