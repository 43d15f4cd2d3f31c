"""Sources of the `attributes` kind (StarGAN): CelebA's list_attr_celeba.txt, a CSV/Parquet attribute table,
a folder whose class folders are exclusive domains (RaFD), and the built-in coloured mnist5k.

Every source exposes `attribute_names` and `groups` (tuples of names of which at most one is on per sample,
e.g. StarGAN's hair colours) and `exclusive` (exactly one attribute per sample). A row with the wrong
number of values or a value that is not 0/1 (or CelebA's -1/1) is "bad_attrs"; an image without a row is
"missing_attrs"; a row whose image file is missing is "missing_file".
"""

from __future__ import annotations

import csv
import hashlib
import math
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from data_prep import render
from data_prep.sources import (
    BadSample,
    FolderSource,
    Mnist5kSource,
    RawSample,
    Source,
    SourceEntry,
    SourceError,
    list_images,
    path_spec,
    safe_file,
    sanitise,
    stat_fingerprint,
)

CELEBA_ATTRS = "list_attr_celeba.txt"
CELEBA_PARTITION = "list_eval_partition.txt"
CELEBA_CROP = 178  # the official StarGAN: CenterCrop(178) of the 178x218 aligned faces, then Resize
CELEBA_HAIR = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")  # StarGAN treats these as one group
FILE_COLUMNS = ("file", "filename", "file_name", "image", "image_id", "img", "path")
_ON, _OFF = {"1", "1.0", "true", "yes"}, {"0", "0.0", "-1", "-1.0", "false", "no"}


