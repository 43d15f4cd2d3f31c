"""What every training rank runs, with or without Ray: build, restore, stream its shards, `fit`, report."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_prep.batches import dataset_batches
from data_prep.manifest import Manifest
from data_prep.prefetch import default_decode_workers
from data_prep.reader import read_manifest
from gan_models import get_family
from pipelines.engine.checkpoint import load_state, restore, restore_rng, training_state
from pipelines.engine.compiled import compile_nets, inductor_cache_folder, mode_for_run
from pipelines.engine.loop import GeneratorEMA, Report, fit, sample_grid
from pipelines.engine.precision import autocast_dtype, fused, to_channels_last, wants_channels_last
from pipelines.engine.progress import BarFactory, TrainProgress
from pipelines.evaluation.kinds import Evaluators, kind_metrics_fn
from pipelines.spec.config import TrainSpec


@dataclass(frozen=True, kw_only=True)
class Job:
    """The resolved inputs of one training run; crosses the process boundary as a plain dict."""

    spec: TrainSpec
    dataset_url: str
    run_id: str = ""  # MLflow run that rank 0 logs into ("" disables tracking)
    tracking_uri: str = ""
    evaluator_url: str = ""  # store URL of the offline evaluator's weights ("" disables eval/*)
    s3_endpoint: str | None = None
    # Image-to-image families: domain -> URL of that domain's offline classifier (evaluation.i2i); the task metrics
    # (L1/PSNR/SSIM, cycle L1) need none, class preservation and per-domain Fréchet distance do.
    task_evaluators: dict[str, str] = field(default_factory=dict)
    progress: str = ""  # rank 0's console progress (engine/progress.py MODES): "" none, "lines", "bar"
    # Inductor's cache folder for loop.compile, absolute, resolved by the driver: every rank, trial and rerun shares it.
    inductor_cache: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "spec": self.spec.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        return cls(**{**d, "spec": TrainSpec.from_dict(d["spec"])})


def inductor_cache() -> str:
    """`Job.inductor_cache` as a driver resolves it (pipelines/engine/compiled.py `inductor_cache_folder`)."""
    return str(inductor_cache_folder())


def seed_everything(seed: int, rank: int) -> None:
    # Different ranks must draw different latents, or data parallelism just repeats one sample.
    torch.manual_seed(seed * 1_000_003 + rank)


def _fixed_batch(job: Job, manifest: Any, *, n: int) -> dict[str, torch.Tensor]:
    """The first n held-out samples (train samples when nothing is held out), in manifest order."""
    split = "test" if _split_count(manifest, "test") > 0 else "train"
    stream = dataset_batches(job.dataset_url, split=split, batch_size=n, shuffle_buffer=0, repeat=False,
                             drop_last=False, seed=job.spec.loop.seed, s3_endpoint=job.s3_endpoint)
    return next(iter(stream))


def _split_count(manifest: Any, split: str) -> int:
    """Samples in `split`; for unpaired data the larger domain's (its manifest counts add both domains)."""
    domains = manifest.extra.get("domains")
    if domains:
        return max(d["counts"].get(split, 0) for d in domains.values())
    return manifest.counts.get(split, 0)


