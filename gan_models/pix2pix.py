"""Pix2Pix (Isola et al. 2017, "Image-to-Image Translation with Conditional Adversarial Networks"), as the
official junyanz/pytorch-CycleGAN-and-pix2pix `models/pix2pix_model.py` trains it with its default flags.

Paper -> code: x (input image) = real_a = batch["a"] (batch["b"] when direction="BtoA"), y (target) = real_b,
G = nets["G"] (U-Net, unet_256), D = nets["D"] (70x70 PatchGAN on concat(x, y), 2 * channels inputs),
G(x) = fake_b. No z: the paper's noise is the dropout of G's decoder, on at training and (by default) at test
time. Objective (paper eq. 4): G* = arg min_G max_D L_cGAN(G, D) + λ L_L1(G), with λ = λ_L1 = `lambda_l1` = 100,
L_cGAN the BCE-with-logits GAN loss ("vanilla"), the D objective halved (sec. 3.3: "we divide the objective by
2 while optimizing D"), Adam lr 2e-4, β (0.5, 0.999), batch norm, batch 1, weights N(0, 0.02).

Inference (`eval_mode`): the official test.py runs G in train mode unless `--eval` is given, so by default
dropout stays on and batch norm uses the test batch's own statistics (with batch 1: instance normalisation).
`eval_mode=False` (default) reproduces that; True is `--eval` (no dropout, running statistics). The registered
network nets["G"] is the plain UnetGenerator; put it in its inference mode with
`i2i_nets.inference(g, eval_mode=cfg.eval_mode)` before sampling or exporting (an exported module is fixed in
the mode it was exported in). `sample_grid` does so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import losses
from ._checks import in_unit_interval, one_of, positive
from .family import Batch, Family, Nets, Optimizers
from .i2i_nets import (
    D_ARCHS,
    INIT_TYPES,
    LR_POLICIES,
    NORMS,
    build_scheduler,
    check_g_arch,
    define_d,
    define_g,
    inference,
)
from .latent import make_grid
from .layers import frozen


@dataclass(frozen=True, kw_only=True)
class Config:
    """Pix2Pix options; defaults are the official train defaults for `--model pix2pix` (official flag in [])."""

    image_size: int = 256  # [--crop_size] 256 (loaded at 286, randomly cropped: the data reader's job)
    channels: int = 3  # [--input_nc], [--output_nc] (both 3)
    direction: str = "AtoB"  # [--direction] AtoB: G maps batch["a"] to batch["b"]; BtoA the reverse
    g_arch: str = "unet_256"  # [--netG] unet_256, unet_128, resnet_9blocks, resnet_6blocks (+ unet_64, unet_32)
    d_arch: str = "basic"  # [--netD] basic (70x70 PatchGAN), n_layers, pixel
    n_layers_d: int = 3  # [--n_layers_D], used when d_arch="n_layers"
    ngf: int = 64  # [--ngf] G filters in the last conv layer
    ndf: int = 64  # [--ndf] D filters in the first conv layer
    norm: str = "batch"  # [--norm] batch (pix2pix's default), instance, none
    dropout: bool = True  # [not --no_dropout] Dropout(0.5) in G's decoder
    init_type: str = "normal"  # [--init_type] normal, xavier, kaiming, orthogonal
    init_gain: float = 0.02  # [--init_gain]
    gan_mode: str = "vanilla"  # [--gan_mode] vanilla (BCE-with-logits), lsgan, wgangp, hinge
    lambda_l1: float = 100.0  # [--lambda_L1] λ of the L1 term
    lambda_gp: float = 10.0  # gradient-penalty weight, only with gan_mode="wgangp" (see train_step)
    lr: float = 2e-4  # [--lr] Adam learning rate of G and D
    beta1: float = 0.5  # [--beta1]
    beta2: float = 0.999  # Adam β2 (official: fixed 0.999)
    # Implementation, not a hyperparameter: True runs the same Adam update in torch's fused kernel (CPU and CUDA;
    # one pass over each tensor instead of one per operation), False the for-loop Adam the official code runs.
    fused_adam: bool = True
    lr_policy: str = "linear"  # [--lr_policy] linear, step, cosine (LR scheduler stepped once per epoch)
    n_epochs: int = 100  # [--n_epochs] epochs at the initial rate (linear), T_max (cosine)
    n_epochs_decay: int = 100  # [--n_epochs_decay] epochs of linear decay towards 0
    lr_decay_iters: int = 50  # [--lr_decay_iters] step policy: x0.1 every this many epochs
    epoch_count: int = 1  # [--epoch_count] the starting epoch
    eval_mode: bool = False  # [--eval] at test time: False keeps dropout and batch statistics (official default)

    def __post_init__(self) -> None:
        check_g_arch(self.g_arch, self.image_size)
        one_of("direction", self.direction, ("AtoB", "BtoA"))
        one_of("d_arch", self.d_arch, D_ARCHS)
        one_of("norm", self.norm, NORMS)
        one_of("init_type", self.init_type, INIT_TYPES)
        one_of("gan_mode", self.gan_mode, tuple(losses.GAN_CRITERIA))
        one_of("lr_policy", self.lr_policy, LR_POLICIES)
        positive(channels=self.channels, n_layers_d=self.n_layers_d, ngf=self.ngf, ndf=self.ndf, lr=self.lr,
                 init_gain=self.init_gain, n_epochs=self.n_epochs, lr_decay_iters=self.lr_decay_iters)
        if self.lambda_l1 < 0 or self.lambda_gp < 0 or self.n_epochs_decay < 0:
            raise ValueError("lambda_l1, lambda_gp and n_epochs_decay must be >= 0")
        in_unit_interval(beta1=self.beta1, beta2=self.beta2)


def build(cfg: Config) -> Nets:
    """{"G": U-Net/ResNet generator, "D": PatchGAN on concat(input, output)}, initialised as `init_type`."""
    if not isinstance(cfg, Config):
        raise TypeError(f"pix2pix.build needs a pix2pix.Config, got {type(cfg).__name__}")
    init = dict(init_type=cfg.init_type, init_gain=cfg.init_gain)
    g = define_g(cfg.g_arch, cfg.channels, cfg.channels, ngf=cfg.ngf, norm=cfg.norm, dropout=cfg.dropout, **init)
    d = define_d(cfg.d_arch, 2 * cfg.channels, ndf=cfg.ndf, n_layers=cfg.n_layers_d, norm=cfg.norm, **init)
    return {"G": g, "D": d}


def build_optimizers(cfg: Config, nets: Nets) -> Optimizers:
    """Adam for G and for D, lr 2e-4, β (0.5, 0.999)."""
    betas, fused = (cfg.beta1, cfg.beta2), cfg.fused_adam or None  # None: torch's default implementation
    return {
        "G": torch.optim.Adam(nets["G"].parameters(), lr=cfg.lr, betas=betas, fused=fused),
        "D": torch.optim.Adam(nets["D"].parameters(), lr=cfg.lr, betas=betas, fused=fused),
    }


def extra_state(cfg: Config, opts: Optimizers, *, seed: int = 0) -> dict[str, Any]:
    """One LR scheduler per optimizer ("scheduler_G", "scheduler_D"), stepped once per epoch by the caller
    (`family.step_schedulers`); train_step does not touch them. `seed` is unused (no random state here)."""
    kw = dict(policy=cfg.lr_policy, n_epochs=cfg.n_epochs, n_epochs_decay=cfg.n_epochs_decay,
              lr_decay_iters=cfg.lr_decay_iters, epoch_count=cfg.epoch_count)
    return {f"scheduler_{k}": build_scheduler(opts[k], **kw) for k in ("G", "D")}


def _source_key(cfg: Config) -> str:
    return "a" if cfg.direction == "AtoB" else "b"


def example_batch(
    cfg: Config, n: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> dict[str, Tensor]:
    """A synthetic `paired` batch: {"a", "b"} uniform noise images in [-1, 1], (n, channels, size, size)."""
    shape = (n, cfg.channels, cfg.image_size, cfg.image_size)
    return {k: torch.rand(shape, generator=generator, device=device) * 2 - 1 for k in ("a", "b")}


def generator_inputs(
    cfg: Config, batch: Batch | None, n: int, *, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Tensor]:
    """(x,): the first n input images of `batch` (batch["a"], or ["b"] for BtoA); a synthetic batch if None."""
    if batch is None:
        batch = example_batch(cfg, n, generator=generator, device=device)
    return (batch[_source_key(cfg)][:n].to(device),)


@torch.no_grad()
def sample_grid(g: nn.Module, batch: Batch, cfg: Config, generator: torch.Generator | None = None) -> Tensor:
    """Rows of input | output | target for every sample of `batch`, on CPU in [-1, 1], G in `inference`.

    Dropout noise (eval_mode=False) is drawn from a fork of the global RNG seeded from `generator`, so the same
    generator state gives the same grid and the training RNG is not advanced.
    """
    device = next(g.parameters()).device
    real_a = batch[_source_key(cfg)].to(device)
    real_b = batch["b" if cfg.direction == "AtoB" else "a"].to(device)
    seed = int(torch.randint(2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            inference(g, eval_mode=cfg.eval_mode):
        torch.manual_seed(seed)
        fake_b = g(real_a)
    rows = torch.stack([real_a, fake_b, real_b], dim=1).flatten(0, 1)
    return make_grid(rows.float().cpu().clamp(-1, 1), nrow=3)


def train_step(
    nets: Nets, opts: Optimizers, batch: Batch, cfg: Config, *, extra: Mapping[str, Any] | None = None
) -> dict[str, Tensor]:
    """One Pix2Pix iteration in the official `optimize_parameters` order: forward G, update D, update G.

    D's two halves run as two forward+backward passes (fake first, as the official backward_D), each scaled by
    1/2: the same gradient as the official single backward of 0.5 * (L_fake + L_real), and DDP-safe. D sees
    the same fake_b (one dropout draw) as G's update. In the G step D runs `frozen`. gan_mode="wgangp" adds
    λ_gp · gradient penalty at interpolates of concat(x, y) and concat(x, G(x)) to the D loss (the official
    GANLoss has the critic terms but its models never call cal_gradient_penalty). `extra` (the LR schedulers)
    is not used here. Returns detached scalars; no .item() (a GPU sync point).
    """
    g_net, d_net = nets["G"], nets["D"]
    opt_g, opt_d = opts["G"], opts["D"]
    d_real_loss, d_fake_loss, g_gan_loss = losses.GAN_CRITERIA[cfg.gan_mode]
    real_a = batch[_source_key(cfg)]
    real_b = batch["b" if cfg.direction == "AtoB" else "a"]

    # (0) Forward: y' = G(x) (the paper's z is G's dropout).
    fake_b = g_net(real_a)

    # (1) Update D: max_D L_cGAN = E[log D(x, y)] + E[log(1 - D(x, G(x)))]  (eq. 1), as the loss
    #     L_D = 1/2 [ℓ(D(x, G(x)), 0) + ℓ(D(x, y), 1)], G(x) detached.
    opt_d.zero_grad(set_to_none=True)
    # (1a) ... on the fake pair.
    fake_ab = torch.cat((real_a, fake_b.detach()), 1)
    real_ab = torch.cat((real_a, real_b), 1)
    pred_fake = d_net(fake_ab)
    loss_d_fake = d_fake_loss(pred_fake)
    loss_d = 0.5 * loss_d_fake
    if cfg.gan_mode == "wgangp":
        # (1c) + λ_gp E[(‖∇D(x̂)‖_2 - 1)^2], backpropagated with the fake half: alone, the penalty gives D's
        #      last bias no gradient, which DDP (find_unused_parameters=False) refuses.
        loss_d = loss_d + cfg.lambda_gp * losses.gradient_penalty(d_net, real_ab, fake_ab)
    loss_d.backward()
    # (1b) ... on the real pair.
    pred_real = d_net(real_ab)
    loss_d_real = d_real_loss(pred_real)
    (0.5 * loss_d_real).backward()
    loss_d = (loss_d + 0.5 * loss_d_real).detach()
    opt_d.step()

    # (2) Update G: min_G ℓ(D(x, G(x)), 1) + λ_L1 ‖y - G(x)‖_1  (eq. 4), through the just-updated D.
    opt_g.zero_grad(set_to_none=True)
    with frozen(d_net) as d_fixed:
        loss_g_gan = g_gan_loss(d_fixed(torch.cat((real_a, fake_b), 1)))
    loss_l1 = cfg.lambda_l1 * F.l1_loss(fake_b, real_b)  # (3) λ_L1 · L_L1 = λ E‖y - G(x)‖_1
    loss_g = loss_g_gan + loss_l1
    loss_g.backward()
    opt_g.step()

    return {
        "loss/D": loss_d.detach(),
        "loss/D_real": loss_d_real.detach(),
        "loss/D_fake": loss_d_fake.detach(),
        "loss/G": loss_g.detach(),
        "loss/G_GAN": loss_g_gan.detach(),
        "loss/L1": loss_l1.detach(),  # λ_L1-weighted, as the official G_L1
        # sigmoid(logit) is D's probability for vanilla; for the other modes only a monotone score.
        "d/real_score": torch.sigmoid(pred_real.detach().float()).mean(),
        "d/fake_score": torch.sigmoid(pred_fake.detach().float()).mean(),
    }


FAMILY = Family(
    name="pix2pix",
    dataset_kind="paired",
    config=Config,
    build=build,
    build_optimizers=build_optimizers,
    train_step=train_step,
    sample_latent=None,
    example_batch=example_batch,
    generator_inputs=generator_inputs,
    sample_grid=sample_grid,
    generator="G",
    extra_state=extra_state,
)
