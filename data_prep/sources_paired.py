"""Sources of two-sided datasets: pix2pix's aligned and A/B-folder layouts (`paired`), and CycleGAN's
trainA/ trainB/ testA/ testB/ layout or any two sources (`unpaired`, one source per domain).

A CycleGAN domain folder is a set of images: loose images and images in sub-folders (at any depth) are all
taken, unlabelled, and the summary says how many came from sub-folders.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path

from data_prep.shards import LAYOUT_SPLITS
from data_prep.sources import (
    BadSample,
    ConcatSource,
    FolderSource,
    RawSample,
    Source,
    SourceEntry,
    SourceError,
    get_source,
    list_images,
    path_spec,
    safe_file,
    sanitise,
    stat_fingerprint,
)


def _dir(spec: str) -> Path:
    path = Path(spec[len("file://") :] if spec.startswith("file://") else spec).expanduser().absolute()
    if not path.is_dir():
        raise SourceError(f"source folder {path} does not exist or is not a directory")
    return path


def _has_images(folder: Path) -> bool:
    """An existing folder with at least one image (an empty val/ is skipped rather than an error)."""
    return folder.is_dir() and bool(list_images(folder, required=False))


def is_aligned_layout(root: Path) -> bool:
    """pix2pix's aligned layout: train/ (and/or val/, test/) holding A|B images side by side."""
    return any((root / split).is_dir() for split in LAYOUT_SPLITS) and not (root / "A").is_dir()


def is_ab_layout(root: Path) -> bool:
    """Two folders A/ and B/ whose files pair up by name."""
    return (root / "A").is_dir() and (root / "B").is_dir()


def aligned_source(spec: str) -> Source:
    """The aligned layout as one source: each split folder's images, in that split, keyed `{split}/...`."""
    root = _dir(spec)
    parts = [(split, split, FolderSource(root / split)) for split in LAYOUT_SPLITS if _has_images(root / split)]
    if not parts:
        raise SourceError(f"{root} has none of the folders {', '.join(LAYOUT_SPLITS)} of the aligned layout")
    return ConcatSource(parts, name=sanitise(root.name).lower() or "paired", spec=path_spec(root))


class ABFolderSource(Source):
    """Files of A/ and B/ paired by relative path without extension (A/x.png pairs B/x.jpg). Files directly
    under a split folder (A/train/x.png) go to that split. A name on one side only is a "missing_pair";
    two files with the same name and different extensions on one side are an "ambiguous_pair"."""

    def __init__(self, spec: str) -> None:
        self.root = _dir(spec)
        if not is_ab_layout(self.root):
            raise SourceError(f"{self.root} needs both an A/ and a B/ folder")
        self.spec, self.name = path_spec(self.root), sanitise(self.root.name).lower() or "paired"

    @property
    def class_names(self) -> list[str] | None:
        return None

    @cached_property
    def _sides(self) -> dict[str, list[Path]]:
        return {side: list_images(self.root / side) for side in ("A", "B")}

    @cached_property
    def _pairs(self) -> dict[str, dict[str, list[Path]]]:
        """stem path -> side -> files with that stem."""
        pairs: dict[str, dict[str, list[Path]]] = {}
        for side, rels in self._sides.items():
            for rel in rels:
                pairs.setdefault(rel.with_suffix("").as_posix(), {"A": [], "B": []})[side].append(rel)
        return dict(sorted(pairs.items()))

    def entries(self) -> list[SourceEntry]:
        out = []
        for stem in self._pairs:
            parts = stem.split("/")
            split = parts[0] if len(parts) > 1 and parts[0] in LAYOUT_SPLITS else None
            key = "/".join(sanitise(p) for p in parts)
            out.append(SourceEntry(key=key, label=None, origin=stem, split=split))
        return out

    def read(self, entry: SourceEntry) -> RawSample:
        sides = self._pairs[entry.origin]
        for side in ("A", "B"):
            if not sides[side]:
                other = "B" if side == "A" else "A"
                found = ", ".join(f"{other}/{p.as_posix()}" for p in sides[other])
                raise BadSample("missing_pair", f"{found} has no {side}/ file of the same name")
            if len(sides[side]) > 1:
                names = ", ".join(f"{side}/{p.as_posix()}" for p in sides[side])
                raise BadSample("ambiguous_pair", f"several files share one name: {names}")
        data_a = safe_file(self.root / "A", sides["A"][0]).read_bytes()
        data_b = safe_file(self.root / "B", sides["B"][0]).read_bytes()
        return RawSample(key=entry.key, data=data_a, pair=data_b, label=None, origin=entry.origin)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for side, rels in self._sides.items():
            digest.update(f"{side}:{stat_fingerprint(self.root / side, rels)}\n".encode())
        return digest.hexdigest()


class ImageSetSource(FolderSource):
    """Every image under `root`, at any depth, unlabelled (sub-folders are no classes): a CycleGAN domain."""

    @property
    def class_names(self) -> list[str] | None:  # type: ignore[override]
        return None

    def notices(self) -> list[str]:
        nested = [rel for rel in self._files if len(rel.parts) > 1]
        if not nested:
            return []
        folders = sorted({f"{rel.parts[0]}/" for rel in nested})
        shown = ", ".join(folders[:5]) + (f", ... ({len(folders)} in all)" if len(folders) > 5 else "")
        return [f"{self.root}: {len(nested)} of {len(self._files)} images come from sub-folders ({shown})"]


def is_cyclegan_layout(root: Path) -> bool:
    """CycleGAN's layout: trainA/ and trainB/ (testA/, testB/ optional)."""
    return (root / "trainA").is_dir() and (root / "trainB").is_dir()


def domain_sources(spec: str, spec_b: str | None, *, crops: int = 256, seed: int = 0) -> dict[str, Source]:
    """{"domain_a": ..., "domain_b": ...} from a CycleGAN layout folder, or from two sources (built-ins or
    folders; class sub-folders become labels `cls`)."""
    if spec_b is not None:
        source_b = get_source(spec_b, crops=crops, seed=seed + 1)  # two skimage-photos sets must differ
        return {"domain_a": get_source(spec, crops=crops, seed=seed), "domain_b": source_b}
    root = _dir(spec)
    if not is_cyclegan_layout(root):
        raise SourceError(
            f"{root} is not a CycleGAN layout (trainA/ trainB/ [testA/ testB/]): give that folder, or two "
            f"sources, e.g. `ganpipe prep --format unpaired horses/ zebras/` or `... digits mnist5k`"
        )
    out: dict[str, Source] = {}
    for side, domain in (("A", "domain_a"), ("B", "domain_b")):
        parts = [
            (split, split, ImageSetSource(root / f"{split}{side}"))
            for split in LAYOUT_SPLITS
            if _has_images(root / f"{split}{side}")
        ]
        if not parts:
            raise SourceError(f"{root / f'train{side}'} holds no images")
        out[domain] = ConcatSource(parts, name=f"{root.name}{side}", spec=f"{path_spec(root)}/*{side}")
    return out
