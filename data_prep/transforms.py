"""Fit validated images to the dataset's fixed size and encode them (PNG by default, JPEG by option).

Fitting = resize the shorter side (Lanczos when shrinking, bicubic when enlarging), centre-crop to a square,
then pad with black by `margin` of the side on each edge. Built-in MNIST uses margin 2/32: at 32x32 the
28x28 digit is kept as is and padded 2 px each side, the classic LeNet input.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGE_FORMATS = {"png": "png", "jpeg": "jpg"}  # format -> tar member extension


@dataclass(frozen=True, kw_only=True)
class TransformConfig:
    """image_size: output side in px; channels: 1 ("L") or 3 ("RGB"); margin: padding per side (fraction)."""

    image_size: int = 32
    channels: int = 3
    image_format: str = "png"
    jpeg_quality: int = 95
    margin: float = 0.0

    def __post_init__(self) -> None:
        if self.image_size < 4:
            raise ValueError(f"image_size must be >= 4, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(
                f"image_format must be one of {sorted(IMAGE_FORMATS)}, got {self.image_format!r}"
            )
        if not 0.0 <= self.margin < 0.5:
            raise ValueError(f"margin must be in [0, 0.5), got {self.margin}")

    @property
    def extension(self) -> str:
        return IMAGE_FORMATS[self.image_format]


def fit_image(pixels: np.ndarray, *, image_size: int, margin: float = 0.0) -> np.ndarray:
    """Resize the shorter side, centre-crop, and pad: uint8 (H, W[, 3]) -> (size, size[, 3])."""
    pad = round(image_size * margin)
    inner = image_size - 2 * pad
    image = Image.fromarray(pixels)
    width, height = image.size
    scale = inner / min(width, height)
    if scale != 1.0:
        size = (max(inner, round(width * scale)), max(inner, round(height * scale)))
        resample = Image.Resampling.LANCZOS if scale < 1.0 else Image.Resampling.BICUBIC
        image = image.resize(size, resample=resample)
        width, height = size
    left, top = (width - inner) // 2, (height - inner) // 2
    image = image.crop((left, top, left + inner, top + inner))
    if pad:
        framed = Image.new(image.mode, (image_size, image_size), 0)
        framed.paste(image, (pad, pad))
        image = framed
    return np.asarray(image, dtype=np.uint8)


def encode_image(pixels: np.ndarray, *, image_format: str = "png", jpeg_quality: int = 95) -> bytes:
    """Encode uint8 (H, W) or (H, W, 3) as PNG or JPEG bytes (deterministic for the same input)."""
    image = Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")
    out = io.BytesIO()
    if image_format == "png":
        image.save(out, format="PNG", optimize=False, compress_level=6)
    elif image_format == "jpeg":
        image.save(out, format="JPEG", quality=jpeg_quality, subsampling=0)
    else:
        raise ValueError(f"image_format must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}")
    return out.getvalue()


def transform(pixels: np.ndarray, cfg: TransformConfig) -> bytes:
    """Fit and encode one validated image."""
    fitted = fit_image(pixels, image_size=cfg.image_size, margin=cfg.margin)
    return encode_image(fitted, image_format=cfg.image_format, jpeg_quality=cfg.jpeg_quality)
