"""The S3 API store (SeaweedFS, MinIO, AWS) behind `open_store("s3://bucket/prefix")`, via boto3.

Retries are few and timeouts short, so an unreachable endpoint fails in seconds with one clear line; a
stream that drops mid-read is re-opened at its offset (`_BodyReader`), so a long shard read survives it.
Error messages never carry credentials: they are scrubbed out of anything the server sends back.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

from data_prep.store_base import KeyNotFound, Store, StoreError, check_key

if TYPE_CHECKING:
    import pyarrow.fs

_MULTIPART_THRESHOLD = 8 * 1024 * 1024
_FIX = "start the store or set --s3-endpoint / GANPIPE_S3_ENDPOINT"


@dataclass
class _Conn:
    """What the stores of one bucket share: the boto3 session/client and whether the bucket is known."""

    endpoint: str | None
    session: Any
    client: Any
    bucket_ready: set[str] = field(default_factory=set)

    @property
    def where(self) -> str:
        return f"S3 endpoint {self.endpoint}" if self.endpoint else "the default AWS S3 endpoint"

    def secrets(self) -> list[str]:
        creds = self.session.get_credentials()
        if creds is None:
            return []
        frozen = creds.get_frozen_credentials()
        return [s for s in (frozen.secret_key, frozen.token, frozen.access_key) if s]


def _connect(endpoint: str | None) -> _Conn:
    import boto3
    from botocore.config import Config

    options: dict[str, Any] = {
        "connect_timeout": 3,
        "read_timeout": 60,
        "retries": {"max_attempts": 2, "mode": "standard"},
    }
    if endpoint:
        # S3-compatible stores want path-style addressing and often reject the newer default checksums;
        # shard integrity is checked by our own sha256 in the manifest.
        options.update(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
    session = boto3.session.Session()
    client = session.client("s3", endpoint_url=endpoint, config=Config(**options))
    return _Conn(endpoint=endpoint, session=session, client=client)


_READ_RETRIES = 4  # re-opens of one stream after a transient error, with backoff 0.5, 1, 2, 4 s


class _BodyReader(io.RawIOBase):
    """A raw stream over a GetObject body that survives transient errors: when a read fails mid-stream
    (connection reset, read timeout, incomplete body), it re-opens the object at the current offset
    (Range, If-Match on the first ETag, so a replaced object is never spliced in) and goes on."""

    def __init__(self, store: S3Store, key: str, response: dict[str, Any]) -> None:
        self._store, self._key = store, key
        self._body, self._etag = response["Body"], response.get("ETag")
        self._pos = 0
        self.reopened = 0  # how many times a transient error was recovered from

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        attempt = 0
        while True:
            try:
                data = self._body.read(len(buffer))
                break
            except Exception as exn:  # botocore/urllib3 raise several unrelated types for a dropped stream
                if not _transient(exn) or attempt >= _READ_RETRIES:
                    raise
                time.sleep(0.5 * 2**attempt)
                attempt += 1
                self._reopen()
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def _reopen(self) -> None:
        with contextlib.suppress(Exception):
            self._body.close()
        extra = {"IfMatch": self._etag} if self._etag else {}
        store = self._store
        with store._errors("read", self._key):
            response = store._conn.client.get_object(
                Bucket=store.bucket, Key=store._key(self._key), Range=f"bytes={self._pos}-", **extra
            )
        self._body = response["Body"]
        self.reopened += 1

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _transient(exn: BaseException) -> bool:
    """A dropped or stalled connection (worth re-opening), as opposed to a real error."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError
    from urllib3.exceptions import HTTPError as Urllib3Error

    transient = (BotoConnectionError, IncompleteReadError, ReadTimeoutError, ResponseStreamingError, Urllib3Error,
                 ConnectionError, TimeoutError, ValueError)  # fmt: skip
    # ValueError: reading a body whose connection was closed under it ("I/O operation on closed file")
    return isinstance(exn, transient)


