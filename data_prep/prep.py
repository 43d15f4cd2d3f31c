"""The prep stage: source -> validate -> transform -> shards + index + quarantine list + manifest (last).

`write_dataset` is kind-independent: it takes one (source, encoder) part, or one per domain for `unpaired`,
drops exact duplicates, splits, and runs the per-shard stages (stages.py) in this process or on Ray.
Re-running with the same source fingerprint and prep config changes nothing (`reused=True`); a re-run after
a crash writes only the missing shards; any change writes version+1 over the same layout (the old manifest
is removed before its shards are replaced) and removes shards the new manifest no longer lists. The kinds
other than `images` are assembled in kinds.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from data_prep.encoders import Encoder, images_encoder
from data_prep.manifest import (
    INDEX,
    KINDS,
    MANIFEST,
    QUARANTINE,
    QUARANTINE_JSON,
    SHARDS,
    IndexRow,
    Manifest,
    ManifestError,
    ShardInfo,
    index_bytes,
    quarantine_bytes,
    read_quarantine,
)
from data_prep.members import kind_fields
from data_prep.options import AttributeOptions, CaptionOptions, PairedOptions, SourceOptions
from data_prep.shards import LAYOUT_SPLITS, holdout_count, split_entries
from data_prep.sources import Source, SourceError, limited
from data_prep.sources_wds import open_images_source
from data_prep.stages import Chunk, Progress, find_duplicates, in_domain, plan_chunks, plan_digest, run_chunks
from data_prep.storage import Store, open_store
from data_prep.transforms import IMAGE_FORMATS, TransformConfig
from data_prep.validate import MODE_CONVERTED, QuarantineEntry

# Bump when the same config would now produce different bytes (2: one shard per chunk; 3: EXIF orientation
# applied, odd-width A|B images quarantined, CycleGAN domain folders unlabelled with sub-folders taken; 4: the
# WebDataset member names of members.py, `png` instead of `image.png`).
PREP_FORMAT = 4


@dataclass(frozen=True, kw_only=True)
class PrepConfig:
    """source: a built-in set or a path (which ones a kind accepts: `ganpipe prep --help`); kind: one of
    KINDS; name: dataset name (default from the source); store: store URL (path, file://,
    s3://bucket/prefix); channels: 1 or 3 (default from the source: 1 for grey built-ins, 3 otherwise);
    holdout: test count (int) or fraction (float), stratified by label, unused when the source's layout
    fixes splits; shard_size: samples per shard; image_format: "png" | "jpeg"; min_size: smallest
    accepted side; max_aspect: largest accepted long/short side ratio. Not part of the dataset's identity:
    workers (0: in this process, N: N Ray tasks at a time), overwrite (ignore what exists and start
    clean), max_bad_frac (fail when more than this share of inputs is quarantined; None: never).
    The sections below hold each kind's own options."""

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
    max_aspect: float = 4.0
    seed: int = 0
    s3_endpoint: str | None = None
    workers: int = 0
    overwrite: bool = False
    max_bad_frac: float | None = 0.05
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
        if self.max_aspect < 1 or self.workers < 0:
            raise ValueError(f"max_aspect must be >= 1 and workers >= 0, got {self.max_aspect}, {self.workers}")
        if self.max_bad_frac is not None and not 0 <= self.max_bad_frac <= 1:
            raise ValueError(f"max_bad_frac must be in [0, 1], got {self.max_bad_frac}")


@dataclass(frozen=True, kw_only=True)
class PrepResult:
    """The dataset written (or found unchanged), what was left out, and the sources' notices about their
    layout (Source.notices: warnings such as an empty class folder)."""

    manifest: Manifest
    dataset_url: str
    reused: bool
    quarantined: list[QuarantineEntry]
    notes: dict[str, int]
    notices: list[str] = field(default_factory=list)


def prep_identity(cfg: PrepConfig, *, spec: str, channels: int, margin: float,
                  section: dict[str, Any] | None = None) -> dict[str, Any]:
    """What decides whether a prepared dataset can be reused: the same identity, the same bytes. `section`
    holds a non-`images` kind's own options (recorded under the kind's name)."""
    identity = {
        "format": PREP_FORMAT,
        "source": spec,
        "image_size": cfg.image_size,
        "channels": channels,
        "holdout": cfg.holdout,
        "shard_size": cfg.shard_size,
        "image_format": cfg.image_format,
        "min_size": cfg.min_size,
        "max_aspect": cfg.max_aspect,
        "seed": cfg.seed,
        "margin": margin,
    }
    return identity if section is None else {**identity, cfg.kind: section}


def prep_images(cfg: PrepConfig, *, progress: bool = True) -> PrepResult:
    """Prepare an `images` dataset (docs/ARCHITECTURE.md, data contracts) from `cfg.source` into `cfg.store`."""
    source = limited(open_images_source(cfg.source, inputs=cfg.inputs, seed=cfg.seed, s3_endpoint=cfg.s3_endpoint),
                     cfg.inputs.limit)  # fmt: skip
    channels = cfg.channels or source.default_channels
    transform = TransformConfig(
        image_size=cfg.image_size, channels=channels, image_format=cfg.image_format, margin=source.margin
    )
    prep = prep_identity(cfg, spec=source.spec, channels=channels, margin=source.margin)
    return write_dataset(
        source=source,
        encoder=images_encoder(transform, min_size=cfg.min_size, max_aspect=cfg.max_aspect),
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
        **run_options(cfg),
    )


def run_options(cfg: PrepConfig) -> dict[str, Any]:
    """write_dataset's options that do not change the dataset's bytes."""
    return {"workers": cfg.workers, "overwrite": cfg.overwrite, "max_bad_frac": cfg.max_bad_frac}


class TooManyBad(ValueError):
    """More inputs than --max-bad-frac allows were quarantined; the report is in quarantine.parquet."""


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
    workers: int = 0,
    overwrite: bool = False,
    max_bad_frac: float | None = None,
) -> PrepResult:
    """Kind-independent prep: dedupe, split, run the stages per chunk, then index, quarantine report and
    manifest (last).

    Give `source` and `encoder`, or `domains` ({"domain_a": (source, encoder), "domain_b": ...}) for a
    dataset with one shard set per domain; then quarantined keys and origins are prefixed with the domain
    and the manifest's `extra["domains"]` holds each domain's source, counts and class names. `workers`,
    `overwrite` and `max_bad_frac` are PrepConfig's.
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
    notices = [line for src, _ in parts.values() for line in src.notices()]
    previous = _read_previous(dataset, lenient=overwrite)
    if previous and previous.kind != kind and not overwrite:
        raise ValueError(
            f"{dataset.url} already holds a {previous.kind!r} dataset: give another --name for this {kind!r} one "
            f"(or --overwrite to replace it)"
        )
    if not overwrite and previous and (previous.kind, previous.prep, previous.source_fingerprint) == (
        kind, prep, fingerprint
    ):
        return PrepResult(
            manifest=previous,
            dataset_url=dataset.url,
            reused=True,
            quarantined=read_quarantine(dataset),
            notes=dict(previous.notes),
            notices=notices,
        )
    if overwrite:
        _clear(dataset)

    plan = plan_digest(kind=kind, prep=prep, fingerprint=fingerprint)
    record = Progress(dataset, plan)
    listed: dict[str | None, int] = {}
    dupes: dict[str | None, list[QuarantineEntry]] = {}
    chunks: list[Chunk] = []
    split_names: dict[str | None, list[str]] = {}
    for domain, (src, _) in parts.items():
        entries = src.entries()
        listed[domain] = len(entries)
        kept, dupes[domain] = find_duplicates(src, entries)
        splits = split_entries(kept, holdout=holdout, seed=seed)
        split_names[domain] = list(splits)
        chunks += plan_chunks(splits, domain=domain, shard_size=shard_size)
    done = record.done()
    pending = [c for c in chunks if c.name not in done]
    version = record.version or (previous.version + 1 if previous else 1)
    if pending:
        if dataset.exists(MANIFEST):  # its shards are about to be replaced: the old version stops existing
            dataset.delete(MANIFEST)
        version = record.start(version)
    total = sum(len(c.entries) for c in chunks)
    bar = tqdm(total=total, desc=f"prep {name}", unit="img", file=sys.stderr, disable=not progress,
               initial=total - sum(len(c.entries) for c in pending))  # fmt: skip
    with bar:
        done.update(run_chunks(pending, parts, dataset, plan, workers=workers, on_sample=bar.update))

    written: dict[str | None, _Written] = {}
    for domain in parts:
        results = [done[c.name] for c in chunks if c.domain == domain]
        quarantined = [(in_domain(q, domain) if domain else q) for q in dupes[domain]]
        quarantined += [q for r in results for q in r.quarantined]
        counts: Counter[str] = Counter()
        for r in results:
            counts.update({r.shard.split: r.shard.samples} if r.shard else {})
        written[domain] = _Written(
            shards=[r.shard for r in results if r.shard is not None],
            rows=[row for r in results for row in r.rows],
            counts={split: counts[split] for split in split_names[domain]},
            quarantined=quarantined,
            notes=sum((Counter(r.notes) for r in results), Counter()),
        )
    quarantined = [q for part in written.values() for q in part.quarantined]
    n_inputs = sum(listed.values())
    for domain, part in written.items():
        if part.counts.get("train", 0) == 0:
            dataset.put_bytes(QUARANTINE, quarantine_bytes(quarantined))
            reasons = dict(Counter(q.reason for q in part.quarantined))
            spec = parts[domain][0].spec
            raise SourceError(f"no usable training samples in {spec} (quarantined: {reasons}; "
                              f"report: {dataset.url}/{QUARANTINE})")  # fmt: skip
    if max_bad_frac is not None and len(quarantined) > max_bad_frac * n_inputs:
        dataset.put_bytes(QUARANTINE, quarantine_bytes(quarantined))
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(Counter(q.reason for q in quarantined).items()))
        raise TooManyBad(
            f"{len(quarantined)} of {n_inputs} inputs ({len(quarantined) / n_inputs:.1%}) were quarantined "
            f"({reasons}), above --max-bad-frac {max_bad_frac:g}; see {dataset.url}/{QUARANTINE}, then fix the "
            f"inputs or raise --max-bad-frac (the shards written so far are kept and reused)"
        )

    notes = sum((part.notes for part in written.values()), Counter())
    counts = Counter()
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
        version=version,
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
        fields=kind_fields(kind, extension=IMAGE_FORMATS[prep.get("image_format", "png")], channels=channels,
                           labelled=any(c is not None for c in class_names),
                           mask=bool(extra.get("pairs", {}).get("mask"))),  # fmt: skip
    )
    dataset.put_bytes(INDEX, index_bytes([row for part in written.values() for row in part.rows]))
    dataset.put_bytes(QUARANTINE, quarantine_bytes(quarantined))
    dataset.delete(QUARANTINE_JSON)  # an older version's report
    dataset.put_bytes(MANIFEST, manifest.to_json().encode())
    listed_shards = {s.path for s in manifest.shards}
    for key in dataset.list():
        if _is_shard(key) and key not in listed_shards:  # shards of an older, larger version
            dataset.delete(key)
    record.clear()
    return PrepResult(manifest=manifest, dataset_url=dataset.url, reused=False, quarantined=quarantined,
                      notes=dict(notes), notices=notices)  # fmt: skip


def _clear(dataset: Store) -> None:
    """Remove a dataset folder's contents, manifest first (so it stops existing before anything else goes)."""
    dataset.delete(MANIFEST)
    for key in dataset.list():
        dataset.delete(key)


