"""MLflow tracking and registry: runs with params/tags/dataset lineage, step metrics, sample grids, models.

Rank 0 of a training run logs metrics and images through `RunLogger`; the driver creates the run and
registers the generator. Nothing here logs a secret: params come from the config, never from the environment.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipelines.engine.loop import Report
from pipelines.spec.config import TrainSpec
from pipelines.spec.defaults import DEFAULT_HOME
from pipelines.spec.provenance import git_commit

RUN_NAME_TAG = "ganpipe.run_name"


def resolve_tracking_uri(uri: str = "", *, home: str = DEFAULT_HOME, create_home: bool = True) -> str:
    """The explicit URI, else $MLFLOW_TRACKING_URI, else a sqlite file under the ganpipe home folder (created
    unless `create_home` is false: a dry run creates nothing)."""
    # One endpoint setting serves both the store and MLflow's S3 artifact client.
    if os.environ.get("GANPIPE_S3_ENDPOINT") and not os.environ.get("MLFLOW_S3_ENDPOINT_URL"):
        os.environ["MLFLOW_S3_ENDPOINT_URL"] = os.environ["GANPIPE_S3_ENDPOINT"]
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        return uri
    path = Path(home).resolve() / "mlflow.db"
    if create_home:
        path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def store_exists(tracking_uri: str) -> bool:
    """Whether opening `tracking_uri` finds a store rather than making one: a server, or an existing sqlite
    database file or file-store folder (MLflow creates either on first open)."""
    if tracking_uri.startswith(("http://", "https://", "databricks")):
        return True
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).is_file()
    if "://" in tracking_uri and not tracking_uri.startswith("file:"):
        return True  # another database server: it exists or fails on its own
    return Path(tracking_uri.removeprefix("file://").removeprefix("file:")).is_dir()


def default_artifact_location(store_url: str, experiment: str, *, tracking_uri: str = "",
                              home: str = DEFAULT_HOME) -> str | None:
    """Where a new experiment keeps its artifacts; None leaves it to the tracking server.

    A tracking server decides for itself: `ganpipe services up` (and infra/mlflow-server.sh) proxy artifacts
    (`mlflow-artifacts:/`), so clients need no bucket keys; a direct s3:// location set here would bypass
    that. Without a server, artifacts go to the object store when it is S3, so a cluster's workers and the UI
    see the same files."""
    if tracking_uri.startswith(("http://", "https://")):
        return None
    if store_url.startswith("s3://"):
        return f"{store_url.rstrip('/')}/mlartifacts/{experiment}"
    return (Path(home).resolve() / "mlartifacts" / experiment).as_uri()


def reachable(tracking_uri: str) -> bool:
    """False when `tracking_uri` is an HTTP server that does not answer its health check."""
    if not tracking_uri.startswith(("http://", "https://")):
        return True
    import urllib.request

    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def client(tracking_uri: str):
    import mlflow

    # The sqlite store creates its tables on first use; quiet its alembic logs on the console.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)



def ray_job_id() -> str:
    """The Ray job this driver runs as: its Jobs API submission id, else $RAY_JOB_ID ("" outside Ray jobs)."""
    # A Jobs API driver is not given RAY_JOB_ID; its job config (with the submission id) comes in this variable.
    try:
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "") or "{}")
    except ValueError:
        config = {}
    return str((config.get("metadata") or {}).get("job_submission_id") or os.environ.get("RAY_JOB_ID", ""))


def start_run(
    spec: TrainSpec,
    *,
    tracking_uri: str,
    dataset_name: str,
    dataset_url: str,
    manifest_digest: str,
    resume: bool = True,
) -> tuple[str, bool]:
    """Create the run (or find the unfinished one with the same run name); returns (run_id, resumed)."""
    from mlflow.entities import Param

    mlf = client(tracking_uri)
    experiment = spec.track.experiment or f"{spec.family}-{dataset_name}"
    exp = mlf.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else mlf.create_experiment(
        experiment, artifact_location=default_artifact_location(spec.store, experiment, tracking_uri=tracking_uri)
    )
    if resume:
        found = mlf.search_runs(
            [exp_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{spec.run_name}'", max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        if found:
            mlf.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id, True
    tags = {
        RUN_NAME_TAG: spec.run_name,
        "ganpipe.family": spec.family,
        "ganpipe.dataset": dataset_name,
        "ganpipe.manifest_sha256": manifest_digest,
        "ganpipe.git_commit": git_commit(),
        "ganpipe.ray_job_id": ray_job_id(),
    }
    run = mlf.create_run(exp_id, run_name=spec.run_name, tags=tags)
    run_id = run.info.run_id
    params = [Param(k, str(v)[:6000]) for k, v in spec.flat().items()]
    for i in range(0, len(params), 100):
        mlf.log_batch(run_id, params=params[i : i + 100])
    mlf.log_dict(run_id, spec.to_dict(), "config.json")
    _log_dataset(mlf, run_id, name=dataset_name, url=dataset_url, digest=manifest_digest)
    mlf.set_tag(run_id, "mlflow.note.content", f"{spec.family} on {dataset_name} ({dataset_url})")
    return run_id, False


def _log_dataset(mlf, run_id: str, *, name: str, url: str, digest: str) -> None:
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(url)
    dataset = MetaDataset(source=source, name=name, digest=digest[:36])
    tag = InputTag(key="mlflow.data.context", value="training")
    mlf.log_inputs(run_id, datasets=[DatasetInput(dataset=dataset._to_mlflow_entity(), tags=[tag])])


def to_uint8_hwc(grid: torch.Tensor) -> np.ndarray:
    """A (C, H, W) image in [-1, 1] as an (H, W, C) uint8 array; single-channel becomes (H, W)."""
    img = ((grid.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = img.permute(1, 2, 0).numpy()
    return arr[..., 0] if arr.shape[2] == 1 else arr


# A dead tracking server must not stall every step: MLflow's own HTTP retries (7, exponential backoff) are cut
# to one quick retry, and RunLogger retries on its own clock instead. Explicit settings in the environment win.
MLFLOW_RETRY_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
RETRY_ENV = "GANPIPE_TRACKING_RETRY_S"  # seconds between RunLogger's tries while the server is down (default 10)
UNLOGGED_FILE = "unlogged-metrics.jsonl"  # in runs/NAME/ of the store: what MLflow has not received yet
_MAX_BUFFERED_IMAGES = 16  # sample grids kept while the server is down; older ones are dropped (and counted)


class TrackingUnavailable(RuntimeError):
    """Training finished (checkpoints saved) but the tracking server could not be reached to complete the run."""


def bound_mlflow_retries() -> None:
    for key, value in MLFLOW_RETRY_ENV.items():
        os.environ.setdefault(key, value)


def unlogged_store(store_url: str, run_name: str):
    """The run's folder in the store, where metrics MLflow did not receive are kept (runs/NAME/)."""
    from data_prep.storage import open_store

    return open_store(store_url).child(f"runs/{run_name}")


