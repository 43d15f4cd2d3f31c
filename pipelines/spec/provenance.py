"""Which code made a run, a model or a pipeline stage: the source tree's git commit and the package version."""

from __future__ import annotations

import functools
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The source tree's commit, once per process ("" outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def code_version() -> dict[str, str]:
    """Package version and git commit ("" when not in a checkout): part of every cache key."""
    try:
        package = version("ganpipe")
    except PackageNotFoundError:
        package = "unknown"
    return {"ganpipe": package, "git_commit": git_commit()}
