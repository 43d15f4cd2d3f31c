"""Read prepared datasets for training and evaluation, streaming shards through the Store (file or S3).

This module holds the shared core (manifest, secure decoding, rank partition, shuffling) and the `images`
API; batches.py builds every kind's batches and whole-split arrays on `decoded_epoch`.

Decoding is secure: only png/jpg (PIL), cls (int), json, txt and npy (allow_pickle=False) are decoded;
any other member is refused, so nothing is ever unpickled. Grouping members into samples is webdataset's.
Every shard is verified before its first sample is yielded (integrity.py: sha256 and size against the
manifest, members against index.parquet); a shard that fails raises ShardIntegrityError, a sample that does
not decode SampleDecodeError naming its shard and key. Given a `ReadStats`, readers instead warn, count and
skip a failing shard (whole: none of its samples is read) or sample and go on.
"""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from webdataset.tariterators import group_by_keys, tar_file_expander

from data_prep.integrity import (
    SampleDecodeError,
    ShardIntegrityError,
    index_keys,
    read_verified,
    verification_on,
)
from data_prep.manifest import MANIFEST, Manifest, ShardInfo
from data_prep.members import image_names
from data_prep.storage import Store, StoreError, open_store

_IMAGE_FORMATS = {"png": ["PNG"], "jpg": ["JPEG"], "jpeg": ["JPEG"]}
_log = logging.getLogger(__name__)


@dataclass
class ReadStats:
    """What a reader skipped instead of failing: `skipped` samples that did not decode (or lacked a member
    their kind needs), `bad_shards` shards that failed verification or could not be read, and the last error."""

    skipped: int = 0
    bad_shards: int = 0
    last_error: str = ""

    def skip(self, what: str, exn: BaseException, *, shard: bool = False) -> bool:
        """Count one skipped sample (or shard) and log it (the first 10, then every 100th); True = go on."""
        if shard:
            self.bad_shards += 1
        else:
            self.skipped += 1
        self.last_error = f"{what}: {type(exn).__name__}: {str(exn)[:200]}"
        n = self.skipped + self.bad_shards
        if n <= 10 or n % 100 == 0:
            _log.warning("skipped %s (%d skipped samples, %d bad shards so far)", self.last_error,
                         self.skipped, self.bad_shards)  # fmt: skip
        return True


class DatasetNotFound(Exception):
    """No manifest.json at the dataset URL: the dataset was never prepared (or not finished)."""


def read_manifest(dataset_url: str, *, s3_endpoint: str | None = None) -> Manifest:
    """The manifest of the dataset at `dataset_url` (e.g. .ganpipe/store/datasets/mnist5k)."""
    return _open(dataset_url, s3_endpoint=s3_endpoint)[1]


def open_dataset(dataset_url: str, *, s3_endpoint: str | None = None) -> tuple[Store, Manifest]:
    """The dataset's store and manifest; DatasetNotFound when it was never prepared."""
    return _open(dataset_url, s3_endpoint=s3_endpoint)


def _open(dataset_url: str, *, s3_endpoint: str | None) -> tuple[Store, Manifest]:
    store = open_store(dataset_url, s3_endpoint=s3_endpoint)
    if not store.exists(MANIFEST):
        raise DatasetNotFound(
            f"no dataset at {store.url} ({MANIFEST} missing) — run `ganpipe prep` to create it"
        )
    return store, Manifest.from_json(store.get_bytes(MANIFEST), source=f"{store.url.rstrip('/')}/{MANIFEST}")


