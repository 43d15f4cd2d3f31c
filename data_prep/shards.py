"""Split samples into train/test (and val, where a source's layout has one) and write them as WebDataset tar
shards into a store.

A shard is written to a local temp file (deterministic tar headers, so the same samples give the same
bytes), sha256'd, uploaded as `[{domain}/]shards/{split}-{i:06d}.tar`, then described by a ShardInfo.
Shard i of a split holds the good samples of the i-th chunk of `shard_size` entries of that split
(stages.py), so shard contents do not depend on how many processes wrote them.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data_prep.encoders import EncodedSample
from data_prep.manifest import SHARDS, IndexRow, ShardInfo
from data_prep.sources import SourceEntry
from data_prep.storage import Store

SPLITS = ("train", "test")
LAYOUT_SPLITS = ("train", "val", "test")  # splits a source's folder layout may fix


def holdout_count(n: int, holdout: float | int) -> int:
    """Number of test samples: an int is a count, a float in [0, 1) a fraction (rounded)."""
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)):
        raise ValueError(f"holdout must be a count (int) or a fraction (float), got {holdout!r}")
    if isinstance(holdout, float):
        if not 0.0 <= holdout < 1.0:
            raise ValueError(f"holdout fraction must be in [0, 1), got {holdout}")
        return round(n * holdout)
    if not 0 <= holdout < n:
        raise ValueError(f"holdout count must be in [0, {n}) for {n} samples, got {holdout}")
    return holdout


def split_entries(
    entries: Sequence[SourceEntry], *, holdout: float | int, seed: int
) -> dict[str, list[SourceEntry]]:
    """Deterministic seeded hold-out, stratified by label when labels exist.

    Each label gets its share of the test count by largest remainder (so the total is exact); inside each
    split the order is a seeded permutation, so shards mix classes. When the source's layout fixes splits
    (some entry has split "test", e.g. pix2pix's test/ folder) those are kept and `holdout` is not used;
    "val" entries always stay in "val" (present in the result only when non-empty).
    """
    unknown = {e.split for e in entries} - {None, *LAYOUT_SPLITS}
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}: a source may only fix {LAYOUT_SPLITS}")
    val = [e for e in entries if e.split == "val"]
    rng = np.random.default_rng(seed)
    if any(e.split == "test" for e in entries):
        fixed = {split: [e for e in entries if (e.split or "train") == split] for split in LAYOUT_SPLITS}
        out = {split: [fixed[split][i] for i in rng.permutation(len(fixed[split]))] for split in LAYOUT_SPLITS}
        return out if val else {"train": out["train"], "test": out["test"]}
    if val:
        out = split_entries([e for e in entries if e.split != "val"], holdout=holdout, seed=seed)
        return {"train": out["train"], "val": [val[i] for i in rng.permutation(len(val))], "test": out["test"]}
    n_test = holdout_count(len(entries), holdout)
    groups: dict[int | None, list[int]] = defaultdict(list)
    for i, entry in enumerate(entries):
        groups[entry.label].append(i)
    labels = sorted(groups, key=lambda y: (y is None, y if y is not None else 0))
    quota = {y: n_test * len(groups[y]) / len(entries) for y in labels} if entries else {}
    take = {y: int(q) for y, q in quota.items()}
    by_remainder = sorted(labels, key=lambda y: (-(quota[y] - take[y]), labels.index(y)))
    for y in by_remainder[: n_test - sum(take.values())]:
        take[y] += 1
    test: list[int] = []
    for y in labels:
        members = np.asarray(groups[y])
        test.extend(members[rng.permutation(len(members))[: take[y]]].tolist())
    is_test = np.zeros(len(entries), dtype=bool)
    is_test[test] = True
    out = {}
    for split, mask in (("train", ~is_test), ("test", is_test)):
        chosen = np.flatnonzero(mask)
        out[split] = [entries[i] for i in chosen[rng.permutation(len(chosen))]]
    return out


def shard_path(*, split: str, index: int, domain: str | None = None) -> str:
    """The key of shard `index` of a split, relative to the dataset root."""
    prefix = f"{domain}/" if domain else ""
    return f"{prefix}{SHARDS}/{split}-{index:06d}.tar"


def write_tar(local: Path, samples: Sequence[EncodedSample]) -> str:
    """Write `samples` as one tar at `local` with fixed headers (mtime 0, uid 0, mode 0444, members sorted
    per sample), so the same samples always give the same bytes; returns the file's sha256."""
    with tarfile.open(local, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples:
            for suffix in sorted(sample.files):
                payload = sample.files[suffix]
                info = tarfile.TarInfo(f"{sample.key}.{suffix}")
                info.size, info.mtime, info.mode = len(payload), 0, 0o444
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(payload))
    digest = hashlib.sha256()
    with open(local, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_shard(
    store: Store, samples: Sequence[EncodedSample], *, split: str, index: int, domain: str | None, tmp_dir: Path
) -> tuple[ShardInfo, list[IndexRow]]:
    """Write one shard of `samples` locally, upload it to its final key, and describe it."""
    path = shard_path(split=split, index=index, domain=domain)
    local = tmp_dir / f"{domain or 'all'}-{split}-{index:06d}.tar"
    sha256 = write_tar(local, samples)
    try:
        store.put_file(path, local)
        size = local.stat().st_size
    finally:
        local.unlink(missing_ok=True)
    info = ShardInfo(path=path, split=split, bytes=size, samples=len(samples), sha256=sha256, domain=domain)
    rows = [
        IndexRow(key=s.key, shard=path, split=split, label=s.label, sha256=s.sha256, extra=s.index_extra)
        for s in samples
    ]
    return info, rows
