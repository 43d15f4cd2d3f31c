"""A sign-aware "keep the stroke" term for translations of strokes drawn on a plain black or white background
(beyond any paper; StarGAN's `lambda_stroke`).

The stroke mask of an image in [-1, 1] is where its ink is, in [0, 1], whatever the ink's colour and the
background: on a black background the brightest channel (a pure red, green or blue stroke lights one channel),
on a white one 1 - the darkest channel (a coloured stroke on white darkens the other two). So recolouring a
digit or inverting its background leaves the mask as it was, while an image that draws the digit's negative
space (dark around the digit where the input's ink is not) has a different one.

Why: without it, StarGAN on the coloured-digit set learns the background inversion as the digit's negative
space, which the cycle term cannot reject (inverting it back gives the input) and a small critic cannot see.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

INK_LEVEL = 0.1  # a mask value above this is ink for `ink_outside`, however faint the stroke


def white_background(images: Tensor) -> Tensor:
    """(n,) bool: the image's mean level is above mid-grey, i.e. it is drawn on white. Decided from the image
    (not its labels), without gradient: the choice selects a mask, it is not itself a target."""
    return images.detach().float().mean(dim=(1, 2, 3)) > 0.0


def stroke_mask(images: Tensor) -> Tensor:
    """(n, H, W) in [0, 1]: max over channels on a black background, 1 - min over channels on a white one."""
    unit = (images.float() + 1) / 2
    on_black, on_white = unit.amax(dim=1), 1 - unit.amin(dim=1)
    return on_white.where(white_background(images)[:, None, None], on_black)


def stroke_l1(source: Tensor, translated: Tensor, *, weight: Tensor | None = None) -> Tensor:
    """E|stroke_mask(source) - stroke_mask(translated)|: 0 when the translation keeps the ink where it was.

    `weight` (n,) in {0, 1}: only the translations with weight 1 count (the mean over them; 0 if none), so a
    change that is meant to move ink (a thicker or thinner stroke) can be left out."""
    return _l1(stroke_mask(source), stroke_mask(translated), weight)


def ink_outside(source: Tensor, translated: Tensor, *, reach: int, weight: Tensor | None = None,
                level: float = INK_LEVEL) -> Tensor:
    """E[mean of m(translated) where the source has no ink within `reach` pixels]: 0 when the translation draws
    only on or next to the input's strokes, as a thicker or thinner stroke does; > 0 for ink elsewhere, such as
    strokes merged into a blob. The bound for the changes `stroke_l1` leaves out (`weight` as there).

    The source's ink is its mask above `level`, whatever its intensity: a faint, thin digit bounds the region as
    much as a bold one does."""
    return _outside(stroke_mask(source), stroke_mask(translated), reach, weight, level)


def keep_stroke(source: Tensor, translated: Tensor, *, keeps: Tensor | None, reach: int) -> Tensor:
    """StarGAN's stroke term, each mask computed once: `stroke_l1` over the translations that `keeps` (all when
    None), plus, when `reach` >= 0, `ink_outside` over the others (those meant to move ink)."""
    source_mask, translated_mask = stroke_mask(source), stroke_mask(translated)
    loss = _l1(source_mask, translated_mask, keeps)
    if keeps is not None and reach >= 0:
        loss = loss + _outside(source_mask, translated_mask, reach, ~keeps, INK_LEVEL)
    return loss


def _l1(source_mask: Tensor, translated_mask: Tensor, weight: Tensor | None) -> Tensor:
    return _mean_over((source_mask - translated_mask).abs().mean(dim=(1, 2)), weight)


def _outside(source_mask: Tensor, translated_mask: Tensor, reach: int, weight: Tensor | None,
             level: float) -> Tensor:
    inked = (source_mask > level).float()[:, None]
    near = F.max_pool2d(inked, 2 * reach + 1, stride=1, padding=reach)[:, 0]
    return _mean_over((translated_mask * (1 - near)).mean(dim=(1, 2)), weight)


def _mean_over(per_image: Tensor, weight: Tensor | None) -> Tensor:
    """The mean of `per_image` over the images with weight 1 (all when `weight` is None; 0 if none)."""
    if weight is None:
        return per_image.mean()
    weight = weight.to(per_image.dtype)
    return (per_image * weight).sum() / weight.sum().clamp(min=1.0)
