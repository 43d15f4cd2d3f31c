"""One reader for every dataset kind: `dataset_batches` (training streams) and `load_split_arrays` (evaluation).

Batches are dicts of tensors; images are float32 (B, C, H, W) in [-1, 1], labels int64 (-1 when unknown):
  images      {"image", "label"}
  paired      {"a", "b", "label"} (+ "mask" float32 (B, 1, H, W) in {0, 1} for inpainting sets); with
              crop_size/flip, a, b (and mask) get the same random crop and the same flip
  unpaired    {"a", "b", "label_a", "label_b"}: independent shuffled streams of domain_a and domain_b
  attributes  {"image", "attrs" float32 (B, n_attrs) multi-hot, "label"}
  captioned   {"image", "emb" float32 (B, D): one random caption's embedding of each sample, "wrong_emb"
              float32 (B, D): a random caption's embedding of another sample (never the same one), "label"}
Decoding is reader.py's: no unpickling, npy with allow_pickle=False.

With decode_workers > 0, `dataset_batches` moves all of it off the caller's thread: a background thread plans
which samples form each batch (data_prep/plan.py, from the manifest alone: `batch_stream` run over references)
and decode workers read and verify the shards, decode, augment and collate each batch into shared memory
(data_prep/batch_workers.py, data_prep/shard_work.py). The batches are the same with 0, 1 or N decode workers.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import Any

import numpy as np
import torch

from data_prep.batch_workers import WorkerReader
from data_prep.integrity import verification_on
from data_prep.manifest import DOMAINS, Manifest
from data_prep.plan import BatchPlan, Journal, split_refs
from data_prep.prefetch import POOL_KINDS, Prefetcher, make_pool, ordered_map, picklable, shut
from data_prep.reader import (
    DecodeFailure,
    ReadStats,
    decoded_epoch,
    decoded_or_failure,
    open_dataset,
    raw_epoch,
)
from data_prep.samples import Sample, apply_augment, draw_augment, to_sample
from data_prep.storage import Store

__all__ = ["dataset_batches", "image_batches", "load_split_arrays", "split_samples", "to_sample"]
CHUNK = 32  # samples per task of a decode worker: enough to hide a process pool's per-task cost (~0.1 ms)
PREFETCH_BATCHES = 4  # ready batches held ahead of the training thread


def _scaled(images: list[np.ndarray]) -> torch.Tensor:
    # Scaled in numpy: torch's intra-op threads make this tiny op ~1000x slower on a busy 2-core machine.
    out = np.stack(images).astype(np.float32)
    out /= 127.5  # 255 / 127.5 is exactly 2.0 in float32, so the range is exactly [-1, 1]
    out -= 1.0
    return torch.from_numpy(out)


def _labels(batch: list[Sample], name: str = "label") -> torch.Tensor:
    return torch.from_numpy(np.asarray([s[name] for s in batch], dtype=np.int64))


def _augment(sample: Sample, *, crop_size: int | None, flip: bool, rng: np.random.Generator) -> Sample:
    """The same random crop and horizontal flip for every image of a paired sample (a, b, mask)."""
    _, height, width = sample["a"].shape
    return apply_augment(sample, draw_augment(height, width, crop_size=crop_size, flip=flip, rng=rng),
                         crop_size=crop_size)  # fmt: skip


def _collate_paired(batch: list[Sample]) -> dict[str, torch.Tensor]:
    out = {"a": _scaled([s["a"] for s in batch]), "b": _scaled([s["b"] for s in batch]), "label": _labels(batch)}
    if "mask" in batch[0]:
        out["mask"] = torch.from_numpy((np.stack([s["mask"] for s in batch]) > 127).astype(np.float32))
    return out


def collate_captioned(batch: list[Sample], spare: Sample | None, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Right and wrong embeddings: the wrong one is a caption of another sample of the batch (of the previous
    batch's last sample when this batch has only one) that is none of this sample's own captions."""
    size = len(batch)
    right, wrong = [], []
    for i, sample in enumerate(batch):
        right.append(sample["emb"][rng.integers(len(sample["emb"]))])
        if size > 1:
            others = [batch[(i + int(k)) % size] for k in rng.permutation(np.arange(1, size))]
        elif spare is not None and spare["key"] != sample["key"]:
            others = [spare]
        else:
            raise ValueError("a captioned batch needs a second sample for wrong_emb: use batch_size >= 2")
        wrong.append(_mismatched_caption(sample, others, rng))
    return {
        "image": _scaled([s["image"] for s in batch]),
        "emb": torch.from_numpy(np.stack(right).astype(np.float32)),
        "wrong_emb": torch.from_numpy(np.stack(wrong).astype(np.float32)),
        "label": _labels(batch),
    }


