"""The `Store` interface every object store implements, its errors and the key rule; no implementation here
(data_prep.storage has the local folder and `open_store`, data_prep.storage_s3 the S3 API store)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    import pyarrow.fs


class StoreError(Exception):
    """A storage operation failed; the message is one line naming the URL/endpoint and what to do."""


class KeyNotFound(StoreError):
    """The key does not exist in the store."""


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative '/'-separated key, else raise ValueError."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid store key {key!r}: use a relative '/'-separated path without '.', '..'")
    return key


class Store(ABC):
    """An object store rooted at `url`; every key is relative to that root."""

    @property
    @abstractmethod
    def url(self) -> str:
        """The canonical URL of the root (file:///abs/path or s3://bucket/prefix)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write `data` at `key`, replacing any object there."""

    @abstractmethod
    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Upload the local file `path` to `key` (multipart for large files on S3)."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read the whole object; raises KeyNotFound when missing."""

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """Open the object for streaming reads; raises KeyNotFound when missing."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object exists at `key`."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys (relative to the root) that start with `prefix`, recursively."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete the object at `key`; deleting a missing key is not an error."""

    @abstractmethod
    def child(self, prefix: str) -> Store:
        """A store rooted at `prefix` below this one."""

    @abstractmethod
    def pyarrow_fs(self) -> tuple[pyarrow.fs.FileSystem, str]:
        """A pyarrow filesystem and the root path in it (Ray Train's storage_filesystem/storage_path)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