class RunLogger:
    """Logs one rank's reports into an existing run (used by rank 0 only), surviving a tracking-server outage.

    Metrics MLflow does not accept stay buffered, in step order, and are sent on the next try (at most every
    `retry_every_s`); one warning says so when the outage starts and one line when it ends. With a `spill`
    store, whatever is still unsent at a checkpoint or at `close` is written there (UNLOGGED_FILE), and a later
    RunLogger for the same run sends it first, so a rerun of the same command completes the run.
    """

    def __init__(
        self, tracking_uri: str, run_id: str, *, spill: Any = None, retry_every_s: float | None = None,
        log: Any = None,
    ) -> None:
        bound_mlflow_retries()
        if retry_every_s is None:
            retry_every_s = float(os.environ.get(RETRY_ENV, "10"))
        self.mlf = client(tracking_uri)
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.spill = spill
        self.retry_every_s = retry_every_s
        self.log = log or functools.partial(print, file=sys.stderr, flush=True)
        self.pending: list[Any] = []  # mlflow.entities.Metric, oldest first
        self.pending_images: list[tuple[int, np.ndarray]] = []
        self.dropped_images = 0
        self.down = False
        self._next_try = 0.0
        self._spilled = False
        if spill is not None and spill.exists(UNLOGGED_FILE):
            self.pending = self._read_spill()
            self._spilled = True

    # ---- what the loop calls ----

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items() if np.isfinite(v))
        self.flush()

    def log_report(self, report: Report) -> None:
        if report.samples is not None:
            self.pending_images.append((report.step, to_uint8_hwc(report.samples)))
            if len(self.pending_images) > _MAX_BUFFERED_IMAGES:
                self.pending_images.pop(0)
                self.dropped_images += 1
        self.log_metrics(report.step, report.metrics)
        if report.checkpoint is not None and self.pending:
            self._write_spill()  # a run resumed from this checkpoint finds what MLflow has not received

    def flush(self, *, force: bool = False) -> bool:
        """Send what is buffered (if the retry clock allows, or `force`); True when nothing is left."""
        if not (self.pending or self.pending_images):
            return True
        if self.down and not force and time.monotonic() < self._next_try:
            return False
        try:
            while self.pending:
                self.mlf.log_batch(self.run_id, metrics=self.pending[:1000])
                del self.pending[:1000]
            while self.pending_images:
                step, image = self.pending_images[0]
                self.mlf.log_image(self.run_id, image, key="samples", step=step)
                self.pending_images.pop(0)
        except Exception as exc:  # any failure to reach the server: keep the data, retry later
            self._next_try = time.monotonic() + self.retry_every_s
            if not self.down:
                self.down = True
                self.log(f"[ganpipe] warning: MLflow at {self.tracking_uri} is unreachable ({type(exc).__name__}); "
                         f"training goes on, metrics are buffered and sent again every {self.retry_every_s:g} s")
            return False
        if self.down:
            self.down = False
            self.log(f"[ganpipe] MLflow at {self.tracking_uri} is reachable again; buffered metrics sent")
        if self._spilled:
            self.spill.delete(UNLOGGED_FILE)
            self._spilled = False
        return True

    def close(self) -> str:
        """A last try; returns "" when everything reached MLflow, else a one-line summary of what did not
        (also written to the spill store, when there is one)."""
        if self.flush(force=True) and not self.dropped_images:
            return ""
        if self.pending:
            self._write_spill()
        return self.summary()

    def summary(self) -> str:
        parts = []
        if self.pending:
            steps = sorted({m.step for m in self.pending})
            parts.append(f"{len(self.pending)} metric values (steps {steps[0]}..{steps[-1]})")
        if self.pending_images or self.dropped_images:
            parts.append(f"{len(self.pending_images) + self.dropped_images} sample grids")
        where = f"; metrics kept in {self.spill.url}/{UNLOGGED_FILE}" if self.pending and self.spill else ""
        return f"not logged to MLflow at {self.tracking_uri}: {' and '.join(parts)}{where}" if parts else ""

    # ---- the spill file: one JSON object per metric value ----

    def _write_spill(self) -> None:
        if self.spill is None:
            return
        lines = [json.dumps({"run_id": self.run_id, "key": m.key, "value": m.value, "timestamp": m.timestamp,
                             "step": m.step}) for m in self.pending]
        self.spill.put_bytes(UNLOGGED_FILE, ("\n".join(lines) + "\n").encode())
        self._spilled = True

    def _read_spill(self) -> list[Any]:
        from mlflow.entities import Metric

        rows = [json.loads(line) for line in self.spill.get_bytes(UNLOGGED_FILE).decode().splitlines() if line]
        return [Metric(r["key"], r["value"], r["timestamp"], r["step"]) for r in rows if r["run_id"] == self.run_id]


