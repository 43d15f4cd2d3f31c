"""Datasets in, WebDataset shards + manifest out: sources, validation, transforms, shards, storage, reading.

Importing this package has no side effects; the reader (which needs torch and webdataset) loads lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from data_prep.manifest import IndexRow, Manifest, ShardInfo
from data_prep.prep import PrepConfig, PrepResult, format_summary, prep_images, write_dataset
from data_prep.sources import RawSample, Source, SourceError, get_source
from data_prep.storage import KeyNotFound, LocalStore, Store, StoreError, open_store
from data_prep.validate import QuarantineEntry, validate

if TYPE_CHECKING:
    from data_prep.reader import DatasetNotFound, image_batches, iter_samples, load_split, read_manifest

_READER = ("DatasetNotFound", "image_batches", "iter_samples", "load_split", "read_manifest")

__all__ = [
    "DatasetNotFound",
    "IndexRow",
    "KeyNotFound",
    "LocalStore",
    "Manifest",
    "PrepConfig",
    "PrepResult",
    "QuarantineEntry",
    "RawSample",
    "ShardInfo",
    "Source",
    "SourceError",
    "Store",
    "StoreError",
    "format_summary",
    "get_source",
    "image_batches",
    "iter_samples",
    "load_split",
    "open_store",
    "prep_images",
    "read_manifest",
    "validate",
    "write_dataset",
]


def __getattr__(name: str) -> Any:
    if name in _READER:
        from data_prep import reader

        return getattr(reader, name)
    raise AttributeError(f"module 'data_prep' has no attribute {name!r}")
