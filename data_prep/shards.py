"""Split samples into train/test (and val, where a source's layout has one) and write them as WebDataset tar
shards into a store.

A shard is written to a local temp file (deterministic tar headers, so the same samples give the same
bytes), sha256'd, uploaded as `[{domain}/]shards/{split}-{i:06d}.tar`, then recorded as a ShardInfo.
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


class ShardWriter:
    """Writes one split's samples into shards of up to `shard_size` samples under `store` (under
    `{domain}/shards/` for one domain of an `unpaired` dataset)."""

    def __init__(
        self, store: Store, *, split: str, shard_size: int, tmp_dir: str | Path, domain: str | None = None
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.store, self.split, self.shard_size, self.domain = store, split, shard_size, domain
        self.tmp_dir = Path(tmp_dir)
        self.shards: list[ShardInfo] = []
        self.rows: list[IndexRow] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    @property
    def _path(self) -> str:
        prefix = f"{self.domain}/" if self.domain else ""
        return f"{prefix}{SHARDS}/{self.split}-{len(self.shards):06d}.tar"

    @property
    def _local(self) -> Path:
        return self.tmp_dir / f"{self.domain or 'all'}-{self.split}-{len(self.shards):06d}.tar"

    def add(self, sample: EncodedSample) -> None:
        """Append one sample; a full shard is finished and uploaded."""
        if self._tar is None:
            self._tar = tarfile.open(self._local, mode="w", format=tarfile.PAX_FORMAT)
        for suffix in sorted(sample.files):
            payload = sample.files[suffix]
            info = tarfile.TarInfo(f"{sample.key}.{suffix}")
            info.size, info.mtime, info.mode = len(payload), 0, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(payload))
        self.rows.append(
            IndexRow(
                key=sample.key,
                shard=self._path,
                split=self.split,
                label=sample.label,
                sha256=sample.sha256,
                extra=sample.index_extra,
            )
        )
        self._count += 1
        if self._count >= self.shard_size:
            self._finish()

    def _finish(self) -> None:
        assert self._tar is not None
        self._tar.close()
        local, path = self._local, self._path
        digest = hashlib.sha256()
        with open(local, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        self.store.put_file(path, local)
        self.shards.append(
            ShardInfo(
                path=path,
                split=self.split,
                bytes=local.stat().st_size,
                samples=self._count,
                sha256=digest.hexdigest(),
                domain=self.domain,
            )
        )
        local.unlink()
        self._tar, self._count = None, 0

    def close(self) -> list[ShardInfo]:
        """Finish the last partial shard; returns every shard written."""
        if self._tar is not None:
            self._finish()
        return self.shards
