"""Prep's stages, run per chunk: read -> validate -> transform -> encode -> write, in this process or as Ray tasks.

A chunk is `shard_size` consecutive entries of one split (of one domain); its task turns them into exactly one
shard (or none, when every entry is quarantined), uploads it to its final key, then writes a progress record
`_progress/{chunk}.json` (the ShardInfo with its sha256, the index rows, the quarantine entries). A re-run of the
same plan (same kind, prep config and source fingerprint) skips every chunk with a record, so a crashed prep
redoes only the missing shards. Chunks are fixed before any task runs, so shard i holds the same samples
whichever path or worker count wrote it, byte for byte.

Exact duplicates (same input bytes) are found before the split, so a picture never lands in both train and
test: each later copy is quarantined as "duplicate", naming the first one in source order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.encoders import EncodedSample, Encoder, encode_many
from data_prep.manifest import IndexRow, ShardInfo
from data_prep.shards import write_shard
from data_prep.sources import BadSample, RawSample, Source, SourceEntry
from data_prep.storage import Store
from data_prep.validate import QuarantineEntry

PROGRESS = "_progress"
PLAN = f"{PROGRESS}/plan.json"


@dataclass(frozen=True, kw_only=True)
class Chunk:
    """The entries of shard `index` of `split` (of `domain`, for `unpaired`)."""

    domain: str | None
    split: str
    index: int
    entries: tuple[SourceEntry, ...]

    @property
    def name(self) -> str:
        return f"{self.domain or 'all'}-{self.split}-{self.index:06d}"


@dataclass(frozen=True, kw_only=True)
class ChunkResult:
    """What one task wrote: its shard (None when every entry was quarantined), index rows, quarantine, notes."""

    name: str
    shard: ShardInfo | None
    rows: list[IndexRow]
    quarantined: list[QuarantineEntry]
    notes: dict[str, int]

    def to_json(self, plan: str) -> bytes:
        data = dataclasses.asdict(self)
        return json.dumps({"plan": plan, **data}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, text: bytes) -> tuple[str, ChunkResult]:
        data = json.loads(text)
        plan = data.pop("plan")
        shard = ShardInfo(**data["shard"]) if data["shard"] else None
        return plan, cls(
            name=data["name"],
            shard=shard,
            rows=[IndexRow(**row) for row in data["rows"]],
            quarantined=[QuarantineEntry(**q) for q in data["quarantined"]],
            notes=dict(data["notes"]),
        )


def plan_chunks(splits: dict[str, list[SourceEntry]], *, domain: str | None, shard_size: int) -> list[Chunk]:
    """Cut every split into chunks of `shard_size` entries, in split order."""
    return [
        Chunk(domain=domain, split=split, index=i // shard_size, entries=tuple(entries[i : i + shard_size]))
        for split, entries in splits.items()
        for i in range(0, len(entries), shard_size)
    ]


def _content_hash(raw: RawSample) -> str:
    digest = hashlib.sha256()
    for data in (raw.data, raw.pair):
        if isinstance(data, np.ndarray):
            digest.update(f"{data.dtype}{data.shape}".encode())
            digest.update(np.ascontiguousarray(data).tobytes())
        elif data is not None:
            digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()


def find_duplicates(source: Source, entries: Sequence[SourceEntry]) -> tuple[list[SourceEntry], list[QuarantineEntry]]:
    """(entries without later copies, a "duplicate" quarantine entry per later copy). An entry that cannot be
    read here is kept: its task quarantines it with the real reason."""
    first: dict[str, SourceEntry] = {}
    kept, dupes = [], []
    for entry in entries:
        try:
            digest = _content_hash(source.read(entry))
        except (BadSample, OSError):
            kept.append(entry)
            continue
        if digest in first:
            original = first[digest]
            detail = f"same content as {original.origin} (key {original.key})"
            dupes.append(QuarantineEntry(key=entry.key, origin=entry.origin, reason="duplicate", detail=detail))
        else:
            first[digest] = entry
            kept.append(entry)
    return kept, dupes


def _read(source: Source, entry: SourceEntry) -> RawSample | QuarantineEntry:
    try:
        return source.read(entry)
    except BadSample as bad:
        return QuarantineEntry(key=entry.key, origin=entry.origin, reason=bad.reason, detail=bad.detail)
    except OSError as exn:
        detail = f"cannot read: {exn.strerror or exn}"
        return QuarantineEntry(key=entry.key, origin=entry.origin, reason="unreadable", detail=detail)


def run_chunk(
    chunk: Chunk,
    source: Source,
    encoder: Encoder,
    store: Store,
    plan: str,
    *,
    on_sample: Callable[[int], object] | None = None,
) -> ChunkResult:
    """The stages for one chunk: read, validate/transform/encode (the encoder, in its batches), write and
    upload one shard, then record it in `_progress/`. `on_sample(n)` is told as samples finish."""
    good: list[EncodedSample] = []
    quarantined: list[QuarantineEntry] = []
    notes: Counter[str] = Counter()
    batch = max(1, getattr(encoder, "batch_size", 1))
    for start in range(0, len(chunk.entries), batch):
        results: list[EncodedSample | QuarantineEntry | RawSample] = [
            _read(source, e) for e in chunk.entries[start : start + batch]
        ]
        raws = [(i, r) for i, r in enumerate(results) if isinstance(r, RawSample)]
        for (i, _), encoded in zip(raws, encode_many(encoder, [r for _, r in raws]), strict=True):
            results[i] = encoded
        for result in results:
            if isinstance(result, EncodedSample):
                good.append(result)
                notes.update(result.notes)
            else:
                assert isinstance(result, QuarantineEntry)
                quarantined.append(result)
        if on_sample is not None:
            on_sample(len(results))
    shard, rows = None, []
    if good:
        with tempfile.TemporaryDirectory(prefix="ganpipe-shard-") as tmp:
            shard, rows = write_shard(
                store, good, split=chunk.split, index=chunk.index, domain=chunk.domain, tmp_dir=Path(tmp)
            )
    if chunk.domain is not None:
        rows = [dataclasses.replace(r, extra={**r.extra, "domain": chunk.domain}) for r in rows]
        quarantined = [in_domain(q, chunk.domain) for q in quarantined]
    result = ChunkResult(name=chunk.name, shard=shard, rows=rows, quarantined=quarantined, notes=dict(notes))
    store.put_bytes(f"{PROGRESS}/{chunk.name}.json", result.to_json(plan))  # after the shard: it is done
    return result


def in_domain(entry: QuarantineEntry, domain: str) -> QuarantineEntry:
    return dataclasses.replace(entry, key=f"{domain}/{entry.key}", origin=f"{domain}/{entry.origin}")


class Progress:
    """The `_progress/` folder of one dataset: which plan it belongs to, the version that plan will get,
    and a record per finished chunk. Records of another plan are removed when a new plan starts."""

    def __init__(self, dataset: Store, plan: str) -> None:
        self.dataset, self.plan = dataset, plan
        self.version: int | None = None
        if dataset.exists(PLAN):
            try:
                recorded = json.loads(dataset.get_bytes(PLAN))
                if recorded.get("plan") == plan:
                    self.version = int(recorded["version"])
            except (ValueError, KeyError, TypeError):
                pass

    def done(self) -> dict[str, ChunkResult]:
        """Finished chunks of this plan whose shard is still there."""
        if self.version is None:
            return {}
        out = {}
        for key in self.dataset.list(f"{PROGRESS}/"):
            if key == PLAN or not key.endswith(".json"):
                continue
            try:
                plan, result = ChunkResult.from_json(self.dataset.get_bytes(key))
            except (ValueError, KeyError, TypeError):
                continue  # a damaged record: that chunk is simply redone
            if plan == self.plan and (result.shard is None or self.dataset.exists(result.shard.path)):
                out[result.name] = result
        return out

    def start(self, version: int) -> int:
        """Claim `_progress/` for this plan (clearing another plan's records); returns the version to write."""
        if self.version is None:
            self.clear()
            self.version = version
            self.dataset.put_bytes(PLAN, json.dumps({"plan": self.plan, "version": version}).encode())
        return self.version

    def clear(self) -> None:
        for key in self.dataset.list(f"{PROGRESS}/"):
            self.dataset.delete(key)


def plan_digest(*, kind: str, prep: dict[str, Any], fingerprint: str) -> str:
    """What a dataset's bytes depend on: kind, prep config (which holds the format version) and source."""
    text = json.dumps({"kind": kind, "prep": prep, "source": fingerprint}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- running the chunks


Part = tuple[Source, Encoder]


def run_chunks(
    chunks: Sequence[Chunk],
    parts: dict[str | None, Part],
    store: Store,
    plan: str,
    *,
    workers: int = 0,
    on_sample: Callable[[int], object] | None = None,
) -> dict[str, ChunkResult]:
    """Run every chunk: in this process when `workers` is 0, else as Ray tasks, at most `workers` at a time
    (on the cluster in $RAY_ADDRESS, or a local Ray started with `workers` CPUs). When a chunk fails, the
    chunks already running still finish (and are recorded) before the error is raised."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers == 0:
        return {c.name: run_chunk(c, *parts[c.domain], store, plan, on_sample=on_sample) for c in chunks}
    return _run_on_ray(chunks, parts, store, plan, workers=workers, on_sample=on_sample)


def _task(chunk: Chunk, part: Part, store: Store, plan: str) -> ChunkResult:
    return run_chunk(chunk, part[0], part[1], store, plan)


def ensure_ray(workers: int) -> None:
    """Join the cluster in $RAY_ADDRESS, else start a local Ray of `workers` CPUs (no dashboard)."""
    from data_prep.ray_runtime import init_ray

    init_ray(num_cpus=workers, include_dashboard=False)


def _run_on_ray(
    chunks: Sequence[Chunk],
    parts: dict[str | None, Part],
    store: Store,
    plan: str,
    *,
    workers: int,
    on_sample: Callable[[int], object] | None,
) -> dict[str, ChunkResult]:
    import ray

    ensure_ray(workers)
    task = ray.remote(num_cpus=1, max_retries=1)(_task)
    # Put once: every task gets the same source (with its listing cache), encoder and store.
    part_refs = {domain: ray.put(part) for domain, part in parts.items()}
    store_ref = ray.put(store)
    queue, running = list(chunks), {}
    results: dict[str, ChunkResult] = {}
    failure: BaseException | None = None
    while queue or running:
        while queue and failure is None and len(running) < workers:
            chunk = queue.pop(0)
            running[task.remote(chunk, part_refs[chunk.domain], store_ref, plan)] = chunk
        if not running:
            break
        ready, _ = ray.wait(list(running), num_returns=1)
        for ref in ready:
            chunk = running.pop(ref)
            try:
                results[chunk.name] = ray.get(ref)
            except Exception as exn:  # let the running chunks finish, so their work is kept
                failure = failure or exn
            if on_sample is not None:
                on_sample(len(chunk.entries))
    if failure is not None:
        cause = getattr(failure, "cause", None)
        raise cause if isinstance(cause, Exception) else failure
    return results