def _mismatched_caption(sample: Sample, others: list[Sample], rng: np.random.Generator) -> np.ndarray:
    """A caption embedding of the first of `others` that has one which is not among `sample`'s captions.

    Caption sets repeat word for word across images described alike (templated captions, or two photos of
    one bird species with stock phrases); the matching-aware D must never be taught that such a pair
    mismatches. Equal within 1e-5: the same text embedded in two encoder batches can differ in the last bits.
    """
    own = np.asarray(sample["emb"], dtype=np.float32)
    for other in others:
        theirs = np.asarray(other["emb"], dtype=np.float32)
        shared = (np.abs(theirs[:, None, :] - own[None, :, :]).max(axis=2) < 1e-5).any(axis=1)
        differing = np.flatnonzero(~shared)
        if differing.size:
            return theirs[differing[rng.integers(differing.size)]]
    raise ValueError(f"sample {sample['key']}: every caption of the other samples in its batch is one of its own; "
                     "GAN-CLS needs mismatched captions (use a larger batch or more varied captions)")


def _collater(manifest: Manifest, rng: np.random.Generator) -> Callable[[list[Sample]], dict[str, torch.Tensor]]:
    if manifest.kind == "paired":
        return _collate_paired
    if manifest.kind == "attributes":
        return lambda batch: {
            "image": _scaled([s["image"] for s in batch]),
            "attrs": torch.from_numpy(np.stack([s["attrs"] for s in batch]).astype(np.float32)),
            "label": _labels(batch),
        }
    if manifest.kind == "captioned":
        spare: list[Sample] = []

        def collate(batch: list[Sample]) -> dict[str, torch.Tensor]:
            out = collate_captioned(batch, spare[-1] if spare else None, rng)
            spare[:] = batch[-1:]
            return out

        return collate
    return lambda batch: {"image": _scaled([s["image"] for s in batch]), "label": _labels(batch)}


def decode_chunk(samples: list[dict[str, Any]], *, manifest: Manifest) -> list[Sample | DecodeFailure]:
    """What a decode worker does: each raw sample decoded and made a Sample, or the DecodeFailure naming it."""
    out: list[Sample | DecodeFailure] = []
    for raw in samples:
        decoded = decoded_or_failure(raw)
        if isinstance(decoded, DecodeFailure):
            decoded.error = picklable(decoded.error)  # it may cross back from a process
            out.append(decoded)
            continue
        try:
            out.append(to_sample(decoded, manifest))
        except Exception as exn:  # handled in order by the reading thread, as split_samples would
            out.append(DecodeFailure("sample", str(raw.get("__key__")), str(raw.get("__url__")), picklable(exn)))
    return out


def _pooled_samples(
    store: Store, manifest: Manifest, *, pool: Executor, epoch: int, domain: str | None, stats: ReadStats | None,
    **kw: Any,
) -> Iterator[Sample]:
    """split_samples' stream, decoded on `pool`: raw samples in chunks of CHUNK, results in order."""
    raw = raw_epoch(store, manifest, epoch=epoch, domain=domain, stats=stats, **kw)
    chunks = iter(lambda: list(itertools.islice(raw, CHUNK)), [])
    # Every worker busy and its next chunk queued (both executors keep their size in _max_workers).
    ahead = 2 * getattr(pool, "_max_workers", 1) + 2
    for results in ordered_map(functools.partial(decode_chunk, manifest=manifest), chunks, pool=pool, ahead=ahead):
        for item in results:
            if isinstance(item, DecodeFailure):
                item.handle(store, manifest, stats)
                continue
            yield item


