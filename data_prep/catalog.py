"""What a store holds and whether it is intact: list datasets, verify shards against the manifest, preview samples.

The `ganpipe datasets ls|show|verify` commands are thin wrappers around these functions.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import tarfile
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image
from webdataset.tariterators import base_plus_ext

from data_prep.manifest import DOMAINS, INDEX, MANIFEST, Manifest, ManifestError
from data_prep.shards import LAYOUT_SPLITS
from data_prep.stages import PLAN, PROGRESS
from data_prep.storage import KeyNotFound, Store, StoreError

DATASETS = "datasets"


@dataclass(frozen=True, kw_only=True)
class Listed:
    """One dataset folder in a store: its manifest, or None while a prep of it is unfinished (`done` shards
    recorded so far) or when its manifest is broken (`error` says how)."""

    name: str
    manifest: Manifest | None
    done: int = 0
    error: str = ""  # why its manifest.json cannot be read (then manifest is None)


def list_datasets(store: Store) -> list[Listed]:
    """Every dataset under `datasets/` of the store (finished ones, then unfinished preps), by name."""
    names: dict[str, dict[str, Any]] = {}
    for key in store.list(f"{DATASETS}/"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == MANIFEST:
            names.setdefault(parts[1], {})["manifest"] = True
        elif len(parts) == 4 and parts[2] == PROGRESS:
            info = names.setdefault(parts[1], {})
            info["done"] = info.get("done", 0) + (f"{PROGRESS}/{parts[3]}" != PLAN)
    out = []
    for name, info in sorted(names.items()):
        manifest, error = None, ""
        if info.get("manifest"):
            key = f"{DATASETS}/{name}/{MANIFEST}"
            try:  # one broken dataset must not hide the others
                manifest = Manifest.from_json(store.get_bytes(key), source=f"{store.url.rstrip('/')}/{key}")
            except ManifestError as exn:
                error = str(exn)
        out.append(Listed(name=name, manifest=manifest, done=info.get("done", 0), error=error))
    return out


def _tar_facts(stream: Any) -> tuple[str, int, int]:
    """(sha256, bytes, distinct sample keys) of a tar stream, read once."""
    digest, size = hashlib.sha256(), 0

    class Hashing(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            nonlocal size
            data = stream.read(len(buffer))
            digest.update(data)
            size += len(data)
            buffer[: len(data)] = data
            return len(data)

    keys = set()
    with tarfile.open(fileobj=io.BufferedReader(Hashing()), mode="r|") as tar:
        for member in tar:
            keys.add(base_plus_ext(member.name)[0])  # the sample key, as WebDataset groups members
    while data := stream.read(1 << 20):  # tar padding after the end-of-archive blocks
        digest.update(data)
        size += len(data)
    return digest.hexdigest(), size, len(keys)


def verify_dataset(dataset: Store, manifest: Manifest) -> list[str]:
    """Re-hash every shard the manifest lists and count its samples; also check index.parquet's rows per
    shard. Returns one line per problem, naming the shard (empty: intact)."""
    problems = []
    try:
        rows = pq.read_table(io.BytesIO(dataset.get_bytes(INDEX)), columns=["shard"]).column("shard").to_pylist()
        per_shard: Counter[str] | None = Counter(rows)
    except (KeyNotFound, OSError, ValueError) as exn:
        problems.append(f"{INDEX}: cannot read ({exn})")
        per_shard = None
    for shard in manifest.shards:
        try:
            with dataset.open_read(shard.path) as stream:
                sha256, size, samples = _tar_facts(stream)
        except KeyNotFound:
            problems.append(f"{shard.path}: missing")
            continue
        except (tarfile.TarError, StoreError, OSError) as exn:
            problems.append(f"{shard.path}: unreadable ({type(exn).__name__}: {exn})")
            continue
        if sha256 != shard.sha256:
            problems.append(f"{shard.path}: sha256 {sha256[:16]}... != manifest {shard.sha256[:16]}...")
        if size != shard.bytes:
            problems.append(f"{shard.path}: {size:,} bytes != manifest {shard.bytes:,}")
        if samples != shard.samples:
            problems.append(f"{shard.path}: {samples} samples != manifest {shard.samples}")
        if per_shard is not None and per_shard[shard.path] != shard.samples:
            listed = per_shard[shard.path]
            problems.append(f"{shard.path}: index.parquet lists {listed} samples, manifest {shard.samples}")
    for split, count in manifest.counts.items():
        listed = sum(s.samples for s in manifest.shards if s.split == split)
        if listed != count:
            problems.append(f"split {split}: manifest counts {count} samples, its shards hold {listed}")
    return problems


# ---------------------------------------------------------------- preview


def _rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (C, H, W) -> (H, W, 3)."""
    hwc = image.transpose(1, 2, 0)
    return np.repeat(hwc, 3, axis=2) if hwc.shape[2] == 1 else hwc


