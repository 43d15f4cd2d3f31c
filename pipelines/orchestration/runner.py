"""`ganpipe run`: run a pipeline's stages as Ray tasks (or in-process), reusing finished stages by cache key.

No engine of our own: stages run on Ray, state and lineage live in MLflow. One parent MLflow run per
pipeline run, one child run per stage (params: the resolved config; tags: cache key, input digests, outputs,
cached or not). A stage's cache key is the sha256 of

  kind + resolved config (every option of its command, defaults included; for train the whole TrainSpec)
  + the digest of each needed stage's outputs + external inputs (a dataset's manifest digest, the version an
  alias points at, local source files' size and mtime) + the code version (package version, git commit).

A stage is cached when a FINISHED stage run with that key (`ganpipe.cache_key` tag) exists in the pipeline
experiment and its outputs still exist; `--force` re-runs it and everything downstream of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, TextIO

from pipelines.engine.stop import add_cleanup, remove_cleanup
from pipelines.orchestration.dag import Pipeline, PipelineError, Resources, Stage, substitute
from pipelines.orchestration.progress import Progress
from pipelines.orchestration.stage_kinds import KINDS, StageContext, resolve_call
from pipelines.spec.provenance import code_version

CACHE_KEY_TAG = "ganpipe.cache_key"
LOG_TAIL = 20


@dataclass
class StageResult:
    status: str  # done | cached | failed | skipped
    outputs: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""  # the stage's child run
    error: str = ""
    seconds: float = 0.0


@dataclass
class RunOutcome:
    pipeline: str
    run_id: str  # the parent run ("" for a dry run)
    stages: dict[str, StageResult]
    unreachable: list[str] = field(default_factory=list)  # a dry run: what the run would need and cannot reach

    @property
    def ok(self) -> bool:
        return all(r.status in ("done", "cached") for r in self.stages.values())



def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def execute_stage(kind: str, call: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
    """Run one stage with its output captured (the body of a Ray task, or called in-process)."""
    from pipelines.engine.quiet import quiet_logs

    quiet_logs()  # a Ray task's process too
    buf = io.StringIO()
    start = time.time()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            outputs = KINDS[kind].run(call, ctx)
        json.dumps(outputs)  # outputs travel as JSON tags: fail here, not after the stage is recorded
        return {"ok": True, "outputs": outputs, "log": buf.getvalue(), "start": start, "end": time.time(),
                "pid": os.getpid()}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}",
                "log": buf.getvalue() + traceback.format_exc(), "start": start, "end": time.time(), "pid": os.getpid()}


class LocalExecutor:
    """engine: local — stages run one at a time in this process, in topological order."""

    def __init__(self) -> None:
        self.queue: list[tuple[str, tuple]] = []

    def submit(self, name: str, kind: str, call: dict[str, Any], ctx: StageContext, resources: Resources) -> None:
        self.queue.append((name, (kind, call, ctx)))

    def wait_any(self) -> tuple[str, dict[str, Any]]:
        name, args = self.queue.pop(0)
        return name, execute_stage(*args)

    @property
    def busy(self) -> bool:
        return bool(self.queue)


class RayExecutor:
    """engine: ray — each stage is a Ray task reserving its resources; independent stages run concurrently."""

    def __init__(self) -> None:
        import ray

        from pipelines.engine.stop import on_sigterm
        from pipelines.training.ray_train import ensure_ray

        ensure_ray()
        on_sigterm()  # again: ray.init replaced it
        self.ray = ray
        self.task = ray.remote(execute_stage)
        self.refs: dict[Any, str] = {}

    def submit(self, name: str, kind: str, call: dict[str, Any], ctx: StageContext, resources: Resources) -> None:
        ref = self.task.options(num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=0,
                                name=f"ganpipe-stage:{ctx.pipeline}.{name}").remote(kind, call, ctx)
        self.refs[ref] = name

    def wait_any(self) -> tuple[str, dict[str, Any]]:
        (ref,), _ = self.ray.wait(list(self.refs), num_returns=1)
        name = self.refs.pop(ref)
        try:
            return name, self.ray.get(ref)
        except Exception as exc:  # the task's worker died (OOM, node lost): the stage failed
            now = time.time()
            return name, {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}", "log": str(exc),
                          "start": now, "end": now}

    @property
    def busy(self) -> bool:
        return bool(self.refs)


def effective_resources(stage: Stage, resolved: dict[str, Any]) -> Resources:
    """A stage's declared resources; unset cpus: 1, or 0 for a stage whose Ray Train workers reserve their own
    (a task holding a CPU while its trainer waits for one deadlocks a small cluster)."""
    if stage.resources.cpus is not None:
        return stage.resources
    trains_on_ray = stage.kind in ("train", "sweep") and resolved.get("scale", {}).get("workers", 0) > 0
    return Resources(cpus=0.0 if trains_on_ray else 1.0, gpus=stage.resources.gpus)


class Tracker:
    """The pipeline's MLflow side: its experiment, the parent run, stage runs, cache look-ups."""

    def __init__(self, pipe: Pipeline, tracking_uri: str, *, create: bool = True) -> None:
        from pipelines.tracking.runs import client, default_artifact_location

        self.uri = tracking_uri
        self.mlf = client(tracking_uri)
        exp = self.mlf.get_experiment_by_name(pipe.experiment)
        if exp is not None:
            self.exp_id = exp.experiment_id
        elif create:
            self.exp_id = self.mlf.create_experiment(
                pipe.experiment, artifact_location=default_artifact_location(pipe.store, pipe.experiment,
                                                                      tracking_uri=tracking_uri))
        else:
            self.exp_id = ""  # a dry run's look-up before the first run: nothing is cached

    @classmethod
    def existing(cls, pipe: Pipeline, tracking_uri: str) -> Tracker | None:
        """A dry run's read-only view: None when there is nothing to look up yet (no database file, no
        experiment), so that looking does not create them."""
        from pipelines.tracking.runs import store_exists

        if not store_exists(tracking_uri):
            return None
        tracker = cls(pipe, tracking_uri, create=False)
        return tracker if tracker.exp_id else None

    def cached(self, key: str) -> Any | None:
        found = self.mlf.search_runs([self.exp_id], filter_string=f"tags.`{CACHE_KEY_TAG}` = '{key}' and "
                                     "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                                     max_results=1)
        return found[0] if found else None

    def training_run_name(self, pipe: Pipeline, stage: Stage, key: str, forced: bool) -> str:
        """`PIPELINE-STAGE-KEY10`: a stage re-run after a failure (or a kill) resumes the same training run; a
        forced re-run, or one whose cached outputs were deleted, starts a fresh one (suffix -2, -3, ...)."""
        base = f"{pipe.name}-{stage.name}-{key[:10]}"
        prior = [r for r in self.mlf.search_runs(
            [self.exp_id], filter_string=f"tags.`{CACHE_KEY_TAG}` = '{key}' and tags.`ganpipe.stage` = '{stage.name}'"
            f" and tags.`ganpipe.pipeline` = '{pipe.name}'", order_by=["attributes.start_time DESC"], max_results=100)
            if r.data.tags.get("ganpipe.train_run_name")]
        if not prior:
            return base
        if prior[0].info.status != "FINISHED" and not forced:
            return prior[0].data.tags["ganpipe.train_run_name"]
        return f"{base}-{len({r.data.tags['ganpipe.train_run_name'] for r in prior}) + 1}"

    def start_parent(self, pipe: Pipeline, *, engine: str, code: dict[str, str], only: list[str],
                     force: list[str]) -> str:
        dag = {n: {"kind": s.kind, "needs": list(s.needs)} for n, s in pipe.stages.items()}
        tags = {"ganpipe.kind": "pipeline", "ganpipe.pipeline": pipe.name, "ganpipe.engine": engine,
                "ganpipe.dag": json.dumps(dag), "ganpipe.code_version": code["ganpipe"],
                "ganpipe.git_commit": code["git_commit"], "ganpipe.only": ",".join(only),
                "ganpipe.force": ",".join(force), "mlflow.note.content": pipe.description or f"pipeline {pipe.name}"}
        run_id = self.mlf.create_run(self.exp_id, run_name=f"{pipe.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                     tags=tags).info.run_id
        self.mlf.log_text(run_id, pipe.source, "pipeline.yaml")
        return run_id

    def stage_run(self, parent: str, pipe: Pipeline, stage: Stage, tags: dict[str, str],
                  params: dict[str, Any] | None) -> str:
        from mlflow.entities import Param

        from pipelines.spec.config import flatten

        base = {"mlflow.parentRunId": parent, "ganpipe.kind": "stage", "ganpipe.pipeline": pipe.name,
                "ganpipe.pipeline_run_id": parent, "ganpipe.stage": stage.name, "ganpipe.stage_kind": stage.kind,
                "ganpipe.needs": ",".join(stage.needs)}
        run_id = self.mlf.create_run(self.exp_id, run_name=stage.name, tags={**base, **tags}).info.run_id
        if params:
            flat = [Param(k[:250], str(v)[:6000]) for k, v in flatten(params).items()]
            for i in range(0, len(flat), 100):
                self.mlf.log_batch(run_id, params=flat[i:i + 100])
            self.mlf.log_dict(run_id, params, "config.json")
        return run_id

    def end(self, run_id: str, status: str, tags: dict[str, str], log: str = "") -> None:
        for k, v in tags.items():
            self.mlf.set_tag(run_id, k, str(v)[:7900])
        if log:
            self.mlf.log_text(run_id, log, "stage.log")
        self.mlf.set_terminated(run_id, status=status)


@dataclass
class Prepared:
    call: dict[str, Any]
    resolved: dict[str, Any]
    key: str
    inputs: dict[str, str]
    external: dict[str, str]
    hit: Any = None  # the cached stage run, when there is one


def prepare(pipe: Pipeline, stage: Stage, outputs: dict[str, dict[str, Any]], *, store: str, tracking_uri: str,
            code: dict[str, str], tracker: Tracker | None, forced: bool) -> Prepared:
    """Substitute references, resolve the command's options, compute the cache key and look it up."""
    config = substitute(stage.config, outputs)
    resolved, call = resolve_call(stage, config, store=store, tracking_uri=tracking_uri)
    kind = KINDS[stage.kind]
    ctx = StageContext(pipeline=pipe.name, stage=stage.name, store=store, tracking_uri=tracking_uri)
    external = kind.external(call, ctx) if kind.external else {}
    inputs = {n: _digest(outputs[n]) for n in stage.needs}
    key = _digest({"kind": stage.kind, "config": resolved, "inputs": inputs, "external": external, "code": code})
    prepared = Prepared(call=call, resolved=resolved, key=key, inputs=inputs, external=external)
    if tracker is not None and kind.cacheable and not forced:
        hit = tracker.cached(key)
        if hit is not None:
            cached_outputs = json.loads(hit.data.tags.get("ganpipe.outputs", "{}"))
            if kind.still_valid is None or kind.still_valid(cached_outputs, ctx):
                prepared.hit = hit
    return prepared


def run_pipeline(pipe: Pipeline, *, only: list[str] | None = None, force: list[str] | None = None,
                 dry_run: bool = False, engine: str | None = None, out: TextIO | None = None,
                 live: bool | None = None) -> RunOutcome:
    """Run (or with dry_run, plan) the pipeline; failed stages stop their dependents, other branches go on."""
    from pipelines.tracking.runs import resolve_tracking_uri

    out = out or sys.stdout
    only, force = list(only or []), list(force or [])
    for flag, names in (("--only", only), ("--force", force)):
        missing = [n for n in names if n not in pipe.stages]
        if missing:
            raise PipelineError(f"{flag}: no stage {', '.join(missing)} in {pipe.name} "
                                f"(stages: {', '.join(pipe.stages)})")
    selected = [n for n in pipe.stages if n in pipe.upstream(set(only))] if only else list(pipe.stages)
    forced = pipe.downstream(set(force))
    engine = engine or pipe.engine
    tracking_uri = resolve_tracking_uri(pipe.tracking_uri, create_home=not dry_run)
    code = code_version()
    if dry_run:
        return _plan(pipe, selected, forced, tracking_uri=tracking_uri, code=code, out=out)
    tracker = Tracker(pipe, tracking_uri)
    parent = tracker.start_parent(pipe, engine=engine, code=code, only=only, force=force)
    results: dict[str, StageResult] = {}
    outputs: dict[str, dict[str, Any]] = {}
    runs: dict[str, tuple[str, float]] = {}  # stage -> (its run id, start)
    progress = Progress([(n, pipe.stages[n].kind) for n in selected], out=out, live=live)
    executor: LocalExecutor | RayExecutor = RayExecutor() if engine == "ray" else LocalExecutor()
    code_tags = {"ganpipe.code_version": code["ganpipe"], "ganpipe.git_commit": code["git_commit"]}
    pending = list(selected)
    t0 = time.time()

    def stopped() -> None:  # `ganpipe jobs stop`: the stages in flight and the pipeline run end as KILLED
        for name in set(runs) - set(results):
            tracker.end(runs[name][0], "KILLED", {"ganpipe.status": "stopped"})
        tracker.end(parent, "KILLED", {})

    add_cleanup(stopped)
    try:
        while pending or executor.busy:
            for name in list(pending):
                stage = pipe.stages[name]
                blocked = [n for n in stage.needs if results.get(n) and results[n].status in ("failed", "skipped")]
                if blocked:
                    pending.remove(name)
                    why = f"needs {', '.join(blocked)}, which did not finish"
                    rid = tracker.stage_run(parent, pipe, stage, {"ganpipe.status": "skipped", "ganpipe.error": why,
                                                                  **code_tags}, None)
                    tracker.end(rid, "KILLED", {})
                    results[name] = StageResult("skipped", run_id=rid, error=why)
                    progress.update(name, "skipped", why)
                    continue
                if not all(n in results and results[n].status in ("done", "cached") for n in stage.needs):
                    continue
                pending.remove(name)
                _start(pipe, stage, parent=parent, forced=name in forced, outputs=outputs, results=results, runs=runs,
                       tracker=tracker, code=code, code_tags=code_tags, executor=executor, progress=progress,
                       tracking_uri=tracking_uri)
            if executor.busy:
                name, res = executor.wait_any()
                _finish(name, res, tracker=tracker, outputs=outputs, results=results, runs=runs, progress=progress)
    finally:
        remove_cleanup(stopped)
        progress.close()
        status = "FINISHED" if all(r.status in ("done", "cached") for r in results.values()) and \
            len(results) == len(selected) else "FAILED"
        counts = {s: sum(r.status == s for r in results.values()) for s in ("done", "cached", "failed", "skipped")}
        tracker.end(parent, status, {"ganpipe.summary": json.dumps(counts)})
    outcome = RunOutcome(pipeline=pipe.name, run_id=parent, stages=results)
    print_summary(outcome, pipe, out=out, seconds=time.time() - t0)
    return outcome


def _start(pipe: Pipeline, stage: Stage, *, parent: str, forced: bool, outputs: dict, results: dict, runs: dict,
           tracker: Tracker, code: dict, code_tags: dict, executor: Any, progress: Progress, tracking_uri: str) -> None:
    name = stage.name
    try:
        prep = prepare(pipe, stage, outputs, store=pipe.store, tracking_uri=tracking_uri, code=code,
                       tracker=tracker, forced=forced)
    except Exception as exc:  # a reference that resolved to something the stage cannot take
        rid = tracker.stage_run(parent, pipe, stage, {"ganpipe.status": "failed", **code_tags}, None)
        error = f"{type(exc).__name__}: {exc}"
        tracker.end(rid, "FAILED", {"ganpipe.error": error})
        results[name] = StageResult("failed", run_id=rid, error=error)
        progress.update(name, "failed", error)
        return
    tags = {CACHE_KEY_TAG: prep.key, "ganpipe.inputs": json.dumps(prep.inputs),
            "ganpipe.external": json.dumps(prep.external), **code_tags}
    if prep.hit is not None:
        hit_tags = prep.hit.data.tags
        cached_outputs = json.loads(hit_tags.get("ganpipe.outputs", "{}"))
        origin = hit_tags.get("ganpipe.cached_from") or prep.hit.info.run_id
        rid = tracker.stage_run(parent, pipe, stage, {**tags, "ganpipe.cached": "true", "ganpipe.cached_from": origin,
                                                      "ganpipe.status": "cached"}, prep.resolved)
        tracker.end(rid, "FINISHED", {"ganpipe.outputs": json.dumps(cached_outputs),
                                      "ganpipe.produced_run": hit_tags.get("ganpipe.produced_run", "")})
        outputs[name] = cached_outputs
        results[name] = StageResult("cached", outputs=cached_outputs, run_id=rid)
        progress.update(name, "cached", f"from {origin[:8]}")
        return
    run_name = tracker.training_run_name(pipe, stage, prep.key, forced) if stage.kind in ("train", "sweep") else ""
    resources = effective_resources(stage, prep.resolved)
    extra = {"ganpipe.train_run_name": run_name} if run_name else {}
    rid = tracker.stage_run(parent, pipe, stage, {**tags, **extra, "ganpipe.cached": "false", "ganpipe.status":
                                                  "running", "ganpipe.forced": str(forced).lower(),
                                                  "ganpipe.resources": json.dumps(resources.__dict__)}, prep.resolved)
    ctx = StageContext(pipeline=pipe.name, stage=name, store=pipe.store, tracking_uri=tracking_uri,
                       run_name=run_name, pipeline_run_id=parent, stage_run_id=rid)
    runs[name] = (rid, time.time())
    progress.update(name, "running", run_name)
    executor.submit(name, stage.kind, prep.call, ctx, resources)


def _finish(name: str, res: dict[str, Any], *, tracker: Tracker, outputs: dict, results: dict, runs: dict,
            progress: Progress) -> None:
    rid, start = runs[name]
    seconds = time.time() - start
    if res["ok"]:
        outs = res["outputs"]
        tracker.end(rid, "FINISHED", {"ganpipe.outputs": json.dumps(outs), "ganpipe.status": "done",
                                      "ganpipe.produced_run": outs.get("run_id", ""),
                                      "ganpipe.duration_s": f"{seconds:.1f}", "ganpipe.worker_pid": res["pid"]},
                    res["log"])
        outputs[name] = outs
        results[name] = StageResult("done", outputs=outs, run_id=rid, seconds=seconds)
        progress.update(name, "done")
    else:
        tracker.end(rid, "FAILED", {"ganpipe.error": res["error"], "ganpipe.status": "failed",
                                    "ganpipe.duration_s": f"{seconds:.1f}", "ganpipe.worker_pid": res.get("pid", "")},
                    res["log"])
        tail = "\n".join(res["log"].rstrip().splitlines()[-LOG_TAIL:])
        results[name] = StageResult("failed", run_id=rid, error=res["error"] + (f"\n{tail}" if tail else ""),
                                    seconds=seconds)
        progress.update(name, "failed", res["error"])


def _plan(pipe: Pipeline, selected: list[str], forced: set[str], *, tracking_uri: str, code: dict[str, str],
          out: TextIO) -> RunOutcome:
    """--dry-run: what would run and what is cached, computed from the cache alone, and what the run would need
    and cannot reach; nothing is written (no experiment, database, bucket or folder is created)."""
    from pipelines.orchestration.reach import unreachable

    uri = tracking_uri
    problems = unreachable(pipe, tracking_uri=uri)
    tracker = None if any(p.startswith("tracking server") for p in problems) else Tracker.existing(pipe, uri)
    outputs: dict[str, dict[str, Any]] = {}
    results: dict[str, StageResult] = {}
    width = max(len(n) for n in selected)
    needs_width = max(len(",".join(pipe.stages[n].needs) or "-") for n in selected)
    out.write(f"pipeline {pipe.name} ({len(selected)} stages, engine {pipe.engine}); store {pipe.store}; "
              f"tracking {uri}\n")
    for name in selected:
        stage = pipe.stages[name]
        waits = [n for n in stage.needs if n not in outputs]
        if waits:
            plan = f"run (after {', '.join(waits)})"
        else:
            try:
                prep = prepare(pipe, stage, outputs, store=pipe.store, tracking_uri=uri, code=code, tracker=tracker,
                               forced=name in forced)
            except Exception as exc:
                plan = f"would fail: {exc}"
            else:
                if prep.hit is not None:
                    outputs[name] = json.loads(prep.hit.data.tags.get("ganpipe.outputs", "{}"))
                    plan = f"cached (stage run {prep.hit.info.run_id[:8]}, key {prep.key[:12]})"
                else:
                    plan = f"run{' (forced)' if name in forced else ''} (key {prep.key[:12]})"
        res = effective_resources(stage, _literal_scale(stage))
        needs = ",".join(stage.needs) or "-"
        out.write(f"  {name:<{width}}  {stage.kind:<7}  needs {needs:<{needs_width}}  cpus {res.cpus:g} gpus "
                  f"{res.gpus:g}  {plan}\n")
        results[name] = StageResult("cached" if name in outputs else "pending", outputs=outputs.get(name, {}))
    for problem in problems:
        out.write(f"unreachable: {problem}\n")
    return RunOutcome(pipeline=pipe.name, run_id="", stages=results, unreachable=problems)


def _literal_scale(stage: Stage) -> dict[str, Any]:
    if stage.kind not in ("train", "sweep"):
        return {}
    from pipelines.orchestration.stage_kinds import stage_train_spec

    return {"scale": {"workers": stage_train_spec(stage, stage.config, literal_only=True).scale.workers}}


def format_outputs(outputs: dict[str, Any]) -> str:
    parts = []
    for k, v in outputs.items():
        if isinstance(v, dict):
            v = " ".join(f"{mk}={mv:.4g}" if isinstance(mv, float) else f"{mk}={mv}" for mk, mv in v.items()) or "-"
            parts.append(f"{k}: {v}")
        elif k == "digest" and isinstance(v, str):
            parts.append(f"{k}={v[:12]}")
        elif v not in ("", None):
            parts.append(f"{k}={v}")
    return "  ".join(parts)


def print_summary(outcome: RunOutcome, pipe: Pipeline, *, out: TextIO, seconds: float) -> None:
    counts = {s: sum(r.status == s for r in outcome.stages.values()) for s in ("done", "cached", "failed", "skipped")}
    out.write(f"\npipeline {pipe.name}: " + ", ".join(f"{v} {k}" for k, v in counts.items()) +
              f" in {seconds:.1f}s (MLflow run {outcome.run_id}; details: ganpipe runs show {outcome.run_id[:8]})\n")
    width = max(len(n) for n in outcome.stages)
    for name, r in outcome.stages.items():
        detail = format_outputs(r.outputs) if r.status in ("done", "cached") else r.error
        lines = detail.splitlines() or [""]
        out.write(f"  {name:<{width}}  {r.status:<7}  {lines[0]}\n")
        for line in lines[1:]:
            out.write(f"  {'':<{width}}  {'':<7}  | {line}\n")
    out.flush()




