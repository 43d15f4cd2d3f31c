"""Latent-space tools from the DCGAN paper (interpolation, vector arithmetic) and a sample grid."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _batch_t(t: float | Tensor, like: Tensor) -> Tensor:
    # A scalar t, or one t per row (shape (n,)), broadcast over the non-batch dims of `like`.
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(-1, *([1] * (like.dim() - 1))) if t.dim() > 0 else t


def lerp(z0: Tensor, z1: Tensor, t: float | Tensor) -> Tensor:
    """(1 - t) z0 + t z1; t a scalar or one value per row of the batch (dim 0)."""
    t = _batch_t(t, z0)
    return (1.0 - t) * z0 + t * z1


def slerp(z0: Tensor, z1: Tensor, t: float | Tensor, *, eps: float = 1e-7) -> Tensor:
    """Spherical interpolation (Shoemake 1985; White 2016 for GAN latents), row by row over dim 0.

    Each row is flattened over its non-batch dims; a 1-D input is one vector. With Ω the angle between the
    rows, slerp = sin((1-t)Ω)/sin Ω · z0 + sin(tΩ)/sin Ω · z1: the endpoints are returned unchanged, and
    between two vectors of equal norm the norm stays constant. Rows that are (anti)parallel (sin Ω ≈ 0),
    or zero, fall back to lerp. t is a scalar or one value per row (broadcast against a batch of 1).
    """
    if z0.dim() == 1:
        return slerp(z0[None], z1[None], t, eps=eps).reshape(-1, *z0.shape).squeeze(0)
    a, b = torch.broadcast_tensors(z0.flatten(1), z1.flatten(1))
    t = _batch_t(t, a)
    a_n = a / a.norm(dim=1, keepdim=True).clamp_min(eps)
    b_n = b / b.norm(dim=1, keepdim=True).clamp_min(eps)
    omega = (a_n * b_n).sum(dim=1, keepdim=True).clamp(-1.0, 1.0).acos()
    sin_omega = omega.sin()
    degenerate = sin_omega.abs() < 1e-6
    sin_omega = torch.where(degenerate, torch.ones_like(sin_omega), sin_omega)  # no 0/0 in either branch
    spherical = (torch.sin((1.0 - t) * omega) * a + torch.sin(t * omega) * b) / sin_omega
    out = torch.where(degenerate, (1.0 - t) * a + t * b, spherical)
    return out.reshape(out.shape[0], *z0.shape[1:])


def interpolate(z0: Tensor, z1: Tensor, *, steps: int, mode: str = "slerp") -> Tensor:
    """`steps` latents from z0 to z1 inclusive, shape (steps, *z0.shape); z0, z1 are single latents.

    Radford et al. sec. 6.1 walk the latent space this way to show smooth transitions (no memorisation).
    """
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    fns = {"slerp": slerp, "linear": lerp}
    if mode not in fns:
        raise ValueError(f"mode={mode!r} is not supported; valid: {', '.join(map(repr, fns))}")
    t = torch.linspace(0.0, 1.0, steps, dtype=z0.dtype, device=z0.device)
    a = z0.reshape(1, -1).expand(steps, -1)
    b = z1.reshape(1, -1).expand(steps, -1)
    return fns[mode](a, b, t).reshape(steps, *z0.shape)


def vector_arithmetic(z_a: Tensor, z_b: Tensor, z_c: Tensor) -> Tensor:
    """mean(z_a) - mean(z_b) + mean(z_c) over dim 0, keeping the latent shape (Radford et al. sec. 6.3).

    E.g. z_a = smiling woman, z_b = neutral woman, z_c = neutral man (three exemplars each; averaging them
    is what made the arithmetic stable in the paper) gives a smiling man.
    """
    return z_a.mean(dim=0) - z_b.mean(dim=0) + z_c.mean(dim=0)


def make_grid(images: Tensor, *, nrow: int, padding: int = 2, pad_value: float = -1.0) -> Tensor:
    """Tile images (N, C, H, W) into one (C, H', W') image, `nrow` per row, like torchvision's make_grid.

    H' = rows * (H + padding) + padding, W' = min(nrow, N) * (W + padding) + padding. The channels are kept
    as they are (torchvision repeats a single channel to three); pad_value -1 is black for [-1, 1] images.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if nrow < 1 or padding < 0:
        raise ValueError(f"need nrow >= 1 and padding >= 0, got nrow={nrow}, padding={padding}")
    n, c, h, w = images.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols) if n else 0
    step_h, step_w = h + padding, w + padding
    grid = images.new_full((c, rows * step_h + padding, cols * step_w + padding), pad_value)
    for i in range(n):
        r, col = divmod(i, cols)
        y, x = r * step_h + padding, col * step_w + padding
        grid[:, y : y + h, x : x + w] = images[i]
    return grid
