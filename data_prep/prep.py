"""The prep stage: source -> validate -> transform -> shards + index + quarantine list + manifest (last).

Re-running with the same source fingerprint and prep config changes nothing (`reused=True`); any change
writes version+1 over the same layout and removes shards the new manifest no longer lists.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from data_prep.encoders import EncodedSample, SampleEncoder, images_encoder
from data_prep.manifest import (
    INDEX,
    MANIFEST,
    QUARANTINE,
    SHARDS,
    Manifest,
    index_bytes,
    quarantine_bytes,
    read_quarantine,
)
from data_prep.shards import SPLITS, ShardWriter, holdout_count, split_entries
from data_prep.sources import Source, SourceError, get_source
from data_prep.storage import Store, open_store
from data_prep.transforms import IMAGE_FORMATS, TransformConfig
from data_prep.validate import QuarantineEntry

PREP_FORMAT = 1  # bump when the same config would now produce different bytes


@dataclass(frozen=True, kw_only=True)
class PrepConfig:
    """source: "mnist5k" | "digits" | a folder; name: dataset name (default from the source);
    store: store URL (path, file://, s3://bucket/prefix); channels: 1 or 3 (default from the source:
    1 for built-ins, 3 for folders); holdout: test count (int) or fraction (float), stratified by label;
    shard_size: samples per shard; image_format: "png" | "jpeg"; min_size: smallest accepted side."""

    source: str
    name: str | None = None
    store: str = ".ganpipe/store"
    image_size: int = 32
    channels: int | None = None
    holdout: float | int = 0.2
    shard_size: int = 1000
    image_format: str = "png"
    min_size: int = 8
    seed: int = 0
    s3_endpoint: str | None = None

    def __post_init__(self) -> None:
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}", self.name):
            raise ValueError(f"name must be letters, digits, '_' or '-', got {self.name!r}")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None, got {self.channels}")
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(
                f"image_format must be one of {sorted(IMAGE_FORMATS)}, got {self.image_format!r}"
            )
        if self.shard_size < 1 or self.min_size < 1 or self.image_size < 4:
            raise ValueError("shard_size and min_size must be >= 1 and image_size >= 4")
        holdout_count(10**9, self.holdout)  # type/range check only


@dataclass(frozen=True, kw_only=True)
class PrepResult:
    """The dataset written (or found unchanged) and what was left out."""

    manifest: Manifest
    dataset_url: str
    reused: bool
    quarantined: list[QuarantineEntry]
    notes: dict[str, int]


def prep_images(cfg: PrepConfig, *, progress: bool = True) -> PrepResult:
    """Prepare an `images` dataset (DESIGN.md section 3) from `cfg.source` into `cfg.store`."""
    source = get_source(cfg.source)
    channels = cfg.channels or source.default_channels
    transform = TransformConfig(
        image_size=cfg.image_size, channels=channels, image_format=cfg.image_format, margin=source.margin
    )
    prep = {
        "format": PREP_FORMAT,
        "source": source.spec,
        "image_size": cfg.image_size,
        "channels": channels,
        "holdout": cfg.holdout,
        "shard_size": cfg.shard_size,
        "image_format": cfg.image_format,
        "min_size": cfg.min_size,
        "seed": cfg.seed,
        "margin": source.margin,
    }
    return write_dataset(
        source=source,
        encoder=images_encoder(transform, min_size=cfg.min_size),
        kind="images",
        name=cfg.name or source.name,
        store=open_store(cfg.store, s3_endpoint=cfg.s3_endpoint),
        prep=prep,
        image_size=cfg.image_size,
        channels=channels,
        holdout=cfg.holdout,
        shard_size=cfg.shard_size,
        seed=cfg.seed,
        progress=progress,
    )


def write_dataset(
    *,
    source: Source,
    encoder: SampleEncoder,
    kind: str,
    name: str,
    store: Store,
    prep: dict[str, Any],
    image_size: int,
    channels: int,
    holdout: float | int,
    shard_size: int,
    seed: int,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> PrepResult:
    """Kind-independent prep: split, encode, shard, then index, quarantine list and manifest (last)."""
    dataset = store.child(f"datasets/{name}")
    prep = json.loads(json.dumps(prep))  # the form it takes after a manifest round trip
    fingerprint = source.fingerprint()
    previous = _read_previous(dataset)
    if previous and (previous.kind, previous.prep, previous.source_fingerprint) == (kind, prep, fingerprint):
        return PrepResult(
            manifest=previous,
            dataset_url=dataset.url,
            reused=True,
            quarantined=read_quarantine(dataset),
            notes=dict(previous.notes),
        )

    entries = source.entries()
    splits = split_entries(entries, holdout=holdout, seed=seed)
    quarantined: list[QuarantineEntry] = []
    notes: Counter[str] = Counter()
    writers = {}
    bar = tqdm(total=len(entries), desc=f"prep {name}", unit="img", file=sys.stderr, disable=not progress)
    with tempfile.TemporaryDirectory(prefix="ganpipe-prep-") as tmp, bar:
        for split in SPLITS:
            writer = writers[split] = ShardWriter(dataset, split=split, shard_size=shard_size, tmp_dir=tmp)
            for entry in splits[split]:
                try:
                    result = encoder(source.read(entry))
                except OSError as exn:
                    detail = f"cannot read: {exn.strerror or exn}"
                    result = QuarantineEntry(
                        key=entry.key, origin=entry.origin, reason="unreadable", detail=detail
                    )
                if isinstance(result, EncodedSample):
                    writer.add(result)
                    notes.update(result.notes)
                else:
                    quarantined.append(result)
                bar.update()
            writer.close()

    counts = {split: len(writers[split].rows) for split in SPLITS}
    if counts["train"] == 0:
        reasons = dict(Counter(q.reason for q in quarantined))
        raise SourceError(f"no usable training samples in {source.spec} (quarantined: {reasons})")
    manifest = Manifest(
        name=name,
        kind=kind,
        version=previous.version + 1 if previous else 1,
        image_size=image_size,
        channels=channels,
        counts=counts,
        shards=[s for w in writers.values() for s in w.shards],
        class_names=source.class_names,
        prep=prep,
        source_fingerprint=fingerprint,
        quarantine=dict(sorted(Counter(q.reason for q in quarantined).items())),
        notes=dict(sorted(notes.items())),
        extra=extra or {},
    )
    dataset.put_bytes(INDEX, index_bytes([row for w in writers.values() for row in w.rows]))
    dataset.put_bytes(QUARANTINE, quarantine_bytes(quarantined))
    dataset.put_bytes(MANIFEST, manifest.to_json().encode())
    listed = {s.path for s in manifest.shards}
    for key in dataset.list(f"{SHARDS}/"):
        if key not in listed:  # shards of an older, larger version
            dataset.delete(key)
    return PrepResult(
        manifest=manifest, dataset_url=dataset.url, reused=False, quarantined=quarantined, notes=dict(notes)
    )


def _read_previous(dataset: Store) -> Manifest | None:
    if not dataset.exists(MANIFEST):
        return None
    try:
        return Manifest.from_json(dataset.get_bytes(MANIFEST))
    except (ValueError, TypeError) as exn:
        raise ValueError(
            f"{dataset.url}/{MANIFEST} is not a valid manifest ({exn}); delete it or choose another name"
        ) from exn


def format_summary(result: PrepResult) -> str:
    """A small text table: samples, shards and bytes per split; each quarantined file (first 20) and why;
    notes; URL and digest."""
    m = result.manifest
    status = "unchanged" if result.reused else "written"
    lines = [
        f"dataset {m.name} v{m.version} ({m.kind}, {m.image_size}x{m.image_size}x{m.channels}) {status}",
        f"{'split':<8}{'samples':>10}{'shards':>8}{'bytes':>14}",
    ]
    for split in sorted(m.counts, key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s)):
        count, shards = m.counts[split], m.split_shards(split)
        lines.append(f"{split:<8}{count:>10,}{len(shards):>8}{sum(s.bytes for s in shards):>14,}")
    quarantined = ", ".join(f"{reason} {n}" for reason, n in m.quarantine.items()) or "none"
    lines.append(f"quarantined: {quarantined}")
    shown = 20
    for entry in result.quarantined[:shown]:
        lines.append(f"  {entry.origin}: {entry.reason} ({entry.detail})")
    if len(result.quarantined) > shown:
        lines.append(f"  ... {len(result.quarantined) - shown} more in quarantine.json")
    if m.notes:
        lines.append("notes: " + ", ".join(f"{note} {n}" for note, n in m.notes.items()))
    lines += [f"url:    {result.dataset_url}", f"digest: sha256:{m.digest}"]
    return "\n".join(lines)