def log_generator(
    *,
    tracking_uri: str,
    run_id: str,
    generator: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    registered_name: str,
    alias: str,
    tags: dict[str, str],
    config: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    artifact: str = "generator",
) -> Any:
    """Log the generator (torch.export pt2, batch dimension dynamic) and register a version with `alias`.

    `config` (the run's TrainSpec as a dict) travels inside the model's MLmodel file as metadata["ganpipe"], so
    a registered version is self-describing: no training flags and no unpickling are needed to use it.
    `metadata` adds JSON values beside it (e.g. "direction" of an image-to-image model, "data": train.data_info
    with attribute names, text encoder, ...); `artifact` is the
    artifact path in the run (a second model of the same run needs its own).
    """
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    example_inputs = tuple(x.detach().float().cpu() for x in example_inputs)
    generator = generator.eval().cpu()
    with torch.no_grad():
        out = generator(*example_inputs)
    # One input stays unnamed (DCGAN's z); several are named by position, in G's argument order.
    names = [None] if len(example_inputs) == 1 else [f"input_{i}" for i in range(len(example_inputs))]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype("float32"), (-1, *x.shape[1:]), name)
                       for name, x in zip(names, example_inputs, strict=True)]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, *out.shape[1:]))]),
    )
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The fluent run's end would print MLflow's "View run" line, and finish_run prints it again.
        with _no_run_url(), mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(
                generator,
                name=artifact,
                input_example=example_inputs[0].numpy() if len(example_inputs) == 1 else tuple(
                    x.numpy() for x in example_inputs),
                signature=signature,
                registered_model_name=registered_name,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                serialization_format="pt2",  # torch.export archive: loads without unpickling code objects
                metadata=_model_metadata(config, metadata),
            )
    mlf = client(tracking_uri)
    version = info.registered_model_version
    for key, value in tags.items():
        mlf.set_model_version_tag(registered_name, version, key, value)
    mlf.set_registered_model_alias(registered_name, alias, version)
    return mlf.get_model_version(registered_name, version)


@contextlib.contextmanager
def _no_run_url() -> Iterator[None]:
    """Within: MLflow does not print its "View run ... at: URL" lines (read when a run ends)."""
    name = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
    saved = os.environ.get(name)
    os.environ[name] = "true"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def _model_metadata(config: dict[str, Any] | None, extra: dict[str, Any] | None) -> dict[str, Any] | None:
    ganpipe = {**({"config": config} if config is not None else {}), **(extra or {})}
    # JSON round trip: tuples become lists, which the MLmodel YAML can hold.
    return {"ganpipe": json.loads(json.dumps(ganpipe))} if ganpipe else None


def finish_run(tracking_uri: str, run_id: str, *, summary: dict[str, Any], status: str = "FINISHED") -> None:
    mlf = client(tracking_uri)
    mlf.log_text(run_id, json.dumps(summary, indent=2, sort_keys=True), "summary.json")
    mlf.set_terminated(run_id, status=status)
