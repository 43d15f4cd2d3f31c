"""Stage kinds of a pipeline: each maps its config onto an existing ganpipe command and names its outputs.

A stage's config keys are the options of the command it runs (`ganpipe prep --help` for prep, and so on;
`image-size` and `image_size` both work), validated by that command's own parser definitions, so a stage
accepts exactly what the command does. The pipeline sets `tracking_uri` (every stage tracks into the
pipeline's store), `no_progress`, and a training stage's `run_name`. Outputs are typed references:

  prep     dataset (dataset URL), digest (manifest sha256), name
  train    run_id (MLflow run), model (models:/NAME/VERSION), run_name, dataset, digest
  sweep    best (overrides mapping), run_id (sweep parent run), best_run_id, model
  eval     run_id (the evaluation run), model, metrics (mapping)
  promote  promoted (bool), model (the candidate), champion (models:/NAME/VERSION after the decision)
  sample   path (the PNG written where the stage ran), artifact (runs:/STAGE_RUN/samples/NAME.png), model
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.orchestration import dag
from pipelines.orchestration.dag import REF, Pipeline, PipelineError, Stage, references
from pipelines.spec.datasets import dataset_url
from pipelines.spec.errors import UserError
from pipelines.spec.from_options import prep_config, train_spec
from pipelines.spec.options import Option, command_options


@dataclass(frozen=True)
class StageContext:
    """What a running stage knows about its pipeline (plain strings: it travels to a Ray task)."""

    pipeline: str
    stage: str
    store: str
    tracking_uri: str
    run_name: str = ""  # train / sweep: deterministic, so a re-run resumes the same training run
    pipeline_run_id: str = ""
    stage_run_id: str = ""


@dataclass(frozen=True)
class StageKind:
    name: str
    command: str  # the ganpipe command whose options are the config keys
    outputs: dict[str, str]  # output name -> type
    run: Callable[[dict[str, Any], StageContext], dict[str, Any]]
    extra_keys: tuple[str, ...] = ()  # config keys beyond the command's options
    aliases: tuple[tuple[str, str], ...] = ()  # (config key, option dest)
    cacheable: bool = True
    # External inputs (not produced by a stage) whose identity enters the cache key, e.g. a dataset digest.
    external: Callable[[dict[str, Any], StageContext], dict[str, str]] | None = None
    # Whether a cached stage's outputs still exist (a dataset deleted from the store is not a cache hit).
    still_valid: Callable[[dict[str, Any], StageContext], bool] | None = None

    def validate(self, stage: Stage) -> None:
        """Load-time checks of the literal parts of the config (references are checked when resolved)."""
        config = dict(stage.config)
        if self.name == "promote" and "model" in config:  # stands for name + version (see promote_call)
            config.pop("model")
            config.setdefault("name", "from-model")
        if self.name in ("train", "sweep"):
            stage_train_spec(stage, config, literal_only=True)
        else:
            self.namespace(stage, config, store="", tracking_uri="")
        if self.name == "sweep":
            _check_space(stage)

    def namespace(self, stage: Stage, config: dict[str, Any], *, store: str, tracking_uri: str) -> dict[str, Any]:
        """The command's parsed options (defaults filled) for `config`, as a plain dict."""
        actions = command_options(self.command)
        options = list({o.dest: o for o in actions.values()}.values())
        values: dict[str, Any] = {o.dest: o.default for o in options}
        aliases = dict(self.aliases)
        if self.name == "prep" and "source" in config:  # `source: digits` for the positional SOURCE...
            config = {**{k: v for k, v in config.items() if k != "source"}, "sources": config["source"]}
        for key, value in config.items():
            if key in self.extra_keys:
                continue
            dest_key = aliases.get(key, key.replace("-", "_"))
            if dest_key in PIPELINE_SET or dest_key not in actions:
                valid = {k for k in actions if k not in PIPELINE_SET} | set(self.extra_keys) | set(aliases)
                if self.name == "prep":
                    valid.add("source")
                why = "is set by the pipeline" if dest_key in PIPELINE_SET else "is not an option of this stage kind"
                raise PipelineError(f"stage {stage.name!r}: config.{key} {why}; valid: {', '.join(sorted(valid))}")
            action = actions[dest_key]
            values[action.dest] = value if _has_ref(value) else _convert(stage.name, key, action, value)
        for action in options:
            if action.required and action.nargs != "*" and values.get(action.dest) in (None, []) \
                    and action.dest not in PIPELINE_SET:
                name = "source" if action.dest == "sources" else action.dest
                raise PipelineError(f"stage {stage.name!r}: config.{name} is required for a {self.name} stage")
        values["no_progress"] = True
        values["tracking_uri"] = tracking_uri
        if "store" in values and not values.get("store"):
            values["store"] = store
        values.pop("help", None)
        return values


