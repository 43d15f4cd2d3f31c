"""The one interface every GAN family exposes, so the loop, the CLI and the registry treat them alike."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Nets = dict[str, nn.Module]
Optimizers = dict[str, torch.optim.Optimizer]
Batch = Mapping[str, torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class Family:
    """A GAN family: its config type and the pure-PyTorch functions that build, train and sample it.

    name:             registry key, e.g. "dcgan".
    dataset_kind:     the data contract it trains on ("images", "paired", ...; DESIGN.md section 3).
    config:           the frozen dataclass holding every architecture choice and every λ with its paper
                      default.
    build:            config -> named networks, e.g. {"G": ..., "D": ...}, weights initialised as the paper
                      says.
    build_optimizers: (config, nets) -> named optimizers.
    train_step:       (nets, opts, batch, config) -> detached scalar tensors ("loss/D", "loss/G", ...);
                      exactly one paper-faithful update of every network, in the paper's order.
    sample_latent:    (config, n, generator, device) -> latents z, for families whose G draws one (None for
                      the image-to-image families, whose G takes an image).
    example_batch:    (config, n, generator, device) -> a synthetic training batch in the family's dataset kind
                      (bench, tests, export examples); keys as the reader yields them.
    generator_inputs: (config, batch, n, generator, device) -> the positional inputs of the exported generator
                      for n samples: (z,) for DCGAN, (a,) for Pix2Pix, (x, c) for StarGAN, (z, emb) for
                      GAN-CLS. `batch` supplies the conditioning; unconditional families ignore it.
    sample_grid:      (generator module, batch, config, generator RNG) -> one image grid (C, H, W) in [-1, 1],
                      the family's usual figure (pix2pix: input | output | target rows).
    generator:        key of the network that is exported and registered.
    """

    name: str
    dataset_kind: str
    config: type
    build: Callable[[Any], Nets]
    build_optimizers: Callable[[Any, Nets], Optimizers]
    train_step: Callable[[Nets, Optimizers, Batch, Any], dict[str, torch.Tensor]]
    sample_latent: Callable[..., torch.Tensor] | None
    example_batch: Callable[..., dict[str, torch.Tensor]]
    generator_inputs: Callable[..., tuple[torch.Tensor, ...]]
    sample_grid: Callable[..., torch.Tensor] | None = None  # None: a square grid of G(generator_inputs)
    generator: str = "G"
