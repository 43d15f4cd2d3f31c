"""The driver of a training run: resolve the dataset, open the MLflow run, train (Ray or in-process),
evaluate the final generator, and register it."""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_prep.reader import read_manifest
from data_prep.storage import open_store
from gan_models import get_family
from pipelines.engine.checkpoint import (
    STATE_FILE,
    CheckpointRefused,
    load_state,
    load_tensors,
    rng_file,
    save_rng,
    save_state,
)
from pipelines.engine.loop import Report
from pipelines.engine.progress import progress_mode, tqdm_bar
from pipelines.engine.stop import on_sigterm, when_stopped
from pipelines.evaluation.evaluator import Evaluator
from pipelines.evaluation.kinds import prepare_evaluators
from pipelines.spec.config import TrainSpec
from pipelines.spec.datasets import data_defined, data_info, dataset_url
from pipelines.spec.provenance import git_commit
from pipelines.tracking import runs as tracking
from pipelines.tracking.curves import log_curves
from pipelines.tracking.registry import PARTNER_TAG
from pipelines.training.worker import Job, evaluation_fn, inductor_cache, progress_of, run_rank


@dataclass
class TrainOutcome:
    run_id: str
    run_name: str
    resumed: bool
    steps: int
    metrics: dict[str, float]  # final eval/* of the exported generator
    model_name: str
    model_version: str
    model_uri: str  # models:/NAME/VERSION
    generator: nn.Module
    evaluator: Evaluator | None
    spec: TrainSpec





def resolve(spec: TrainSpec) -> tuple[TrainSpec, Any, str]:
    """Check the model config against the dataset's manifest and fill the names a run needs."""
    url = dataset_url(spec.data.dataset, spec.store)
    manifest = read_manifest(url)
    family = get_family(spec.family)
    if family.dataset_kind != manifest.kind:
        raise ValueError(f"{spec.family} trains on {family.dataset_kind!r} datasets; {url} is {manifest.kind!r}")
    model = spec.model
    # Image geometry is fixed at prep time: the model takes it from the manifest, whatever the recipe said.
    fields = {f.name for f in dataclasses.fields(model)}
    model = dataclasses.replace(model, **{k: v for k, v in data_defined(manifest).items() if k in fields})
    run_name = spec.run_name or f"{spec.family}-{manifest.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return dataclasses.replace(spec, model=model, run_name=run_name), manifest, url


