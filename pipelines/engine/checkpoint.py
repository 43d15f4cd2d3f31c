"""Training state: every network, optimizer, the EMA generator, the step and the RNG, saved and restored.

Files hold only tensors, numbers, strings and containers of them, so they load with `weights_only=True`.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from gan_models.family import Nets, Optimizers
from pipelines.engine.loop import GeneratorEMA, unwrap

STATE_FILE = "state.pt"


class CheckpointRefused(ValueError):
    """A checkpoint file holding more than tensors and plain values: not loaded; one line naming the file
    (a ValueError: exit status 2 through the CLI)."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"refusing checkpoint {path}: {reason}; ganpipe loads checkpoints with "
                         "torch.load(weights_only=True) and never unpickles code. Train under another --run-name, or "
                         "move the run's checkpoints folder aside to start it afresh")
        self.path, self.reason = str(path), reason


def load_tensors(path: Path) -> Any:
    """torch.load(weights_only=True) of a checkpoint file; a file that needs more than torch's restricted
    unpickler is a CheckpointRefused naming it, not a traceback."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        raise CheckpointRefused(path, f"it references {found.group(1)}, not only tensors" if found
                                else "it is not a tensors-only torch file") from None


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
    return load_tensors(Path(directory) / STATE_FILE)


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
    state = load_tensors(path)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    return True