def _is_shard(key: str) -> bool:
    parts = key.split("/")
    return key.endswith(".tar") and (
        (len(parts) == 2 and parts[0] == SHARDS) or (len(parts) == 3 and parts[1] == SHARDS)
    )


def _read_previous(dataset: Store, *, lenient: bool = False) -> Manifest | None:
    if not dataset.exists(MANIFEST):
        return None
    try:  # the error names the file and suggests --overwrite
        return Manifest.from_json(dataset.get_bytes(MANIFEST), source=f"{dataset.url.rstrip('/')}/{MANIFEST}")
    except ManifestError:
        if lenient:  # --overwrite replaces it anyway
            return None
        raise


def format_summary(result: PrepResult) -> str:
    """A small text table: samples, shards and bytes per split; each quarantined file (first 20) and why;
    notes; the sources' notices (warnings first); URL and digest."""
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
    n_bad = sum(m.quarantine.values())
    quarantined = ", ".join(f"{reason} {n}" for reason, n in m.quarantine.items())
    lines.append(f"quarantined: {n_bad} ({quarantined})" if n_bad else "quarantined: none")
    shown = 20
    for entry in result.quarantined[:shown]:
        lines.append(f"  {entry.origin}: {entry.reason} ({entry.detail})")
    if len(result.quarantined) > shown:
        lines.append(f"  ... {len(result.quarantined) - shown} more in {QUARANTINE}")
    converted = m.notes.get(MODE_CONVERTED, 0)
    if converted:
        mode = "RGB" if m.channels == 3 else "L"
        lines.append(f"converted: {converted} (CMYK, palette, LA, 16-bit or alpha images, now {mode})")
    others = {note: n for note, n in m.notes.items() if note != MODE_CONVERTED}
    if others:
        lines.append("notes: " + ", ".join(f"{note} {n}" for note, n in others.items()))
    lines += sorted(result.notices, key=lambda line: not line.startswith("warning:"))
    lines += [f"url:    {result.dataset_url}", f"digest: sha256:{m.digest}"]
    return "\n".join(lines)