def parse_flag(value: Any) -> int | None:
    """0/1 from 0/1, -1/1 (CelebA), booleans and their spellings; None for anything else (NaN, 2, '')."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    text = str(value).strip().lower()
    return 1 if text in _ON else 0 if text in _OFF else None


class _RowSource(Source):
    """Shared by the table sources: rows {key: (image file, attrs | None, problem)} plus images without a row."""

    default_channels = 3
    groups: tuple[tuple[str, ...], ...] = ()
    exclusive = False
    images: Path
    table: Path

    @property
    def class_names(self) -> list[str] | None:
        return None

    @property
    def attribute_names(self) -> list[str]:
        raise NotImplementedError

    @cached_property
    def _rows(self) -> dict[str, tuple[str, tuple[int, ...] | None, str]]:
        raise NotImplementedError

    def _split_of(self, file: str) -> str | None:
        return None

    @cached_property
    def _orphans(self) -> list[Path]:
        """Images in the images folder that no row names."""
        named = {file for file, _, _ in self._rows.values()}
        return [rel for rel in list_images(self.images, required=False) if rel.as_posix() not in named]

    def entries(self) -> list[SourceEntry]:
        out = [
            SourceEntry(key=key, label=None, origin=file, split=self._split_of(file))
            for key, (file, _, _) in self._rows.items()
        ]
        taken = set(self._rows)
        for rel in self._orphans:
            key = "/".join(sanitise(p) for p in rel.parts)
            while key in taken:
                key += "-x"
            taken.add(key)
            out.append(SourceEntry(key=key, label=None, origin=rel.as_posix(), split=self._split_of(rel.as_posix())))
        return out

    def read(self, entry: SourceEntry) -> RawSample:
        row = self._rows.get(entry.key)
        if row is None:
            raise BadSample("missing_attrs", f"no row for {entry.origin} in {self.table.name}")
        file, attrs, problem = row
        if attrs is None:
            raise BadSample("bad_attrs", problem)
        path = safe_file(self.images, file)
        if not path.is_file():
            raise BadSample("missing_file", f"{path} does not exist")
        return RawSample(key=entry.key, data=path.read_bytes(), label=None, origin=entry.origin, attrs=attrs)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.table.read_bytes())
        digest.update(f"{self.attribute_names}\n".encode())
        files = sorted({Path(f) for f, _, _ in self._rows.values() if _inside(self.images, f)})
        return stat_fingerprint(self.images, [*files, *self._orphans], digest=digest)


def _inside(root: Path, file: str) -> bool:
    """Whether `file` is a safe name of an existing file under `root` (others are quarantined, not hashed)."""
    try:
        return safe_file(root, file).is_file()
    except BadSample:
        return False


def _select(names: list[str], wanted: tuple[str, ...] | None, where: Path) -> list[int]:
    if wanted is None:
        return list(range(len(names)))
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise SourceError(f"{where} has no attribute(s) {', '.join(unknown)}; it has: {', '.join(names)}")
    return [names.index(name) for name in wanted]


class CelebASource(_RowSource):
    """CelebA: list_attr_celeba.txt (a count line, a names line, then `file ±1 ...` rows) with the images in
    img_align_celeba/ beside it (or `images`); list_eval_partition.txt, when present, fixes the splits."""

    def __init__(self, spec: str, *, images: str | None = None, attrs: tuple[str, ...] | None = None) -> None:
        path = Path(spec).expanduser().absolute()
        found = [p for p in (path, path / CELEBA_ATTRS, path / "Anno" / CELEBA_ATTRS) if p.is_file()]
        if not found:
            raise SourceError(f"no {CELEBA_ATTRS} at {path} (nor in it or its Anno/ folder)")
        self.table = found[0]
        base = self.table.parent.parent if self.table.parent.name == "Anno" else self.table.parent
        candidates = [Path(images).expanduser().absolute()] if images else [base / "img_align_celeba", base]
        self.images = next((p for p in candidates if p.is_dir()), candidates[0])
        if not self.images.is_dir():
            raise SourceError(f"CelebA images folder {self.images} does not exist: give --images DIR")
        lines = self.table.read_text().splitlines()
        if len(lines) < 2 or not lines[0].strip().isdigit():
            raise SourceError(f"{self.table} does not start with a count line and a names line")
        self._all_names = lines[1].split()
        self._columns = _select(self._all_names, attrs, self.table)
        self._lines = lines[2:]
        self.spec, self.name = path_spec(self.table), "celeba"
        hair = tuple(n for n in CELEBA_HAIR if n in self.attribute_names)
        self.groups = (hair,) if len(hair) > 1 else ()
        partition = next((p for p in (base / CELEBA_PARTITION, base / "Eval" / CELEBA_PARTITION) if p.is_file()), None)
        self._partition = {}
        if partition is not None:
            for line in partition.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] in ("0", "1", "2"):
                    self._partition[parts[0]] = ("train", "val", "test")[int(parts[1])]

    @property
    def attribute_names(self) -> list[str]:
        return [self._all_names[i] for i in self._columns]

    def _split_of(self, file: str) -> str | None:
        return self._partition.get(file)

    @cached_property
    def _rows(self) -> dict[str, tuple[str, tuple[int, ...] | None, str]]:
        rows: dict[str, tuple[str, tuple[int, ...] | None, str]] = {}
        for number, line in enumerate(self._lines, start=3):
            parts = line.split()
            if not parts:
                continue
            file, values = parts[0], parts[1:]
            key = "/".join(sanitise(p) for p in Path(file).parts)
            where = f"{self.table.name} line {number}"
            if key in rows:
                key = f"{key}-line{number}"
                rows[key] = (file, None, f"{where}: {file} is listed twice")
            elif len(values) != len(self._all_names):
                rows[key] = (file, None, f"{where}: {len(values)} values for {len(self._all_names)} attributes")
            elif any(v not in ("1", "-1") for v in values):
                bad = next(v for v in values if v not in ("1", "-1"))
                rows[key] = (file, None, f"{where}: value {bad!r} is not 1 or -1")
            else:
                rows[key] = (file, tuple(int(values[i] == "1") for i in self._columns), "")
        return rows


class TableSource(_RowSource):
    """A CSV or Parquet table: an image file column plus 0/1 columns (the attributes), images relative to
    the table's folder (or `images`)."""

    def __init__(
        self,
        spec: str,
        *,
        images: str | None = None,
        file_column: str | None = None,
        attrs: tuple[str, ...] | None = None,
    ) -> None:
        self.table = Path(spec).expanduser().absolute()
        if not self.table.is_file():
            raise SourceError(f"attribute table {self.table} does not exist")
        self.images = Path(images).expanduser().absolute() if images else self.table.parent
        if not self.images.is_dir():
            raise SourceError(f"images folder {self.images} does not exist: give --images DIR")
        self.records = read_table(self.table)
        columns = list(self.records[0]) if self.records else []
        self.file_column = file_column or next(
            (c for c in columns if c.lower() in FILE_COLUMNS), columns[0] if columns else ""
        )
        if self.file_column not in columns:
            raise SourceError(f"{self.table} has no column {self.file_column!r}; columns: {', '.join(columns)}")
        names = [c for c in columns if c != self.file_column]
        self._names = [names[i] for i in _select(names, attrs, self.table)]
        if not self._names:
            raise SourceError(f"{self.table} has no attribute columns besides {self.file_column!r}")
        self.spec, self.name = path_spec(self.table), sanitise(self.table.stem).lower() or "attributes"

    @property
    def attribute_names(self) -> list[str]:
        return list(self._names)

    @cached_property
    def _rows(self) -> dict[str, tuple[str, tuple[int, ...] | None, str]]:
        rows: dict[str, tuple[str, tuple[int, ...] | None, str]] = {}
        for number, record in enumerate(self.records, start=1):
            file = str(record.get(self.file_column) or "").strip()
            key = "/".join(sanitise(p) for p in Path(file).parts) or f"row{number}"
            flags = [parse_flag(record.get(name)) for name in self._names]
            where = f"{self.table.name} row {number}"
            if key in rows:
                key = f"{key}-row{number}"
                rows[key] = (file, None, f"{where}: {file} is listed twice")
            elif not file:
                rows[key] = (file, None, f"{where}: empty {self.file_column!r}")
            elif None in flags:
                bad = self._names[flags.index(None)]
                rows[key] = (file, None, f"{where}: {bad}={record.get(bad)!r} is not 0/1")
            else:
                rows[key] = (file, tuple(int(f) for f in flags), "")  # type: ignore[arg-type]
        return rows


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a .csv (strings) or .parquet (typed) file as dicts."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as exn:
            raise SourceError(f"cannot read Parquet {path}: {exn}") from exn
    if path.suffix.lower() in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
    raise SourceError(f"{path}: attribute tables must be .csv, .tsv or .parquet")


