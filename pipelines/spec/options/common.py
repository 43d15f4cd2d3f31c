"""Option pieces several commands share, and the defaults that the CLI's help and the code both read."""

from __future__ import annotations

import argparse

from pipelines.spec.defaults import DEFAULT_STORE


def add_store_args(p: argparse.ArgumentParser) -> None:
    """--store and --s3-endpoint: where datasets, checkpoints and caches live."""
    p.add_argument("--store", default=None,
                   help=f"object store URL: a folder or s3://bucket/prefix (default: {DEFAULT_STORE})")
    p.add_argument("--s3-endpoint", default=None,
                   help="S3 API endpoint, e.g. http://127.0.0.1:8333 (default: $GANPIPE_S3_ENDPOINT, then AWS)")