def train(spec: TrainSpec, *, progress: bool = True, log: Callable[[str], Any] = print) -> TrainOutcome:
    spec, manifest, dataset_url = resolve(spec)
    family = get_family(spec.family)
    tracking_uri = tracking.resolve_tracking_uri(spec.track.tracking_uri)
    log(f"dataset   {dataset_url} ({manifest.counts.get('train', 0)} train images, manifest {manifest.digest[:12]})")
    evaluators = prepare_evaluators(manifest.kind, store_url=spec.store, dataset_url=dataset_url,
                                    manifest=manifest, progress=progress, log=log)
    run_id, resumed = tracking.start_run(
        spec, tracking_uri=tracking_uri, dataset_name=manifest.name, dataset_url=dataset_url,
        manifest_digest=manifest.digest,
    )
    log(f"run       {spec.run_name} (MLflow run {run_id}{', resuming' if resumed else ''})")
    job = Job(spec=spec, dataset_url=dataset_url, run_id=run_id, tracking_uri=tracking_uri,
              evaluator_url=evaluators.evaluator_url, task_evaluators=evaluators.task_evaluators,
              progress=progress_mode(enabled=progress), inductor_cache=inductor_cache())
    mlf = tracking.client(tracking_uri)
    try:
        # Leave the run visibly failed or stopped (not "running" forever); the same --run-name resumes it.
        with when_stopped(lambda: mlf.set_terminated(run_id, status="KILLED")), \
                tempfile.TemporaryDirectory() as tmp:
            state, last = _train_in_process(job, Path(tmp)) if spec.scale.workers == 0 else _train_on_ray(job)
    except BaseException:
        with contextlib.suppress(Exception):  # the tracking server may be what is down
            mlf.set_terminated(run_id, status="FAILED")
        raise
    generator = family.build(spec.model)[family.generator]
    generator.load_state_dict(state["ema"] if state.get("ema") is not None else state["nets"][family.generator])
    generator.eval()

    evaluator = Evaluator.load(job.evaluator_url) if job.evaluator_url and manifest.kind == "images" else None
    # When eval_every divides loop.steps, rank 0 has already evaluated (and logged) these very weights.
    metrics = {k: float(v) for k, v in last.items() if k.startswith("eval/")}
    final_metrics = None if metrics else evaluation_fn(job, manifest=manifest, device=torch.device("cpu"))
    if final_metrics is not None:
        metrics = final_metrics(generator)
    # Checkpoints are saved by now; if the tracking server is down, say what is missing and how to complete it.
    try:
        # Quiet: an outage is reported once, by the error below (training already warned if it saw one).
        final_logger = tracking.RunLogger(tracking_uri, run_id, log=lambda _line: None,
                                          spill=tracking.unlogged_store(spec.store, spec.run_name))
        if final_metrics is not None and metrics:
            final_logger.log_metrics(int(state["step"]), metrics)
        unlogged = final_logger.close()  # also what a worker left unsent (the spill file)
        if unlogged:
            raise tracking.TrackingUnavailable(unlogged)
        log_curves(tracking_uri, run_id)
        name = spec.track.register_as or f"{spec.family}-{manifest.name}"
        version = register_generator(spec, family=family, generator=generator, tracking_uri=tracking_uri,
                                     run_id=run_id, name=name, manifest_digest=manifest.digest,
                                     data=data_info(manifest))
        tracking.finish_run(tracking_uri, run_id, summary={"steps": int(state["step"]), **metrics,
                                                             "model": f"models:/{name}/{version.version}"})
    except Exception as exc:
        if tracking.reachable(tracking_uri):
            raise
        detail = str(exc) if isinstance(exc, tracking.TrackingUnavailable) else (
            f"MLflow at {tracking_uri} is unreachable ({type(exc).__name__})")
        raise tracking.TrackingUnavailable(
            f"run {spec.run_name} trained to step {int(state['step'])} and its checkpoints are saved, but the run is "
            f"incomplete: {detail}; run the same command again once the server is back"
        ) from None
    return TrainOutcome(
        run_id=run_id, run_name=spec.run_name, resumed=resumed, steps=int(state["step"]), metrics=metrics,
        model_name=name, model_version=str(version.version), model_uri=f"models:/{name}/{version.version}",
        generator=generator, evaluator=evaluator, spec=spec,
    )


def register_generator(spec: TrainSpec, *, family: Any, generator: nn.Module, tracking_uri: str, run_id: str,
                       name: str, manifest_digest: str, data: dict[str, Any] | None = None,
                       tags: dict[str, str] | None = None) -> Any:
    """Log and register the generator as `name` with the run's alias; returns the model version.

    Image-to-image generators record their direction (dataset a -> b is "AtoB") in the MLmodel metadata. A
    family with a `reverse_generator` (CycleGAN) also registers the other direction as `name-<direction>`,
    and each of the two versions names the other in its tag `ganpipe.partner` (NAME/VERSION). `data`
    (data_info) travels as metadata["ganpipe"]["data"]: what using the model needs to know of its dataset.
    `tags` are added to the version's own (run name, manifest digest, git commit).
    """
    seeded = torch.Generator().manual_seed(0)
    example = family.generator_inputs(spec.model, family.example_batch(spec.model, 2, generator=seeded), 2,
                                      generator=seeded)
    tags = {"ganpipe.run_name": spec.run_name, "ganpipe.manifest_sha256": manifest_digest,
            "ganpipe.git_commit": git_commit(), **(tags or {})}
    direction = getattr(spec.model, "direction", None)
    common = dict(tracking_uri=tracking_uri, run_id=run_id, alias=spec.track.alias, tags=tags, config=spec.to_dict())
    about_data = {"data": data} if data else {}
    version = tracking.log_generator(generator=generator, example_inputs=example, registered_name=name,
                                     metadata={**about_data, **({"direction": direction} if direction else {})},
                                     **common)  # fmt: skip
    if family.reverse_generator is None:
        return version
    other = "BtoA" if direction == "AtoB" else "AtoB"
    reverse = tracking.log_generator(generator=family.reverse_generator(generator), example_inputs=example,
                                     registered_name=f"{name}-{other}", metadata={**about_data, "direction": other},
                                     artifact=f"generator_{other}", **common)
    mlf = tracking.client(tracking_uri)
    mlf.set_model_version_tag(version.name, version.version, PARTNER_TAG, f"{reverse.name}/{reverse.version}")
    mlf.set_model_version_tag(reverse.name, reverse.version, PARTNER_TAG, f"{version.name}/{version.version}")
    return version


