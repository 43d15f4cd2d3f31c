"""The one interface every GAN family exposes, so the loop, the CLI and the registry treat them alike."""

from __future__ import annotations

import warnings
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
    dataset_kind:     the data contract it trains on ("images", "paired", ...; docs/ARCHITECTURE.md, data contracts).
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
    extra_state:      (config, opts, *, seed) -> named training state beyond networks and optimizers, each with
                      state_dict()/load_state_dict() holding tensors and numbers only (image pools, LR
                      schedulers); None for families without any. The caller builds it once after the
                      optimizers, saves/restores it with the checkpoint, and hands it to every step: call
                      `Family.step`, which passes it to train_step as `extra=`.
    reverse_generator: (exported generator) -> the single-input module of the opposite direction, for families
                      whose generator holds both (CycleGAN: F beside G); registered as a second model named
                      "<name>-<direction>". None for one-direction families.
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
    extra_state: Callable[..., dict[str, Any]] | None = None
    reverse_generator: Callable[[nn.Module], nn.Module] | None = None

    def step(
        self, nets: Nets, opts: Optimizers, batch: Batch, cfg: Any, extra: Mapping[str, Any] | None = None
    ) -> dict[str, torch.Tensor]:
        """train_step, with `extra` (from `extra_state`) for the families that keep such state."""
        if self.extra_state is None:
            return self.train_step(nets, opts, batch, cfg)
        if extra is None:
            raise ValueError(f"{self.name} keeps extra training state: pass extra=family.extra_state(cfg, opts)")
        return self.train_step(nets, opts, batch, cfg, extra=extra)


def adam_g_and_d(cfg: Any, nets: Nets) -> Optimizers:
    """One Adam per network with the config's lr_g, lr_d and (beta1, beta2): DCGAN's optimisers, which GAN-CLS
    (Reed et al. 2016) trains with too."""
    betas = (cfg.beta1, cfg.beta2)
    return {
        "G": torch.optim.Adam(nets["G"].parameters(), lr=cfg.lr_g, betas=betas),
        "D": torch.optim.Adam(nets["D"].parameters(), lr=cfg.lr_d, betas=betas),
    }


ITERATION_KEY = "iteration"  # D optimizer param_groups[0][ITERATION_KEY]: iterations done


def iterations_done(opts: Optimizers) -> int:
    """Iterations (D steps) taken so far, for what runs every k-th step (StarGAN's G steps and lr schedule,
    lazy R1). It lives in the D optimizer's first param group, so `opt.state_dict()` saves it and
    `load_state_dict` restores it: a resumed run keeps its rhythm without any extra state."""
    return int(opts["D"].param_groups[0].get(ITERATION_KEY, 0))


def set_iterations_done(opts: Optimizers, n: int) -> None:
    opts["D"].param_groups[0][ITERATION_KEY] = n


def step_schedulers(extra: Mapping[str, Any]) -> None:
    """Advance every LR scheduler in `extra` by one epoch: the official `update_learning_rate`, which the
    pix2pix/CycleGAN train.py calls at the start of every epoch (so epoch e trains at the rate after e steps).
    The caller decides what an epoch is (the dataset's size in steps, as the official loop)."""
    for obj in extra.values():
        if isinstance(obj, torch.optim.lr_scheduler.LRScheduler):
            with warnings.catch_warnings():
                # The first call precedes any optimizer.step(), exactly as in the official loop.
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                obj.step()


def noise_images_batch(
    cfg: Any, n: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """`example_batch` of the unconditional `images` families: uniform noise images in [-1, 1], label 0."""
    images = torch.rand(n, cfg.channels, cfg.image_size, cfg.image_size, generator=generator, device=device)
    return {"image": images * 2 - 1, "label": torch.zeros(n, dtype=torch.long, device=device)}


def latent_only_inputs(sample_latent: Callable[..., torch.Tensor]) -> Callable[..., tuple[torch.Tensor]]:
    """`generator_inputs` of an unconditional family: (z,) from its `sample_latent`; the batch is ignored."""

    def generator_inputs(
        cfg: Any, batch: Batch | None, n: int, *, generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> tuple[torch.Tensor]:
        return (sample_latent(cfg, n, generator=generator, device=device),)

    return generator_inputs
