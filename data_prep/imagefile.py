"""Opening image files the one way prep and translate both use: fully decoded and upright.

A phone photo is often stored sideways with an EXIF Orientation tag saying how to turn it; `open_upright`
applies that tag (ImageOps.exif_transpose) before anything else looks at the pixels, so a model never trains
on or translates a rotated picture. When decoding fails, `damage` says whether the file was cut short
("truncated": it ends before its format says it should) or is whole but its data cannot be decoded
("corrupt"), and `known_format` tells a damaged image file from a file that is no image at all.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

from PIL import ExifTags, Image, ImageOps

UPRIGHT = 1  # EXIF orientation 1: stored as it should be shown
_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


def open_upright(data: bytes | Path) -> tuple[Image.Image, int]:
    """(the decoded image, the EXIF orientation that was applied: 1 when none) from file bytes or a path.

    Everything is decoded here, so a damaged file fails now rather than half-way through a batch; the
    errors are PIL's (UnidentifiedImageError, OSError, DecompressionBombError, ...)."""
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        image.load()
        orientation = _orientation(image)
        if orientation == UPRIGHT:
            return image, UPRIGHT
        return ImageOps.exif_transpose(image), orientation


def open_image(data: bytes | Path) -> Image.Image:
    """The decoded image, turned upright by its EXIF orientation (see `open_upright`)."""
    return open_upright(data)[0]


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation 1-8; 1 when there is none or the EXIF block cannot be parsed (the pixels are
    still good, and an unknown orientation is best shown as stored)."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, UPRIGHT)
    except Exception:  # PIL raises many types on a damaged EXIF block
        return UPRIGHT
    return value if isinstance(value, int) and 2 <= value <= 8 else UPRIGHT


def known_format(data: bytes) -> str | None:
    """The format whose signature `data` starts with (PNG, JPEG, GIF, TIFF, WEBP), else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _SIGNATURES.items() if data.startswith(magic)), None)


def damage(data: bytes, error: BaseException) -> str:
    """Why decoding `data` failed: "truncated" when the file ends early, else "corrupt".

    PIL says "image file is truncated" (pixel data) or "Truncated File Read" (header) for a file cut short,
    "broken data stream" for whole but undecodable data; where it names neither, the file's own structure
    decides (a PNG without its IEND chunk, a JPEG without its end marker, a RIFF shorter than its size)."""
    if isinstance(error, EOFError) or "truncated" in str(error).lower() or _cut_short(data):
        return "truncated"
    return "corrupt"


def _cut_short(data: bytes) -> bool:
    kind = known_format(data)
    if kind == "PNG":
        pos = 8
        while pos + 8 <= len(data):
            (length,) = struct.unpack(">I", data[pos : pos + 4])
            if data[pos + 4 : pos + 8] == b"IEND":
                return False
            pos += 12 + length
        return True
    if kind == "JPEG":
        return b"\xff\xd9" not in data[3:]
    if kind == "WEBP":
        return struct.unpack("<I", data[4:8])[0] + 8 > len(data)
    return False
