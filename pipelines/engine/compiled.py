"""`loop.compile`: every network of a run compiled in place with torch.compile, and the seconds that costs.

Each network is compiled on its own (`nn.Module.compile`'s way: the module's call goes through a compiled copy
of it), not the whole train step: the families' steps keep data-dependent Python (CycleGAN's image pools,
StarGAN's n_critic schedule, GAN-CLS's wrong captions, lazy R1, the EMA) that would break a whole-step graph
into pieces anyway, while a network's forward is one graph (BENCHMARKS.md lists the breaks per family).
Compiling in place keeps the module object, so optimizers, DDP wrapping, `unwrap`, state dicts, checkpoints,
the EMA and export see the same parameters and keys as an eager run (no `_orig_mod.` prefix).

Two kinds of pass run the eager module instead, decided per call in Python outside the graph:
- a penalty's critic pass (StarGAN's gradient penalty, lazy R1): its graph is differentiated twice, which
  AOT-compiled graphs do not support; `gan_models.losses.double_backward_pass` marks it, and the first such
  pass of each network is noted in one line;
- eval-mode passes (sample grids, evaluation): short, rare, and a compile of their own would cost more.

Inductor's caches live under the ganpipe home (`<home>/cache/inductor`, unless $TORCHINDUCTOR_CACHE_DIR is
set), so a resumed run, the next sweep trial or the next run of the same config loads compiled kernels
instead of compiling them again. Imports neither Ray nor MLflow.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gan_models.losses import in_double_backward_pass
from pipelines.spec.config import COMPILE_MODES
from pipelines.spec.defaults import DEFAULT_HOME

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def _print(line: str) -> None:
    print(line, flush=True)


def inductor_cache_folder(*, home: str | Path = DEFAULT_HOME) -> Path:
    """Where Inductor should keep compiled graphs and kernels: $TORCHINDUCTOR_CACHE_DIR if the user set it, else
    `<home>/cache/inductor`, absolute. A driver resolves it once (`Job.inductor_cache`) so Ray workers and
    Tune trials, whose working directories differ, share one folder."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    # Importing torch._inductor sets the variable to its default (a per-user temp folder): that one is not a choice.
    if os.environ.get(CACHE_ENV) and os.environ[CACHE_ENV] != os.path.abspath(default_cache_dir()):
        return Path(os.environ[CACHE_ENV])
    return (Path(home) / "cache" / "inductor").resolve()


def use_inductor_cache(folder: str | Path | None = None, *, home: str | Path = DEFAULT_HOME) -> Path:
    """Points Inductor at `folder` (default `inductor_cache_folder`), which is made if missing."""
    path = Path(folder) if folder else inductor_cache_folder(home=home)
    path.mkdir(parents=True, exist_ok=True)
    os.environ[CACHE_ENV] = str(path)
    return path


class CompileClock:
    """Seconds spent compiling in this process: between dynamo's outermost compile-start and compile-end
    callbacks, which cover tracing, Inductor's code generation (or a cache load) and lazily compiled
    backward graphs."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started: float | None = None

    def start(self, _args: Any) -> None:
        self._started = time.perf_counter()

    def end(self, _args: Any) -> None:
        if self._started is not None:
            self.total += time.perf_counter() - self._started
            self._started = None

    def install(self) -> None:
        # torch._dynamo.reset() clears the callbacks, so this is re-checked on every compile_nets.
        handler = torch._dynamo.callback_handler
        if self.start not in handler.start_callbacks:
            handler.register_start_callback(self.start)
            handler.register_end_callback(self.end)


CLOCK = CompileClock()


def compile_seconds() -> float:
    """Seconds this process has spent compiling networks so far (0 when nothing was compiled)."""
    return CLOCK.total


def check_mode(mode: str) -> str:
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}; got {mode!r}")
    return mode


def mode_for_run(mode: str, *, steps_left: int, min_steps: int, log: Callable[[str], None] | None = _print) -> str:
    """`mode`, or "off" for a run too short to earn back its compile (`loop.compile_min_steps`), said in one line."""
    if check_mode(mode) == "off" or steps_left >= min_steps:
        return mode
    if log is not None:
        log(f"[ganpipe] loop.compile={mode} not applied: {steps_left} steps to train < loop.compile_min_steps "
            f"{min_steps}, too few to earn back the compile; training eagerly")
    return "off"


def compile_nets(
    nets: dict[str, nn.Module], *, mode: str, log: Callable[[str], None] | None = _print,
    cache: str | Path | None = None,
) -> dict[str, nn.Module]:
    """Compile every network of `nets` in place in torch.compile's `mode` ("off": leave them eager); returns
    `nets`. Call after restoring a checkpoint and before wrapping in DDP. `log` gets the one-line notes (None:
    silent, e.g. on ranks other than 0); `cache`: Inductor's cache folder (default `inductor_cache_folder()`)."""
    if check_mode(mode) == "off":
        return nets
    cache = use_inductor_cache(cache)
    # Random ops inside a network (pix2pix/CycleGAN dropout) draw from torch's generator as eager ones do, so a
    # seed gives the same numbers compiled or not, and a resumed run's saved RNG state means the same thing.
    torch._inductor.config.fallback_random = True
    CLOCK.install()
    if log is not None:
        log(f"[ganpipe] loop.compile={mode}: compiling {', '.join(nets)} on their first steps "
            f"(Inductor cache {cache})")
    for name, net in nets.items():
        _compile_in_place(net, name=name, mode=mode, log=log)
    return nets


def _compile_in_place(net: nn.Module, *, name: str, mode: str, log: Callable[[str], None] | None) -> None:
    eager = net._call_impl
    compiled = torch.compile(eager, mode=None if mode == "default" else mode)
    noted: list[bool] = []

    def call(*args: Any, **kwargs: Any) -> Any:
        if not net.training:
            return eager(*args, **kwargs)
        if in_double_backward_pass():
            if not noted and log is not None:
                log(f"[ganpipe] loop.compile: {name}'s penalty pass (double backward) runs eagerly; compiled "
                    "graphs have no double backward, the rest of the step stays compiled")
            noted.append(True)
            return eager(*args, **kwargs)
        return compiled(*args, **kwargs)

    # What nn.Module.compile sets; module.__call__ goes through it. Deep copies and pickles drop it
    # (Module.__getstate__), so an EMA copy or an exported generator is a plain eager module.
    net._compiled_call_impl = call


def is_compiled(net: nn.Module) -> bool:
    return getattr(net, "_compiled_call_impl", None) is not None
