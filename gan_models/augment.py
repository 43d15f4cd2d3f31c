"""Differentiable augmentation for small datasets (DiffAugment, Zhao et al. 2020).

The same random transform family is applied to every image D sees, real and fake, in both the D and the G
step; because it is differentiable, G still receives gradients through it. With a few thousand images it
keeps D from memorising the training set, which otherwise stalls G.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

POLICIES = ("translation", "cutout")


def check_policy(policy: str) -> None:
    for name in filter(None, policy.split(",")):
        if name not in POLICIES:
            raise ValueError(f"augment policy {name!r} is not one of {', '.join(POLICIES)}")


def diff_augment(x: Tensor, policy: str) -> Tensor:
    """Apply the comma-separated `policy` ("" = identity) with the global RNG on x's device."""
    for name in filter(None, policy.split(",")):
        x = _translation(x) if name == "translation" else _cutout(x)
    return x


def _translation(x: Tensor, ratio: float = 0.125) -> Tensor:
    # Shift each image by up to ratio * size pixels, filling with the background value (-1 after padding).
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-sw, sw + 1, (n, 1, 1), device=x.device)
    gy, gx = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    gy = (gy.unsqueeze(0) + dy + 1).clamp(0, h + 1)
    gx = (gx.unsqueeze(0) + dx + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1], value=-1.0)
    idx = (gy * (w + 2) + gx).view(n, 1, h * w).expand(-1, x.shape[1], -1)
    return padded.flatten(2).gather(2, idx).view_as(x)


def _cutout(x: Tensor, ratio: float = 0.5) -> Tensor:
    # Zero (mid-grey) one square of side ratio * size per image, centred anywhere, clipped at the border.
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    y0 = torch.randint(0, h + 1, (n, 1, 1), device=x.device) - ch // 2
    x0 = torch.randint(0, w + 1, (n, 1, 1), device=x.device) - cw // 2
    gy, gx = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    inside = (gy >= y0) & (gy < y0 + ch) & (gx >= x0) & (gx < x0 + cw)
    return x * (~inside).to(x.dtype).unsqueeze(1)
