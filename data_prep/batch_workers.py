"""Decode workers that do all of a batch's work: the parent thread only plans and hands out (data_prep/plan.py).

`WorkerReader` owns one stream's pool, its shared batch memory and a local folder of verified shards. `run` takes
the plan (BatchPlans in stream order) and hands out two kinds of task (data_prep/shard_work.py): each shard, when
the plan first pulls it, is read from the store and verified by a worker into the folder (`load_shard`); each
batch, once the shards it takes samples from are in, is read from those files, decoded, augmented and collated
by a worker straight into a slot of an anonymous shared mmap (`make_batch`). What comes back is a slot number:
the parent wraps the slot as tensors (no copy, no pickled arrays) and yields them in plan order.

A slot returns to the pool when the last tensor over it is freed (a weakref.finalize on its numpy base). Slots
are few (enough for the tasks in flight, the prefetch queue and the training step); when the consumer holds so
many that fewer than `workers + 1` would be left to the reader (a test keeping every batch, a loop storing them),
the batch is copied out instead and its slot freed at once, so the reader never waits on the consumer.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import mmap
import multiprocessing
import os
import queue
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from data_prep.integrity import index_keys
from data_prep.manifest import Manifest, ShardInfo
from data_prep.plan import BatchPlan, Ref, ShardFile
from data_prep.prefetch import make_pool, shut
from data_prep.shard_work import Layout, Loc, StreamContext, load_shard, make_batch, register, unregister
from data_prep.storage import Store

_SPARE_SLOTS = 2  # beyond the tasks in flight and the prefetch queue: the batch in the training step, one more
# Batches handed out beyond one running and one queued per worker. Results leave in plan order, so a batch done
# early waits behind a slower one (a shard load holding a worker for several batches' time) and keeps its
# place in the window: with no slack the other workers then run dry. At 64 px on 2 cores this slack took
# two workers from 0.76 to 0.87 of twice one worker's rate (BENCHMARKS.md, "the decode window").
_SLACK_BATCHES = 4
_names = itertools.count()


class _Slots:
    """`count` batch slots of `layout` in one anonymous shared mmap (inherited by forked workers)."""

    def __init__(self, layout: Layout, count: int) -> None:
        self.layout = layout
        self.arena = mmap.mmap(-1, layout.slot_bytes * count)
        self.free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(count):
            self.free.put(slot)

    def take(self) -> int | None:
        try:
            return self.free.get_nowait()
        except queue.Empty:
            return None

    def wrap(self, slot: int, n: int, present: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], Callable[[], Any]]:
        """The batch in `slot` as tensors over the shared memory, and the call that frees the slot now (it is
        freed anyway once every tensor over it is gone)."""
        base = np.frombuffer(self.arena, dtype=np.uint8, count=self.layout.slot_bytes,
                             offset=slot * self.layout.slot_bytes)  # fmt: skip
        release = weakref.finalize(base, self.free.put, slot)
        release.atexit = False
        whole = torch.from_numpy(base)
        out = {}
        for name, dtype, shape, offset in self.layout.fields:
            if name in present:
                size = int(np.prod(shape)) * np.dtype(dtype).itemsize
                out[name] = whole[offset : offset + size].view(getattr(torch, dtype)).view(shape)[:n]
        return out, release


@dataclass
class _Entry:
    plan: BatchPlan
    future: Future[tuple[str, Any]] | None = None
    slot: int | None = None


class WorkerReader:
    """One stream's decode workers (`workers` processes or threads), shared batch slots and shard folder."""

    def __init__(self, store: Store, manifest: Manifest, *, workers: int, pool_kind: str, batch_size: int,
                 crop_size: int | None, verify: bool, prefetch: int) -> None:  # fmt: skip
        self.store, self.manifest, self.verify = store, manifest, verify
        self.ahead = 2 * workers + 2 + _SLACK_BATCHES  # every worker busy, its next task queued, and slack
        self.reserve = workers + 1
        layout = Layout.of(manifest, batch_size=batch_size, crop_size=crop_size)
        self.slots = None if layout is None else _Slots(layout, self.ahead + prefetch + _SPARE_SLOTS)
        self.folder = tempfile.mkdtemp(prefix="ganpipe-shards-")
        self._keys: dict[tuple[str, str | None], dict[str, frozenset[str]]] = {}
        self.stream = register(StreamContext(store=store, manifest=manifest, verify=verify, crop_size=crop_size,
                                             layout=layout, arena=None if self.slots is None else self.slots.arena))
        # Forks on its first task, after the lines above; where processes cannot fork they would not inherit them.
        forks = "fork" in multiprocessing.get_all_start_methods()
        self.pool = make_pool(kind=pool_kind if forks else "thread", workers=workers)

    def close(self) -> None:
        """Stop the workers (queued tasks cancelled, processes joined) and remove the shard folder."""
        try:
            shut(self.pool)
        finally:
            unregister(self.stream)
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> WorkerReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def shard_file(self, info: ShardInfo, epoch: int, domain: str | None) -> ShardFile:
        """The ShardFile of `info` in this epoch (plan.split_refs calls it when the shard is first pulled); reads
        index.parquet's keys for the split on first use, as the in-thread reader does when it starts."""
        keys = None
        if self.verify:
            where = (info.split, domain)
            if where not in self._keys:
                self._keys[where] = index_keys(self.store, self.manifest,
                                               self.manifest.split_shards(info.split, domain=domain))  # fmt: skip
            keys = self._keys[where][info.path]
        path = os.path.join(self.folder, f"{next(_names)}-e{epoch}.tar")
        shard = ShardFile(info=info, url=f"{self.store.url}/{info.path}", path=path, keys=keys)
        weakref.finalize(shard, _remove, path).atexit = False
        return shard

    def run(self, plans: Iterator[BatchPlan], *, collate: Callable[[list[Any]], dict[str, torch.Tensor]]
            ) -> Iterator[dict[str, torch.Tensor]]:  # fmt: skip
        """The planned batches in order. An error of the plan itself (a bad index, an empty split) is raised after
        the batches planned before it, a shard's error before the first batch that needs it, a sample's error
        at its batch; `collate` makes the batches the workers hand back as samples (captioned)."""
        window: collections.deque[_Entry] = collections.deque()
        held: BaseException | None = None
        plans_left = True
        while True:
            while plans_left and len(window) < self.ahead:
                try:
                    plan = next(plans)
                except StopIteration:
                    plans_left = False
                    break
                except Exception as exn:  # noqa: BLE001 - raised once the batches planned before it are out
                    plans_left, held = False, exn
                    break
                for shard in plan.needs:
                    shard.future = self.pool.submit(load_shard, self.stream, shard.info, shard.url, shard.keys,
                                                    shard.path)  # fmt: skip
                window.append(_Entry(plan))
            if not window:
                if held is not None:
                    raise held
                return
            starved = self._hand_out(window)
            head = window[0]
            if self._needs_in(head) and head.future is not None and head.future.done():
                window.popleft()
                yield self._finish(head, window, collate)
                continue
            self._wait(window, starved)

    def _hand_out(self, window: collections.deque[_Entry]) -> bool:
        """Submit every batch whose shards are in, in plan order; True when one waits for a free slot. A batch
        takes a slot ahead of an earlier one still waiting for its shards only if a slot stays free for each of
        those: otherwise the later batches could hold every slot the reader has while the head waits for one."""
        earlier = 0  # batches before this one not handed out yet
        for entry in window:
            if entry.future is not None:
                continue
            shards = {ref.shard for refs in entry.plan.groups.values() for ref in refs}
            if not all(_loaded(shard) for shard in shards):
                earlier += 1
                continue  # not yet, or failed (raised when the head reaches the batch that needs it)
            if self.slots is not None:
                if self.slots.free.qsize() <= earlier:
                    return True
                entry.slot = self.slots.take()
                if entry.slot is None:
                    return True
            groups = {name: [_loc(ref) for ref in refs] for name, refs in entry.plan.groups.items()}
            entry.future = self.pool.submit(make_batch, self.stream, entry.slot, groups)
        return False

    def _needs_in(self, head: _Entry) -> bool:
        """Whether every shard the head batch needs is in; raises the first one's error, in pull order."""
        for shard in head.plan.needs:
            if not shard.future.done():
                return False
            status, value = shard.future.result()
            if status == "error":
                raise value
        return True

    def _finish(self, entry: _Entry, window: collections.deque[_Entry],
                collate: Callable[[list[Any]], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:  # fmt: skip
        status, value = entry.future.result()  # type: ignore[union-attr]
        if status == "failure":
            if entry.slot is not None and self.slots is not None:
                self.slots.free.put(entry.slot)
            value.handle(self.store, self.manifest, None)  # raises, as the in-thread reader would
        if status == "samples":
            return collate(value["samples"])
        assert self.slots is not None and entry.slot is not None
        batch, release = self.slots.wrap(entry.slot, *value)
        ours = self.slots.free.qsize() + sum(e.slot is not None for e in window)
        if ours < self.reserve:  # the consumer holds the rest: hand on a copy, keep the slot
            batch = {name: tensor.clone() for name, tensor in batch.items()}
            release()
        return batch

    def _wait(self, window: collections.deque[_Entry], starved: bool) -> None:
        pending = [s.future for e in window for s in e.plan.needs if not s.future.done()]
        pending += [e.future for e in window if e.future is not None and not e.future.done()]
        if pending:
            wait(pending, timeout=0.05 if starved else None, return_when=FIRST_COMPLETED)
        elif self.slots is not None:  # only a slot is missing: wait for the consumer to free one
            with contextlib.suppress(queue.Empty):
                self.slots.free.put(self.slots.free.get(timeout=0.05))


def _loaded(shard: ShardFile) -> bool:
    """Whether the shard is verified into its file (its samples' members then known)."""
    if shard.samples is not None:
        return True
    if shard.future is None or not shard.future.done():
        return False
    status, value = shard.future.result()
    if status != "ok":
        return False
    shard.samples = value
    return True


def _loc(ref: Ref) -> Loc:
    key, members = ref.shard.samples[ref.index]  # type: ignore[index]
    return ref.shard.path, key, ref.shard.url, members, ref.augment


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)