class S3Store(Store):
    """Objects under s3://bucket/prefix; the bucket is created on the first write if missing."""

    def __init__(
        self, *, bucket: str, prefix: str = "", endpoint: str | None = None, conn: _Conn | None = None
    ):
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise StoreError(
                f"invalid S3 bucket name {bucket!r} in s3://{bucket}: use 3-63 lowercase letters/digits"
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._conn = conn or _connect(endpoint)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (e.g. for Ray prep tasks) as bucket, prefix and endpoint; credentials come from the
        # unpickling process's own AWS environment, never from the pickle.
        return (_reopen, (self.bucket, self.prefix, self._conn.endpoint))

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def endpoint(self) -> str | None:
        return self._conn.endpoint

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _errors(self, action: str, key: str = "") -> Iterator[None]:
        """Turn botocore failures into a one-line StoreError naming the URL and endpoint, without secrets."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, NoCredentialsError

        target = f"{self.url}/{key}" if key else self.url
        try:
            yield
        except ClientError as exn:
            err = exn.response.get("Error", {})
            code, text = str(err.get("Code", "?")), str(err.get("Message", ""))
            if code in ("NoSuchKey", "404", "NotFound", "NoSuchBucket"):
                raise KeyNotFound(self._scrub(f"{target} does not exist ({self._conn.where})")) from None
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
                hint = "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the AWS profile"
                raise StoreError(
                    self._scrub(f"{action} {target} denied by {self._conn.where}: {code} — {hint}")
                ) from None
            raise StoreError(
                self._scrub(f"{action} {target} failed at {self._conn.where}: {code} {text}")
            ) from None
        except NoCredentialsError:
            hint = "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or an AWS profile"
            raise StoreError(
                f"no S3 credentials to {action} {target} at {self._conn.where} — {hint}"
            ) from None
        except ConnectionError as exn:
            reason = _reason(exn)
            raise StoreError(self._scrub(f"cannot reach {self._conn.where}: {reason} — {_FIX}")) from None
        except BotoCoreError as exn:
            raise StoreError(self._scrub(f"{action} {target} failed at {self._conn.where}: {exn}")) from None
        except S3UploadFailedError as exn:  # upload_file's wrapper around a failed PutObject / multipart part
            reason = str(exn).split(": ", 1)[-1]  # drop boto3's "Failed to upload LOCAL_TMP to KEY" prefix
            raise StoreError(self._scrub(f"{action} {target} failed at {self._conn.where}: {reason}")) from None

    def _scrub(self, message: str) -> str:
        for secret in self._conn.secrets():
            message = message.replace(secret, "***")
        return " ".join(message.split())

    def bucket_problem(self) -> str:
        """'' when the bucket exists and answers, else why not, in one line. Creates nothing (a dry run asks)."""
        try:
            with self._errors("reach"):
                self._conn.client.head_bucket(Bucket=self.bucket)
        except KeyNotFound:
            return self._scrub(f"bucket {self.bucket} does not exist at {self._conn.where}: create it, or fix the "
                               f"store URL {self.url}")
        except StoreError as exn:
            return str(exn)
        return ""

    def _ensure_bucket(self) -> None:
        if self.bucket in self._conn.bucket_ready:
            return
        client = self._conn.client
        with self._errors("create bucket"):
            try:
                client.head_bucket(Bucket=self.bucket)
            except Exception as exn:  # 404 -> create it; anything else is re-raised by the mapping
                code = str(getattr(exn, "response", {}).get("Error", {}).get("Code", ""))
                if code not in ("404", "NoSuchBucket", "NotFound"):
                    raise
                try:
                    client.create_bucket(Bucket=self.bucket)
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
        self._conn.bucket_ready.add(self.bucket)

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self._key(key)
        self._ensure_bucket()
        with self._errors("write", key):
            self._conn.client.put_object(Bucket=self.bucket, Key=full, Body=data)

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        from boto3.s3.transfer import TransferConfig

        full = self._key(key)
        self._ensure_bucket()
        config = TransferConfig(multipart_threshold=_MULTIPART_THRESHOLD, max_concurrency=4)
        with self._errors("upload", key):
            self._conn.client.upload_file(os.fspath(path), self.bucket, full, Config=config)

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as f:
            return f.read()

    def open_read(self, key: str) -> BinaryIO:
        full = self._key(key)
        with self._errors("read", key):
            response = self._conn.client.get_object(Bucket=self.bucket, Key=full)
        return io.BufferedReader(_BodyReader(self, key, response), buffer_size=1 << 20)  # type: ignore[return-value]

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            with self._errors("check", key):
                self._conn.client.head_object(Bucket=self.bucket, Key=full)
        except KeyNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""
        keys: list[str] = []
        try:
            with self._errors("list", prefix):
                pages = self._conn.client.get_paginator("list_objects_v2")
                for page in pages.paginate(Bucket=self.bucket, Prefix=root + prefix):
                    keys.extend(obj["Key"][len(root) :] for obj in page.get("Contents", []))
        except KeyNotFound:  # no bucket yet: nothing in it
            return []
        return sorted(keys)

    def delete(self, key: str) -> None:
        full = self._key(key)
        with self._errors("delete", key):
            self._conn.client.delete_object(Bucket=self.bucket, Key=full)

    def child(self, prefix: str) -> S3Store:
        prefix = prefix.strip("/")
        return S3Store(
            bucket=self.bucket, prefix=self._key(prefix) if prefix else self.prefix, conn=self._conn
        )

    def pyarrow_fs(self) -> tuple[pyarrow.fs.FileSystem, str]:
        import pyarrow.fs

        kwargs: dict[str, Any] = {"region": self._conn.session.region_name or "us-east-1"}
        creds = self._conn.session.get_credentials()
        if creds is not None:
            frozen = creds.get_frozen_credentials()
            kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key)
            if frozen.token:
                kwargs["session_token"] = frozen.token
        if self._conn.endpoint:
            parts = urlsplit(self._conn.endpoint)
            kwargs.update(endpoint_override=parts.netloc, scheme=parts.scheme or "https")
        return pyarrow.fs.S3FileSystem(**kwargs), f"{self.bucket}/{self.prefix}".rstrip("/")


@functools.lru_cache(maxsize=8)
def _shared_conn(endpoint: str | None) -> _Conn:
    return _connect(endpoint)


if hasattr(os, "register_at_fork"):  # a forked child (a decode worker) opens its own: botocore's are not fork-safe
    os.register_at_fork(after_in_child=_shared_conn.cache_clear)


def _reopen(bucket: str, prefix: str, endpoint: str | None) -> S3Store:
    """An unpickled S3Store: one boto3 client per endpoint and process."""
    return S3Store(bucket=bucket, prefix=prefix, conn=_shared_conn(endpoint))


def _reason(exn: Exception) -> str:
    """The short cause of a connection failure, e.g. 'Connection refused' or 'connect timeout'."""
    inner = str(getattr(exn, "kwargs", {}).get("error", "")) or str(exn)
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", inner)
    if found:
        return found.group(1).strip()
    return "connect timeout" if "timeout" in inner.lower() else type(exn).__name__
