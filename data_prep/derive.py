"""Derived image-to-image pairs: the input `a` made from a fitted photo `b` (edges, grey, low-res, masked).

Each function takes the fitted uint8 photo (H, W) or (H, W, 3) and returns an input of the same shape, so
`a` and `b` always share size, crop and channel count. Randomness (the inpainting hole) comes from a
generator the caller seeds per sample key, so a sample's pair does not depend on the order of the run.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image


def sample_rng(*, seed: int, key: str) -> np.random.Generator:
    """A generator seeded by (seed, sample key) only."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big"))


def _grey(photo: np.ndarray) -> np.ndarray:
    return photo if photo.ndim == 2 else np.asarray(Image.fromarray(photo, "RGB").convert("L"))


def _like(grey: np.ndarray, photo: np.ndarray) -> np.ndarray:
    """`grey` (H, W) in the photo's channel layout."""
    return grey if photo.ndim == 2 else np.repeat(grey[:, :, None], 3, axis=2)


def edges(photo: np.ndarray, *, sigma: float = 1.0) -> np.ndarray:
    """Canny edges as black lines on white, like pix2pix's edges2shoes/edges2handbags inputs."""
    from skimage.feature import canny

    found = canny(_grey(photo).astype(np.float64) / 255.0, sigma=sigma)
    return _like(np.where(found, 0, 255).astype(np.uint8), photo)


def colorize(photo: np.ndarray) -> np.ndarray:
    """The photo's luminance (ITU-R 601, PIL's "L"), repeated in three channels."""
    if photo.ndim == 2:
        raise ValueError("colorize pairs need colour photos: use --channels 3 and a colour source")
    return _like(_grey(photo), photo)


def superres(photo: np.ndarray, *, factor: int = 4) -> np.ndarray:
    """Down-scaled by `factor` (box filter, as a camera bins pixels) and back up (bicubic)."""
    image = Image.fromarray(photo)
    width, height = image.size
    small = image.resize((max(1, width // factor), max(1, height // factor)), Image.Resampling.BOX)
    return np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), dtype=np.uint8)


def inpaint(photo: np.ndarray, *, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(masked photo, mask): one rectangular hole of 25-50% of each side, set to black in the input;
    the mask is uint8 (H, W), 255 inside the hole and 0 outside."""
    height, width = photo.shape[:2]
    hole_h = int(rng.integers(max(1, height // 4), max(2, height // 2) + 1))
    hole_w = int(rng.integers(max(1, width // 4), max(2, width // 2) + 1))
    top, left = int(rng.integers(0, height - hole_h + 1)), int(rng.integers(0, width - hole_w + 1))
    mask = np.zeros((height, width), np.uint8)
    mask[top : top + hole_h, left : left + hole_w] = 255
    masked = photo.copy()
    masked[mask > 0] = 0
    return masked, mask
