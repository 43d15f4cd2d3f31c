"""Ray Train V2 adapter: a `TorchTrainer` whose workers each run `worker.run_rank` on their split of shards.

The only Ray-specific parts are here: the worker's rank/device, DDP wrapping (`prepare_model`), checkpoint
upload through `ray.train.report`, resume through `ray.train.get_checkpoint`, and rank 0's progress bar drawn by
the driver (`RayBar`).
"""

from __future__ import annotations

import builtins
import inspect
import logging
import os
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_prep.integrity import SampleDecodeError, ShardIntegrityError
from pipelines.engine.checkpoint import save_rng, save_state
from pipelines.engine.loop import Report
from pipelines.engine.quiet import quiet_logs, ray_settings
from pipelines.spec.defaults import FORWARDED_ENV as SETTINGS_ENV
from pipelines.tracking.runs import MLFLOW_RETRY_ENV, RETRY_ENV
from pipelines.training.worker import Job, progress_of, run_rank

# Environment a worker needs to reach the store and the tracking server. Credentials travel the way the
# cluster provides them (instance roles, AWS_* on the nodes), never inside the job's config.
# What a training worker on a cluster needs from the driver's shell (pipelines.spec.defaults), plus the tracking
# client's retry settings.
FORWARDED_ENV = (*SETTINGS_ENV, RETRY_ENV, *MLFLOW_RETRY_ENV)


def _has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _quiet_report_logs() -> None:
    # Ray Train V2 logs every report at INFO (from a logger named after its source file); our metrics already
    # go to MLflow and the driver's summary.
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray version: its logs stay as they are
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


# No buffer broadcast before every forward: it only copies rank 0's BN running statistics to ranks whose own are
# never saved (checkpoints hold rank 0's), and costs ~9% of a small model's CPU step. torch 2.13 names it
# forward_sync_buffers and deprecates broadcast_buffers (which also skips the sync at wrap time: harmless, as
# every rank builds or restores the same buffers).
NO_FORWARD_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    else {"broadcast_buffers": False}
)


def reaches_ray(r: Report, *, eval_every: int) -> bool:
    """Whether a report goes to Ray Train: checkpoints, evaluation steps (Tune schedules trials on them) and
    the last step. Plain loss reports reach MLflow through rank 0's RunLogger only: Ray Train V2 holds one
    report per worker and its controller collects it every 2 s (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S), so a
    report every log_every steps would cap training at log_every steps per 2 s. Decided by step, never by
    rank-0-only metrics: every rank must make the same number of report calls."""
    return r.checkpoint is not None or r.final or bool(eval_every and r.step % eval_every == 0)


def train_worker(config: dict[str, Any]) -> None:
    """The function every Ray Train worker runs."""
    import ray.train
    import ray.train.torch

    _quiet_report_logs()
    quiet_logs()
    job = Job.from_dict(config["job"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    # Torch would start one thread per core in every worker; on a shared node that oversubscribes the CPUs.
    torch.set_num_threads(job.spec.loop.threads or max(1, int(job.spec.scale.worker_cpus)))
    logger = None
    if rank == 0 and job.run_id:
        from pipelines.tracking.runs import RunLogger, unlogged_store

        logger = RunLogger(job.tracking_uri, job.run_id, spill=unlogged_store(job.spec.store, job.spec.run_name))

    def prepare(model: nn.Module) -> nn.Module:
        # SyncBatchNorm has only GPU kernels; on CPU each rank keeps its own batch statistics.
        if world > 1 and job.spec.scale.use_gpu and _has_batch_norm(model):
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=NO_FORWARD_BUFFER_SYNC)

    def report(r: Report) -> None:
        if logger is not None:
            logger.log_report(r)
        if not reaches_ray(r, eval_every=job.spec.loop.eval_every):
            return
        metrics = {**r.metrics, "step": r.step}
        if r.checkpoint is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            if r.checkpoint:
                save_state(Path(tmp), r.checkpoint)
            save_rng(Path(tmp), rank)
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=f"step_{r.step:08d}",
            )

    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else nullcontext(None) as resume_dir:
        run_rank(
            job, rank=rank, world_size=world, device=device, prepare_model=prepare,
            resume_dir=Path(resume_dir) if resume_dir else None, report=report, cpus=job.spec.scale.worker_cpus,
            progress=progress_of(job, bar=RayBar) if rank == 0 else None,
        )
    unlogged = logger.close() if logger is not None else ""
    if unlogged:
        print(f"[ganpipe] {unlogged}", flush=True)


