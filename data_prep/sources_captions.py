"""Sources of the `captioned` kind (Text2Img): the CUB-200 / Oxford-102 layout of Reed et al. (images/ + text/
with one caption per line), COCO-style captions JSON, Parquet with image bytes or paths and a caption
column (img2dataset), and the built-in mnist5k with templated captions.

A sample without a caption file or entry is "no_captions" (empty ones are caught by the encoder); a caption
entry whose image is missing is "missing_file" (in COCO JSON also an annotation whose image id images[] does
not list); a Parquet row with no image (a null cell) is "empty".
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from functools import cached_property
from pathlib import Path
from typing import Any

from data_prep import render
from data_prep.sources import (
    BadSample,
    FolderSource,
    RawSample,
    Source,
    SourceEntry,
    SourceError,
    path_spec,
    safe_file,
    sanitise,
    stat_fingerprint,
)
from data_prep.sources_attrs import Mnist5kAttrsSource, read_table

IMAGE_DIRS = ("images", "jpg")
TEXT_DIRS = ("text", "text_c10")
IMAGE_COLUMNS = ("jpg", "png", "image", "image_bytes", "img", "path", "file", "filename", "file_name")
CAPTION_COLUMNS = ("caption", "captions", "text", "txt", "sentence")


def is_text_layout(root: Path) -> bool:
    """Reed et al.'s layout: an images/ (or jpg/) folder and a text/ (or text_c10/) folder."""
    return any((root / d).is_dir() for d in IMAGE_DIRS) and any((root / d).is_dir() for d in TEXT_DIRS)


class TextFolderSource(FolderSource):
    """images/<class>/<name>.jpg with text/<class>/<name>.txt (CUB-200), or jpg/<name>.jpg with
    text_c10/<class>/<name>.txt (Oxford-102); text files are matched by file stem, one caption per line.
    Labels are the image class folders, else the text class folders."""

    def __init__(self, root: str | Path) -> None:
        base = Path(root).expanduser().absolute()
        if not is_text_layout(base):
            raise SourceError(f"{base} needs an images/ (or jpg/) folder and a text/ (or text_c10/) folder")
        self.text_root = next(base / d for d in TEXT_DIRS if (base / d).is_dir())
        super().__init__(next(base / d for d in IMAGE_DIRS if (base / d).is_dir()))
        self.spec, self.name = path_spec(base), sanitise(base.name).lower() or "captioned"

    @cached_property
    def _texts(self) -> dict[str, Path]:
        return {p.stem: p for p in sorted(self.text_root.rglob("*.txt"))}

    @cached_property
    def class_names(self) -> list[str] | None:  # type: ignore[override]
        from_images = super().class_names
        if from_images:
            return from_images
        folders = sorted({p.parent.name for p in self._texts.values() if p.parent != self.text_root})
        return folders or None

    def entries(self) -> list[SourceEntry]:
        entries = super().entries()
        if super().class_names or not self.class_names:
            return entries
        classes = {name: i for i, name in enumerate(self.class_names)}
        out = []
        for entry in entries:
            text = self._texts.get(Path(entry.origin).stem)
            label = classes.get(text.parent.name) if text is not None else None
            out.append(SourceEntry(key=entry.key, label=label, origin=entry.origin))
        return out

    def read(self, entry: SourceEntry) -> RawSample:
        text = self._texts.get(Path(entry.origin).stem)
        if text is None:
            raise BadSample("no_captions", f"no {Path(entry.origin).stem}.txt under {self.text_root}")
        raw = super().read(entry)
        captions = tuple(text.read_text(encoding="utf-8", errors="replace").splitlines())
        return RawSample(key=raw.key, data=raw.data, label=raw.label, origin=raw.origin, captions=captions)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(super().fingerprint().encode())
        rels = [p.relative_to(self.text_root) for p in self._texts.values()]
        return stat_fingerprint(self.text_root, rels, digest=digest)


def _inside(root: Path, file: str) -> bool:
    try:
        return safe_file(root, file).is_file()
    except BadSample:
        return False


