"""One decoded shard sample as the arrays a batch is made of (`to_sample`), and the paired kind's augmentation,
split into its random draws (`draw_augment`, made in stream order by whoever fixes the order) and their use
(`apply_augment`, which a decode worker may run): the same draws give the same pixels wherever they are applied.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data_prep.manifest import Manifest
from data_prep.reader import image_of

Sample = dict[str, Any]
Augment = tuple[int, int, bool]  # top, left, mirrored


def to_sample(decoded: dict[str, Any], manifest: Manifest) -> Sample:
    """A decoded shard sample as uint8 (C, H, W) arrays and plain values, by the manifest's kind."""
    channels = manifest.channels
    sample: Sample = {"key": decoded["__key__"], "label": decoded.get("cls", -1)}
    if manifest.kind == "paired":
        sample["a"], sample["b"] = image_of(decoded, channels, "a"), image_of(decoded, channels, "b")
        if "mask.png" in decoded:
            sample["mask"] = image_of(decoded, 1, "mask")
        return sample
    sample["image"] = image_of(decoded, channels)
    if manifest.kind == "attributes":
        attrs = np.asarray(decoded["attrs.json"], dtype=np.uint8)
        if attrs.shape != (len(manifest.extra["attributes"]),):
            raise ValueError(f"sample {sample['key']} has {attrs.shape} attrs, not {len(manifest.extra['attributes'])}")
        sample["attrs"] = attrs
    elif manifest.kind == "captioned":
        emb = decoded["emb.npy"]
        captions = decoded["captions.json"]
        if emb.ndim != 2 or emb.shape[0] != len(captions) or emb.shape[0] == 0:
            raise ValueError(f"sample {sample['key']}: emb {emb.shape} does not match {len(captions)} captions")
        sample["emb"], sample["captions"] = emb, captions
    return sample


def draw_augment(
    height: int, width: int, *, crop_size: int | None, flip: bool, rng: np.random.Generator
) -> Augment:
    """The random crop's corner and whether to mirror, drawn in this order (none drawn for what is off)."""
    top = left = 0
    if crop_size is not None:
        top, left = int(rng.integers(0, height - crop_size + 1)), int(rng.integers(0, width - crop_size + 1))
    return top, left, flip and bool(rng.random() < 0.5)


def apply_augment(sample: Sample, augment: Augment, *, crop_size: int | None) -> Sample:
    """The same crop and flip for every image of a paired sample (a, b, mask)."""
    top, left, mirrored = augment
    out = dict(sample)
    for name in (n for n in ("a", "b", "mask") if n in sample):
        image = sample[name]
        if crop_size is not None:
            image = image[:, top : top + crop_size, left : left + crop_size]
        if mirrored:
            image = image[:, :, ::-1]
        out[name] = np.ascontiguousarray(image)
    return out
