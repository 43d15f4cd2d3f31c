"""Datasets in, WebDataset shards + manifest out: sources, validation, transforms, shards, storage, reading.

Importing this package has no side effects; the reader (which needs torch and webdataset) loads lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from data_prep.manifest import KINDS, IndexRow, Manifest, ShardInfo
from data_prep.options import AttributeOptions, CaptionOptions, PairedOptions, SourceOptions
from data_prep.prep import PrepConfig, PrepResult, format_summary, prep_images, write_dataset
from data_prep.sources import RawSample, Source, SourceError, get_source
from data_prep.storage import KeyNotFound, LocalStore, Store, StoreError, open_store
from data_prep.validate import QuarantineEntry, validate

if TYPE_CHECKING:
    from data_prep.batches import dataset_batches, image_batches, load_split_arrays
    from data_prep.kinds import prep_dataset
    from data_prep.reader import DatasetNotFound, ReadStats, iter_samples, load_split, read_manifest

# Loaded on first use: the reader needs torch and webdataset, prep_dataset the kinds' sources.
_LAZY = {
    "DatasetNotFound": "reader",
    "ReadStats": "reader",
    "image_batches": "batches",
    "iter_samples": "reader",
    "load_split": "reader",
    "read_manifest": "reader",
    "dataset_batches": "batches",
    "load_split_arrays": "batches",
    "prep_dataset": "kinds",
}

__all__ = [
    "KINDS",
    "AttributeOptions",
    "CaptionOptions",
    "DatasetNotFound",
    "PairedOptions",
    "SourceOptions",
    "dataset_batches",
    "load_split_arrays",
    "prep_dataset",
    "IndexRow",
    "KeyNotFound",
    "LocalStore",
    "Manifest",
    "PrepConfig",
    "PrepResult",
    "QuarantineEntry",
    "ReadStats",
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
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"data_prep.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'data_prep' has no attribute {name!r}")
