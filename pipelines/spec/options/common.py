"""Option pieces several commands share, and the defaults that the CLI's help and the code both read.

Help texts show the effective default: the value in the environment (which the CLI fills from the local
services' env file before it builds the parser), else the built-in one.
"""

from __future__ import annotations

import argparse
import os
from urllib.parse import urlsplit

from pipelines.spec.defaults import DEFAULT_HOME, STORE_ENV, default_store


def _shown(value: str) -> str:
    """A value as help may print it: no password of a URL, and argparse's %-formatting escaped."""
    parts = urlsplit(value)
    if parts.password:
        value = value.replace(f":{parts.password}@", ":***@")
    return value.replace("%", "%%")


def store_help() -> str:
    what = "object store URL: a folder or s3://bucket/prefix"
    if os.environ.get(STORE_ENV):
        return f"{what} (default: {_shown(default_store())}, from ${STORE_ENV})"
    return f"{what} (default: ${STORE_ENV}, else {default_store()})"


def tracking_help() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return f"MLflow tracking URI (default: {_shown(uri)}, from $MLFLOW_TRACKING_URI)"
    return f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///{DEFAULT_HOME}/mlflow.db)"


def add_tracking_arg(p: argparse.ArgumentParser, *, default: str | None = "") -> None:
    """--tracking-uri, its help showing where runs go without it."""
    p.add_argument("--tracking-uri", default=default, help=tracking_help())


def add_store_args(p: argparse.ArgumentParser) -> None:
    """--store and --s3-endpoint: where datasets, checkpoints and caches live."""
    p.add_argument("--store", default=None, help=store_help())
    p.add_argument("--s3-endpoint", default=None,
                   help="S3 API endpoint, e.g. http://127.0.0.1:8333 (default: $GANPIPE_S3_ENDPOINT, then AWS)")