PIPELINE_SET = ("tracking_uri", "no_progress", "run_name", "help")


def _has_ref(value: Any) -> bool:
    return any(True for _ in references(value))


def _convert(stage: str, key: str, action: Option, value: Any) -> Any:
    where = f"stage {stage!r}: config.{key}"
    if action.nargs == 0:  # store_true flags
        if not isinstance(value, bool):
            raise PipelineError(f"{where} is a flag: true or false, got {value!r}")
        return value
    if action.nargs in ("+", "*"):
        items = value if isinstance(value, list) else [value]
        return [_scalar(where, action, v) for v in items]
    if isinstance(value, (list, dict)):
        raise PipelineError(f"{where} takes one value, got {value!r}")
    return None if value is None else _scalar(where, action, value)


def _scalar(where: str, action: Option, value: Any) -> Any:
    tp = action.type
    if tp in (int, float):
        if isinstance(value, bool) or (tp is int and isinstance(value, float) and not value.is_integer()):
            raise PipelineError(f"{where} must be {'an integer' if tp is int else 'a number'}, got {value!r}")
        try:
            value = tp(value)
        except (TypeError, ValueError):
            raise PipelineError(f"{where} must be {'an integer' if tp is int else 'a number'}, got {value!r}") from None
    elif tp is None:
        value = str(value).lower() if isinstance(value, bool) else str(value)
    if action.choices is not None and value not in action.choices:
        raise PipelineError(f"{where} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value


# --- train and sweep: a TrainSpec from `ganpipe train`'s options plus `overrides` -----------------------------

def override_strings(stage: str, overrides: Any, *, literal_only: bool = False) -> list[str]:
    """`overrides` (a mapping section.key -> value, a list of such mappings or of "k=v" strings) as the CLI's
    key=value strings. With literal_only, parts that are still references are skipped."""
    items = overrides if isinstance(overrides, list) else [overrides]
    out: list[str] = []
    for item in items:
        if item is None or (literal_only and _has_ref(item)):
            continue
        if isinstance(item, str) and "=" in item and not REF.fullmatch(item):
            out.append(item)
        elif isinstance(item, dict):
            for k, v in item.items():
                if literal_only and _has_ref(v):
                    continue
                out.append(f"{k}={_cli_value(v)}")
        else:
            raise PipelineError(f"stage {stage!r}: config.overrides must be a mapping of section.key: value (or a "
                                f"list of them), got {item!r}")
    return out


def _cli_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return ",".join(_cli_value(x) for x in v)
    return "none" if v is None else str(v)


def stage_train_spec(stage: Stage, config: dict[str, Any], *, ns: dict[str, Any] | None = None,
                literal_only: bool = False) -> Any:
    if ns is None:
        base = {k: v for k, v in config.items() if k not in ("overrides", *SWEEP_KEYS)}
        ns = KINDS["train"].namespace(stage, base, store="", tracking_uri="")
    args = dict(ns)
    if literal_only and _has_ref(args.get("dataset")):
        args["dataset"] = "placeholder"
    args["overrides"] = override_strings(stage.name, config.get("overrides"), literal_only=literal_only)
    args["run_name"] = None
    try:
        return train_spec({k: v for k, v in args.items() if k not in SWEEP_KEYS})
    except (ValueError, UserError) as exc:  # a bad override; neither recipe nor family
        raise PipelineError(f"stage {stage.name!r}: config: {exc}") from None


def train_call(stage: Stage, config: dict[str, Any], *, store: str, tracking_uri: str) -> tuple[dict, dict]:
    """(resolved config for params and the cache key, call arguments of the runner)."""
    base = {k: v for k, v in config.items() if k not in ("overrides", *SWEEP_KEYS)}
    ns = KINDS["train"].namespace(stage, base, store=store, tracking_uri=tracking_uri)
    spec = stage_train_spec(stage, config, ns=ns)
    resolved = spec.result_dict()
    resolved.pop("run_name")
    call = {"args": {**ns, "overrides": override_strings(stage.name, config.get("overrides"))}}
    if stage.kind == "sweep":
        resolved["sweep"] = {k: config.get(k, SWEEP_DEFAULTS.get(k)) for k in SWEEP_KEYS}
        call["sweep"] = resolved["sweep"]
    return resolved, call


def _run_train(call: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
    from pipelines.tracking.runs import client
    from pipelines.training.train import train

    spec = train_spec({**call["args"], "run_name": ctx.run_name})
    outcome = train(spec, progress=False, log=print)
    mlf = client(ctx.tracking_uri)
    for key, value in (("ganpipe.pipeline", ctx.pipeline), ("ganpipe.stage", ctx.stage),
                       ("ganpipe.pipeline_run_id", ctx.pipeline_run_id), ("ganpipe.stage_run_id", ctx.stage_run_id)):
        mlf.set_tag(outcome.run_id, key, value)
    tags = mlf.get_run(outcome.run_id).data.tags

    return {"run_id": outcome.run_id, "model": outcome.model_uri, "run_name": outcome.run_name,
            "dataset": dataset_url(outcome.spec.data.dataset, outcome.spec.store),
            "digest": tags.get("ganpipe.manifest_sha256", ""),
            "metrics": {k: float(v) for k, v in outcome.metrics.items()}}


def _dataset_digest(call: dict[str, Any], ctx: StageContext) -> dict[str, str]:
    """A training stage's dataset is an input even when no stage of this pipeline made it."""
    from data_prep.reader import read_manifest

    spec = train_spec({**call["args"], "run_name": None})
    url = dataset_url(spec.data.dataset, spec.store)
    try:
        return {"dataset": url, "dataset_digest": read_manifest(url).digest}
    except Exception:  # not prepared (yet): the stage runs, and fails with the reader's own message
        return {"dataset": url, "dataset_digest": "missing"}


def _model_exists(outputs: dict[str, Any], ctx: StageContext) -> bool:
    from pipelines.tracking.loading import resolve_ref
    from pipelines.tracking.runs import client

    try:
        resolve_ref(client(ctx.tracking_uri), outputs["model"])
        return True
    except Exception:
        return False


# --- sweep: the adapter to `ganpipe sweep` ----------------------------------------------------------------------

SWEEP_KEYS = ("space", "trials", "metric", "mode")
SWEEP_DEFAULTS = {"trials": 4, "metric": "eval/fd", "mode": "min"}


def _check_space(stage: Stage) -> None:
    from pipelines.spec.config import apply_overrides

    space = stage.config.get("space")
    if not isinstance(space, dict) or not space:
        raise PipelineError(f"stage {stage.name!r}: config.space must map section.key to a list of values or "
                            "{low: X, high: Y[, log: true]}")
    spec = stage_train_spec(stage, stage.config, literal_only=True)
    for key, dom in space.items():
        probe = dom[0] if isinstance(dom, list) and dom else dom.get("low") if isinstance(dom, dict) else None
        if probe is None:
            raise PipelineError(f"stage {stage.name!r}: config.space.{key} must be a non-empty list or {{low, high}}")
        try:
            apply_overrides(spec, [f"{key}={_cli_value(probe)}"])
        except ValueError as exc:
            raise PipelineError(f"stage {stage.name!r}: config.space.{key}: {exc}") from None
    if stage.config.get("mode", "min") not in ("min", "max"):
        raise PipelineError(f"stage {stage.name!r}: config.mode must be min or max")


def _run_sweep(call: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
    """`ganpipe sweep`'s work (pipelines/training/sweep.py `pipeline_sweep`): a parent MLflow run with one child
    per trial; outputs the best overrides, the parent and best runs, and the registered best model."""
    from pipelines.training.sweep import pipeline_sweep

    spec = train_spec({**call["args"], "run_name": ctx.run_name})
    sw = call["sweep"]
    out = pipeline_sweep(spec=spec, space=sw["space"], trials=int(sw["trials"]), metric=sw["metric"],
                         mode=sw["mode"], run_name=ctx.run_name, tracking_uri=ctx.tracking_uri)
    return {"best": dict(out["best"]), "run_id": out["run_id"], "best_run_id": out.get("best_run_id", ""),
            "model": out.get("model", "")}


# --- prep, eval, promote, sample --------------------------------------------------------------------------------

def _run_prep(call: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
    from data_prep.kinds import prep_dataset
    result = prep_dataset(prep_config(call), progress=False)
    print(f"{'reused' if result.reused else 'wrote'} {result.dataset_url} (manifest {result.manifest.digest})")
    return {"dataset": result.dataset_url, "digest": result.manifest.digest, "name": result.manifest.name}


def _source_fingerprint(call: dict[str, Any], ctx: StageContext) -> dict[str, str]:
    """Local source files by content (relative path and sha256 of the bytes): editing, adding or removing one
    re-runs prep; the same files elsewhere (a job's working_dir unpacked by Ray under a new path, with new
    modification times) are the same input. Built-in sets are fixed by the code version; remote sources are
    not listed (use --force after changing one)."""
    out: dict[str, str] = {}
    for source in call.get("sources") or []:
        if source not in BUILTIN_SOURCES:
            out.update(_fingerprint(f"source:{source}", source))
    if call.get("images"):
        out.update(_fingerprint("images", call["images"]))
    return out


BUILTIN_SOURCES = ("mnist5k", "digits", "skimage-photos")  # data_prep.sources.BUILTINS, without importing it


def _fingerprint(label: str, spec: str) -> dict[str, str]:
    path = Path(spec[len("file://"):] if spec.startswith("file://") else spec).expanduser()
    if ("://" in spec and not spec.startswith("file://")) or not path.exists():
        return {}
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        name = p.name if p == path else p.relative_to(path).as_posix()
        digest.update(f"{name}\t{_file_sha256(p)}\n".encode())
    return {label: f"{len(files)} files sha256:{digest.hexdigest()}"}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest_unchanged(outputs: dict[str, Any], ctx: StageContext) -> bool:
    from data_prep.reader import read_manifest

    try:
        return read_manifest(outputs["dataset"]).digest == outputs["digest"]
    except Exception:
        return False


def _run_eval(call: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
    from pipelines.evaluation.evaluate import evaluate_model
    from pipelines.tracking.registry import missing_is_user_error

    params = inspect.signature(evaluate_model).parameters
    with missing_is_user_error():
        out = evaluate_model(**{k: v for k, v in call.items() if k in params}, progress=False, log=print)
    return {"run_id": out.run_id, "model": out.model.uri, "metrics": {k: float(v) for k, v in out.metrics.items()}}


def _model_version(call: dict[str, Any], ctx: StageContext) -> dict[str, str]:
    """An alias (models:/NAME@champion) can move: the version it points at when the stage runs is the input."""
    from pipelines.tracking.loading import resolve_ref
    from pipelines.tracking.runs import client

    try:
        return {"model": resolve_ref(client(ctx.tracking_uri), call["model"]).uri}
    except Exception:
        return {"model": "missing"}


def _run_promote(call: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
    from pipelines.tracking.registry import CHAMPION, alias_version, missing_is_user_error, promote
    from pipelines.tracking.runs import client

    mlf = client(ctx.tracking_uri)
    with missing_is_user_error():
        d = promote(mlf=mlf, name=call["name"], metric=call["metric"], mode=call["mode"], version=call["version"],
                    force=call["force"])
    print(f"{'promoted' if d.promoted else 'not promoted'}: {call['name']} v{d.candidate}: {d.reason}")
    champ = alias_version(mlf, call["name"], CHAMPION)
    return {"promoted": d.promoted, "model": f"models:/{call['name']}/{d.candidate}",
            "champion": f"models:/{call['name']}/{champ.version}" if champ else "", "reason": d.reason}


def promote_call(stage: Stage, config: dict[str, Any], *, store: str, tracking_uri: str) -> tuple[dict, dict]:
    config = dict(config)
    model = config.pop("model", None)
    if model is not None:  # `model: models:/NAME/VERSION` (e.g. a train stage's output) names the candidate
        rest = str(model).removeprefix("models:/")
        if not str(model).startswith("models:/") or "/" not in rest:
            raise PipelineError(f"stage {stage.name!r}: config.model must be models:/NAME/VERSION, got {model!r}")
        config["name"], config["version"] = rest.split("/", 1)
    ns = KINDS["promote"].namespace(stage, config, store=store, tracking_uri=tracking_uri)
    return ns, ns


def _run_sample(call: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
    """Writes the PNGs at `out` and logs them to the stage's MLflow run: on a cluster `out` is inside the job's
    temporary working directory, gone with it; the artifact is what a user opens (`artifact` output)."""
    from pipelines.inference.sample import sample_to_png
    from pipelines.tracking.runs import client

    written = sample_to_png(model=call["model"], out=call["out"], n=call["n"], seed=call["seed"],
                            interpolate=call["interpolate"], scale=call["scale"], tracking_uri=call["tracking_uri"])
    mlf = client(ctx.tracking_uri)
    for path in written:
        mlf.log_artifact(ctx.stage_run_id, str(path), SAMPLE_ARTIFACTS)
    artifact = f"runs:/{ctx.stage_run_id}/{SAMPLE_ARTIFACTS}/{Path(call['out']).name}"
    print(f"logged {artifact} ({mlf.get_run(ctx.stage_run_id).info.artifact_uri}/{SAMPLE_ARTIFACTS})")
    return {"path": str(Path(call["out"]).absolute()), "artifact": artifact, "model": call["model"]}


SAMPLE_ARTIFACTS = "samples"


def _artifact_exists(outputs: dict[str, Any], ctx: StageContext) -> bool:
    """A sample stage's PNG is still in its run's artifacts (a local `path` may be long gone: a job's)."""
    from pipelines.tracking.runs import client

    uri = outputs.get("artifact", "")
    if not uri.startswith("runs:/"):  # recorded before samples were logged: the local file is all there is
        return os.path.exists(outputs["path"])
    run_id, _, rel = uri.removeprefix("runs:/").partition("/")
    try:
        listed = client(ctx.tracking_uri).list_artifacts(run_id, str(Path(rel).parent))
    except Exception:
        return False
    return any(f.path == rel for f in listed)


def command_call(stage: Stage, config: dict[str, Any], *, store: str, tracking_uri: str) -> tuple[dict, dict]:
    ns = KINDS[stage.kind].namespace(stage, config, store=store, tracking_uri=tracking_uri)
    return ns, ns


def resolve_call(stage: Stage, config: dict[str, Any], *, store: str, tracking_uri: str) -> tuple[dict, dict]:
    """(resolved config: params and cache key, runner arguments) of a stage whose references are substituted."""
    if stage.kind in ("train", "sweep"):
        return train_call(stage, config, store=store, tracking_uri=tracking_uri)
    if stage.kind == "promote":
        return promote_call(stage, config, store=store, tracking_uri=tracking_uri)
    return command_call(stage, config, store=store, tracking_uri=tracking_uri)


KINDS: dict[str, StageKind] = {
    "prep": StageKind(name="prep", command="prep", run=_run_prep, aliases=(("format", "kind"),),
                      outputs={"dataset": "dataset URL", "digest": "manifest sha256", "name": "dataset name"},
                      external=_source_fingerprint, still_valid=_manifest_unchanged),
    "train": StageKind(name="train", command="train", run=_run_train, extra_keys=("overrides",),
                       outputs={"run_id": "MLflow run", "model": "model version", "run_name": "training run name",
                                "dataset": "dataset URL", "digest": "manifest sha256", "metrics": "metrics"},
                       external=_dataset_digest, still_valid=_model_exists),
    "sweep": StageKind(name="sweep", command="train", run=_run_sweep, extra_keys=("overrides", *SWEEP_KEYS),
                       outputs={"best": "overrides", "run_id": "MLflow run", "best_run_id": "MLflow run",
                                "model": "model version"},
                       external=_dataset_digest),
    "eval": StageKind(name="eval", command="eval", run=_run_eval,
                      outputs={"run_id": "MLflow run", "model": "model version", "metrics": "metrics"},
                      external=_model_version),
    "promote": StageKind(name="promote", command="promote", run=_run_promote, cacheable=False, extra_keys=("model",),
                         outputs={"promoted": "bool", "model": "model version", "champion": "model version",
                                  "reason": "text"}),
    "sample": StageKind(name="sample", command="sample", run=_run_sample,
                        outputs={"path": "file", "artifact": "MLflow artifact", "model": "model version"},
                        external=_model_version, still_valid=_artifact_exists),
}


def load_pipeline(path_or_recipe: str) -> Pipeline:
    """A pipeline file or recipe (see pipelines.orchestration.dag.load), checked against these stage kinds."""
    return dag.load(path_or_recipe, kinds=KINDS)


def pipeline_from_dict(data: dict[str, Any], *, source: str = "") -> Pipeline:
    """A pipeline mapping (the YAML's shape), checked against these stage kinds."""
    return dag.from_dict(data, kinds=KINDS, source=source)