class ExclusiveFolderSource(FolderSource):
    """An image folder whose class folders are mutually exclusive domains (RaFD's layout): the attributes are
    the class names, one-hot, and the label is the class index."""

    exclusive = True

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        if not self.class_names:
            raise SourceError(f"{self.root} has no class sub-folders to use as exclusive attributes")

    @property
    def attribute_names(self) -> list[str]:
        return list(self.class_names or [])

    @property
    def groups(self) -> tuple[tuple[str, ...], ...]:
        return (tuple(self.attribute_names),)

    def read(self, entry: SourceEntry) -> RawSample:
        raw = super().read(entry)
        attrs = tuple(int(i == raw.label) for i in range(len(self.attribute_names)))
        return RawSample(key=raw.key, data=raw.data, label=raw.label, origin=raw.origin, attrs=attrs)


class Mnist5kAttrsSource(Mnist5kSource):
    """mnist5k drawn in seeded colours and stroke widths (render.py): RGB, attributes, digit label.

    The 28 px digit is framed to 32 px (2 px each side, as the images kind does) before drawing, so an
    inverted sample's white background fills the whole frame."""

    default_channels = 3
    margin = 0.0
    groups = render.GROUPS
    exclusive = False

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed

    @property
    def attribute_names(self) -> list[str]:
        return list(render.ATTRIBUTES)

    def read(self, entry: SourceEntry) -> RawSample:
        raw = super().read(entry)
        style = render.style_of(raw.key, seed=self.seed)
        pixels = render.render(np.pad(np.asarray(raw.data), 2), style)
        return RawSample(key=raw.key, data=pixels, label=raw.label, origin=raw.origin, attrs=style.attrs())
