"""Pipeline files: the schema of a declared DAG of stages, `${stages.NAME.OUTPUT}` references, validation.

A pipeline is a YAML file or a Python recipe function returning the same mapping (or a `Pipeline`). Every
check here runs before any stage does, and every error names the stage and the field it is about.

    name: digits-dcgan            # letters, digits, '_' or '-'; names the MLflow runs and training runs
    engine: ray                   # ray (default): stages are Ray tasks; local: one after another in-process
    store: .ganpipe/store         # default `store` of every stage (a folder or s3://bucket/prefix)
    tracking_uri: ""              # default $MLFLOW_TRACKING_URI, else sqlite:///.ganpipe/mlflow.db
    experiment: ganpipe-pipelines # MLflow experiment of the pipeline runs and their stage runs
    stages:
      prep:
        kind: prep                # prep | train | sweep | eval | promote | sample (orchestration/stage_kinds.py)
        config: {source: digits, limit: 200}
      train:
        kind: train
        needs: [prep]             # optional: a reference to a stage already makes it a need
        resources: {cpus: 1, gpus: 0}
        config:
          recipe: dcgan
          dataset: ${stages.prep.dataset}
          overrides: {loop.steps: 200, model.ngf: 16}
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pipelines.spec.defaults import DEFAULT_EXPERIMENT, DEFAULT_STORE, default_store

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
REF = re.compile(r"\$\{stages\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_]+)\}")
ENGINES = ("ray", "local")
TOP_KEYS = ("name", "engine", "store", "tracking_uri", "experiment", "description", "stages")
STAGE_KEYS = ("kind", "config", "needs", "resources", "description")


class PipelineError(ValueError):
    """A pipeline file that cannot run: the message names the stage and the field."""


class StageKindRules(Protocol):
    """What the DAG needs of a stage kind (pipelines.orchestration.stage_kinds.KINDS holds the real ones)."""

    outputs: Mapping[str, str]

    def validate(self, stage: Stage) -> None: ...


@dataclass(frozen=True)
class Resources:
    cpus: float | None = None  # CPUs its Ray task reserves; None: 1, or 0 for a stage that starts Ray Train workers
    gpus: float = 0.0  # GPUs its Ray task reserves (Ray Train workers reserve their own: scale.use_gpu)


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str
    config: dict[str, Any]
    needs: tuple[str, ...]  # explicit needs plus every stage a reference points at, sorted
    resources: Resources = field(default_factory=Resources)
    description: str = ""


@dataclass(frozen=True)
class Pipeline:
    name: str
    stages: dict[str, Stage]  # in topological order
    engine: str = "ray"
    store: str = DEFAULT_STORE
    tracking_uri: str = ""
    experiment: str = DEFAULT_EXPERIMENT
    description: str = ""
    source: str = ""  # the file's text (or the recipe's JSON), logged with every pipeline run

    def downstream(self, names: set[str]) -> set[str]:
        """`names` and every stage that needs one of them, directly or not."""
        out = set(names)
        for stage in self.stages.values():  # topological order: needs come first
            if out & set(stage.needs):
                out.add(stage.name)
        return out

    def upstream(self, names: set[str]) -> set[str]:
        """`names` and every stage they need, directly or not."""
        out, todo = set(), list(names)
        while todo:
            name = todo.pop()
            if name not in out:
                out.add(name)
                todo.extend(self.stages[name].needs)
        return out


def ref(stage: str, output: str) -> str:
    """The reference string to an output, for Python recipes: ref("prep", "dataset")."""
    return f"${{stages.{stage}.{output}}}"


def references(value: Any) -> Iterator[tuple[str, str, str]]:
    """(stage, output, path) of every `${stages.S.O}` inside a config value; path locates it in the config."""

    def walk(v: Any, path: str) -> Iterator[tuple[str, str, str]]:
        if isinstance(v, str):
            for m in REF.finditer(v):
                yield m.group(1), m.group(2), path
        elif isinstance(v, Mapping):
            for k, item in v.items():
                yield from walk(item, f"{path}.{k}" if path else str(k))
        elif isinstance(v, (list, tuple)):
            for i, item in enumerate(v):
                yield from walk(item, f"{path}[{i}]")

    yield from walk(value, "")


def substitute(value: Any, outputs: Mapping[str, Mapping[str, Any]]) -> Any:
    """Replace references by upstream outputs: a whole-string reference takes the output's own type (a
    mapping of overrides stays a mapping); one inside a longer string is formatted into it."""
    if isinstance(value, str):
        whole = REF.fullmatch(value)
        if whole:
            return outputs[whole.group(1)][whole.group(2)]
        return REF.sub(lambda m: str(outputs[m.group(1)][m.group(2)]), value)
    if isinstance(value, Mapping):
        return {k: substitute(v, outputs) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [substitute(v, outputs) for v in value]
    return value


def load(path_or_recipe: str, *, kinds: Mapping[str, StageKindRules]) -> Pipeline:
    """A pipeline from a YAML file (a path relative to the working directory) or a Python recipe given as
    `module:function` or `file.py:function` (a function returning a Pipeline or the YAML's mapping)."""
    spec, _, func = path_or_recipe.partition(":") if not Path(path_or_recipe).exists() else (path_or_recipe, "", "")
    if func:
        return load_recipe(spec, func, kinds=kinds)
    path = Path(path_or_recipe)
    if path.is_dir():
        raise PipelineError(f"{path} is a folder; give a pipeline YAML file (e.g. pipelines/examples/course.yaml)")
    if not path.is_file():
        raise FileNotFoundError(f"pipeline file {path} not found (relative to {Path.cwd()})")
    import yaml

    text = _read_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None  # one line
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: a pipeline file is a mapping with `name` and `stages`")
    return from_dict(data, kinds=kinds, source=text)


def _read_text(path: Path) -> str:
    """A pipeline file's text; a binary file (a NUL byte, or not UTF-8) is an error naming it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PipelineError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, data.index(b"\0"), data.index(b"\0") + 1, "NUL byte")
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PipelineError(f"{path}: not a text file (byte {exc.start} is 0x{data[exc.start]:02x}); give a "
                            "pipeline YAML file") from None


def load_recipe(spec: str, func: str, *, kinds: Mapping[str, StageKindRules]) -> Pipeline:
    import importlib
    import importlib.util

    if spec.endswith(".py"):
        module_spec = importlib.util.spec_from_file_location(Path(spec).stem, spec)
        if module_spec is None or module_spec.loader is None:
            raise FileNotFoundError(f"pipeline recipe file {spec} not found")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(spec)
    recipe: Callable[[], Any] | None = getattr(module, func, None)
    if recipe is None:
        raise PipelineError(f"{spec} has no pipeline recipe function {func!r}")
    out = recipe()
    return out if isinstance(out, Pipeline) else from_dict(out, kinds=kinds)


def from_dict(data: Mapping[str, Any], *, kinds: Mapping[str, StageKindRules], source: str = "") -> Pipeline:
    """Validate a pipeline mapping (the YAML's shape) against the stage kinds `kinds` and order its stages;
    raises PipelineError."""
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise PipelineError(f"unknown pipeline key(s) {', '.join(unknown)}; valid: {', '.join(TOP_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise PipelineError(f"pipeline `name` must be letters, digits, '_' or '-' (at most 64), got {name!r}")
    engine = data.get("engine", "ray")
    if engine not in ENGINES:
        raise PipelineError(f"pipeline `engine` must be one of {', '.join(ENGINES)}, got {engine!r}")
    raw = data.get("stages")
    if not isinstance(raw, Mapping) or not raw:
        raise PipelineError("pipeline `stages` must be a mapping of stage name -> {kind, config, needs, resources}")
    stages = {str(n): _stage(str(n), s, kinds) for n, s in raw.items()}
    for stage in stages.values():
        _check_links(stage, stages, kinds)
        kinds[stage.kind].validate(stage)
    ordered = _topological(stages)
    return Pipeline(
        name=name, stages={n: stages[n] for n in ordered}, engine=engine,
        store=str(data.get("store") or default_store()), tracking_uri=str(data.get("tracking_uri") or ""),
        experiment=str(data.get("experiment") or DEFAULT_EXPERIMENT), description=str(data.get("description") or ""),
        source=source or json.dumps(data, indent=2, sort_keys=True, default=str),
    )


def _stage(name: str, raw: Any, kinds: Mapping[str, StageKindRules]) -> Stage:
    where = f"stage {name!r}"
    if not NAME.fullmatch(name):
        raise PipelineError(f"{where}: a stage name is letters, digits, '_' or '-' (at most 64)")
    if not isinstance(raw, Mapping):
        raise PipelineError(f"{where}: a stage is a mapping with kind, config, needs, resources")
    unknown = sorted(set(raw) - set(STAGE_KEYS))
    if unknown:
        raise PipelineError(f"{where}: unknown field(s) {', '.join(unknown)}; valid: {', '.join(STAGE_KEYS)}")
    kind = raw.get("kind")
    if kind not in kinds:
        raise PipelineError(f"{where}: kind must be one of {', '.join(kinds)}, got {kind!r}")
    config = raw.get("config") or {}
    if not isinstance(config, Mapping):
        raise PipelineError(f"{where}: config must be a mapping of the {kind} command's options")
    needs = raw.get("needs") or []
    if isinstance(needs, str):
        needs = [needs]
    if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
        raise PipelineError(f"{where}: needs must be a list of stage names")
    res = raw.get("resources") or {}
    if not isinstance(res, Mapping) or set(res) - {"cpus", "gpus"}:
        raise PipelineError(f"{where}: resources takes cpus and gpus only, got {dict(res) if res else res!r}")
    try:
        resources = Resources(**{k: float(v) for k, v in res.items()})
    except (TypeError, ValueError):
        raise PipelineError(f"{where}: resources.cpus and resources.gpus must be numbers") from None
    if (resources.cpus or 0) < 0 or resources.gpus < 0:
        raise PipelineError(f"{where}: resources must be >= 0")
    implied = {s for s, _, _ in references(config)}
    return Stage(name=name, kind=kind, config=dict(config), needs=tuple(sorted(set(needs) | implied)),
                 resources=resources, description=str(raw.get("description") or ""))


def _check_links(stage: Stage, stages: Mapping[str, Stage], kinds: Mapping[str, StageKindRules]) -> None:
    for target, output, path in references(stage.config):
        if target not in stages:
            raise PipelineError(f"stage {stage.name!r}: config.{path} refers to stage {target!r}, which does not "
                                f"exist (stages: {', '.join(stages)})")
        outputs = kinds[stages[target].kind].outputs
        if output not in outputs:
            raise PipelineError(f"stage {stage.name!r}: config.{path} refers to {target}.{output}, but a "
                                f"{stages[target].kind} stage outputs {', '.join(outputs)}")
    for need in stage.needs:
        if need not in stages:
            raise PipelineError(f"stage {stage.name!r}: needs {need!r}, which does not exist "
                                f"(stages: {', '.join(stages)})")
        if need == stage.name:
            raise PipelineError(f"stage {stage.name!r}: needs itself (cycle {stage.name} -> {stage.name})")


def _topological(stages: Mapping[str, Stage]) -> list[str]:
    """Stages in an order where each comes after its needs (file order among equals); a cycle is an error
    that lists it."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: placed

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name):] + [name]
            raise PipelineError(f"stage {name!r}: its needs form a cycle {' -> '.join(cycle)}")
        state[name] = 1
        for need in stages[name].needs:
            visit(need, [*path, name])
        state[name] = 2
        order.append(name)

    for name in stages:
        visit(name, [])
    return order
