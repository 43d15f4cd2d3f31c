"""The plan decode workers carry out: which shard samples form each batch, decided by the parent alone from the
manifest (sample counts per shard), without reading a byte of a shard.

`split_refs` is reader.raw_epoch over references: the same shard order, rank partition and shuffle buffer (the
same function, the same seeds), applied to (shard, position in the shard) instead of to read samples. That is
enough because none of them looks at a sample's content, only at how many there are; a decode worker checks that
a shard holds exactly the samples the manifest counts before any is used (data_prep/shard_work.py), so the plan
and the shard cannot disagree unnoticed. batches.batch_stream then groups references into batches as it groups
samples, so batch k names the samples the in-thread reader would put in batch k.

The journal records each shard when the in-thread reader would first read it (when the shuffle buffer pulls its
first sample): a batch `needs` the shards first pulled while it was made, so a shard that fails verification stops
the stream before the same batch as it would without decode workers.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from data_prep.manifest import Manifest, ShardInfo
from data_prep.reader import _shuffled
from data_prep.samples import Augment
from data_prep.storage import Store


@dataclass(eq=False)
class ShardFile:
    """One shard of one epoch as a decode worker reads it: verified into `path` (a local file of this stream),
    then `samples` holds each sample's key and members as (suffix, offset, size) in that file. The file is
    removed when the last reference to this object goes (the plan no longer names any of its samples)."""

    info: ShardInfo
    url: str
    path: str
    keys: frozenset[str] | None
    samples: list[tuple[str, tuple[tuple[str, int, int], ...]]] | None = None
    future: Any = None  # the load task's Future, set by the parent when it hands the shard out


class Ref(NamedTuple):
    """Sample `index` (in tar order) of `shard`, and the paired kind's augmentation drawn for it (a tuple: one is
    made per sample planned, and a frozen dataclass costs the parent several times more)."""

    shard: ShardFile
    index: int
    augment: Augment | None = None


@dataclass
class BatchPlan:
    """One batch: its references per group ("samples", or "a" and "b" for unpaired) and the shards the in-thread
    reader would have read by the time it handed this batch on."""

    groups: dict[str, list[Ref]]
    needs: list[ShardFile]


@dataclass
class Journal:
    """Shards in the order they are first pulled; `take` empties it."""

    started: list[ShardFile] = field(default_factory=list)

    def take(self) -> list[ShardFile]:
        out, self.started = self.started, []
        return out


def split_refs(
    store: Store,
    manifest: Manifest,
    *,
    journal: Journal,
    shard_file: Callable[[ShardInfo, int, str | None], ShardFile],
    split: str,
    rank: int,
    world_size: int,
    seed: int,
    epoch: int,
    shuffle_buffer: int,
    shuffle: bool = True,
    domain: str | None = None,
) -> Iterator[Ref]:
    """reader.raw_epoch's order of this rank's samples, as references; `shard_file(info, epoch, domain)` makes
    the ShardFile of a shard when its first sample is pulled (and the journal records it)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    if split not in manifest.counts:
        raise ValueError(f"unknown split {split!r} in {store.url}: splits are {sorted(manifest.counts)}")
    shards = manifest.split_shards(split, domain=domain)
    if not shards:
        return
    tag = "" if domain is None else f":{domain}"
    if shuffle:
        shards = list(shards)
        random.Random(f"shards:{seed}:{epoch}{tag}").shuffle(shards)
    by_shard = len(shards) >= world_size
    mine = shards[rank::world_size] if by_shard else shards

    def refs() -> Iterator[Ref]:
        for info in mine:
            shard = shard_file(info, epoch, domain)
            journal.started.append(shard)
            for index in range(info.samples):
                yield Ref(shard, index)

    items: Iterator[Any] = refs()
    if not by_shard and world_size > 1:
        items = (r for i, r in enumerate(items) if i % world_size == rank)
    if shuffle:
        items = _shuffled(items, shuffle_buffer, random.Random(f"samples:{seed}:{epoch}:{rank}{tag}"))
    yield from items