class CocoSource(Source):
    """COCO-style captions JSON ({"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]})
    with image files relative to `images` (default: the JSON's folder). Annotations of an image id that
    images[] does not list are one "missing_file" entry per id (origin `#<id>`), so none vanish silently."""

    default_channels = 3

    def __init__(self, spec: str, *, images: str | None = None) -> None:
        self.path = Path(spec).expanduser().absolute()
        if not self.path.is_file():
            raise SourceError(f"captions JSON {self.path} does not exist")
        self.images = Path(images).expanduser().absolute() if images else self.path.parent
        if not self.images.is_dir():
            raise SourceError(f"images folder {self.images} does not exist: give --images DIR")
        try:
            data = json.loads(self.path.read_bytes())
            listed = {img["id"]: str(img["file_name"]) for img in data["images"]}
            captions: dict[Any, list[str]] = defaultdict(list)
            for ann in data.get("annotations", []):
                captions[ann["image_id"]].append(ann.get("caption"))
        except (ValueError, KeyError, TypeError) as exn:
            raise SourceError(
                f"{self.path} is not COCO captions JSON (images[].id/file_name, annotations[].image_id/caption): "
                f"{type(exn).__name__}: {exn}"
            ) from exn
        self._images, self._captions = listed, captions
        self._ids = {str(i): i for i in listed}  # entry origins carry the id as text
        self._unlisted = {str(i): i for i in captions if i not in listed}
        self.spec, self.name = path_spec(self.path), sanitise(self.path.stem).lower() or "coco"

    @property
    def class_names(self) -> list[str] | None:
        return None

    def entries(self) -> list[SourceEntry]:
        out, seen = [], set()
        files = [(file, f"{file}#{i}") for i, file in sorted(self._images.items(), key=lambda kv: kv[1])]
        files += [(f"unlisted-{i}", f"#{i}") for i in sorted(self._unlisted, key=lambda i: (len(i), i))]
        for file, origin in files:
            key = "/".join(sanitise(p) for p in Path(file).with_suffix("").parts)
            while key in seen:
                key += "-x"
            seen.add(key)
            out.append(SourceEntry(key=key, label=None, origin=origin))
        return out

    def read(self, entry: SourceEntry) -> RawSample:
        file, _, image_id = entry.origin.rpartition("#")
        if not file:
            count = len(self._captions[self._unlisted[image_id]])
            raise BadSample("missing_file", f"{count} annotation(s) for image id {image_id}, which images[] in "
                                            f"{self.path.name} does not list: no image file to caption")  # fmt: skip
        captions = self._captions.get(self._ids[image_id])
        if not captions:
            raise BadSample("no_captions", f"no annotation for image id {image_id} in {self.path.name}")
        path = safe_file(self.images, file)
        if not path.is_file():
            raise BadSample("missing_file", f"{path} does not exist")
        return RawSample(key=entry.key, data=path.read_bytes(), label=None, origin=entry.origin,
                         captions=tuple(c if isinstance(c, str) else "" for c in captions))  # fmt: skip

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.path.read_bytes())
        files = sorted({Path(f) for f in self._images.values() if _inside(self.images, f)})
        return stat_fingerprint(self.images, files, digest=digest)


class ParquetCaptionSource(Source):
    """A Parquet table (img2dataset's output): an image column holding bytes, {"bytes", "path"} structs or
    paths (relative to `images`, default the table's folder), and a caption column (a string, or a list)."""

    default_channels = 3

    def __init__(
        self,
        spec: str,
        *,
        images: str | None = None,
        image_column: str | None = None,
        caption_column: str | None = None,
    ) -> None:
        self.path = Path(spec).expanduser().absolute()
        if not self.path.is_file():
            raise SourceError(f"Parquet file {self.path} does not exist")
        self.images = Path(images).expanduser().absolute() if images else self.path.parent
        self.records = read_table(self.path)
        columns = list(self.records[0]) if self.records else []

        def pick(given: str | None, names: tuple[str, ...], what: str, flag: str) -> str:
            found = given or next((c for c in columns if c.lower() in names), None)
            if found is None or found not in columns:
                raise SourceError(
                    f"{self.path} has no {what} column {given or ''} (columns: {', '.join(columns)}): give {flag}"
                )
            return found

        self.image_column = pick(image_column, IMAGE_COLUMNS, "image", "--image-column")
        self.caption_column = pick(caption_column, CAPTION_COLUMNS, "caption", "--caption-column")
        self.spec, self.name = path_spec(self.path), sanitise(self.path.stem).lower() or "captioned"

    @property
    def class_names(self) -> list[str] | None:
        return None

    def entries(self) -> list[SourceEntry]:
        out, seen = [], set()
        for i, record in enumerate(self.records):
            key = sanitise(str(record.get("key") or f"row{i:06d}"))
            while key in seen:
                key += "-x"
            seen.add(key)
            out.append(SourceEntry(key=key, label=None, origin=f"{self.path.name}[{i}]"))
        return out

    def read(self, entry: SourceEntry) -> RawSample:
        record = self.records[int(entry.origin.rsplit("[", 1)[1][:-1])]
        value, caption = record.get(self.image_column), record.get(self.caption_column)
        captions = tuple(caption) if isinstance(caption, (list, tuple)) else (caption,) if caption else ()
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if value is None or value in (b"", ""):
            raise BadSample("empty", f"no image in {self.image_column} (a null or empty cell)")
        if isinstance(value, str):
            path = safe_file(self.images, value)
            if not path.is_file():
                raise BadSample("missing_file", f"{path} does not exist")
            value = path.read_bytes()
        if not isinstance(value, bytes):
            raise BadSample("unreadable", f"{self.image_column} holds {type(value).__name__}, not bytes or a path")
        captions = tuple(c if isinstance(c, str) else "" for c in captions)
        return RawSample(key=entry.key, data=value, label=None, origin=entry.origin, captions=captions)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.path.read_bytes())
        values = [r.get(self.image_column) for r in self.records]
        paths = [Path(v) for v in values if isinstance(v, str) and _inside(self.images, v)]
        return stat_fingerprint(self.images, sorted(set(paths)), digest=digest)


class Mnist5kCaptionsSource(Mnist5kAttrsSource):
    """mnist5k drawn as in the attributes set, each with `count` templated captions
    ("a thick red seven on a black background", ...)."""

    def __init__(self, *, seed: int = 0, count: int = 5) -> None:
        super().__init__(seed=seed)
        self.count = count

    def read(self, entry: SourceEntry) -> RawSample:
        raw = super().read(entry)
        style = render.style_of(raw.key, seed=self.seed)
        captions = render.captions(int(raw.label or 0), style, count=self.count, key=raw.key, seed=self.seed)
        return RawSample(key=raw.key, data=raw.data, label=raw.label, origin=raw.origin, captions=captions)