def _train_on_ray(job: Job) -> tuple[dict[str, Any], dict[str, float]]:
    """The final state and rank 0's metrics of the last report (Ray Train's latest checkpoint carries them)."""
    from pipelines.training.ray_train import ensure_ray, launch

    ensure_ray()
    on_sigterm()  # again: ray.init replaced it
    fs, root = open_store(job.spec.store).child("ray").pyarrow_fs()
    result = launch(job, storage_fs=fs, storage_path=root)
    if result.checkpoint is None:
        raise RuntimeError(f"run {job.spec.run_name} ended without a checkpoint (see the Ray logs above)")
    with result.checkpoint.as_directory() as directory:
        return load_state(Path(directory)), dict(result.metrics or {})


def _train_in_process(job: Job, tmp: Path) -> tuple[dict[str, Any], dict[str, float]]:
    """workers=0: the same rank function in this process, checkpoints under runs/NAME/ in the store.
    Returns the final state and the metrics of the loop's last report."""
    store = open_store(job.spec.store).child(f"runs/{job.spec.run_name}/checkpoints")
    resume_dir, resumed_from = None, ""
    if store.exists("latest"):
        resumed_from = store.get_bytes("latest").decode().strip()
        resume_dir = tmp / "resume"
        resume_dir.mkdir()
        for name in (STATE_FILE, rng_file(0)):
            (resume_dir / name).write_bytes(store.get_bytes(f"{resumed_from}/{name}"))
    logger = None
    if job.run_id:
        logger = tracking.RunLogger(job.tracking_uri, job.run_id,
                                    spill=tracking.unlogged_store(job.spec.store, job.spec.run_name))

    last: dict[str, float] = {}

    def report(r: Report) -> None:
        if logger is not None:
            logger.log_report(r)
        if r.final:
            last.update(r.metrics)
        if r.checkpoint:
            out = tmp / "out"
            out.mkdir(exist_ok=True)
            save_state(out, r.checkpoint)
            save_rng(out, 0)
            step_dir = f"step_{r.step:08d}"
            for name in (STATE_FILE, rng_file(0)):
                store.put_file(f"{step_dir}/{name}", out / name)
            store.put_bytes("latest", step_dir.encode())  # published last: a reader never sees half a checkpoint

    try:
        run_rank(job, rank=0, world_size=1, device=torch.device("cpu"), resume_dir=resume_dir, report=report,
                 progress=progress_of(job, bar=tqdm_bar))
    except CheckpointRefused as exc:  # name the stored file, not the temporary copy
        if resume_dir is None or Path(exc.path).parent != resume_dir:
            raise
        raise CheckpointRefused(f"{store.url}/{resumed_from}/{Path(exc.path).name}", exc.reason) from None
    if logger is not None:
        logger.close()  # what is still unsent goes to the spill file; the driver reports it once, at the end
    step_dir = store.get_bytes("latest").decode().strip()
    return load_tensors(_fetch(store, f"{step_dir}/{STATE_FILE}", tmp)), last


def _fetch(store: Any, key: str, tmp: Path) -> Path:
    path = tmp / Path(key).name
    path.write_bytes(store.get_bytes(key))
    return path
