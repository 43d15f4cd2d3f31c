"""Every read stands on verified shards: each shard is hashed as it is read and checked against the manifest
(sha256 and size), and its members against index.parquet, before any of its samples reaches a reader.

When the check fires: a run may stop long before a shard's end (`loop.steps=5` reads a few batches of the first
shard), so a check at the end of the stream alone would let a corrupt shard train and register a model. A shard
is therefore read once from the store, hashed as tarfile parses it, its members kept (in memory up to SPOOL_MAX
bytes, in a local temp file beyond); only once its bytes match the manifest and its members are exactly the
samples the index lists for it are they handed on, in tar order. That is the work of an unverified streaming
read (one pass, headers parsed once) plus sha256, and the memory of one shard.

Problems raise ShardIntegrityError, whose message is one line: dataset, shard, expected vs found, and the
`ganpipe datasets verify` command that lists every problem of the dataset (data_prep/catalog.py).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import io
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq
from webdataset.tariterators import base_plus_ext

from data_prep.manifest import INDEX, Manifest, ShardInfo
from data_prep.storage import KeyNotFound, Store, open_store

SPOOL_MAX = 64 << 20  # a shard up to this size is buffered in memory, a larger one in a local temp file
DEFAULT_STORE = ".ganpipe/store"  # where `ganpipe datasets verify` looks without --store or $GANPIPE_STORE
_CHUNK = 1 << 20

# Only `ganpipe bench-data` turns verification off, to measure what it costs; no training option reaches this.
_VERIFY: contextvars.ContextVar[bool] = contextvars.ContextVar("ganpipe_verify_shards", default=True)


class ShardIntegrityError(ValueError):
    """A shard (or index.parquet) differs from what the manifest promises; the message is one line naming the
    dataset, the shard, what was expected and what was found, and the command that lists every problem."""

    def __init__(self, *, dataset: str, shard: str, expected: str, found: str, verify: str) -> None:
        self.dataset, self.shard, self.expected, self.found, self.verify = dataset, shard, expected, found, verify
        super().__init__(f"dataset {dataset}, shard {shard}: expected {expected}, found {found}; run: {verify}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray Train sends a failed worker's exception to the driver pickled; keyword-only fields need a partial.
        fields = dict(dataset=self.dataset, shard=self.shard, expected=self.expected, found=self.found,
                      verify=self.verify)  # fmt: skip
        return (functools.partial(type(self), **fields), ())


class SampleDecodeError(ValueError):
    """A sample of a verified shard does not decode; the message names the dataset, shard and sample key."""


def verification_on() -> bool:
    """Whether reads verify their shards (always, except inside `unverified_reads_for_benchmark`)."""
    return _VERIFY.get()


@contextlib.contextmanager
def unverified_reads_for_benchmark() -> Iterator[None]:
    """Reads started in this block skip verification: `ganpipe bench-data` measures its cost this way."""
    token = _VERIFY.set(False)
    try:
        yield
    finally:
        _VERIFY.reset(token)


def verify_command(store: Store, manifest: Manifest) -> str:
    """`ganpipe datasets verify NAME`, with --store when the dataset is not under the default store."""
    command = f"ganpipe datasets verify {manifest.name}"
    url = store.url.rstrip("/")
    suffix = f"/datasets/{manifest.name}"
    if not url.endswith(suffix):  # a dataset given by its own URL: only its store's owner knows the root
        return command
    root = url[: -len(suffix)]
    if root == open_store(os.environ.get("GANPIPE_STORE") or DEFAULT_STORE).url:  # pipelines.spec.defaults
        return command
    return f"{command} --store {unquote(root.removeprefix('file://'))}"


def failure(store: Store, manifest: Manifest, shard: str) -> Callable[..., ShardIntegrityError]:
    """A ShardIntegrityError for `shard` of this dataset, given expected= and found=."""
    return functools.partial(ShardIntegrityError, dataset=manifest.name, shard=shard,
                             verify=verify_command(store, manifest))  # fmt: skip


def index_keys(store: Store, manifest: Manifest, shards: Sequence[ShardInfo]) -> dict[str, frozenset[str]]:
    """The sample keys index.parquet lists for each of `shards` (by shard path)."""
    wanted = {s.path for s in shards}
    fail = failure(store, manifest, INDEX)
    try:
        data = store.get_bytes(INDEX)  # a store that cannot be reached raises its own one-line StoreError
    except KeyNotFound:
        raise fail(expected="the key and shard of every sample", found="no such object") from None
    try:
        table = pq.read_table(io.BytesIO(data), columns=["key", "shard"])
    except (OSError, ValueError, pa.ArrowException) as exn:
        raise fail(expected="the key and shard of every sample",
                   found=f"an unreadable file ({type(exn).__name__})") from None  # fmt: skip
    keys: dict[str, set[str]] = {path: set() for path in wanted}
    for key, shard in zip(table.column("key").to_pylist(), table.column("shard").to_pylist(), strict=True):
        if shard in wanted:
            keys[shard].add(key)
    return {path: frozenset(k) for path, k in keys.items()}


@dataclass
class VerifiedShard:
    """A shard that matched its manifest and index: its members in tar order, with their data (or, for a shard
    over SPOOL_MAX, their offsets in the local spill file)."""

    members: list[tuple[tarfile.TarInfo, bytes | None]]
    spill: BinaryIO | None = None

    def files(self) -> Iterator[tuple[str, bytes]]:
        """(member name, data) in tar order; closes the spill file at the end."""
        try:
            for member, data in self.members:
                if data is None and self.spill is not None:
                    self.spill.seek(member.offset_data)
                    data = self.spill.read(member.size)
                yield member.name, data or b""
        finally:
            self.close()

    def close(self) -> None:
        if self.spill is not None:
            self.spill.close()


class _Hashing(io.RawIOBase):
    """The store stream read once: every byte hashed (and written to `spill` when given), at most one byte past
    `limit` (so a shard of any size keeps memory and disk bounded, and still reads as too long).

    sha256 runs in a helper thread, in order, while the caller parses: hashlib releases the GIL, so where a core
    is free (a GPU run's data loading, an idle second core) the hash costs no wall time; where none is, it costs
    what hashing inline would (bench-data measures both ways of reading)."""

    def __init__(self, stream: BinaryIO, *, limit: int, spill: BinaryIO | None) -> None:
        self.stream, self.limit, self.spill = stream, limit, spill
        self.size = 0
        self._digest = hashlib.sha256()
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ganpipe-sha256")  # FIFO: in order

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)[: max(0, min(len(buffer), self.limit + 1 - self.size))]
        n = self.stream.readinto(view) or 0  # straight into the caller's buffer
        chunk = bytes(view[:n])  # the caller reuses its buffer: the thread hashes a copy
        self._hasher.submit(self._digest.update, chunk)
        self.size += n
        if self.spill is not None:
            self.spill.write(chunk)
        return n

    def hexdigest(self) -> str:
        """The sha256 of everything read, once the helper thread has hashed it all."""
        self._hasher.shutdown(wait=True)
        return self._digest.hexdigest()

    def close(self) -> None:
        # Never cancel: a BufferedReader over this stream closes it when collected, before hexdigest is asked.
        self._hasher.shutdown(wait=True)
        super().close()


def read_verified(
    store: Store, manifest: Manifest, shard: ShardInfo, *, keys: frozenset[str], spill_to: BinaryIO | None = None
) -> VerifiedShard:
    """The shard read once from the store, hashed as tarfile parses it (a shard up to SPOOL_MAX keeps its
    members' data in memory, a larger one in a local temp file) — returned only if size and sha256 match the
    manifest and its members are exactly the samples in `keys`. With `spill_to`, every byte goes to that file
    (the caller's, left open) and the members carry only their offsets in it (decode workers read them there)."""
    fail = failure(store, manifest, shard.path)
    expected = f"{shard.bytes:,} bytes with sha256 {shard.sha256[:16]}"
    spill = spill_to if spill_to is not None else tempfile.TemporaryFile() if shard.bytes > SPOOL_MAX else None
    try:
        try:
            with store.open_read(shard.path) as stream, contextlib.closing(
                _Hashing(stream, limit=shard.bytes, spill=spill)
            ) as hashing:
                members, tar_error = _parse(io.BufferedReader(hashing, _CHUNK), keep_data=spill is None)
                sha256 = hashing.hexdigest()
        except KeyNotFound:
            raise fail(expected=expected, found="no such object in the store") from None
        # The bytes first: a truncated or altered shard also breaks the tar, and its size and hash say more.
        if hashing.size > shard.bytes:
            raise fail(expected=expected, found=f"more than {shard.bytes:,} bytes")
        if hashing.size != shard.bytes or sha256 != shard.sha256:
            raise fail(expected=expected, found=f"{hashing.size:,} bytes with sha256 {sha256[:16]}")
        if tar_error is not None:
            raise fail(expected="a readable tar", found=tar_error)
        _check_members([m for m, _ in members], keys=keys, fail=fail)
        return VerifiedShard(members=members, spill=spill if spill_to is None else None)
    except BaseException:
        if spill is not None and spill_to is None:
            spill.close()
        raise


def _parse(stream: BinaryIO, *, keep_data: bool) -> tuple[list[tuple[tarfile.TarInfo, bytes | None]], str | None]:
    """Every member (with its data when keep_data) of the tar stream, read to its very end; and the tar error
    that stopped the parse, if any (judged only after the bytes are)."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    error = None
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                data = None
                if keep_data and member.isreg():
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                members.append((member, data))
                tar.members = []  # a stream: keep no second list of headers
    except tarfile.TarError as exn:
        error = f"{type(exn).__name__}: {exn}"
    while stream.read(_CHUNK):  # the padding after the end-of-archive blocks is part of the hashed bytes
        pass
    return members, error


def _check_members(
    members: list[tarfile.TarInfo], *, keys: frozenset[str], fail: Callable[..., ShardIntegrityError]
) -> None:
    """Every member is a regular file of a sample the index lists, and every listed sample is there.
    WebDataset groups members by base_plus_ext; a member it would group under an unlisted key (`../evil.png`,
    an injected sample) or skip (no extension, `__meta__`, a link) is refused by name."""
    found: set[str] = set()
    for member in members:
        key = base_plus_ext(member.name)[0] if member.isreg() else None
        if key not in keys:
            raise fail(expected=f"only the {len(keys)} samples index.parquet lists for it",
                       found=f"member {member.name!r}")  # fmt: skip
        found.add(key)
    if found != keys:
        missing = sorted(keys - found)
        raise fail(expected=f"the {len(keys)} samples index.parquet lists for it",
                   found=f"{len(found)} (missing {missing[0]!r}{' and more' if len(missing) > 1 else ''})")
