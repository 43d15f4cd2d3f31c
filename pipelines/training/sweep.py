"""`ganpipe sweep`: search a family's λs and learning rates with Ray Tune, one MLflow child run per trial.

The driver resolves the dataset and the search space, opens (or finds again) the sweep's parent MLflow run,
runs or restores the Tune experiment stored under `<store>/sweeps/NAME`, then records every trial (CSV, a plot
of each searched value against the metric) on the parent and registers the best trial's generator as
`candidate`. The trial itself lives in `sweep_trial.py`; the search spaces in `sweep_space.py`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.training.sweep_trial import DIVERGED, STATUS_TAG, SWEEP_TAG, TRIAL_TAG, trial

if TYPE_CHECKING:  # torch loads only when a sweep runs, not for `ganpipe --help`
    from pipelines.spec.config import TrainSpec
    from pipelines.spec.sweep_space import Param

TRAINER_TRIAL_CPU = 0.1  # what a multi-worker trial itself holds while its TorchTrainer's workers train
EVALUATOR_METRICS = ("eval/fd", "eval/cls_score", "eval/confident_share")


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    name: str  # the Tune experiment and the parent MLflow run; the same name again resumes
    metric: str  # a reported metric, e.g. eval/fd
    mode: str = "min"  # min: lower is better
    num_samples: int = 8  # draws (random/optuna) or grid points per range (grid)
    space: str | dict[str, Any] = "default"  # "default", a YAML file, or the documented mapping itself
    scheduler: str = "asha"  # asha, pbt, none
    search: str = "random"  # random, grid, optuna
    max_concurrent: int = 0  # 0: as many trials as the cluster's CPUs (GPUs) hold
    workers_per_trial: int = 1  # 1: the plain loop inside the trial; >1: a TorchTrainer per trial
    gpus_per_worker: float = 0.0
    report_every: int = 0  # steps between evaluations/checkpoints/Tune reports (0: steps / 4)


@dataclass
class TrialRecord:
    trial_id: str
    run_id: str
    status: str  # finished, stopped, diverged, error
    step: int
    value: float  # the metric at the trial's last report (nan when it never reported)
    config: dict[str, Any]


@dataclass
class SweepOutcome:
    name: str
    parent_run_id: str
    resumed: bool
    records: list[TrialRecord]
    best: TrialRecord | None
    model_uri: str = ""
    artifacts: list[str] = field(default_factory=list)


def with_cadence(spec: TrainSpec, cfg: SweepConfig) -> TrainSpec:
    """Trials evaluate, checkpoint and report to Tune every `report_every` steps; `steps` must be a multiple."""
    steps = spec.loop.steps
    every = cfg.report_every or max(1, steps // 4)
    if steps % every:
        raise ValueError(f"loop.steps={steps} must be a multiple of --report-every={every}")
    log_every = every if cfg.workers_per_trial > 1 else math.gcd(spec.loop.log_every, every)
    loop = dataclasses.replace(spec.loop, eval_every=every, checkpoint_every=every, log_every=log_every)
    scale = dataclasses.replace(spec.scale, workers=cfg.workers_per_trial, use_gpu=cfg.gpus_per_worker > 0)
    return dataclasses.replace(spec, loop=loop, scale=scale)


def check_settings(cfg: SweepConfig, *, has_evaluator: bool, dataset: str, task_metrics: bool = False) -> None:
    """`has_evaluator`: the offline evaluator scores trials (labelled images); `task_metrics`: the family's own
    eval/* (Pix2Pix L1/PSNR/SSIM, CycleGAN cycle L1 and class preservation) are reported while training."""
    if cfg.mode not in ("min", "max"):
        raise ValueError(f"--mode must be min or max, not {cfg.mode!r}")
    if cfg.num_samples < 1:
        raise ValueError("--num-samples must be >= 1")
    if cfg.scheduler not in ("asha", "pbt", "none") or cfg.search not in ("random", "grid", "optuna"):
        raise ValueError("--scheduler is asha, pbt or none; --search is random, grid or optuna")
    if cfg.scheduler == "pbt" and (cfg.workers_per_trial > 1 or cfg.search != "random"):
        raise ValueError("--scheduler pbt needs --workers-per-trial 1 (it exploits Tune checkpoints) and "
                         "--search random")
    if cfg.metric.startswith("eval/") and not task_metrics:
        if not has_evaluator:
            raise ValueError(f"{cfg.metric} is not reported while training on {dataset}: eval/* comes from the "
                             f"offline evaluator (labelled images) or the image-to-image task metrics; use a "
                             f"loss/* metric")
        if cfg.metric not in EVALUATOR_METRICS:
            raise ValueError(f"unknown metric {cfg.metric!r}; trials report {', '.join(EVALUATOR_METRICS)}, "
                             f"loss/* and d/*")
    elif not cfg.metric.startswith(("eval/", "loss/", "d/")):
        raise ValueError(f"--metric {cfg.metric!r}: give eval/*, loss/* or d/* (e.g. eval/fd --mode min)")
    if cfg.search == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ValueError("--search optuna needs the optuna package: pip install 'ganpipe[optuna]'") from None


def _scheduler(cfg: SweepConfig, params: list[Param], spec: TrainSpec) -> Any:
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    from pipelines.spec.sweep_space import pbt_mutations

    every = spec.loop.eval_every
    if cfg.scheduler == "asha":
        # Rungs at report_every x 2^k steps: a trial must survive each rung's comparison to train on.
        return ASHAScheduler(time_attr="step", max_t=spec.loop.steps, grace_period=every, reduction_factor=2)
    if cfg.scheduler == "pbt":
        return PopulationBasedTraining(time_attr="step", perturbation_interval=every,
                                       hyperparam_mutations=pbt_mutations(params), quantile_fraction=0.25,
                                       resample_probability=0.25)
    return None


def _max_concurrent(cfg: SweepConfig, spec: TrainSpec) -> int:
    import ray

    if cfg.max_concurrent:
        return cfg.max_concurrent
    cpus = ray.cluster_resources().get("CPU", 1.0)
    per_trial = spec.scale.worker_cpus * max(1, cfg.workers_per_trial)
    if cfg.workers_per_trial > 1:
        per_trial += TRAINER_TRIAL_CPU
    by_cpu = int(cpus // per_trial) if per_trial else 1
    if cfg.gpus_per_worker:
        gpus = ray.cluster_resources().get("GPU", 0.0)
        by_cpu = min(by_cpu, int(gpus // (cfg.gpus_per_worker * max(1, cfg.workers_per_trial))))
    return max(1, by_cpu)


def _trainable(cfg: SweepConfig, spec: TrainSpec, ctx: dict[str, Any]) -> Any:
    from ray import tune


    if cfg.workers_per_trial <= 1:
        # The trial trains: it holds what one worker would.
        resources = {"cpu": spec.scale.worker_cpus, "gpu": cfg.gpus_per_worker}
    else:
        # The trial only waits for its TorchTrainer, whose workers reserve their own CPUs (seen on a
        # 2-CPU node: a trial holding a whole CPU starved its workers).
        resources = {"cpu": TRAINER_TRIAL_CPU}
    return tune.with_resources(tune.with_parameters(trial, ctx=ctx), resources)


def run_sweep(spec: TrainSpec, cfg: SweepConfig, *, log: Callable[[str], Any] = print,
              progress: bool = True) -> SweepOutcome:
    from ray import tune

    from data_prep.storage import open_store
    from pipelines.engine.quiet import tune_result_files, tune_settings
    from pipelines.engine.stop import on_sigterm, when_stopped
    from pipelines.evaluation.kinds import Evaluators, prepare_evaluators
    from pipelines.spec.sweep_space import count_trials, format_space, load_space, tune_param_space, validate_space
    from pipelines.tracking import runs as tracking
    from pipelines.training.ray_train import ensure_ray
    from pipelines.training.train import resolve
    from pipelines.training.worker import Job, inductor_cache

    # Tune runs each trial in its own working directory: a relative store must not move with it.
    spec = dataclasses.replace(spec, run_name=cfg.name, store=open_store(spec.store).url)
    spec, manifest, dataset_url = resolve(spec)
    spec = with_cadence(spec, cfg)
    params = load_space(cfg.space, spec.family)
    validate_space(params, spec)
    from pipelines.evaluation.i2i import I2I_KINDS

    has_evaluator = manifest.kind == "images" and bool(manifest.class_names)
    task_metrics = manifest.kind in I2I_KINDS
    check_settings(cfg, has_evaluator=has_evaluator, dataset=manifest.name, task_metrics=task_metrics)
    param_space, num_samples = tune_param_space(params, search=cfg.search, num_samples=cfg.num_samples)
    n_trials = count_trials(params, search=cfg.search, num_samples=cfg.num_samples)
    log(f"sweep     {cfg.name}: {spec.family} on {dataset_url}, {n_trials} trials of {spec.loop.steps} steps, "
        f"{cfg.metric} ({cfg.mode}), scheduler {cfg.scheduler}, search {cfg.search}\n{format_space(params)}")
    evaluators = Evaluators()
    if cfg.metric.startswith("eval/"):  # trials report eval/* only when the sweep optimises one
        evaluators = prepare_evaluators(manifest.kind, store_url=spec.store, dataset_url=dataset_url,
                                        manifest=manifest, progress=progress, log=log)
    tracking_uri = tracking.resolve_tracking_uri(spec.track.tracking_uri)
    parent_id, resumed = tracking.start_run(spec, tracking_uri=tracking_uri, dataset_name=manifest.name,
                                            dataset_url=dataset_url, manifest_digest=manifest.digest)
    mlf = tracking.client(tracking_uri)
    if not resumed:
        mlf.set_tag(parent_id, SWEEP_TAG, cfg.name)
        mlf.set_tag(parent_id, "mlflow.note.content", f"sweep of {spec.family} on {manifest.name}: "
                                                      f"{cfg.metric} ({cfg.mode})\n{format_space(params)}")
        from mlflow.entities import Param as MlflowParam

        settings = {f"sweep.{k}": v for k, v in dataclasses.asdict(cfg).items()}
        settings.update({f"sweep.space.{p.name}": p.describe() for p in params})
        mlf.log_batch(parent_id, params=[MlflowParam(k, str(v)[:6000]) for k, v in settings.items()])
    log(f"run       MLflow parent run {parent_id}{' (resuming)' if resumed else ''}")

    ctx = {
        "job": Job(spec=spec, dataset_url=dataset_url, tracking_uri=tracking_uri,
                   evaluator_url=evaluators.evaluator_url, task_evaluators=evaluators.task_evaluators,
                   s3_endpoint=os.environ.get("GANPIPE_S3_ENDPOINT"), inductor_cache=inductor_cache()).to_dict(),
        "params": [dataclasses.asdict(p) for p in params], "sweep": cfg.name, "parent_run_id": parent_id,
        "metric": cfg.metric, "mode": cfg.mode, "gpus_per_worker": cfg.gpus_per_worker,
        "dataset_name": manifest.name, "manifest_digest": manifest.digest,
        "ray_job_id": tracking.ray_job_id(),  # the parent's: `raysubmit_...` when submitted through the Jobs API
    }
    # Tune forces an experiment snapshot whenever a trial has saved num_to_keep checkpoints, and warns each time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    tune_output = progress and sys.stdout.isatty()
    tune_settings(tune_output=tune_output)
    ensure_ray()
    on_sigterm()  # again: ray.init replaced it
    sweeps = open_store(spec.store).child("sweeps")
    fs, root = sweeps.pyarrow_fs()
    trainable = _trainable(cfg, spec, ctx)
    path = f"{root.rstrip('/')}/{cfg.name}"
    log(f"results   {sweeps.url.rstrip('/')}/{cfg.name}")  # Tune's own line drops the s3:// of the store
    try:
        if tune.Tuner.can_restore(path, storage_filesystem=fs):
            log(f"resuming  sweep {cfg.name} from {path} (finished trials are kept, unfinished ones continue)")
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True,
                                       storage_filesystem=fs)
        else:
            tuner = tune.Tuner(
                trainable, param_space=param_space,
                tune_config=tune.TuneConfig(
                    metric=cfg.metric, mode=cfg.mode, num_samples=num_samples,
                    scheduler=_scheduler(cfg, params, spec), search_alg=_search_alg(cfg, params),
                    max_concurrent_trials=_max_concurrent(cfg, spec), trial_dirname_creator=trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=cfg.name, storage_path=root, storage_filesystem=fs, verbose=1 if tune_output else 0,
                    callbacks=tune_result_files(),
                    # PBT's exploit loads a donor's checkpoint some time after it was reported: keep them all.
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=None if cfg.scheduler == "pbt" else 2),
                    failure_config=tune.FailureConfig(max_failures=0),
                ),
            )
        started = time.monotonic()
        with when_stopped(lambda: _stopped(mlf, parent_id=parent_id, name=cfg.name)):
            grid = tuner.fit()
    except BaseException:  # the same --name resumes it
        mlf.set_terminated(parent_id, status="FAILED")
        raise
    records = collect(grid, mlf=mlf, experiment_id=mlf.get_run(parent_id).info.experiment_id, cfg=cfg,
                      steps=spec.loop.steps)
    outcome = SweepOutcome(name=cfg.name, parent_run_id=parent_id, resumed=resumed, records=records,
                           best=best_record(records, cfg.mode))
    _record_on_parent(outcome, mlf=mlf, cfg=cfg, params=params, spec=spec,
                      wall_s=time.monotonic() - started)
    if outcome.best is not None:
        outcome.model_uri = register_best(outcome, grid=grid, spec=spec, params=params, cfg=cfg,
                                          tracking_uri=tracking_uri, manifest=manifest)
    tracking.finish_run(tracking_uri, parent_id, summary={
        "best_trial": outcome.best.trial_id if outcome.best else None,
        cfg.metric: outcome.best.value if outcome.best else None, "model": outcome.model_uri,
        "trials": {r.trial_id: r.status for r in records}})
    return outcome


def _stopped(mlf: Any, *, parent_id: str, name: str) -> None:
    """`ganpipe jobs stop`: the sweep's parent run and its unfinished trial runs end as KILLED."""
    experiment_id = mlf.get_run(parent_id).info.experiment_id
    unfinished = (f"tags.`{SWEEP_TAG}` = '{name}' and tags.`{TRIAL_TAG}` != '' "
                  "and attributes.status = 'RUNNING'")
    for run in mlf.search_runs([experiment_id], filter_string=unfinished, max_results=1000):
        mlf.set_terminated(run.info.run_id, status="KILLED")
    mlf.set_terminated(parent_id, status="KILLED")


def trial_dirname(trial: Any) -> str:
    # Tune's default names carry every value (1e30 prints as 31 digits); the values are in the CSV and MLflow.
    return f"trial_{trial.trial_id}"


def _search_alg(cfg: SweepConfig, params: list[Param]) -> Any:
    if cfg.search != "optuna":
        return None
    from ray.tune.search.optuna import OptunaSearch  # max_concurrent_trials limits its proposals

    return OptunaSearch()


def collect(grid: Any, *, mlf: Any, experiment_id: str, cfg: SweepConfig, steps: int) -> list[TrialRecord]:
    """One record per trial from Tune's results, each matched with its child run; child runs get their final
    status (a trial stopped early by the scheduler never ran its own end-of-trial code)."""
    children = {r.data.tags.get(TRIAL_TAG): r for r in mlf.search_runs(
        [experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{cfg.name}' and tags.`{TRIAL_TAG}` != ''",
        max_results=10_000)}
    records = []
    for result in grid:
        metrics = result.metrics or {}
        trial_id = str(metrics.get("trial_id") or Path(result.path).name)
        step = int(metrics.get("step", 0) or 0)
        value = float(metrics.get(cfg.metric, math.nan))
        if metrics.get(DIVERGED):
            status = "diverged"
        elif result.error is not None:
            status = "error"
        elif step >= steps:
            status = "finished"
        else:
            status = "stopped"
        if status != "finished" and not math.isfinite(value):
            value = math.nan
        run = children.get(trial_id)
        run_id = run.info.run_id if run else ""
        if run is not None and run.data.tags.get(STATUS_TAG) in (None, "running", "finished", "stopped"):
            mlf.set_tag(run_id, STATUS_TAG, status)
            if run.info.status == "RUNNING":
                mlf.set_terminated(run_id, status="KILLED" if status == "stopped" else
                                   "FINISHED" if status == "finished" else "FAILED")
        config = {k: v for k, v in (result.config or {}).items() if not k.startswith("_")}
        records.append(TrialRecord(trial_id=trial_id, run_id=run_id, status=status, step=step, value=value,
                                   config=config))
    return sorted(records, key=lambda r: r.trial_id)


def best_record(records: list[TrialRecord], mode: str) -> TrialRecord | None:
    """The best metric among trials that did not diverge or fail (the scheduler's early stops included)."""
    ok = [r for r in records if r.status in ("finished", "stopped") and math.isfinite(r.value)]
    if not ok:
        return None
    return (min if mode == "min" else max)(ok, key=lambda r: r.value)


def trials_csv(records: list[TrialRecord], params: list[Param], metric: str) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial_id", "run_id", "status", "step", metric, *(p.name for p in params)])
    for r in records:
        w.writerow([r.trial_id, r.run_id, r.status, r.step, "" if math.isnan(r.value) else f"{r.value:.6g}",
                    *(r.config.get(p.name, "") for p in params)])
    return buf.getvalue()


def plot_params(records: list[TrialRecord], params: list[Param], *, metric: str, spec: TrainSpec, out: Path) -> Path:
    """One panel per searched value against the metric: finished trials as dots, early-stopped as crosses (at
    their last report), diverged ones as red triangles on the top edge, the best as a star, the recipe's value
    (the paper's default) as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flat = spec.flat()
    fig, axes = plt.subplots(1, len(params), figsize=(4.2 * len(params), 3.4), squeeze=False)
    finite = [r.value for r in records if math.isfinite(r.value)]
    top = max(finite) if finite else 1.0
    ok = [r for r in records if r.status in ("finished", "stopped") and math.isfinite(r.value)]
    best = min(ok, key=lambda r: r.value) if ok else None
    for ax, p in zip(axes[0], params, strict=True):
        for status, marker, color in (("finished", "o", "tab:blue"), ("stopped", "x", "tab:gray"),
                                      ("diverged", "^", "tab:red"), ("error", "s", "black")):
            rows = [r for r in records if r.status == status and isinstance(r.config.get(p.name), (int, float))]
            if rows:
                ys = [r.value if math.isfinite(r.value) else top for r in rows]
                ax.scatter([r.config[p.name] for r in rows], ys, marker=marker, color=color, label=status)
        default = flat.get(p.targets[0])
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            ax.axvline(default, linestyle="--", color="tab:green", label=f"recipe {default:g}")
        if p.kind == "loguniform" or (p.kind in ("grid", "choice") and _log_spaced(p.values)):
            ax.set_xscale("log")
        ax.set_xlabel(p.name)
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    if best is not None:
        for ax, p in zip(axes[0], params, strict=True):
            if isinstance(best.config.get(p.name), (int, float)):
                ax.scatter([best.config[p.name]], [best.value], marker="*", s=160, color="gold", edgecolor="black",
                           zorder=5)
    fig.suptitle(f"{spec.family}: {metric} by searched value ({len(records)} trials)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _log_spaced(values: tuple[Any, ...]) -> bool:
    nums = [v for v in values if isinstance(v, (int, float)) and v > 0]
    return len(nums) >= 3 and max(nums) / min(nums) >= 30


def _record_on_parent(outcome: SweepOutcome, *, mlf: Any, cfg: SweepConfig, params: list[Param], spec: TrainSpec,
                      wall_s: float) -> None:
    from mlflow.entities import Metric

    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "trials.csv"
        csv_path.write_text(trials_csv(outcome.records, params, cfg.metric))
        plot = plot_params(outcome.records, params, metric=cfg.metric, spec=spec,
                           out=Path(tmp) / "params_vs_metric.png")
        mlf.log_artifact(outcome.parent_run_id, str(csv_path))
        mlf.log_artifact(outcome.parent_run_id, str(plot))
    outcome.artifacts = ["trials.csv", "params_vs_metric.png"]
    now = int(time.time() * 1000)
    counts = {s: sum(r.status == s for r in outcome.records) for s in ("finished", "stopped", "diverged", "error")}
    metrics = [Metric(f"sweep/trials_{s}", float(n), now, 0) for s, n in counts.items()]
    metrics.append(Metric("sweep/wall_s", wall_s, now, 0))
    if outcome.best is not None:
        metrics.append(Metric(f"best/{cfg.metric}", outcome.best.value, now, 0))
        mlf.set_tag(outcome.parent_run_id, "ganpipe.best_trial", outcome.best.trial_id)
        mlf.set_tag(outcome.parent_run_id, "ganpipe.best_run_id", outcome.best.run_id)
        for k, v in outcome.best.config.items():
            mlf.set_tag(outcome.parent_run_id, f"ganpipe.best.{k}", str(v))
    mlf.log_batch(outcome.parent_run_id, metrics=metrics)


def register_best(outcome: SweepOutcome, *, grid: Any, spec: TrainSpec, params: list[Param], cfg: SweepConfig,
                  tracking_uri: str, manifest: Any) -> str:
    """Load the best trial's latest checkpoint and register its generator (in the trial's run) as `candidate`."""
    from gan_models import get_family
    from pipelines.engine.checkpoint import load_state
    from pipelines.spec.datasets import data_info
    from pipelines.spec.sweep_space import apply_params
    from pipelines.training.train import register_generator

    best = outcome.best
    assert best is not None
    result = next(r for r in grid if str((r.metrics or {}).get("trial_id")) == best.trial_id)
    state = _best_state(result, load_state)
    trial_spec = apply_params(spec, best.config, params)
    family = get_family(spec.family)
    generator = family.build(trial_spec.model)[family.generator]
    generator.load_state_dict(state["ema"] if state.get("ema") is not None else state["nets"][family.generator])
    name = spec.track.register_as or f"{spec.family}-{manifest.name}"
    version = register_generator(
        dataclasses.replace(trial_spec, run_name=f"{cfg.name}-{best.trial_id}"), family=family,
        generator=generator.eval(), tracking_uri=tracking_uri, run_id=best.run_id, name=name,
        manifest_digest=manifest.digest, data=data_info(manifest),
        tags={"ganpipe.sweep": cfg.name, "ganpipe.sweep_parent_run": outcome.parent_run_id,
              "ganpipe.sweep_trial": best.trial_id, "ganpipe.sweep_metric": f"{cfg.metric}={best.value:.6g}"},
    )
    return f"models:/{name}/{version.version}"


def _best_state(result: Any, load_state: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as directory:
            return load_state(Path(directory))
    path = (result.metrics or {}).get("checkpoint_path")  # a multi-worker trial: Ray Train's checkpoint
    if not path:
        raise RuntimeError(f"trial {result.metrics.get('trial_id')} left no checkpoint to register")
    from ray.train import Checkpoint

    with Checkpoint(path, filesystem=result.filesystem).as_directory() as directory:
        return load_state(Path(directory))



def pipeline_sweep(*, spec: TrainSpec, space: dict[str, Any], trials: int, metric: str, mode: str, run_name: str,
                   tracking_uri: str) -> dict[str, Any]:
    """A pipeline's `sweep` stage (orchestration/stage_kinds.py `_run_sweep`): the same sweep as `ganpipe sweep`.

    `space` maps config keys to a list of values (a grid: every value is one trial, `trials` is ignored), to
    {low, high, log} (a range drawn `trials` times), or to this module's documented {KIND: VALUES} entries; an
    empty space is the family's default. No early stopping: a stage's trials all run to the end.
    """
    raw = {key: _stage_entry(key, value) for key, value in (space or {}).items()}
    grid = bool(raw) and all("grid" in entry for entry in raw.values())
    if tracking_uri:
        spec = dataclasses.replace(spec, track=dataclasses.replace(spec.track, tracking_uri=tracking_uri))
    cfg = SweepConfig(name=run_name, metric=metric, mode=mode, num_samples=1 if grid else trials,
                      space=raw or "default", scheduler="none")
    out = run_sweep(spec, cfg, progress=False)
    if out.best is None:
        raise RuntimeError(f"sweep {out.name}: no trial finished with a finite {metric}")
    from pipelines.spec.sweep_space import load_space

    # The best trial's values by config key (a tied parameter sets each of its targets).
    best = {key: out.best.config[param.name] for param in load_space(cfg.space, spec.family) for key in param.targets}
    return {"best": best, "run_id": out.parent_run_id, "best_run_id": out.best.run_id, "model": out.model_uri}


def _stage_entry(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, list):
        return {"grid": value}
    if isinstance(value, dict) and {"low", "high"} <= set(value):
        return {"loguniform" if value.get("log") else "uniform": [value["low"], value["high"]]}
    if isinstance(value, dict):
        return value
    raise ValueError(f"sweep space {key}: give a list of values, {{low, high, log}} or {{KIND: VALUES}}; got {value!r}")



