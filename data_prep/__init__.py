"""Datasets in, WebDataset shards + manifest out: sources, validation, transforms, shards, storage, reading.

Importing this package has no side effects and loads nothing: each name below loads its module on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from data_prep.batches import dataset_batches, image_batches, load_split_arrays
    from data_prep.kinds import prep_dataset
    from data_prep.manifest import KINDS, IndexRow, Manifest, ShardInfo
    from data_prep.options import AttributeOptions, CaptionOptions, PairedOptions, SourceOptions
    from data_prep.prep import PrepConfig, PrepResult, format_summary, prep_images, write_dataset
    from data_prep.reader import DatasetNotFound, ReadStats, iter_samples, load_split, read_manifest
    from data_prep.sources import RawSample, Source, SourceError, get_source
    from data_prep.storage import KeyNotFound, LocalStore, Store, StoreError, open_store
    from data_prep.validate import QuarantineEntry, validate

# Every name loads on first use, so importing one light module (data_prep.prefetch, data_prep.options) does not
# pull in pyarrow, PIL, torch or webdataset: the plain training loop runs where those are missing.
_LAZY = {
    **dict.fromkeys(("KINDS", "IndexRow", "Manifest", "ShardInfo"), "manifest"),
    **dict.fromkeys(("AttributeOptions", "CaptionOptions", "PairedOptions", "SourceOptions"), "options"),
    **dict.fromkeys(("PrepConfig", "PrepResult", "format_summary", "prep_images", "write_dataset"), "prep"),
    **dict.fromkeys(("RawSample", "Source", "SourceError", "get_source"), "sources"),
    **dict.fromkeys(("KeyNotFound", "LocalStore", "Store", "StoreError", "open_store"), "storage"),
    **dict.fromkeys(("QuarantineEntry", "validate"), "validate"),
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