class RayBar:
    """Rank 0's bar as Ray's distributed tqdm (`ray.experimental.tqdm_ray`): the worker prints its state as a log
    line and the driver (started with log_to_driver) draws it, clearing it around other workers' lines.

    Its state lines are written to stdout alone: Ray Train V2 patches `print` in workers to also log each line
    (ray/train/v2/_internal/logging/patch_print.py), and the driver would receive every state twice, the closed
    bar's last state after its close, and draw a second bar that never ends."""

    def __init__(self, total: int, start: int) -> None:
        from ray.experimental.tqdm_ray import tqdm

        self.bar = self._plain(lambda: tqdm(total=total, unit="step", desc="train"))
        if start:
            self.update(start)

    @staticmethod
    def _plain(call: Any) -> Any:
        patched = builtins.print
        builtins.print = _write
        try:
            return call()
        finally:
            builtins.print = patched

    def update(self, n: int = 1) -> None:
        self._plain(lambda: self.bar.update(n))

    def set_description(self, desc: str) -> None:
        self._plain(lambda: self.bar.set_description(desc))

    def close(self) -> None:
        self._plain(self.bar.close)


def _write(*objects: Any, sep: str = " ", end: str = "\n", file: Any = None, flush: bool = False) -> None:
    out = file or sys.stdout
    out.write(sep.join(map(str, objects)) + end)
    out.flush()


def worker_env() -> dict[str, str]:
    """The environment a Ray Train worker gets from this driver (its runtime env): FORWARDED_ENV as set here."""
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def launch(job: Job, *, storage_fs: Any, storage_path: str, max_failures: int = 2):
    """Run the job on the current Ray cluster; returns Ray Train's Result (its checkpoint is the latest)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    scale = job.spec.scale
    resources = {"CPU": scale.worker_cpus, **({"GPU": 1} if scale.use_gpu else {})}
    env = worker_env()
    ray_settings()
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"job": job.to_dict()},
        scaling_config=ray.train.ScalingConfig(
            num_workers=scale.workers, use_gpu=scale.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=job.spec.run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": env} if env else None,
        ),
    )
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as exc:
        data_error = integrity_error_of(exc)
        if data_error is None:
            raise
        raise data_error from None  # the one line that names the shard, not Ray's report of every rank


def integrity_error_of(exc: BaseException) -> Exception | None:
    """The first rank's shard-integrity or decode error inside Ray Train's worker-group failure, if any: a
    corrupt shard fails every attempt (Ray retries max_failures times first), and its message says what to do."""
    failures = getattr(exc, "worker_failures", None) or {}
    for _rank, error in sorted(failures.items()):
        if isinstance(error, (ShardIntegrityError, SampleDecodeError)):
            return error
    return None


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` / $RAY_ADDRESS, else start a local runtime sized to this machine, even
    while a `ray start` cluster runs here (data_prep.ray_runtime says which, in one line)."""
    from data_prep.ray_runtime import init_ray

    # The dashboard serves Ray's State API, which Ray Train's placement-group cleaner polls (without it,
    # that poll logs a warning every few seconds); it listens on 127.0.0.1 only.
    init_ray(address=address, num_cpus=num_cpus or os.cpu_count() or 1, dashboard_host="127.0.0.1")