def steps_per_epoch_of(manifest: Any, *, batch_size: int, world_size: int) -> int:
    """Steps in one pass over the training split (the larger domain for unpaired data), as the official
    pix2pix/CycleGAN loaders count an epoch; at least 1."""
    return max(1, _split_count(manifest, "train") // (batch_size * world_size))


def _figure_fn(
    family: Any, model_cfg: Any, sample_batch: dict[str, torch.Tensor] | None, *, seed: int, device: torch.device
) -> Callable[[nn.Module], torch.Tensor]:
    """G -> the sample grid rank 0 logs, always from the same inputs so grids compare across steps.

    `sample_batch` is the conditioning (None for unconditional families)."""
    if family.sample_grid is not None:
        return lambda generator: family.sample_grid(
            generator, sample_batch, model_cfg, generator=torch.Generator(device).manual_seed(seed)
        )
    g = torch.Generator().manual_seed(seed)
    inputs = tuple(x.to(device) for x in family.generator_inputs(model_cfg, sample_batch, 64, generator=g))
    return lambda generator: sample_grid(generator, inputs)


def progress_of(job: Job, *, bar: BarFactory | None) -> Callable[[int], TrainProgress] | None:
    """Rank 0's console progress in the job's mode (None: none), for `run_rank`; `bar` draws it in "bar" mode."""
    if not job.progress:
        return None
    loop = job.spec.loop
    drawn = bar if job.progress == "bar" else None
    return lambda start: TrainProgress(total=loop.steps, log_every=loop.log_every, start_step=start, bar=drawn)


def evaluation_fn(
    job: Job, *, manifest: Manifest, device: torch.device
) -> Callable[[nn.Module], dict[str, float]] | None:
    """G -> eval/* for the job's dataset kind, or None where there is nothing to evaluate with: the offline
    evaluator's image metrics (images), the conditional families' task metrics (attributes, captioned:
    pipelines.evaluation.conditional), translation metrics against held-out pairs/domains (paired, unpaired)."""
    spec = job.spec
    evaluators = Evaluators(evaluator_url=job.evaluator_url, task_evaluators=dict(job.task_evaluators))
    return kind_metrics_fn(manifest.kind, family=get_family(spec.family), model_cfg=spec.model,
                           dataset_url=job.dataset_url, manifest=manifest, evaluators=evaluators, device=device,
                           seed=spec.loop.seed, s3_endpoint=job.s3_endpoint)


def run_rank(
    job: Job,
    *,
    rank: int,
    world_size: int,
    device: torch.device,
    prepare_model: Callable[[nn.Module], nn.Module] = lambda m: m,
    resume_dir: Path | None = None,
    report: Callable[[Report], Any],
    cpus: float | None = None,
    progress: Callable[[int], TrainProgress] | None = None,
) -> int:
    """Train this rank to the end; returns the last step. `resume_dir` holds the checkpoint to continue from;
    `cpus` is what Ray gave this rank (None: the CPUs this process may run on), which sizes the decode pool.

    `progress` (rank 0's, when it shows one): start step -> what shows the run's progress on the console."""
    spec = job.spec
    family = get_family(spec.family)
    if spec.loop.threads:
        torch.set_num_threads(spec.loop.threads)
    seed_everything(spec.loop.seed, 0)  # identical initial weights on every rank
    nets = family.build(spec.model)
    amp_dtype = autocast_dtype(spec.loop.precision, device)
    for net in nets.values():
        net.to(device)
    # Optimizers first, for the layout to know whether they are fused; a layout change keeps each Parameter
    # object (only its data moves), so the optimizers built here still hold the networks' parameters.
    opts = family.build_optimizers(spec.model, nets)
    # The asked-for compile mode: a run too short to compile (mode_for_run, below) keeps the layout it would have had.
    if wants_channels_last(device, amp_dtype, spec.loop.layout, fused_optimizer=fused(opts),
                           compiled=spec.loop.compile != "off"):
        for net in nets.values():
            to_channels_last(net)
    ema = None
    if spec.loop.ema_decay > 0:
        ema = GeneratorEMA.of(nets[family.generator], decay=spec.loop.ema_decay, start=spec.loop.ema_start)
    # Image pools and LR schedulers; each rank's pool draws from its own seed, as each GPU's would.
    extra = family.extra_state(spec.model, opts, seed=spec.loop.seed + rank) if family.extra_state else None
    start_step = 0
    if resume_dir is not None:
        start_step = restore(load_state(resume_dir), nets=nets, opts=opts, ema=ema, extra=extra)
        if rank == 0:
            print(f"[ganpipe] resuming {spec.run_name} from step {start_step}", flush=True)
    # Compiled in place (same parameters and state-dict keys), after the restore and before DDP wraps them.
    log = print if rank == 0 else None
    mode = mode_for_run(spec.loop.compile, steps_left=spec.loop.steps - start_step,
                        min_steps=spec.loop.compile_min_steps, log=log)  # fmt: skip
    compile_nets(nets, mode=mode, log=log, cache=job.inductor_cache or None)
    # Optimizer state was created on the parameters before wrapping; DDP keeps the same parameter objects.
    nets = {name: prepare_model(net) for name, net in nets.items()}
    if not (resume_dir is not None and restore_rng(resume_dir, rank)):
        seed_everything(spec.loop.seed + start_step, rank)

    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # the reader pins its batches for the current device
    manifest = read_manifest(job.dataset_url, s3_endpoint=job.s3_endpoint)
    batches = dataset_batches(
        job.dataset_url,
        split="train",
        batch_size=spec.data.batch_size,
        rank=rank,
        world_size=world_size,
        seed=spec.loop.seed + start_step,
        shuffle_buffer=spec.data.shuffle_buffer,
        s3_endpoint=job.s3_endpoint,
        **reader_options(spec, device=device, cpus=cpus),
    )
    # Closed however fit ends (steps done, an error, a stop): the decode workers and the prefetch thread end too.
    with contextlib.closing(batches):
        return _fit_rank(job, spec=spec, family=family, manifest=manifest, batches=batches, rank=rank,
                         world_size=world_size, device=device, nets=nets, opts=opts, ema=ema, extra=extra,
                         start_step=start_step, amp_dtype=amp_dtype, report=report, progress=progress)  # fmt: skip


def reader_options(spec: TrainSpec, *, device: torch.device, cpus: float | None = None) -> dict[str, Any]:
    """dataset_batches' decode_workers, decode_pool and pin_memory for a rank of this run on `device`: the
    decode workers by default one per CPU of the rank less the training thread's (`cpus`: what Ray gave it, as
    Ray does not pin a worker's CPUs; None: this process's CPUs); page-locked batches only for a CUDA device,
    where the loop's non-blocking copies can then overlap the step."""
    workers = spec.data.decode_workers
    if workers is None:
        workers = default_decode_workers(cpus=cpus)
    return {"decode_workers": workers, "decode_pool": spec.data.decode_pool, "pin_memory": device.type == "cuda"}


def _fit_rank(
    job: Job, *, spec: TrainSpec, family: Any, manifest: Manifest, batches: Iterator[dict[str, torch.Tensor]],
    rank: int, world_size: int, device: torch.device, nets: dict[str, nn.Module], opts: Any, ema: Any, extra: Any,
    start_step: int, amp_dtype: Any, report: Callable[[Report], Any],
    progress: Callable[[int], TrainProgress] | None,
) -> int:
    """Figures, evaluation and checkpoints of this rank around `fit`; returns the last step."""
    # What conditions G in figures and the EMA's BN calibration: fixed, so grids compare across steps and runs.
    sample_batch = None if family.sample_latent is not None and manifest.kind == "images" else (
        {k: v.to(device) for k, v in _fixed_batch(job, manifest, n=64).items()}
    )
    is_rank0 = rank == 0
    # i2i metrics read the held-out set on each call: only when the loop asks for them (eval_every).
    wants_eval = spec.loop.eval_every or manifest.kind not in ("paired", "unpaired")
    evaluate = evaluation_fn(job, manifest=manifest, device=device) if is_rank0 and wants_eval else None
    figure = None
    if is_rank0:
        figure = _figure_fn(family, spec.model, sample_batch, seed=spec.loop.seed, device=device)
    calibration_inputs = None
    if sample_batch is not None:
        calibration_inputs = family.generator_inputs(spec.model, sample_batch, len(next(iter(sample_batch.values()))),
                                                     generator=torch.Generator().manual_seed(spec.loop.seed))

    def make_checkpoint(step: int) -> dict[str, Any]:
        # Only rank 0 holds the state (all ranks' weights are equal under DDP); the others' empty dict
        # still marks the step, so each saves its own RNG beside it.
        if not is_rank0:
            return {}
        return training_state(spec=spec.to_dict(), step=step, nets=nets, opts=opts, ema=ema, extra=extra)

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    shown = progress(start_step) if progress is not None else None

    def report_shown(r: Report) -> None:
        if shown is not None:
            shown.report(r.step, r.metrics)
        report(r)

    try:
        return fit(
            family=family, model_cfg=spec.model, nets=nets, opts=opts, batches=batches, loop=spec.loop,
            report=report_shown, make_checkpoint=make_checkpoint, ema=ema, evaluate=evaluate, figure=figure,
            calibration_inputs=calibration_inputs, extra=extra,
            steps_per_epoch=steps_per_epoch_of(manifest, batch_size=spec.data.batch_size, world_size=world_size),
            start_step=start_step, world_size=world_size, device=device, amp_dtype=amp_dtype,
            on_step=shown.step if shown is not None else None,
        )
    finally:
        if shown is not None:
            shown.close()
