"""What `ganpipe run --dry-run` checks before a real run would start: that the pipeline's store, its tracking
server and its prep stages' local sources can be reached. Each check only reads (a bucket is asked for, never
created; a tracking database that does not exist yet is not opened), and each problem is one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.orchestration.dag import Pipeline

BUILTIN_SOURCES = ("mnist5k", "digits", "skimage-photos")  # data_prep.sources.BUILTINS, without importing it


def unreachable(pipe: Pipeline, *, tracking_uri: str) -> list[str]:
    """One line for each thing the pipeline needs and cannot reach: store bucket, tracking server, sources."""
    problems = [p for p in (store_problem(pipe.store), tracking_problem(tracking_uri)) if p]
    for stage in pipe.stages.values():
        if stage.kind == "prep":
            problems += [f"stage {stage.name}: {p}" for p in source_problems(stage.config)]
    return problems


def store_problem(url: str) -> str:
    """'' when the store can be written to, as far as a read can tell; a local folder is created when needed."""
    if not url.startswith("s3://"):
        return ""
    from data_prep.storage import open_store
    from data_prep.store_base import StoreError

    try:
        return open_store(url).bucket_problem()
    except StoreError as exc:  # e.g. an invalid bucket name
        return str(exc)


def tracking_problem(uri: str) -> str:
    """'' unless the tracking URI names a server that does not answer (a file store is made when needed)."""
    from pipelines.ops.ui import is_server, server_answers

    if not is_server(uri):
        return ""
    why = server_answers(uri)
    return f"tracking server {uri} does not answer ({why})" if why else ""


def source_problems(config: dict[str, Any]) -> list[str]:
    """A prep stage's local sources (and `images` folder) that do not exist. References to other stages,
    built-in sets and remote URLs are not checked here."""
    named = config.get("sources", config.get("source"))
    paths = [named] if isinstance(named, str) else list(named or [])
    if isinstance(config.get("images"), str):
        paths.append(config["images"])
    out = []
    for spec in paths:
        if not isinstance(spec, str) or "${" in spec or spec in BUILTIN_SOURCES:
            continue
        if "://" in spec and not spec.startswith("file://"):
            continue
        path = Path(spec.removeprefix("file://")).expanduser()
        if not path.exists():
            out.append(f"source {spec} does not exist (looked for {path.absolute()})")
    return out
