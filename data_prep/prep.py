"""The prep stage: source -> validate -> transform -> shards + index + quarantine list + manifest (last).

`write_dataset` is kind-independent: it takes one (source, encoder) part, or one per domain for `unpaired`.
Re-running with the same source fingerprint and prep config changes nothing (`reused=True`); any change
writes version+1 over the same layout and removes shards the new manifest no longer lists. The kinds other
than `images` are assembled in kinds.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from data_prep.encoders import EncodedSample, Encoder, encode_many, images_encoder
from data_prep.manifest import (
    INDEX,
    KINDS,
    MANIFEST,
    QUARANTINE,
    SHARDS,
    IndexRow,
    Manifest,
    ShardInfo,
    index_bytes,
    quarantine_bytes,
    read_quarantine,
)
from data_prep.options import AttributeOptions, CaptionOptions, PairedOptions, SourceOptions
from data_prep.shards import LAYOUT_SPLITS, ShardWriter, holdout_count, split_entries
from data_prep.sources import BadSample, Source, SourceEntry, SourceError, get_source, limited
from data_prep.storage import Store, open_store
from data_prep.transforms import IMAGE_FORMATS, TransformConfig
from data_prep.validate import QuarantineEntry

PREP_FORMAT = 1  # bump when the same config would now produce different bytes


@dataclass(frozen=True, kw_only=True)
class PrepConfig:
    """source: a built-in set or a path (which ones a kind accepts: `ganpipe prep --help`); kind: one of
    KINDS; name: dataset name (default from the source); store: store URL (path, file://,
    s3://bucket/prefix); channels: 1 or 3 (default from the source: 1 for grey built-ins, 3 otherwise);
    holdout: test count (int) or fraction (float), stratified by label, unused when the source's layout
    fixes splits; shard_size: samples per shard; image_format: "png" | "jpeg"; min_size: smallest
    accepted side. The sections below hold each kind's own options."""

    source: str
    kind: str = "images"
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
    inputs: SourceOptions = field(default_factory=SourceOptions)
    paired: PairedOptions = field(default_factory=PairedOptions)
    attributes: AttributeOptions = field(default_factory=AttributeOptions)
    captioned: CaptionOptions = field(default_factory=CaptionOptions)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
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
    source = limited(get_source(cfg.source, crops=cfg.inputs.crops, seed=cfg.seed), cfg.inputs.limit)
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


@dataclass(frozen=True, kw_only=True)
class _Written:
    """One part's (a whole dataset's, or one domain's) shards, index rows, quarantine and notes."""

    shards: list[ShardInfo]
    rows: list[IndexRow]
    counts: dict[str, int]
    quarantined: list[QuarantineEntry]
    notes: Counter[str]


def write_dataset(
    *,
    source: Source | None = None,
    encoder: Encoder | None = None,
    domains: Mapping[str, tuple[Source, Encoder]] | None = None,
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
    """Kind-independent prep: split, encode, shard, then index, quarantine list and manifest (last).

    Give `source` and `encoder`, or `domains` ({"domain_a": (source, encoder), "domain_b": ...}) for a
    dataset with one shard set per domain; then quarantined keys and origins are prefixed with the domain
    and the manifest's `extra["domains"]` holds each domain's source, counts and class names.
    """
    if (source is None) == (domains is None) or (source is not None and encoder is None):
        raise ValueError("give either source and encoder, or domains")
    parts: dict[str | None, tuple[Source, Encoder]] = (
        dict(domains) if domains is not None else {None: (source, encoder)}  # type: ignore[dict-item]
    )
    dataset = store.child(f"datasets/{name}")
    prep = json.loads(json.dumps(prep))  # the form it takes after a manifest round trip
    if domains is None:
        fingerprint = parts[None][0].fingerprint()
    else:
        digest = hashlib.sha256()
        for domain, (src, _) in parts.items():
            digest.update(f"{domain}\t{src.fingerprint()}\n".encode())
        fingerprint = digest.hexdigest()
    previous = _read_previous(dataset)
    if previous and previous.kind != kind:
        raise ValueError(
            f"{dataset.url} already holds a {previous.kind!r} dataset: give another --name for this {kind!r} one"
        )
    if previous and (previous.kind, previous.prep, previous.source_fingerprint) == (kind, prep, fingerprint):
        return PrepResult(
            manifest=previous,
            dataset_url=dataset.url,
            reused=True,
            quarantined=read_quarantine(dataset),
            notes=dict(previous.notes),
        )

    listed = {domain: src.entries() for domain, (src, _) in parts.items()}
    total = sum(len(entries) for entries in listed.values())
    bar = tqdm(total=total, desc=f"prep {name}", unit="img", file=sys.stderr, disable=not progress)
    written: dict[str | None, _Written] = {}
    with tempfile.TemporaryDirectory(prefix="ganpipe-prep-") as tmp, bar:
        for domain, (src, enc) in parts.items():
            splits = split_entries(listed[domain], holdout=holdout, seed=seed)
            written[domain] = _write_part(
                dataset, src, enc, splits=splits, domain=domain, shard_size=shard_size, tmp_dir=tmp, bar=bar
            )
    for domain, part in written.items():
        if part.counts["train"] == 0:
            reasons = dict(Counter(q.reason for q in part.quarantined))
            spec = parts[domain][0].spec
            raise SourceError(f"no usable training samples in {spec} (quarantined: {reasons})")

    quarantined = [q for part in written.values() for q in part.quarantined]
    notes = sum((part.notes for part in written.values()), Counter())
    counts: Counter[str] = Counter()
    for part in written.values():
        counts.update(part.counts)
    class_names = [src.class_names for src, _ in parts.values()]
    extra = dict(extra or {})
    if domains is not None:
        extra["domains"] = {
            domain: {"source": src.spec, "counts": written[domain].counts, "class_names": src.class_names}
            for domain, (src, _) in parts.items()
        }
    manifest = Manifest(
        name=name,
        kind=kind,
        version=previous.version + 1 if previous else 1,
        image_size=image_size,
        channels=channels,
        counts={split: counts[split] for split in LAYOUT_SPLITS if split in counts},
        shards=[s for part in written.values() for s in part.shards],
        class_names=class_names[0] if all(c == class_names[0] for c in class_names) else None,
        prep=prep,
        source_fingerprint=fingerprint,
        quarantine=dict(sorted(Counter(q.reason for q in quarantined).items())),
        notes=dict(sorted(notes.items())),
        extra=extra,
    )
    dataset.put_bytes(INDEX, index_bytes([row for part in written.values() for row in part.rows]))
    dataset.put_bytes(QUARANTINE, quarantine_bytes(quarantined))
    dataset.put_bytes(MANIFEST, manifest.to_json().encode())
    listed_shards = {s.path for s in manifest.shards}
    for key in dataset.list():
        if _is_shard(key) and key not in listed_shards:  # shards of an older, larger version
            dataset.delete(key)
    return PrepResult(
        manifest=manifest, dataset_url=dataset.url, reused=False, quarantined=quarantined, notes=dict(notes)
    )


def _is_shard(key: str) -> bool:
    parts = key.split("/")
    return key.endswith(".tar") and (
        (len(parts) == 2 and parts[0] == SHARDS) or (len(parts) == 3 and parts[1] == SHARDS)
    )


def _write_part(
    dataset: Store,
    source: Source,
    encoder: Encoder,
    *,
    splits: dict[str, list[SourceEntry]],
    domain: str | None,
    shard_size: int,
    tmp_dir: str,
    bar: tqdm,
) -> _Written:
    """Read, encode (in the encoder's batches) and shard every split of one part."""
    quarantined: list[QuarantineEntry] = []
    notes: Counter[str] = Counter()
    batch_size = max(1, getattr(encoder, "batch_size", 1))
    writers = {}
    for split, entries in splits.items():
        writer = writers[split] = ShardWriter(
            dataset, split=split, shard_size=shard_size, tmp_dir=tmp_dir, domain=domain
        )
        for start in range(0, len(entries), batch_size):
            chunk = entries[start : start + batch_size]
            results: list[EncodedSample | QuarantineEntry | None] = [None] * len(chunk)
            raws = []
            for i, entry in enumerate(chunk):
                try:
                    raws.append((i, source.read(entry)))
                except BadSample as bad:
                    results[i] = QuarantineEntry(
                        key=entry.key, origin=entry.origin, reason=bad.reason, detail=bad.detail
                    )
                except OSError as exn:
                    detail = f"cannot read: {exn.strerror or exn}"
                    results[i] = QuarantineEntry(
                        key=entry.key, origin=entry.origin, reason="unreadable", detail=detail
                    )
            for (i, _), result in zip(raws, encode_many(encoder, [raw for _, raw in raws]), strict=True):
                results[i] = result
            for result in results:
                if isinstance(result, EncodedSample):
                    writer.add(result)
                    notes.update(result.notes)
                elif result is not None:
                    if domain is not None:
                        result = dataclasses.replace(
                            result, key=f"{domain}/{result.key}", origin=f"{domain}/{result.origin}"
                        )
                    quarantined.append(result)
                bar.update()
        writer.close()
    rows = [row for w in writers.values() for row in w.rows]
    if domain is not None:
        rows = [dataclasses.replace(row, extra={**row.extra, "domain": domain}) for row in rows]
    counts = {split: len(w.rows) for split, w in writers.items()}
    return _Written(
        shards=[s for w in writers.values() for s in w.shards],
        rows=rows,
        counts=counts,
        quarantined=quarantined,
        notes=notes,
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
    domains = m.extra.get("domains") or {None: {"counts": m.counts}}
    for domain, info in domains.items():
        if domain is not None:
            lines.append(f"{domain} ({info['source']}):")
        for split in sorted(info["counts"], key=lambda s: (LAYOUT_SPLITS.index(s) if s in LAYOUT_SPLITS else 9, s)):
            count, shards = info["counts"][split], m.split_shards(split, domain=domain)
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
