"""Sample encoders: RawSample -> the files of one WebDataset sample, or a QuarantineEntry.

One encoder per dataset kind; a new kind adds a source and an encoder here, and prep, shards, manifest
and index handle it unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from data_prep.sources import RawSample
from data_prep.transforms import TransformConfig, transform
from data_prep.validate import QuarantineEntry, validate


@dataclass(frozen=True, kw_only=True)
class EncodedSample:
    """files: tar member suffix -> payload, e.g. {"image.png": ..., "cls": b"3"}; sha256 of the main payload;
    index_extra: kind-specific index.parquet columns."""

    key: str
    origin: str
    files: dict[str, bytes]
    label: int | None
    sha256: str
    notes: tuple[str, ...] = ()
    index_extra: dict[str, Any] = field(default_factory=dict)


SampleEncoder = Callable[[RawSample], "EncodedSample | QuarantineEntry"]


def images_encoder(cfg: TransformConfig, *, min_size: int = 8) -> SampleEncoder:
    """The `images` kind: `image.{png|jpg}` plus `cls` (ascii int) when labelled."""

    def encode(raw: RawSample) -> EncodedSample | QuarantineEntry:
        valid = validate(raw, channels=cfg.channels, min_size=min_size)
        if isinstance(valid, QuarantineEntry):
            return valid
        try:
            payload = transform(valid.pixels, cfg)
        except Exception as exn:  # one odd image must not stop the run
            detail = f"transform failed: {type(exn).__name__}: {exn}"
            return QuarantineEntry(key=raw.key, origin=raw.origin, reason="unreadable", detail=detail)
        files = {f"image.{cfg.extension}": payload}
        if raw.label is not None:
            files["cls"] = str(int(raw.label)).encode("ascii")
        digest = hashlib.sha256(payload).hexdigest()
        return EncodedSample(
            key=raw.key, origin=raw.origin, files=files, label=raw.label, sha256=digest, notes=valid.notes
        )

    return encode