def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Decode one grouped WebDataset sample by member extension; refuses anything not on the safe list."""
    out: dict[str, Any] = {}
    for name, value in sample.items():
        if name.startswith("__"):
            out[name] = value
            continue
        ext = name.rsplit(".", 1)[-1].lower()
        if ext in _IMAGE_FORMATS:
            with Image.open(io.BytesIO(value), formats=_IMAGE_FORMATS[ext]) as image:
                image.load()
                out[name] = np.asarray(image if image.mode in ("L", "RGB") else image.convert("RGB"))
        elif ext == "cls":
            out[name] = int(value.decode("ascii").strip())
        elif ext == "json":
            out[name] = json.loads(value)
        elif ext == "txt":
            out[name] = value.decode("utf-8")
        elif ext == "npy":
            out[name] = np.load(io.BytesIO(value), allow_pickle=False)
        else:
            raise ValueError(
                f"refusing to decode {sample.get('__key__')}.{name}: only png/jpg/cls/json/txt/npy"
            )
    return out


def _verified_files(
    store: Store, manifest: Manifest, shards: Sequence[ShardInfo], stats: ReadStats | None
) -> Iterator[dict[str, Any]]:
    """Each verified shard's members in tar order as webdataset's file samples ({"fname", "data", "__url__"}),
    then its end-of-shard marker {}: what `tar_file_expander` yields, from the parse integrity.py verified."""
    keys = index_keys(store, manifest, shards)
    for shard in shards:
        try:
            verified = read_verified(store, manifest, shard, keys=keys[shard.path])
        except (ShardIntegrityError, StoreError) as exn:
            if stats is None:
                raise
            stats.skip(f"shard {shard.path}", exn, shard=True)
            continue
        url = f"{store.url}/{shard.path}"
        for name, data in verified.files():
            yield {"fname": name, "data": data, "__url__": url}
        yield {}


def shard_files(
    store: Store, manifest: Manifest, shards: Sequence[ShardInfo], *, stats: ReadStats | None = None
) -> Iterator[dict[str, Any]]:
    """The shards' members as webdataset file samples, each shard verified first (unverified only inside
    integrity.unverified_reads_for_benchmark, where the streaming expander reads them as it always did)."""
    if verification_on():
        return _verified_files(store, manifest, shards, stats)
    if stats is None:
        return tar_file_expander(_shard_streams(store, shards))
    return tar_file_expander(_shard_streams(store, shards, stats), handler=lambda exn: stats.skip(
        f"shard {exn.args[-1] if exn.args else '?'}", exn, shard=True))  # fmt: skip


def _shard_streams(
    store: Store, shards: Sequence[ShardInfo], stats: ReadStats | None = None
) -> Iterator[dict[str, Any]]:
    """Each shard's store stream, unverified: only for `ganpipe bench-data`'s measure of what verifying costs."""
    for shard in shards:
        try:
            stream = store.open_read(shard.path)
        except StoreError as exn:
            if stats is None:
                raise
            stats.skip(f"shard {shard.path}", exn, shard=True)
            continue
        with stream:  # closed once the expander asks for the next shard
            yield {"url": f"{store.url}/{shard.path}", "stream": stream}


def _to_chw(image: np.ndarray, channels: int) -> np.ndarray:
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] != channels:  # only if a shard disagrees with its manifest
        image = (
            np.repeat(image, 3, axis=2)
            if channels == 3
            else image.mean(axis=2, keepdims=True).astype(np.uint8)
        )
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def _shuffled(items: Iterator[dict[str, Any]], size: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """A shuffle buffer: hold `size` samples, emit a random one as each new one arrives."""
    if size <= 1:
        yield from items
        return
    buffer: list[dict[str, Any]] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer


def decoded_epoch(
    store: Store,
    manifest: Manifest,
    *,
    split: str,
    rank: int,
    world_size: int,
    seed: int,
    epoch: int,
    shuffle_buffer: int,
    shuffle: bool = True,
    domain: str | None = None,
    stats: ReadStats | None = None,
) -> Iterator[dict[str, Any]]:
    """One epoch of this rank's decoded samples (member name -> value, plus __key__/__url__) of one split
    (of one domain, for `unpaired`): the shared core of every kind's reader. With `stats`, a bad sample or
    shard is skipped and counted there instead of raising."""
    samples = raw_epoch(store, manifest, split=split, rank=rank, world_size=world_size, seed=seed, epoch=epoch,
                        shuffle_buffer=shuffle_buffer, shuffle=shuffle, domain=domain, stats=stats)  # fmt: skip
    for sample in samples:
        decoded = decoded_or_failure(sample)
        if isinstance(decoded, DecodeFailure):
            decoded.handle(store, manifest, stats)
            continue
        yield decoded


def raw_epoch(
    store: Store,
    manifest: Manifest,
    *,
    split: str,
    rank: int,
    world_size: int,
    seed: int,
    epoch: int,
    shuffle_buffer: int,
    shuffle: bool = True,
    domain: str | None = None,
    stats: ReadStats | None = None,
) -> Iterator[dict[str, Any]]:
    """decoded_epoch's samples before decoding (member name -> bytes, plus __key__/__url__), in the same order:
    what a decode pool (data_prep/prefetch.py) is handed, so its order is fixed here whoever decodes."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    if split not in manifest.counts:
        raise ValueError(f"unknown split {split!r} in {store.url}: splits are {sorted(manifest.counts)}")
    shards = manifest.split_shards(split, domain=domain)
    if not shards:  # an empty split (e.g. holdout=0)
        return
    tag = "" if domain is None else f":{domain}"  # the two domains of `unpaired` shuffle independently
    if shuffle:  # the same order on every rank, so the rank partition below is a partition
        shards = list(shards)
        random.Random(f"shards:{seed}:{epoch}{tag}").shuffle(shards)
    by_shard = len(shards) >= world_size
    mine = shards[rank::world_size] if by_shard else shards
    files = shard_files(store, manifest, mine, stats=stats)
    if stats is None:
        samples = group_by_keys(files)
    else:
        samples = group_by_keys(files, handler=lambda exn: stats.skip("sample", exn))
    if not by_shard and world_size > 1:
        samples = (s for i, s in enumerate(samples) if i % world_size == rank)
    if shuffle:
        samples = _shuffled(samples, shuffle_buffer, random.Random(f"samples:{seed}:{epoch}:{rank}{tag}"))
    yield from samples


