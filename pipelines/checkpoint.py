"""Training state: every network, optimizer, the EMA generator, the step and the RNG, saved and restored.

Files hold only tensors, numbers, strings and containers of them, so they load with `weights_only=True`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gan_models.family import Nets, Optimizers
from pipelines.loop import GeneratorEMA, unwrap

STATE_FILE = "state.pt"


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.pt"


def training_state(
    *, spec: dict[str, Any], step: int, nets: Nets, opts: Optimizers, ema: GeneratorEMA | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything a resumed run needs; `extra` is the family's extra state (image pools, LR schedulers)."""
    return {
        "format": 1,
        "spec": spec,
        "step": step,
        "nets": {name: unwrap(net).state_dict() for name, net in nets.items()},
        "opts": {name: opt.state_dict() for name, opt in opts.items()},
        "ema": ema.module.state_dict() if ema is not None else None,
        "extra": {name: obj.state_dict() for name, obj in (extra or {}).items()},
    }


def save_state(directory: Path, state: dict[str, Any]) -> Path:
    path = Path(directory) / STATE_FILE
    torch.save(state, path)
    return path


def save_rng(directory: Path, rank: int) -> None:
    # Each rank draws its own latents, so each keeps its own RNG; Ray merges the ranks' files into one
    # checkpoint directory.
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    torch.save(state, Path(directory) / rng_file(rank))


def load_state(directory: Path) -> dict[str, Any]:
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)


def restore(
    state: dict[str, Any], *, nets: Nets, opts: Optimizers, ema: GeneratorEMA | None,
    extra: dict[str, Any] | None = None,
) -> int:
    """Load `state` into freshly built networks, optimizers and extra state; returns the step to continue from."""
    for name, net in nets.items():
        unwrap(net).load_state_dict(state["nets"][name])
    for name, opt in opts.items():
        opt.load_state_dict(state["opts"][name])
    if ema is not None and state.get("ema") is not None:
        ema.module.load_state_dict(state["ema"])
    for name, obj in (extra or {}).items():
        obj.load_state_dict(state["extra"][name])
    return int(state["step"])


def restore_rng(directory: Path, rank: int) -> bool:
    path = Path(directory) / rng_file(rank)
    if not path.exists():
        return False
    state = torch.load(path, weights_only=True)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    return True
