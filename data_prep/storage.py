"""The storage layer: one small `Store` interface over a local folder and S3 API object stores.

`open_store("path" | "file://path" | "s3://bucket/prefix")` returns a store rooted at that URL; keys are
'/'-separated and relative to the root. Local writes are atomic (temp file + os.replace).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from data_prep.store_base import KeyNotFound, Store, StoreError, check_key

if TYPE_CHECKING:
    import pyarrow.fs

_TMP_PREFIX = ".tmp-"



__all__ = ["KeyNotFound", "LocalStore", "Store", "StoreError", "check_key", "open_store"]


class LocalStore(Store):
    """A folder on the local file system; created on the first write."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def _write_atomic(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        except OSError as exn:
            raise StoreError(
                f"cannot write {self.url}/{key}: {exn.strerror or exn} — check the path"
            ) from exn
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException as exn:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exn, OSError):
                raise StoreError(f"cannot write {self.url}/{key}: {exn.strerror or exn}") from exn
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write_atomic(key, lambda out: out.write(data))

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        def copy(out: BinaryIO) -> None:
            with open(path, "rb") as src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)

        self._write_atomic(key, copy)

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as f:
            return f.read()

    def open_read(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb")
        except FileNotFoundError as exn:
            raise KeyNotFound(f"{self.url}/{key} does not exist") from exn
        except OSError as exn:
            raise StoreError(f"cannot read {self.url}/{key}: {exn.strerror or exn}") from exn

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self.root.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                key = name if rel == "." else f"{rel}/{name}"
                if not name.startswith(_TMP_PREFIX) and key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def child(self, prefix: str) -> LocalStore:
        return LocalStore(self._path(prefix.strip("/")))

    def pyarrow_fs(self) -> tuple[pyarrow.fs.FileSystem, str]:
        import pyarrow.fs

        return pyarrow.fs.LocalFileSystem(), str(self.root)


def open_store(url: str, *, s3_endpoint: str | None = None) -> Store:
    """Open the store at `url`: a plain path or file://path (LocalStore) or s3://bucket/prefix (S3Store).

    The S3 endpoint is `s3_endpoint`, else $GANPIPE_S3_ENDPOINT, else $AWS_ENDPOINT_URL, else boto3's
    default; region and credentials come from the standard AWS environment/profile.
    """
    if url.startswith("s3://"):
        from data_prep.storage_s3 import S3Store

        bucket, _, prefix = url[len("s3://") :].partition("/")
        endpoint = s3_endpoint or os.environ.get("GANPIPE_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
        return S3Store(bucket=bucket, prefix=prefix.strip("/"), endpoint=endpoint or None)
    if "://" in url and not url.startswith("file://"):
        raise StoreError(f"unsupported store URL {url}: use a path, file://path or s3://bucket/prefix")
    path = url[len("file://") :] if url.startswith("file://") else url
    if not path:
        raise StoreError("empty store path: give a folder, file://path or s3://bucket/prefix")
    return LocalStore(path)
