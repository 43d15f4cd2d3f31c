"""One trial of `ganpipe sweep`: a Ray Tune function trainable that trains one configuration.

Single-worker trials run `worker.run_rank` in the trial's own process and report with `ray.tune.report`,
checkpoints included (so ASHA, PBT's exploit and `Tuner.restore` all see them). Multi-worker trials build a Ray
Train `TorchTrainer` inside the trial (Ray Train V2's pattern for Tune) and forward its reports to Tune; when Tune
stops such a trial early, the trial aborts its trainer before it exits, so the workers' CPUs are free for the
next trial (otherwise, as seen on a 2-CPU node, the next trial's worker group waits for them and times out).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from pipelines.engine.checkpoint import STATE_FILE, load_state, rng_file, save_rng, save_state
from pipelines.engine.loop import Report
from pipelines.spec.sweep_space import Param, apply_params
from pipelines.tracking import runs as tracking
from pipelines.training.worker import Job, run_rank

SWEEP_TAG = "ganpipe.sweep"
TRIAL_TAG = "ganpipe.trial_id"
STATUS_TAG = "ganpipe.trial_status"  # running, finished, stopped (early, by the scheduler), diverged, error
TESTED_RAY = "2.60"  # the Ray versions the private ControllerCallback below was tested with
DIVERGED = "sweep/diverged"  # 1.0 in the report of a trial whose losses went NaN/inf


class Diverged(Exception):
    """A loss became NaN or infinite: the trial stops itself and is recorded as diverged."""

    def __init__(self, step: int, key: str, value: float) -> None:
        super().__init__(f"{key}={value} at step {step}")
        self.step = step


def worst(mode: str) -> float:
    return math.inf if mode == "min" else -math.inf


def check_finite(report: Report) -> None:
    for key, value in report.metrics.items():
        if key.startswith(("loss/", "d/")) and not math.isfinite(value):
            raise Diverged(report.step, key, value)


def metric_first(metrics: dict[str, Any], metric: str) -> dict[str, Any]:
    """The report with the optimised metric and the step first: Tune's progress table shows the first four
    metrics of a trial's result (Ray 2.60's ray/tune/experimental/output.py, `_infer_user_metrics`), and with
    losses first it never showed the metric being optimised."""
    head = {k: metrics[k] for k in (metric, "step") if k in metrics}
    return {**head, **{k: v for k, v in metrics.items() if k not in head}}


def trial_run_name(sweep: str, trial_id: str) -> str:
    return f"{sweep}-{trial_id}"


def _child_run(job: Job, ctx: dict[str, Any], trial_id: str, config: dict[str, Any]) -> str:
    """The trial's MLflow run under the sweep's parent (found again, not duplicated, when the trial resumes)."""
    run_id, resumed = tracking.start_run(
        job.spec, tracking_uri=job.tracking_uri, dataset_name=ctx["dataset_name"], dataset_url=job.dataset_url,
        manifest_digest=ctx["manifest_digest"],
    )
    mlf = tracking.client(job.tracking_uri)
    if not resumed:
        for key, value in {"mlflow.parentRunId": ctx["parent_run_id"], SWEEP_TAG: ctx["sweep"], TRIAL_TAG: trial_id,
                           "mlflow.note.content": f"trial {trial_id} of sweep {ctx['sweep']}: "
                                                  + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                              for k, v in config.items())}.items():
            mlf.set_tag(run_id, key, value)
    mlf.set_tag(run_id, STATUS_TAG, "running")
    if ctx.get("ray_job_id"):  # inside a Tune actor Ray knows only its internal job id, not the submission's
        mlf.set_tag(run_id, "ganpipe.ray_job_id", ctx["ray_job_id"])
    return run_id


def adopt_config(resume_dir: Path, spec: Any, family: Any, out: Path) -> Path:
    """A checkpoint made under another config (PBT's exploit copies a better trial's checkpoint, then perturbs
    the λs and learning rates) continues under this trial's config: λs apply from the checkpoint's step on by
    themselves; the learning rates stored in the optimizer (and LR scheduler) state are replaced here."""
    state = load_state(resume_dir)
    if state.get("spec", {}).get("model") == spec.to_dict()["model"]:
        return resume_dir
    nets = family.build(spec.model)
    fresh = family.build_optimizers(spec.model, nets)
    for name, opt in fresh.items():
        for saved, group in zip(state["opts"][name]["param_groups"], opt.param_groups, strict=True):
            saved["lr"] = group["lr"]
            saved["initial_lr"] = group["lr"]
    if family.extra_state is not None:
        for name, obj in family.extra_state(spec.model, fresh, seed=0).items():
            fresh_state = obj.state_dict()
            if "base_lrs" in fresh_state and name in state["extra"]:
                state["extra"][name]["base_lrs"] = fresh_state["base_lrs"]
    state["spec"] = spec.to_dict()
    out.mkdir(parents=True, exist_ok=True)
    save_state(out, state)
    rng = resume_dir / rng_file(0)
    if rng.exists():
        (out / rng_file(0)).write_bytes(rng.read_bytes())
    return out


def _run_in_trial(job: Job, ctx: dict[str, Any], logger: tracking.RunLogger, hp: dict[str, float]) -> None:
    """workers_per_trial <= 1: the plain loop in this process; every report goes to MLflow, those carrying the
    metric (and every checkpoint) to Tune."""
    from ray import tune

    from gan_models import get_family

    metric = ctx["metric"]
    threads = job.spec.loop.threads or max(1, int(job.spec.scale.worker_cpus))
    torch.set_num_threads(threads)
    use_gpu = ctx["gpus_per_worker"] > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")

    def report(r: Report) -> None:
        check_finite(r)
        logger.log_report(r)
        logger.log_metrics(r.step, hp)
        if metric not in r.metrics and r.checkpoint is None:
            return
        metrics = {**r.metrics, "step": r.step, DIVERGED: 0.0}
        metrics.setdefault(metric, worst(ctx["mode"]))  # a checkpoint between evaluations
        metrics = metric_first(metrics, metric)
        if r.checkpoint is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_state(Path(tmp), r.checkpoint)
            save_rng(Path(tmp), 0)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    checkpoint = tune.get_checkpoint()
    with tempfile.TemporaryDirectory() as tmp:
        with checkpoint.as_directory() if checkpoint else nullcontext(None) as resume_dir:
            resume = None
            if resume_dir is not None and (Path(resume_dir) / STATE_FILE).exists():
                resume = adopt_config(Path(resume_dir), job.spec, get_family(job.spec.family), Path(tmp) / "adopted")
            run_rank(job, rank=0, world_size=1, device=device, resume_dir=resume, report=report,
                     cpus=job.spec.scale.worker_cpus)


def _stop_file(trial_id: str) -> Path:
    # The trial and its Train controller share a node (Ray Train pins the controller to its driver's node).
    return Path(tempfile.gettempdir()) / f"ganpipe-sweep-{trial_id}.stop"


class AbortTrainerOnStop:
    """Mixed into the trial's Tune trainable: when Tune stops the trial (ASHA, the end of the sweep), tell the
    trial's Ray Train controller to abort (removing its workers' placement group) and wait until it has exited."""

    def cleanup(self) -> None:
        stop = _stop_file(getattr(self, "trial_id", "") or "")
        pid_file = stop.with_suffix(".pid")
        if pid_file.exists():
            stop.touch()
            pid = int(pid_file.read_text())
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.2)
            pid_file.unlink(missing_ok=True)
            stop.unlink(missing_ok=True)
        super().cleanup()  # type: ignore[misc]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _controller_callbacks(trial_id: str, ctx: dict[str, Any]) -> list[Any]:
    """Callbacks run inside the Train controller: forward reports to Tune (with divergence flagged), and abort
    when the trial's stop file appears."""
    # Ray's public UserCallback has no controller-start hook, which the stop-file watcher needs: this one class
    # is private Ray API, guarded so another Ray version fails with a message instead of an import traceback.
    try:
        from ray.train.v2._internal.execution.callback import ControllerCallback
    except ImportError as exc:
        raise RuntimeError(f"multi-worker sweep trials need Ray Train's ControllerCallback, tested with Ray "
                           f"{TESTED_RAY}; this Ray lacks it ({exc}): use --workers-per-trial 1 or Ray "
                           f"{TESTED_RAY}") from None
    from ray.tune.integration.ray_train import TuneReportCallback

    class Forward(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            m = dict(metrics[0])
            bad = any(k.startswith(("loss/", "d/")) and isinstance(v, float) and not math.isfinite(v)
                      for k, v in m.items())
            m[DIVERGED] = 1.0 if bad else 0.0
            if bad or ctx["metric"] not in m:
                m[ctx["metric"]] = worst(ctx["mode"])
            super().after_report(run_context, [metric_first(m, ctx["metric"]), *metrics[1:]], checkpoint)

    class AbortOnStopFile(ControllerCallback):
        def __init__(self, path: str) -> None:
            self.path = path

        def after_controller_start(self, train_run_context: Any) -> None:
            import ray

            Path(self.path).with_suffix(".pid").write_text(str(os.getpid()))
            me = ray.get_runtime_context().current_actor

            def watch() -> None:
                while not Path(self.path).exists():
                    time.sleep(0.5)
                me.abort.remote()  # as Ctrl-C does: the worker group and its placement group go first

            threading.Thread(target=watch, daemon=True, name="ganpipe-sweep-abort").start()

    return [Forward(), AbortOnStopFile(str(_stop_file(trial_id)))]


def _run_on_train(job: Job, ctx: dict[str, Any], trial_id: str) -> None:
    """workers_per_trial > 1: a TorchTrainer inside the trial, checkpoints in the sweep's store."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from data_prep.storage import open_store
    from pipelines.engine.quiet import ray_settings
    from pipelines.training.ray_train import train_worker, worker_env

    scale = job.spec.scale
    resources = {"CPU": scale.worker_cpus, **({"GPU": ctx["gpus_per_worker"]} if scale.use_gpu else {})}
    fs, root = open_store(job.spec.store).child(f"sweeps/{ctx['sweep']}-train").pyarrow_fs()
    env = worker_env()
    ray_settings()
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"job": job.to_dict()},
        scaling_config=ray.train.ScalingConfig(num_workers=scale.workers, use_gpu=scale.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=job.spec.run_name, storage_path=root, storage_filesystem=fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=_controller_callbacks(trial_id, ctx),
            worker_runtime_env={"env_vars": env} if env else None,
        ),
    )
    trainer.fit()


def trial(config: dict[str, Any], ctx: dict[str, Any]) -> None:
    """The Tune function trainable (bound to the sweep's context with `tune.with_parameters`)."""
    from ray import tune

    from pipelines.engine.quiet import quiet_logs

    quiet_logs()
    params = [Param(**p) for p in ctx["params"]]
    base = Job.from_dict(ctx["job"])
    trial_id = tune.get_context().get_trial_id()
    spec = dataclasses.replace(apply_params(base.spec, config, params),
                               run_name=trial_run_name(ctx["sweep"], trial_id))
    job = dataclasses.replace(base, spec=spec)
    run_id = _child_run(job, ctx, trial_id, config)
    job = dataclasses.replace(job, run_id=run_id)
    logger = tracking.RunLogger(job.tracking_uri, run_id)
    mlf = tracking.client(job.tracking_uri)
    hp = {f"hp/{k}": float(v) for k, v in config.items() if isinstance(v, (int, float))}
    try:
        if spec.scale.workers <= 1:
            _run_in_trial(job, ctx, logger, hp)
        else:
            _run_on_train(job, ctx, trial_id)
    except Diverged as exc:
        mlf.set_tag(run_id, STATUS_TAG, "diverged")
        mlf.set_tag(run_id, "ganpipe.diverged", str(exc))
        mlf.set_terminated(run_id, status="FAILED")
        tune.report({ctx["metric"]: worst(ctx["mode"]), "step": exc.step, DIVERGED: 1.0})
        return
    except Exception:
        mlf.set_tag(run_id, STATUS_TAG, "error")
        mlf.set_terminated(run_id, status="FAILED")
        raise
    mlf.set_tag(run_id, STATUS_TAG, "finished")
    mlf.set_terminated(run_id, status="FINISHED")


trial.__mixins__ = (AbortTrainerOnStop,)  # type: ignore[attr-defined]
