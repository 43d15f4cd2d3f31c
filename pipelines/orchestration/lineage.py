"""`ganpipe runs ls|show` and `ganpipe lineage`: pipeline runs and their stage DAGs, read back from MLflow.

Everything shown here comes from tags the orchestrator and `train` write: a pipeline run is a parent run
(`ganpipe.kind=pipeline`, its DAG in `ganpipe.dag`), each stage a child run (`ganpipe.stage`, status, cache
key, input digests, outputs); a training run made by a stage carries `ganpipe.stage_run_id`.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from pipelines.spec.defaults import DEFAULT_EXPERIMENT


def _time(ms: int | None) -> str:
    return dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def _experiment(mlf: Any, name: str) -> str:
    exp = mlf.get_experiment_by_name(name)
    if exp is None:
        raise ValueError(f"no pipeline runs yet: experiment {name!r} does not exist in this tracking store")
    return exp.experiment_id


def pipeline_runs(mlf: Any, *, experiment: str = DEFAULT_EXPERIMENT, pipeline: str = "", limit: int = 20) -> list:
    flt = "tags.`ganpipe.kind` = 'pipeline'" + (f" and tags.`ganpipe.pipeline` = '{pipeline}'" if pipeline else "")
    return mlf.search_runs([_experiment(mlf, experiment)], filter_string=flt,
                           order_by=["attributes.start_time DESC"], max_results=limit)


def find_pipeline_run(mlf: Any, run: str, *, experiment: str = DEFAULT_EXPERIMENT) -> Any:
    """A pipeline run by its id or a unique prefix of it (as `ganpipe run` prints)."""
    found = [r for r in pipeline_runs(mlf, experiment=experiment, limit=1000) if r.info.run_id.startswith(run)]
    if len(found) != 1:
        raise ValueError(f"{'no' if not found else 'more than one'} pipeline run matches {run!r} "
                         "(see `ganpipe runs ls`)")
    return found[0]


def stage_runs(mlf: Any, parent: Any) -> dict[str, Any]:
    """stage name -> its child run under the pipeline run `parent`."""
    runs = mlf.search_runs([parent.info.experiment_id],
                           filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=1000)
    return {r.data.tags.get("ganpipe.stage", r.info.run_name): r for r in runs}


def _duration(run: Any) -> str:
    if run.info.end_time and run.info.start_time and run.data.tags.get("ganpipe.status") in ("done", "failed"):
        return f"{(run.info.end_time - run.info.start_time) / 1000:.1f}s"
    return "-"


def show_run(mlf: Any, run: str, *, experiment: str = DEFAULT_EXPERIMENT, out=print) -> Any:
    from pipelines.orchestration.runner import format_outputs

    parent = find_pipeline_run(mlf, run, experiment=experiment)
    tags = parent.data.tags
    dag: dict[str, dict[str, Any]] = json.loads(tags.get("ganpipe.dag", "{}"))
    children = stage_runs(mlf, parent)
    out(f"pipeline  {tags.get('ganpipe.pipeline')}  run {parent.info.run_id}  {parent.info.status}")
    out(f"started   {_time(parent.info.start_time)}  engine {tags.get('ganpipe.engine', '?')}  code ganpipe "
        f"{tags.get('ganpipe.code_version', '?')} git {tags.get('ganpipe.git_commit', '')[:12] or '-'}")
    depth: dict[str, int] = {}
    for name, node in dag.items():  # stored in topological order
        depth[name] = 1 + max((depth[n] for n in node["needs"]), default=-1)
    width = max((len(n) + 2 * depth[n] for n in dag), default=5) + 2
    out(f"\n{'STAGE':<{width}} {'KIND':<8} {'STATUS':<8} {'TIME':>7}  {'NEEDS':<20} OUTPUTS / ERROR")
    for name, node in dag.items():
        child = children.get(name)
        status = child.data.tags.get("ganpipe.status", "?") if child else "not run"
        if child is not None and status == "running":
            status = "running" if child.info.status == "RUNNING" else "failed"  # a killed run never ended
        label = ("  " * (depth[name] - 1) + "└ " if depth[name] else "") + name
        detail = ""
        if child is not None:
            t = child.data.tags
            detail = format_outputs(json.loads(t["ganpipe.outputs"])) if "ganpipe.outputs" in t else t.get(
                "ganpipe.error", "")
            if t.get("ganpipe.cached") == "true":
                detail = f"(from {t.get('ganpipe.cached_from', '')[:8]}) {detail}"
        out(f"{label:<{width}} {node['kind']:<8} {status:<8} {_duration(child) if child else '-':>7}  "
            f"{','.join(node['needs']) or '-':<20} {detail}")
    return parent


def list_runs(mlf: Any, *, experiment: str = DEFAULT_EXPERIMENT, pipeline: str = "", limit: int = 20, out=print) -> int:
    runs = pipeline_runs(mlf, experiment=experiment, pipeline=pipeline, limit=limit)
    if not runs:
        out("no pipeline runs")
        return 0
    out(f"{'RUN':<10} {'PIPELINE':<20} {'STARTED':<19}  {'STATUS':<9} {'TIME':>7}  STAGES")
    for r in runs:
        counts = json.loads(r.data.tags.get("ganpipe.summary", "{}"))
        stages = ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "-"
        took = f"{(r.info.end_time - r.info.start_time) / 1000:.0f}s" if r.info.end_time else "-"
        out(f"{r.info.run_id[:8]:<10} {r.data.tags.get('ganpipe.pipeline', '?'):<20} {_time(r.info.start_time):<19}  "
            f"{r.info.status:<9} {took:>7}  {stages}")
    return 0


def lineage(mlf: Any, model: str) -> dict[str, Any]:
    """A model version traced back: its training run, the pipeline run and stage that made it, the sweep
    and prep stages upstream of that stage, the dataset digest and the code version."""
    from pipelines.tracking.loading import resolve_ref

    ref = resolve_ref(mlf, model)
    train_run = mlf.get_run(ref.run_id)
    tags = train_run.data.tags
    mv = mlf.get_model_version(ref.name, ref.version) if ref.name else None
    info: dict[str, Any] = {
        "model": ref.uri, "aliases": sorted(getattr(mv, "aliases", []) or []),
        "training_run": ref.run_id, "training_run_name": tags.get("ganpipe.run_name", train_run.info.run_name),
        "dataset": tags.get("ganpipe.dataset", ""), "dataset_digest": tags.get("ganpipe.manifest_sha256", ""),
        "git_commit": tags.get("ganpipe.git_commit", ""), "pipeline": None, "sweep": None, "upstream": [],
    }
    inputs = train_run.inputs.dataset_inputs if train_run.inputs else []
    if inputs:
        info["dataset_url"] = json.loads(inputs[0].dataset.source).get("uri", inputs[0].dataset.source)
    stage_run_id = tags.get("ganpipe.stage_run_id")
    if not stage_run_id:
        return info
    stage = mlf.get_run(stage_run_id)
    parent = mlf.get_run(stage.data.tags["mlflow.parentRunId"])
    siblings = stage_runs(mlf, parent)
    info["pipeline"] = {"name": parent.data.tags.get("ganpipe.pipeline"), "run_id": parent.info.run_id,
                        "started": _time(parent.info.start_time), "stage": stage.data.tags.get("ganpipe.stage"),
                        "stage_run_id": stage_run_id, "cache_key": stage.data.tags.get("ganpipe.cache_key", ""),
                        "code_version": stage.data.tags.get("ganpipe.code_version", "")}
    todo, seen = [n for n in stage.data.tags.get("ganpipe.needs", "").split(",") if n], set()
    while todo:
        name = todo.pop(0)
        if name in seen or name not in siblings:
            continue
        seen.add(name)
        t = siblings[name].data.tags
        entry = {"stage": name, "kind": t.get("ganpipe.stage_kind"), "run_id": siblings[name].info.run_id,
                 "outputs": json.loads(t.get("ganpipe.outputs", "{}")), "cached": t.get("ganpipe.cached") == "true"}
        info["upstream"].append(entry)
        if entry["kind"] == "sweep" and info["sweep"] is None:
            info["sweep"] = entry
        todo.extend(n for n in t.get("ganpipe.needs", "").split(",") if n)
    return info


def print_lineage(info: dict[str, Any], out=print) -> None:
    aliases = f" (aliases: {', '.join(info['aliases'])})" if info["aliases"] else ""
    out(f"model      {info['model']}{aliases}")
    out(f"training   run {info['training_run']} ({info['training_run_name']})")
    pipe = info["pipeline"]
    if pipe:
        out(f"pipeline   {pipe['name']} run {pipe['run_id']} started {pipe['started']}, stage {pipe['stage']} "
            f"(stage run {pipe['stage_run_id'][:8]}, cache key {pipe['cache_key'][:12]})")
    else:
        out("pipeline   none (trained outside a pipeline)")
    sweep = info["sweep"]
    if sweep:
        best = " ".join(f"{k}={v}" for k, v in sweep["outputs"].get("best", {}).items())
        out(f"sweep      stage {sweep['stage']}: sweep run {sweep['outputs'].get('run_id', '?')}, best {best or '?'}")
    else:
        out("sweep      none")
    prep = next((u for u in info["upstream"] if u["kind"] == "prep"
                 and u["outputs"].get("digest") == info["dataset_digest"]), None)
    made_by = f" (made by stage {prep['stage']})" if prep else ""
    out(f"dataset    {info.get('dataset_url', info['dataset'])} manifest sha256 {info['dataset_digest']}{made_by}")
    code = pipe["code_version"] if pipe else "?"
    out(f"code       ganpipe {code}, git {info['git_commit'] or 'unknown'}")
    if info["upstream"]:
        out("upstream   " + ", ".join(f"{u['stage']} ({u['kind']}{', cached' if u['cached'] else ''})"
                                      for u in info["upstream"]))




