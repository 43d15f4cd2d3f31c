"""DCGAN (Radford, Metz & Chintala 2016), layer for layer as the official pytorch/examples `dcgan/main.py`.

The only departure: D ends in a logit (no Sigmoid module) and the loss is computed with-logits, which is the
same function, keeps the parameter count, and is safe under autocast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import losses
from ._checks import in_unit_interval, one_of, positive
from .augment import check_policy, diff_augment
from .family import (
    Batch,
    Family,
    Nets,
    Optimizers,
    adam_g_and_d,
    iterations_done,
    latent_only_inputs,
    noise_images_batch,
    set_iterations_done,
)
from .layers import frozen, init_normal_

IMAGE_SIZES = (32, 64)
LOSSES = ("bce", "lsgan", "hinge")
_G_LOSS = {"bce": "nonsaturating", "lsgan": "lsgan", "hinge": "hinge"}


@dataclass(frozen=True, kw_only=True)
class Config:
    """DCGAN hyperparameters; defaults are the paper's and the official example's."""

    image_size: int = 64  # paper: 64; 32 drops one up/down block (G starts at ngf*4, D ends at ndf*4)
    channels: int = 3  # nc: 3 for LSUN/CelebA, 1 for MNIST-like data
    nz: int = 100  # |z|; the official code draws z ~ N(0, 1) (the paper's figure 1 says uniform)
    ngf: int = 64  # G feature maps in the last hidden layer
    ndf: int = 64  # D feature maps in the first layer
    lr_g: float = 2e-4  # Adam learning rate of G (paper: 0.0002)
    lr_d: float = 2e-4  # Adam learning rate of D
    beta1: float = 0.5  # Adam β1 (paper: 0.5 instead of 0.9, "helped stabilize training")
    beta2: float = 0.999  # Adam β2 (PyTorch default, as in the official example)
    loss: str = "bce"  # "bce" (paper; G non-saturating), "lsgan" (Mao et al.), "hinge"
    d_norm: str = "batch"  # "batch" (paper) or "spectral" (Miyato et al. 2018: SN on every D conv, no BN)
    augment: str = ""  # DiffAugment policy for D's inputs, e.g. "translation,cutout" (not in the paper: "")
    g_topk: float = 1.0  # share of fakes, those D scores highest, that G's loss uses (Sinha et al. 2020; paper: 1)
    real_label: float = 1.0  # D's target for real images with loss="bce"; 0.9 = one-sided label smoothing
    #                          (Salimans et al. 2016; paper: 1)
    r1_gamma: float = 0.0  # γ of the R1 penalty γ/2·E||∇_x D(x)||² on D's real inputs (Mescheder et al. 2018; paper: 0)
    r1_every: int = 1  # lazy R1: the penalty on every k-th D step only, scaled by k (Karras et al. 2020)

    def __post_init__(self) -> None:
        one_of("image_size", self.image_size, IMAGE_SIZES)
        one_of("channels", self.channels, (1, 3))
        one_of("loss", self.loss, LOSSES)
        check_policy(self.augment)
        one_of("d_norm", self.d_norm, ("batch", "spectral"))
        positive(nz=self.nz, ngf=self.ngf, ndf=self.ndf, lr_g=self.lr_g, lr_d=self.lr_d, r1_every=self.r1_every)
        if not 0.5 < self.real_label <= 1.0 or (self.real_label < 1.0 and self.loss != "bce"):
            raise ValueError(f"real_label must be in (0.5, 1] and below 1 only with loss='bce', got {self.real_label}")
        if self.r1_gamma < 0:
            raise ValueError(f"r1_gamma must be >= 0, got {self.r1_gamma}")
        in_unit_interval(beta1=self.beta1, beta2=self.beta2)
        if not 0.0 < self.g_topk <= 1.0:
            raise ValueError(f"g_topk must be in (0, 1], got {self.g_topk}")


def _n_blocks(image_size: int) -> int:
    # Stride-2 hidden blocks between the 4x4 map and the image: 64 -> 3, 32 -> 2.
    return image_size.bit_length() - 4


class Generator(nn.Module):
    """z (n, nz, 1, 1) -> image (n, nc, size, size) in [-1, 1]; state-dict keys as the official netG."""

    def __init__(self, *, nz: int, ngf: int, nc: int, image_size: int) -> None:
        super().__init__()
        mult = 2 ** _n_blocks(image_size)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz, ngf * mult, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * mult),
            nn.ReLU(True),
        ]
        while mult > 1:
            layers += [
                nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ngf * mult // 2),
                nn.ReLU(True),
            ]
            mult //= 2
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.main(z)


class Discriminator(nn.Module):
    """image (n, nc, size, size) -> logits (n,); the official D minus its final Sigmoid."""

    def __init__(self, *, ndf: int, nc: int, image_size: int, norm: str = "batch") -> None:
        super().__init__()
        spectral = norm == "spectral"  # spectral norm itself is added after init, see `build`
        layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        mult = 1
        for _ in range(_n_blocks(image_size)):
            layers += [
                nn.Conv2d(ndf * mult, ndf * mult * 2, 4, 2, 1, bias=False),
                nn.Identity() if spectral else nn.BatchNorm2d(ndf * mult * 2),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            mult *= 2
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 0, bias=False))
        self.main = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x).view(-1)


def build(cfg: Config) -> Nets:
    """{"G": Generator, "D": Discriminator}, both initialised N(0, 0.02) (BatchNorm weights N(1, 0.02))."""
    if not isinstance(cfg, Config):  # field values were already checked by Config.__post_init__
        raise TypeError(f"dcgan.build needs a dcgan.Config, got {type(cfg).__name__}")
    g = Generator(nz=cfg.nz, ngf=cfg.ngf, nc=cfg.channels, image_size=cfg.image_size)
    d = init_normal_(Discriminator(ndf=cfg.ndf, nc=cfg.channels, image_size=cfg.image_size, norm=cfg.d_norm), 0.02)
    if cfg.d_norm == "spectral":
        for conv in [m for m in d.modules() if isinstance(m, nn.Conv2d)]:
            nn.utils.parametrizations.spectral_norm(conv)
    return {"G": init_normal_(g, 0.02), "D": d}


build_optimizers = adam_g_and_d  # Adam for each network (paper: lr 2e-4, betas (0.5, 0.999))


def sample_latent(
    cfg: Config, n: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> Tensor:
    """n latents z ~ N(0, I), shape (n, nz, 1, 1)."""
    return torch.randn(n, cfg.nz, 1, 1, generator=generator, device=device)


def train_step(nets: Nets, opts: Optimizers, batch: Batch, cfg: Config) -> dict[str, Tensor]:
    """One DCGAN iteration, in the official example's order: update D on a real and a fake batch, then G.

    Paper -> code: G (generator) = nets["G"], D (discriminator) = nets["D"], x = batch["image"] (B, C, H, W)
    in [-1, 1], z = `z` ~ N(0, I) of size nz=100 (fresh each step, global RNG, on the batch's device),
    G(z) = `fake`. Hyperparameters (paper defaults): Adam lr 0.0002, β1 0.5, batch 128 (the loop's), weights
    N(0, 0.02), LeakyReLU slope 0.2; no λ weights (the optional R1 penalty's γ, `r1_gamma`, is 0 in the
    paper). With loss="bce" D maximises log D(x) + log(1 - D(G(z))) and G maximises log D(G(z)) (with
    `real_label` < 1, D's target for x is that instead of 1); "lsgan"/"hinge" swap both halves.

    D(real) and D(fake) run as two forward+backward passes, as in the official code: each forward is followed
    by its own backward, which DDP requires, and BatchNorm sees all-real and all-fake batches. In the G step
    D runs `frozen`: outside its DDP wrapper, without weight gradients (the official code computes and
    discards them).
    Returns detached scalars; no .item() here (a GPU sync point), the loop converts when it reports.
    """
    g_net, d_net = nets["G"], nets["D"]
    opt_g, opt_d = opts["G"], opts["D"]
    d_real_loss, d_fake_loss = losses.D_LOSS_TERMS[cfg.loss]
    g_loss_fn = losses.G_LOSSES[_G_LOSS[cfg.loss]]
    real = batch["image"]

    # (1) Update D: maximise log D(x) + log(1 - D(G(z))).
    opt_d.zero_grad(set_to_none=True)
    # (1a) ... on a real batch (+ the R1 penalty, when one is configured and due).
    it = iterations_done(opts)
    real_in = diff_augment(real, cfg.augment)
    real_logits = d_net(real_in)
    err_d_real = d_real_loss(real_logits)
    if cfg.real_label < 1.0:  # BCE against the target real_label: -(t log D(x) + (1 - t) log(1 - D(x)))
        err_d_real = cfg.real_label * err_d_real + (1.0 - cfg.real_label) * d_fake_loss(real_logits)
    # R1 through D's inner module, as StarGAN's gradient penalty: DDP supports only one forward per backward.
    r1 = losses.lazy_r1(getattr(d_net, "module", d_net), real_in, gamma=cfg.r1_gamma, every=cfg.r1_every,
                        iteration=it)
    (err_d_real if r1 is None else err_d_real + r1[0]).backward()
    # (1b) ... on a fake batch; G(z) is detached so this backward stops at D.
    z = torch.randn(real.shape[0], cfg.nz, 1, 1, device=real.device)
    fake = g_net(z)
    fake_logits = d_net(diff_augment(fake.detach(), cfg.augment))
    err_d_fake = d_fake_loss(fake_logits)
    err_d_fake.backward()
    opt_d.step()
    set_iterations_done(opts, it + 1)

    # (2) Update G: maximise log D(G(z)) (non-saturating), through the just-updated D.
    opt_g.zero_grad(set_to_none=True)
    with frozen(d_net) as d_fixed:
        g_logits = d_fixed(diff_augment(fake, cfg.augment))
    if cfg.g_topk < 1.0:  # top-k: the fakes D finds least realistic give G's worst gradients, so drop them
        g_logits = g_logits.topk(max(1, round(cfg.g_topk * g_logits.numel()))).values
    err_g = g_loss_fn(g_logits)
    err_g.backward()
    opt_g.step()

    out = {
        "loss/D": (err_d_real + err_d_fake).detach(),
        "loss/G": err_g.detach(),
        # sigmoid(logit) is D's probability for bce; for lsgan/hinge it is only a monotone score.
        "d/real_score": torch.sigmoid(real_logits.detach().float()).mean(),
        "d/fake_score": torch.sigmoid(fake_logits.detach().float()).mean(),
    }
    if r1 is not None:
        out["loss/D_r1"] = r1[1].detach()  # E||∇_x D(x)||², averaged by the loop over the steps that computed it
    return out


FAMILY = Family(
    name="dcgan",
    dataset_kind="images",
    config=Config,
    build=build,
    build_optimizers=build_optimizers,
    train_step=train_step,
    sample_latent=sample_latent,
    example_batch=noise_images_batch,
    generator_inputs=latent_only_inputs(sample_latent),
    generator="G",
)
