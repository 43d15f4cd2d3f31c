"""Decode and validate raw samples: a good one becomes a uint8 "L"/"RGB" array, a bad one a QuarantineEntry.

Reasons are stable strings (they key the manifest's quarantine summary): "empty" (zero bytes),
"not_image" (an image file name whose bytes are no image format PIL knows), "unreadable" (the file could
not be read or converted), "truncated" (the file ends before its image does), "corrupt" (a whole file whose
header or pixel data cannot be decoded), "too_small" (a side below `min_size`), "extreme_aspect" (long
side / short side above `max_aspect`), "too_large" (over PIL's decompression-bomb limit). Prep adds
"duplicate" (stages.py) and sources add "unsafe_path" (sources.py).
Images are opened by imagefile.open_upright, so an EXIF orientation is applied before any check (the note
"exif_transposed"). Converting an image to the target mode (palette, CMYK, LA, 16-bit, alpha, ...) is not a
quarantine but a note, "mode_converted", counted as "converted" in the summary.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_prep.imagefile import UPRIGHT, damage, known_format, open_upright
from data_prep.sources import RawSample

REASONS = ("empty", "not_image", "unreadable", "truncated", "corrupt", "too_small", "extreme_aspect", "too_large")
MODE_CONVERTED = "mode_converted"
EXIF_TRANSPOSED = "exif_transposed"


@dataclass(frozen=True, kw_only=True)
class QuarantineEntry:
    """A sample left out of the dataset, and why."""

    key: str
    origin: str
    reason: str
    detail: str


@dataclass(frozen=True, kw_only=True)
class ValidImage:
    """A decoded image: uint8 (H, W) for "L" or (H, W, 3) for "RGB", plus notes such as "mode_converted"."""

    key: str
    origin: str
    label: int | None
    pixels: np.ndarray
    notes: tuple[str, ...] = ()


def _quarantine(raw: RawSample, reason: str, detail: str) -> QuarantineEntry:
    return QuarantineEntry(
        key=raw.key, origin=raw.origin, reason=reason, detail=" ".join(detail.split())[:300]
    )


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL mode to "L" or "RGB": 16/32-bit scaled to 8-bit, alpha composited onto black."""
    if image.mode == mode:
        return image
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    elif image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert(mode)


def decode_image(raw: RawSample) -> tuple[Image.Image, tuple[str, ...]] | QuarantineEntry:
    """Decode `raw.data` (file bytes or a uint8 array) into (a loaded, upright PIL image, its notes: the
    EXIF_TRANSPOSED note when its EXIF orientation was applied), or a QuarantineEntry."""
    if isinstance(raw.data, np.ndarray):
        array = raw.data
        if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
            return _quarantine(
                raw, "unreadable", f"array {array.dtype} {array.shape} is not uint8 (H, W[, 3])"
            )
        return Image.fromarray(array, "L" if array.ndim == 2 else "RGB"), ()
    if len(raw.data) == 0:
        return _quarantine(raw, "empty", "zero bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image, orientation = open_upright(raw.data)
        except UnidentifiedImageError as exn:
            kind = known_format(raw.data)
            if kind is None:
                return _quarantine(raw, "not_image", "cannot identify an image format in the file")
            reason = damage(raw.data, exn)
            what = "that ends inside its header" if reason == "truncated" else "whose header cannot be parsed"
            return _quarantine(raw, reason, f"a {kind} file ({len(raw.data)} bytes) {what}")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exn:
            return _quarantine(raw, "too_large", str(exn))
        except Exception as exn:  # identified, then the header or the pixel data failed
            return _quarantine(raw, damage(raw.data, exn), f"{type(exn).__name__}: {exn}")
    return image, (() if orientation == UPRIGHT else (EXIF_TRANSPOSED,))


def validate(
    raw: RawSample, *, channels: int, min_size: int = 8, max_aspect: float | None = None
) -> ValidImage | QuarantineEntry:
    """Decode, check the size (and the aspect ratio when `max_aspect` is given), and convert to "L"
    (channels=1) or "RGB" (channels=3)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    mode = "L" if channels == 1 else "RGB"
    decoded = decode_image(raw)
    if isinstance(decoded, QuarantineEntry):
        return decoded
    image, notes = decoded
    width, height = image.size
    if min(width, height) < min_size:
        return _quarantine(raw, "too_small", f"{width}x{height} is below min_size {min_size}")
    if max_aspect and max(width, height) > max_aspect * min(width, height):
        ratio = max(width, height) / min(width, height)
        detail = f"{width}x{height} has aspect {ratio:.2f} > max_aspect {max_aspect:g}"
        return _quarantine(raw, "extreme_aspect", detail)
    if image.mode != mode:
        notes += (MODE_CONVERTED,)
        try:
            image = _to_mode(image, mode)
        except Exception as exn:
            return _quarantine(raw, "unreadable", f"cannot convert mode {image.mode}: {exn}")
    pixels = np.asarray(image, dtype=np.uint8)
    return ValidImage(key=raw.key, origin=raw.origin, label=raw.label, pixels=pixels, notes=notes)
