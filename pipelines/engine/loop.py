"""The plain training loop: drives any family from an iterator of batches, with no Ray and no MLflow.

The Ray Train worker (`ray_train.py`) and the single-process runner both call `fit`; a unit test calls it with
`report=list.append`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gan_models import Family, make_grid
from gan_models.family import Nets, Optimizers, step_schedulers
from pipelines.engine.compiled import compile_seconds
from pipelines.spec.config import LoopConfig


@dataclass
class Report:
    """What the loop hands to its caller whenever something is due (`events_due`): averaged metrics every
    `log_every` steps, eval/*, samples and a checkpoint on their own periods, and everything at the end."""

    step: int
    metrics: dict[str, float]
    checkpoint: dict[str, Any] | None = None  # full training state, when a checkpoint is due
    samples: torch.Tensor | None = None  # image grid (C, H, W) in [-1, 1], when due
    final: bool = False


@dataclass
class GeneratorEMA:
    """Exponential moving average of the generator's weights (and a copy of its BN buffers)."""

    module: nn.Module
    decay: float
    start: int = 0

    @classmethod
    def of(cls, generator: nn.Module, *, decay: float, start: int = 0) -> GeneratorEMA:
        ema = copy.deepcopy(unwrap(generator)).eval()
        ema.requires_grad_(False)
        return cls(module=ema, decay=decay, start=start)

    @torch.no_grad()
    def update(self, generator: nn.Module, step: int) -> None:
        decay = self.decay if step >= self.start else 0.0
        src = unwrap(generator)
        for p_ema, p in zip(self.module.parameters(), src.parameters(), strict=True):
            p_ema.lerp_(p.detach(), 1.0 - decay)
        for b_ema, b in zip(self.module.buffers(), src.buffers(), strict=True):
            b_ema.copy_(b)

    @torch.no_grad()
    def recalibrate(self, inputs: tuple[torch.Tensor, ...], *, batch_size: int = 64) -> None:
        """Re-estimate BN running statistics for the averaged weights (G's own statistics belong to G's
        weights, and eval-mode samples with them come out washed-out): a cumulative average of batch
        statistics over G's `inputs` (a tuple, as `Family.generator_inputs` returns), in train mode."""
        norms = [m for m in self.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        saved = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the calibration batches
        self.module.train()
        device = next(self.module.parameters()).device
        for i in range(0, len(inputs[0]), batch_size):
            self.module(*(x[i : i + batch_size].to(device) for x in inputs))
        self.module.eval()
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP (or torch.compile) wrapper, so state dicts have stable keys."""
    return getattr(module, "module", getattr(module, "_orig_mod", module))


@dataclass
class MetricWindow:
    """Metric sums over one reporting window; tensors are summed on-device and read once per window.

    Each metric is averaged over the steps that returned it: StarGAN's G losses exist on every n_critic-th
    step only. Seconds spent compiling (`loop.compile`) are left out of the throughput and reported apart."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    wait_s: float = 0.0
    compile_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def add(self, losses: dict[str, torch.Tensor], batch_size: int, wait_s: float, compile_s: float = 0.0) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.detach().float()
            self.counts[k] = self.counts.get(k, 0) + 1
        self.steps += 1
        self.images += batch_size
        self.wait_s += wait_s
        self.compile_s += compile_s

    def summary(self, world_size: int) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.started - self.compile_s, 1e-9)
        metrics = {k: (v / self.counts[k]).item() for k, v in self.sums.items()}
        metrics["perf/img_per_s"] = self.images * world_size / elapsed
        metrics["perf/data_wait_frac"] = self.wait_s / elapsed
        return metrics


def fit(
    *,
    family: Family,
    model_cfg: Any,
    nets: Nets,
    opts: Optimizers,
    batches: Iterator[dict[str, torch.Tensor]],
    loop: LoopConfig,
    report: Callable[[Report], Any],
    make_checkpoint: Callable[[int], dict[str, Any]] | None = None,
    ema: GeneratorEMA | None = None,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,  # rank 0: G -> eval/* every eval_every
    figure: Callable[[nn.Module], torch.Tensor] | None = None,  # rank 0: G -> sample grid every sample_every
    calibration_inputs: tuple[torch.Tensor, ...] | None = None,
    start_step: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    on_step: Callable[[int], None] | None = None,
    extra: dict[str, Any] | None = None,
    steps_per_epoch: int = 0,
) -> int:
    """Train from `start_step` to `loop.steps`; returns the last step.

    Every rank calls `report` equally often (Ray Train's report is a barrier). Only the caller decides what
    rank 0 does differently: it passes `evaluate` and `figure`, the others pass None.
    make_checkpoint: step -> full training state (called every `checkpoint_every` steps and at the end).
    ema:             averaged generator, updated after every step; it is what samples and evaluation use.
    calibration_inputs: G's inputs for re-estimating the EMA's BN statistics; default: the family's
                     unconditional inputs from a fixed seed (a conditional family must pass them).
    amp_dtype:       autocast dtype on GPU (bf16 where supported); None trains in float32.
    extra:           the family's extra state (image pools, LR schedulers), handed to every step; its LR
                     schedulers advance once at the start of every epoch of `steps_per_epoch` steps, as the
                     official pix2pix/CycleGAN loop does.
    """
    device = torch.device(device)
    generator = ema.module if ema is not None else nets[family.generator]
    if ema is not None and calibration_inputs is None:
        # Fixed latents for the EMA's BN statistics, so every rank computes the same ones.
        seeded = torch.Generator().manual_seed(loop.seed)
        calibration_inputs = family.generator_inputs(model_cfg, None, 512, generator=seeded)
    window = MetricWindow()
    compile_total = 0.0  # this run's seconds of compiling so far (perf/compile_s), apart from perf/img_per_s
    step = start_step
    while step < loop.steps:
        t0 = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
        wait_s = time.perf_counter() - t0
        if extra and steps_per_epoch and step % steps_per_epoch == 0:
            step_schedulers(extra)
        compiled_before = compile_seconds()
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            losses = family.step(nets, opts, batch, model_cfg, extra)
        step += 1
        if loop.lr_decay_from < 1.0:
            _decay_learning_rates(opts, step=step, total=loop.steps, start=loop.lr_decay_from)
        if ema is not None:
            ema.update(nets[family.generator], step)
        compile_s = compile_seconds() - compiled_before
        compile_total += compile_s
        window.add(losses, _batch_size(batch), wait_s, compile_s)
        if on_step is not None:
            on_step(step)

        final = step == loop.steps
        due = events_due(step, loop)
        if not due:
            continue
        # Loss averages cover log_every steps; a sample, evaluation or checkpoint between two of them reports
        # on its own step without cutting the averaging window short.
        metrics: dict[str, float] = {}
        if "log" in due:
            metrics = window.summary(world_size)
            if loop.compile != "off":
                metrics["perf/compile_s"] = compile_total
            window = MetricWindow()
        do_eval = evaluate is not None and "eval" in due
        do_samples = figure is not None and "samples" in due
        do_checkpoint = make_checkpoint is not None and "checkpoint" in due
        if ema is not None and (do_eval or do_samples or do_checkpoint):
            ema.recalibrate(calibration_inputs)
        if do_eval:
            metrics.update(evaluate(unwrap(generator)))
        samples = figure(unwrap(generator)) if do_samples else None
        checkpoint = make_checkpoint(step) if do_checkpoint else None
        report(Report(step=step, metrics=metrics, checkpoint=checkpoint, samples=samples, final=final))
    return step


def events_due(step: int, loop: LoopConfig) -> frozenset[str]:
    """What is due after `step`: "log", "eval", "samples", "checkpoint", each on its own period, everything at
    the last step (evaluation only where eval_every divides it: the driver evaluates the final generator).

    A pure function of the step and the config, never of the rank: every rank reports on the same steps, as Ray
    Train's report (a barrier) requires, and rank 0 alone fills in the evaluation and the samples."""
    final = step == loop.steps
    due = set()
    if final or step % loop.log_every == 0:
        due.add("log")
    if loop.eval_every and step % loop.eval_every == 0:
        due.add("eval")
    if final or (loop.sample_every and step % loop.sample_every == 0):
        due.add("samples")
    if final or step % loop.checkpoint_every == 0:
        due.add("checkpoint")
    return frozenset(due)


def _batch_size(batch: dict[str, torch.Tensor]) -> int:
    # Every kind's batch is a dict of tensors sharing dim 0 ("image", or "a"/"b" for the image-to-image kinds).
    return next(iter(batch.values())).shape[0]


def _decay_learning_rates(opts: Optimizers, *, step: int, total: int, start: float) -> None:
    """Constant, then linear to 0 over the last (1 - start) of training (pix2pix/CycleGAN's "linear" policy).

    Computed from the step and each group's `initial_lr`, so a resumed run continues the same schedule.
    """
    factor = min(1.0, (total - step) / max(1.0, total * (1.0 - start)))
    for opt in opts.values():
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * max(0.0, factor)


def sample_grid(generator: nn.Module, inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A square-ish grid of G(*inputs) in [-1, 1], computed in eval mode (BN running statistics)."""
    images = generate(generator, inputs)
    return make_grid(images, nrow=max(1, int(round(images.shape[0] ** 0.5))))


@torch.no_grad()
def generate(
    generator: nn.Module, inputs: torch.Tensor | tuple[torch.Tensor, ...], *, batch: int = 250
) -> torch.Tensor:
    """G(*inputs) in eval mode, in batches, on G's device; returns CPU floats in [-1, 1].

    `inputs` is z alone or the tuple `Family.generator_inputs` returns, e.g. (image, target labels)."""
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    was_training = generator.training
    _set_mode(generator, training=False)
    device = next(iter(generator.parameters()), torch.empty(0)).device
    n = len(inputs[0])
    out = torch.cat([
        generator(*(x[i : i + batch].to(device) for x in inputs)).float().cpu() for i in range(0, n, batch)
    ])
    _set_mode(generator, training=was_training)
    return out.clamp(-1, 1)


def _set_mode(module: nn.Module, *, training: bool) -> None:
    try:
        module.train(training)
    except NotImplementedError:
        pass  # a torch.export'ed module (what the registry returns) is fixed in the mode it was exported in