def _grid(rows: list[list[np.ndarray]], *, pad: int = 2, scale: int = 1) -> Image.Image:
    """Tiles (H, W, 3) in rows (rows may differ in length), on a grey background."""
    height = max(t.shape[0] for row in rows for t in row)
    width = max(t.shape[1] for row in rows for t in row)
    cols = max(len(row) for row in rows)
    canvas = np.full((len(rows) * (height + pad) + pad, cols * (width + pad) + pad, 3), 128, np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            top, left = pad + r * (height + pad), pad + c * (width + pad)
            canvas[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
    image = Image.fromarray(canvas)
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST) if scale > 1 else image


def preview(dataset: Store, manifest: Manifest, *, n: int = 8, split: str = "train") -> tuple[Image.Image, list[str]]:
    """A sample grid of the dataset's kind and one text line per shown sample:
    images: a grid, 8 per row; paired: a|b pairs, 4 per row; unpaired: a domain_a row and a domain_b row;
    attributes: a grid, lines name each sample's attributes; captioned: a grid, lines give captions."""
    from data_prep.batches import split_samples

    kw: dict[str, Any] = dict(split=split, rank=0, world_size=1, seed=0, shuffle_buffer=0, shuffle=False)
    lines: list[str] = []
    if manifest.kind == "unpaired":
        rows = []
        for domain in DOMAINS:
            samples = list(itertools.islice(split_samples(dataset, manifest, epoch=0, domain=domain, **kw), n))
            rows.append([_rgb(s["image"]) for s in samples])
            lines.append(f"{domain}: " + ", ".join(s["key"] for s in samples))
        return _grid(rows, scale=_scale(manifest)), lines
    samples = list(itertools.islice(split_samples(dataset, manifest, epoch=0, **kw), n))
    if not samples:
        raise ValueError(f"{manifest.name} has no {split!r} samples to show")
    if manifest.kind == "paired":
        tiles = [np.concatenate([_rgb(s["a"]), _rgb(s["b"])], axis=1) for s in samples]
        lines = [f"{i}: {s['key']} (a | b)" for i, s in enumerate(samples)]
        per_row = 4
    else:
        tiles = [_rgb(s["image"]) for s in samples]
        per_row = 8
        names = manifest.class_names
        for i, s in enumerate(samples):
            label = f" [{names[s['label']] if names and s['label'] >= 0 else s['label']}]" if s["label"] >= 0 else ""
            text = f"{i}: {s['key']}{label}"
            if manifest.kind == "attributes":
                on = [a for a, v in zip(manifest.extra["attributes"], s["attrs"], strict=True) if v]
                text += ": " + (", ".join(on) or "(none)")
            elif manifest.kind == "captioned":
                text += ": " + " | ".join(s["captions"][:2])
            lines.append(text)
    rows = [tiles[i : i + per_row] for i in range(0, len(tiles), per_row)]
    return _grid(rows, scale=_scale(manifest)), lines


def _scale(manifest: Manifest) -> int:
    return max(1, 64 // manifest.image_size)


def describe(manifest: Manifest, dataset_url: str) -> list[str]:
    """The manifest in a few lines: identity, counts and bytes per split, quarantine, notes, kind extras."""
    m = manifest
    lines = [
        f"{m.name} v{m.version}: {m.kind}, {m.image_size}x{m.image_size}x{m.channels}, "
        f"{sum(m.counts.values()):,} samples in {len(m.shards)} shards ({sum(s.bytes for s in m.shards):,} bytes)",
        f"url:     {dataset_url}",
        f"digest:  sha256:{m.digest}",
        f"source:  {m.prep.get('source')}",
    ]
    domains = [None] if m.kind != "unpaired" else list(DOMAINS)
    for domain in domains:
        for split in sorted(m.counts, key=lambda s: LAYOUT_SPLITS.index(s) if s in LAYOUT_SPLITS else 9):
            shards = m.split_shards(split, domain=domain)
            if shards:
                where = f"{domain} " if domain else ""
                samples, size = sum(s.samples for s in shards), sum(s.bytes for s in shards)
                lines.append(f"  {where}{split:<6} {samples:>9,} samples {len(shards):>5} shards {size:>14,} bytes")
    if m.class_names:
        lines.append("classes: " + ", ".join(m.class_names[:20]) + (" ..." if len(m.class_names) > 20 else ""))
    lines.append("quarantined: " + (", ".join(f"{r} {n}" for r, n in m.quarantine.items()) or "none"))
    if m.notes:
        lines.append("notes: " + ", ".join(f"{k} {v}" for k, v in m.notes.items()))
    if "attributes" in m.extra:
        lines.append("attributes: " + ", ".join(m.extra["attributes"]))
    if "text_encoder" in m.extra:
        enc = m.extra["text_encoder"]
        lines.append(f"text encoder: {enc['name']} (dim {enc['dim']})")
    if "pairs" in m.extra:
        lines.append(f"pairs: {m.extra['pairs']}")
    lines += [f"member KEY.{name}: {what}" for name, what in sorted(m.fields.items())]  # schema 2 (members.py)
    return lines