def split_samples(
    store: Store, manifest: Manifest, *, epoch: int, domain: str | None = None, stats: ReadStats | None = None,
    pool: Executor | None = None, **kw: Any,
) -> Iterator[Sample]:
    """One epoch of Samples of a split (of a domain); decoded on `pool` when given, in the same order."""
    if pool is not None:
        yield from _pooled_samples(store, manifest, pool=pool, epoch=epoch, domain=domain, stats=stats, **kw)
        return
    for decoded in decoded_epoch(store, manifest, epoch=epoch, domain=domain, stats=stats, **kw):
        if stats is None:
            yield to_sample(decoded, manifest)
            continue
        try:
            sample = to_sample(decoded, manifest)
        except (ValueError, KeyError) as exn:  # a member its kind needs is missing or malformed
            stats.skip(f"sample {decoded.get('__key__')} in {decoded.get('__url__')}", exn)
            continue
        yield sample


def dataset_batches(
    dataset_url: str,
    *,
    split: str = "train",
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    shuffle_buffer: int = 1000,
    repeat: bool = True,
    drop_last: bool = True,
    crop_size: int | None = None,
    flip: bool = False,
    s3_endpoint: str | None = None,
    stats: ReadStats | None = None,
    decode_workers: int = 0,
    decode_pool: str = "process",
    pin_memory: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of any kind (the module docstring lists each kind's keys), sharded by rank like image_batches.
    With `stats` (a reader.ReadStats), undecodable samples and broken shards are skipped and counted there
    (log `stats.skipped` as a metric) instead of raising.

    Each epoch reshuffles shard order and samples (seeded from seed, epoch, rank); repeat=True cycles
    epochs forever. For `unpaired`, repeat=False ends once both domains have been read once (the shorter
    one restarts meanwhile, as CycleGAN's unaligned loader does). crop_size and flip are for `paired` only.

    decode_workers=0 reads, decodes and collates on the caller's thread; N > 0 does it all in a background
    thread with N decode workers (`decode_pool` "process" or "thread"), PREFETCH_BATCHES batches ahead: the same
    batches either way. Close the stream (or let it end) to stop them. pin_memory puts batches in page-locked
    memory where CUDA is available, so the training thread's non-blocking copies to the GPU really overlap.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if decode_workers < 0 or decode_pool not in POOL_KINDS:
        raise ValueError(f"decode_workers must be >= 0 and decode_pool one of {', '.join(POOL_KINDS)}; got "
                         f"{decode_workers} and {decode_pool!r}")  # fmt: skip
    store, manifest = open_dataset(dataset_url, s3_endpoint=s3_endpoint)
    if (crop_size is not None or flip) and manifest.kind != "paired":
        raise ValueError(f"crop_size and flip apply to paired datasets; {manifest.name} is {manifest.kind!r}")
    if crop_size is not None and not 1 <= crop_size <= manifest.image_size:
        raise ValueError(f"crop_size must be in [1, {manifest.image_size}], got {crop_size}")
    # Pinned for the caller's current GPU: a thread that pins without setting it would open a context on GPU 0.
    pin = torch.cuda.current_device() if pins_memory(pin_memory) else None
    make = functools.partial(_batches, store, manifest, batch_size=batch_size, repeat=repeat, drop_last=drop_last,
                             crop_size=crop_size, flip=flip, pin=pin, split=split, rank=rank,
                             world_size=world_size, seed=seed, shuffle_buffer=shuffle_buffer, stats=stats)  # fmt: skip
    if decode_workers == 0:
        yield from make(pool=None)
        return
    verify = verification_on()  # the caller's setting (a context variable): the thread below starts without it

    def produce() -> Iterator[dict[str, torch.Tensor]]:
        if stats is not None:  # skipping a shard would move every later sample: the plan cannot know in advance
            pool = make_pool(kind=decode_pool, workers=decode_workers)
            try:
                yield from make(pool=pool)
            finally:
                shut(pool)
            return
        if pin is not None:
            torch.cuda.set_device(pin)
        with WorkerReader(store, manifest, workers=decode_workers, pool_kind=decode_pool, batch_size=batch_size,
                          crop_size=crop_size, verify=verify, prefetch=PREFETCH_BATCHES) as reader:  # fmt: skip
            for batch in _planned(store, manifest, reader, batch_size=batch_size, repeat=repeat, drop_last=drop_last,
                                  crop_size=crop_size, flip=flip, split=split, rank=rank, world_size=world_size,
                                  seed=seed, shuffle_buffer=shuffle_buffer):  # fmt: skip
                yield pinned(batch, pin)

    with Prefetcher(produce, depth=PREFETCH_BATCHES, name="ganpipe-batches") as ahead:
        yield from ahead


def _planned(
    store: Store, manifest: Manifest, reader: WorkerReader, *, batch_size: int, repeat: bool, drop_last: bool,
    crop_size: int | None, flip: bool, seed: int, rank: int, split: str, **kw: Any,
) -> Iterator[dict[str, torch.Tensor]]:
    """_batches' stream with every read, verification, decode and collate done by `reader`'s workers: the plan
    is batch_stream run over references (data_prep/plan.py), with the same random draws in the same order."""
    rng = np.random.default_rng([seed, rank, 0x6261])  # as in _batches
    journal = Journal()
    source = functools.partial(split_refs, store, manifest, journal=journal, shard_file=reader.shard_file, seed=seed,
                               split=split, **kw)  # fmt: skip
    side = manifest.image_size
    augment = None if crop_size is None and not flip else lambda ref: ref._replace(
        augment=draw_augment(side, side, crop_size=crop_size, flip=flip, rng=rng))  # fmt: skip
    plans = batch_stream(manifest, source=source, augment=augment, batch_size=batch_size, repeat=repeat,
                         drop_last=drop_last, rank=rank, split=split,
                         collate=lambda refs: BatchPlan({"samples": refs}, journal.take()),
                         pair=lambda a, b: BatchPlan({"a": a, "b": b}, journal.take()))  # fmt: skip
    yield from reader.run(plans, collate=_collater(manifest, rng))  # only captioned batches are collated here


def pins_memory(wanted: bool) -> bool:
    """Whether batches go to page-locked memory: asked for and possible (pinning needs a CUDA driver)."""
    return wanted and torch.cuda.is_available()


def _batches(
    store: Store, manifest: Manifest, *, pool: Executor | None, batch_size: int, repeat: bool, drop_last: bool,
    crop_size: int | None, flip: bool, pin: int | None, seed: int, rank: int, split: str, **kw: Any,
) -> Iterator[dict[str, torch.Tensor]]:
    """The batches of dataset_batches, made on this thread (samples decoded on `pool` when given); page-locked
    for CUDA device `pin` when given."""
    if pin is not None:
        torch.cuda.set_device(pin)
    rng = np.random.default_rng([seed, rank, 0x6261])  # augmentation and caption choices, per rank
    source = functools.partial(split_samples, store, manifest, pool=pool, seed=seed, split=split, **kw)
    augment = None if crop_size is None and not flip else functools.partial(_augment, crop_size=crop_size, flip=flip,
                                                                             rng=rng)  # fmt: skip
    batches = batch_stream(manifest, source=source, collate=_collater(manifest, rng), pair=_collate_unpaired,
                           augment=augment, batch_size=batch_size, repeat=repeat, drop_last=drop_last, rank=rank,
                           split=split)  # fmt: skip
    for batch in batches:
        yield pinned(batch, pin)


def pinned(batch: dict[str, torch.Tensor], pin: int | None) -> dict[str, torch.Tensor]:
    """The batch in page-locked memory when `pin` names a CUDA device, else as it is."""
    return {k: v.pin_memory() for k, v in batch.items()} if pin is not None else batch


def _collate_unpaired(a: list[Sample], b: list[Sample]) -> dict[str, torch.Tensor]:
    return {"a": _scaled([s["image"] for s in a]), "b": _scaled([s["image"] for s in b]), "label_a": _labels(a),
            "label_b": _labels(b)}  # fmt: skip


def batch_stream(
    manifest: Manifest, *, source: Callable[..., Iterator[Any]], collate: Callable[[list[Any]], Any],
    pair: Callable[[list[Any], list[Any]], Any], augment: Callable[[Any], Any] | None, batch_size: int,
    repeat: bool, drop_last: bool, rank: int, split: str,
) -> Iterator[Any]:
    """Which items form each batch, epoch after epoch: `source(epoch=, rank=[, domain=])` gives an epoch's items
    (samples, or data_prep/plan.py's references to them), `collate` (or `pair`, for `unpaired`) makes a batch of
    them. Run over samples it gives the batches; over references, the plan decode workers carry out: the same."""
    if manifest.kind == "unpaired":
        return _unpaired_batches(source, pair=pair, batch_size=batch_size, repeat=repeat, drop_last=drop_last,
                                 rank=rank, split=split)  # fmt: skip
    return _kind_batches(source, collate=collate, augment=augment, batch_size=batch_size, repeat=repeat,
                         drop_last=drop_last, rank=rank, split=split)  # fmt: skip


def _kind_batches(
    source: Callable[..., Iterator[Any]], *, batch_size: int, repeat: bool, drop_last: bool,
    collate: Callable[[list[Any]], Any], augment: Callable[[Any], Any] | None, rank: int, split: str,
) -> Iterator[Any]:
    epoch = 0
    while True:
        batch: list[Any] = []
        produced = 0
        for sample in source(epoch=epoch, rank=rank):
            if augment is not None:
                sample = augment(sample)
            batch.append(sample)
            if len(batch) == batch_size:
                yield collate(batch)
                produced, batch = produced + 1, []
        if batch and not drop_last:
            yield collate(batch)
            produced += 1
        if not repeat:
            return
        if produced == 0:
            raise ValueError(f"rank {rank} gets fewer than batch_size={batch_size} samples of {split!r} per epoch")
        epoch += 1


def _unpaired_batches(
    source: Callable[..., Iterator[Any]], *, pair: Callable[[list[Any], list[Any]], Any], batch_size: int,
    repeat: bool, drop_last: bool, rank: int, split: str,
) -> Iterator[Any]:
    def stream(domain: str) -> Iterator[Any]:
        """The domain's samples, epoch after epoch, with None marking each epoch's end."""
        epoch = 0
        while True:
            empty = True
            for sample in source(epoch=epoch, domain=domain, rank=rank):
                empty = False
                yield sample
            if empty:
                raise ValueError(f"rank {rank} gets no samples of {domain} {split!r}")
            yield None
            epoch += 1

    streams = {domain: stream(domain) for domain in DOMAINS}
    finished = dict.fromkeys(DOMAINS, False)
    while True:
        batch: dict[str, list[Any]] = {domain: [] for domain in DOMAINS}
        for domain in DOMAINS:
            while len(batch[domain]) < batch_size and (repeat or not all(finished.values())):
                item = next(streams[domain])
                if item is None:
                    finished[domain] = True
                else:
                    batch[domain].append(item)
        size = min(len(b) for b in batch.values())
        if size == batch_size or (size and not drop_last):
            yield pair(batch["domain_a"][:size], batch["domain_b"][:size])
        if not repeat and all(finished.values()):
            return


def load_split_arrays(dataset_url: str, *, split: str, s3_endpoint: str | None = None) -> dict[str, Any]:
    """The whole split in manifest order, as uint8 (N, C, H, W) images and int64 labels (-1 if none):
      images      {"key", "image", "label"}
      paired      {"key", "a", "b", "label"} (+ "mask" uint8 (N, 1, H, W), 255 = hole)
      unpaired    {"key_a", "a", "label_a", "key_b", "b", "label_b"} (the domains' N differ)
      attributes  {"key", "image", "attrs" uint8 (N, n_attrs), "label"}
      captioned   {"key", "image", "label", "captions" (list of lists of str), "emb" float16
                   (N, max captions, D) zero-padded, "n_captions" int64 (N,)}
    "key" entries are lists of sample keys (index.parquet's `key`)."""
    store, manifest = open_dataset(dataset_url, s3_endpoint=s3_endpoint)
    kw = dict(split=split, rank=0, world_size=1, seed=0, shuffle_buffer=0, shuffle=False)
    size, channels = manifest.image_size, manifest.channels

    def stack(samples: list[Sample], name: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.stack([s[name] for s in samples]) if samples else np.zeros((0, *shape), np.uint8)

    def labels(samples: list[Sample]) -> np.ndarray:
        return np.asarray([s["label"] for s in samples], dtype=np.int64)

    if manifest.kind == "unpaired":
        out: dict[str, Any] = {}
        for domain, side in zip(DOMAINS, ("a", "b"), strict=True):
            samples = list(split_samples(store, manifest, epoch=0, domain=domain, **kw))
            out[f"key_{side}"] = [s["key"] for s in samples]
            out[side] = stack(samples, "image", (channels, size, size))
            out[f"label_{side}"] = labels(samples)
        return out
    samples = list(split_samples(store, manifest, epoch=0, **kw))
    out = {"key": [s["key"] for s in samples], "label": labels(samples)}
    if manifest.kind == "paired":
        out["a"], out["b"] = stack(samples, "a", (channels, size, size)), stack(samples, "b", (channels, size, size))
        if manifest.extra.get("pairs", {}).get("mask"):
            out["mask"] = stack(samples, "mask", (1, size, size))
        return out
    out["image"] = stack(samples, "image", (channels, size, size))
    if manifest.kind == "attributes":
        out["attrs"] = stack(samples, "attrs", (len(manifest.extra["attributes"]),))
    elif manifest.kind == "captioned":
        dim = int(manifest.extra["text_encoder"]["dim"])
        counts = [len(s["captions"]) for s in samples]
        emb = np.zeros((len(samples), max(counts, default=0), dim), np.float16)
        for i, s in enumerate(samples):
            emb[i, : counts[i]] = s["emb"]
        out["captions"] = [list(s["captions"]) for s in samples]
        out["emb"], out["n_captions"] = emb, np.asarray(counts, dtype=np.int64)
    return out


def image_batches(
    dataset_url: str,
    *,
    split: str = "train",
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    shuffle_buffer: int = 1000,
    repeat: bool = True,
    drop_last: bool = True,
    s3_endpoint: str | None = None,
    stats: ReadStats | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches {"image": float32 (B, C, H, W) in [-1, 1], "label": int64 (B,), -1 when unlabelled}.
    With `stats`, undecodable samples and broken shards are skipped and counted there instead of raising.

    Each epoch reshuffles shard order and samples (seeded from seed, epoch, rank); every sample is read by
    exactly one rank per epoch. repeat=True cycles epochs forever. Ranks may get a few samples more or
    less per epoch, so a DDP loop should count steps rather than exhaust a repeat=False stream.
    """
    yield from dataset_batches(
        dataset_url, split=split, batch_size=batch_size, rank=rank, world_size=world_size, seed=seed,
        shuffle_buffer=shuffle_buffer, repeat=repeat, drop_last=drop_last, s3_endpoint=s3_endpoint, stats=stats,
    )
