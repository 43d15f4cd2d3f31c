"""What a decode worker does with the plan (data_prep/plan.py): `load_shard` reads a shard from the store, verifies
it (data_prep/integrity.py) into a local file of its stream and lists its samples' members there; `make_batch`
reads a batch's samples from those files, decodes them, applies the drawn augmentation and writes the collated
batch into a slot of the stream's shared batch memory (`Layout`), or hands the samples back (captioned: its
collate draws from the samples' own content, so the parent collates in stream order).

Workers get the stream's store, manifest and shared memory by inheritance, not by pickling: `register` puts them
in this module before the pool is forked, and a task names its stream by id. Errors come back as values
(("error", exception) or ("failure", reader.DecodeFailure)), to be raised by the parent at their place in the
stream, as the same one line the in-thread reader raises.
"""

from __future__ import annotations

import itertools
import os
import pickle
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from webdataset.tariterators import group_by_keys

from data_prep.integrity import failure, read_verified
from data_prep.manifest import Manifest, ShardInfo
from data_prep.prefetch import picklable
from data_prep.reader import DecodeFailure, decoded_or_failure
from data_prep.samples import Augment, Sample, apply_augment, to_sample
from data_prep.storage import Store

Members = tuple[tuple[str, int, int], ...]  # (suffix, offset, size) in the shard's local file
Loc = tuple[str, str, str, Members, Augment | None]  # file, key, url, members, augmentation
_ALIGN = 64
_IMAGE_FIELDS = {"images": ("image",), "attributes": ("image",), "paired": ("a", "b"), "unpaired": ("a", "b")}