@dataclass
class DecodeFailure:
    """A sample that did not decode (stage "decode") or lacked what its kind needs (stage "sample"), kept as a
    value so a decode worker can hand it back in order; `handle` then raises or skips it as the reader would."""

    stage: str
    key: str
    url: str
    error: Exception

    def handle(self, store: Store, manifest: Manifest, stats: ReadStats | None) -> None:
        """Raise (no stats) or count and log in `stats`: a decode error as SampleDecodeError naming the shard,
        a missing or malformed member as itself (stats skip only ValueError/KeyError there, as ever)."""
        where = {"__key__": self.key, "__url__": self.url}
        if self.stage == "decode":
            if stats is None:
                raise _decode_error(store, manifest, where, self.error) from self.error
            stats.skip(f"sample {self.key} in {self.url}", self.error)
            return
        if stats is None or not isinstance(self.error, (ValueError, KeyError)):
            raise self.error
        stats.skip(f"sample {self.key} in {self.url}", self.error)


def decoded_or_failure(sample: dict[str, Any]) -> dict[str, Any] | DecodeFailure:
    """decode_sample's result, or the DecodeFailure naming the sample."""
    try:
        return decode_sample(sample)
    except Exception as exn:  # a corrupt member: with stats skip the sample and count it, else name it
        return DecodeFailure("decode", str(sample.get("__key__")), str(sample.get("__url__")), exn)


def _decode_error(store: Store, manifest: Manifest, sample: dict[str, Any], exn: Exception) -> SampleDecodeError:
    shard = str(sample.get("__url__", "?")).removeprefix(f"{store.url}/")
    detail = (str(exn).splitlines() or [""])[0][:200]
    return SampleDecodeError(
        f"dataset {manifest.name}, shard {shard}: sample {sample.get('__key__')} does not decode "
        f"({type(exn).__name__}: {detail}); its shard matches the manifest, so it was written this way: prep the "
        "dataset again with --overwrite"
    )


def image_of(decoded: dict[str, Any], channels: int, stem: str | None = None) -> np.ndarray:
    """The sample's image member as uint8 (C, H, W): `png`/`jpg` (or schema 1's `image.png`) when `stem` is
    None, else `{stem}.png|jpg` (members.image_names); a missing one names the sample and shard."""
    names = image_names(stem)
    image = next((decoded[name] for name in names if name in decoded), None)
    if image is None:
        raise ValueError(f"sample {decoded['__key__']} in {decoded['__url__']} has no {'/'.join(names)} member")
    return _to_chw(image, channels)


def _epoch(
    store: Store,
    manifest: Manifest,
    *,
    split: str,
    rank: int,
    world_size: int,
    seed: int,
    epoch: int,
    shuffle_buffer: int,
    shuffle: bool = True,
    domain: str | None = None,
    stats: ReadStats | None = None,
) -> Iterator[dict[str, Any]]:
    for decoded in decoded_epoch(
        store,
        manifest,
        split=split,
        rank=rank,
        world_size=world_size,
        seed=seed,
        epoch=epoch,
        shuffle_buffer=shuffle_buffer,
        shuffle=shuffle,
        domain=domain,
        stats=stats,
    ):
        try:
            image = image_of(decoded, manifest.channels)
        except ValueError as exn:
            if stats is None:
                raise
            stats.skip(f"sample {decoded['__key__']}", exn)
            continue
        yield {"key": decoded["__key__"], "image": image, "label": decoded.get("cls", -1)}


def iter_samples(
    dataset_url: str,
    *,
    split: str = "train",
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    shuffle_buffer: int = 1000,
    s3_endpoint: str | None = None,
) -> Iterator[dict[str, Any]]:
    """One epoch of this rank's samples: {"key": str, "image": uint8 (C, H, W), "label": int (-1 if none)}.

    Ranks read disjoint shards (shards[rank::world_size] of a seeded per-epoch order) when there are at
    least world_size shards, else every rank reads all shards and keeps samples i % world_size == rank.
    """
    store, manifest = _open(dataset_url, s3_endpoint=s3_endpoint)
    yield from _epoch(
        store,
        manifest,
        split=split,
        rank=rank,
        world_size=world_size,
        seed=seed,
        epoch=epoch,
        shuffle_buffer=shuffle_buffer,
        shuffle=shuffle,
    )


def load_split(
    dataset_url: str, *, split: str, s3_endpoint: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The whole split in manifest order: images uint8 (N, C, H, W) and labels int64 (N,), -1 if none."""
    store, manifest = _open(dataset_url, s3_endpoint=s3_endpoint)
    samples = list(
        _epoch(
            store,
            manifest,
            split=split,
            rank=0,
            world_size=1,
            seed=0,
            epoch=0,
            shuffle_buffer=0,
            shuffle=False,
        )
    )
    size, channels = manifest.image_size, manifest.channels
    images = (
        np.stack([s["image"] for s in samples]) if samples else np.zeros((0, channels, size, size), np.uint8)
    )
    return images, np.asarray([s["label"] for s in samples], dtype=np.int64)