@dataclass(frozen=True)
class Layout:
    """Where each tensor of a batch lies in a slot: (name, dtype, shape for a full batch, byte offset)."""

    fields: tuple[tuple[str, str, tuple[int, ...], int], ...]
    slot_bytes: int

    @classmethod
    def of(cls, manifest: Manifest, *, batch_size: int, crop_size: int | None) -> Layout | None:
        """The layout of `manifest`'s batches; None for kinds the parent collates (captioned)."""
        side, channels = crop_size or manifest.image_size, manifest.channels
        image = (batch_size, channels, side, side)
        shapes: dict[str, list[tuple[str, str, tuple[int, ...]]]] = {
            "images": [("image", "float32", image), ("label", "int64", (batch_size,))],
            "attributes": [("image", "float32", image), ("label", "int64", (batch_size,)),
                           ("attrs", "float32", (batch_size, len(manifest.extra.get("attributes", ()))))],
            "paired": [("a", "float32", image), ("b", "float32", image), ("label", "int64", (batch_size,)),
                       ("mask", "float32", (batch_size, 1, side, side))],
            "unpaired": [("a", "float32", image), ("b", "float32", image), ("label_a", "int64", (batch_size,)),
                         ("label_b", "int64", (batch_size,))],
        }  # fmt: skip
        if manifest.kind not in shapes:
            return None
        fields, offset = [], 0
        for name, dtype, shape in shapes[manifest.kind]:
            fields.append((name, dtype, shape, offset))
            offset += -(-int(np.prod(shape)) * np.dtype(dtype).itemsize // _ALIGN) * _ALIGN
        return cls(fields=tuple(fields), slot_bytes=max(offset, _ALIGN))

    def views(self, buffer: Any, slot: int) -> dict[str, np.ndarray]:
        """Each field of `slot` as a numpy array over `buffer` (no copy)."""
        base = slot * self.slot_bytes
        return {name: np.frombuffer(buffer, dtype=dtype, count=int(np.prod(shape)), offset=base + offset)
                .reshape(shape) for name, dtype, shape, offset in self.fields}  # fmt: skip


@dataclass
class StreamContext:
    """What every task of one stream needs, shared with the workers when they are forked."""

    store: Store
    manifest: Manifest
    verify: bool
    crop_size: int | None
    layout: Layout | None
    arena: Any  # an anonymous shared mmap of slots, or None
    pid: int = field(default_factory=os.getpid)


_STREAMS: dict[int, StreamContext] = {}
_IDS = itertools.count()
_STORES: dict[tuple[int, int], Store] = {}  # (stream, pid) -> the store a forked worker reads through


def _store(stream: int, ctx: StreamContext) -> Store:
    """The stream's store for this process: in a forked worker a copy with its own connections (a boto3 client's
    pooled sockets, copied by fork, must not be shared with the parent), made once; in the parent's threads the
    same store (boto3 clients are thread-safe)."""
    if os.getpid() == ctx.pid:
        return ctx.store
    key = (stream, os.getpid())
    if key not in _STORES:
        _STORES[key] = pickle.loads(pickle.dumps(ctx.store))  # S3Store pickles as bucket, prefix and endpoint
    return _STORES[key]


def register(context: StreamContext) -> int:
    """Make `context` visible to tasks (and to workers forked after this call); returns its id."""
    key = next(_IDS)
    _STREAMS[key] = context
    return key


def unregister(key: int) -> None:
    _STREAMS.pop(key, None)


def load_shard(stream: int, info: ShardInfo, url: str, keys: frozenset[str] | None, path: str) -> tuple[str, Any]:
    """("ok", [(key, members)] in tar order) once the shard is verified into `path` and holds exactly the samples
    the manifest counts; else ("error", the ShardIntegrityError or StoreError naming it)."""
    ctx = _STREAMS[stream]
    try:
        store = _store(stream, ctx)
        with open(path, "wb") as spill:
            if ctx.verify:
                members = [m for m, _ in read_verified(store, ctx.manifest, info, keys=keys or frozenset(),
                                                       spill_to=spill).members]  # fmt: skip
            else:  # `ganpipe bench-data` measuring what verification costs: the bytes as they come
                with store.open_read(info.path) as stream_in:
                    shutil.copyfileobj(stream_in, spill, 1 << 20)
        if not ctx.verify:
            with tarfile.open(path, "r:") as tar:
                members = tar.getmembers()
        files = [{"fname": m.name, "data": (m.offset_data, m.size), "__url__": url} for m in members if m.isreg()]
        samples = list(group_by_keys(iter([*files, {}])))
        if len(samples) != info.samples:
            raise failure(store, ctx.manifest, info.path)(expected=f"{info.samples} samples (the manifest's count)",
                                                              found=f"{len(samples)}")  # fmt: skip
        return "ok", [(s["__key__"], tuple((k, *v) for k, v in s.items() if not k.startswith("__"))) for s in samples]
    except Exception as exn:  # noqa: BLE001 - raised by the parent at the shard's place in the stream
        return "error", picklable(exn)


def make_batch(stream: int, slot: int | None, groups: dict[str, list[Loc]]) -> tuple[str, Any]:
    """("slot", (n, fields present)) once the batch is written into `slot`; ("samples", {group: [Sample]}) when
    `slot` is None; ("failure", DecodeFailure) for the first sample, in stream order, that fails."""
    ctx = _STREAMS[stream]
    samples: dict[str, list[Sample]] = {}
    files: dict[str, int] = {}
    try:
        for name, locs in groups.items():
            samples[name] = []
            for path, key, url, members, augment in locs:
                if path not in files:
                    files[path] = os.open(path, os.O_RDONLY)
                raw: dict[str, Any] = {"__key__": key, "__url__": url}
                raw.update((suffix, os.pread(files[path], size, offset)) for suffix, offset, size in members)
                sample = _sample(ctx, raw, augment)
                if isinstance(sample, DecodeFailure):
                    return "failure", sample
                samples[name].append(sample)
    finally:
        for fd in files.values():
            os.close(fd)
    if slot is None:
        return "samples", samples
    try:
        return "slot", _fill(ctx, slot, samples)
    except ValueError as exn:  # a sample whose image is not the manifest's size: named in the message
        return "failure", DecodeFailure("sample", "?", "?", picklable(exn))


def _sample(ctx: StreamContext, raw: dict[str, Any], augment: Augment | None) -> Sample | DecodeFailure:
    decoded = decoded_or_failure(raw)
    if isinstance(decoded, DecodeFailure):
        decoded.error = picklable(decoded.error)
        return decoded
    try:
        sample = to_sample(decoded, ctx.manifest)
        return sample if augment is None else apply_augment(sample, augment, crop_size=ctx.crop_size)
    except Exception as exn:  # noqa: BLE001 - raised (or skipped) by the parent, as split_samples would
        return DecodeFailure("sample", str(raw["__key__"]), str(raw["__url__"]), picklable(exn))


def _fill(ctx: StreamContext, slot: int, samples: dict[str, list[Sample]]) -> tuple[int, tuple[str, ...]]:
    """Collate into the slot exactly as batches.py does in numpy (the same float32 operations, so the same bits)."""
    assert ctx.layout is not None
    views = ctx.layout.views(ctx.arena, slot)
    kind = ctx.manifest.kind
    if kind == "unpaired":
        for side in ("a", "b"):
            _scaled_into(views[side], samples[side], "image")
            views[f"label_{side}"][: len(samples[side])] = [s["label"] for s in samples[side]]
        return len(samples["a"]), ("a", "b", "label_a", "label_b")
    batch = samples["samples"]
    n = len(batch)
    for name in _IMAGE_FIELDS[kind]:
        _scaled_into(views[name], batch, name)
    views["label"][:n] = [s["label"] for s in batch]
    present = [*_IMAGE_FIELDS[kind], "label"]
    if kind == "attributes":
        _into(views["attrs"], batch, "attrs")
        present.append("attrs")
    if kind == "paired" and "mask" in batch[0]:
        _into(views["mask"], [{**s, "mask": s["mask"] > 127} for s in batch], "mask")
        present.append("mask")
    return n, tuple(present)


def _into(out: np.ndarray, samples: Sequence[Sample], name: str) -> None:
    for i, sample in enumerate(samples):
        if sample[name].shape != out.shape[1:]:
            raise ValueError(f"sample {sample['key']}: its {name} has shape {sample[name].shape}, the manifest's "
                             f"batches {out.shape[1:]}; prep the dataset again with --overwrite")  # fmt: skip
        out[i] = sample[name]


def _scaled_into(out: np.ndarray, samples: Sequence[Sample], name: str) -> None:
    _into(out, samples, name)
    part = out[: len(samples)]
    part /= 127.5  # batches._scaled: the same float32 operations on the same values
    part -= 1.0
