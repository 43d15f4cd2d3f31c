"""The original GAN (Goodfellow et al. 2014), MLP G and maxout D as in the paper's MNIST run.

Architecture and optimiser follow the authors' `goodfeli/adversarial` mnist.yaml. Departures, each kept small:
G ends in tanh because our images are scaled to [-1, 1] (the paper: sigmoid on [0, 1], its output bias set
from the data's pixel marginals, which a build without data cannot do, so biases start at 0); updates
alternate as in the paper's Algorithm 1 (the repo's pylearn2 code stepped D and G together from one set of
samples); the repo's momentum ramp 0.5 -> 0.7 over epochs 1-250 is not modelled (it needs the epoch length;
set `momentum` to follow it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import losses
from ._checks import in_unit_interval, one_of, positive
from .family import Batch, Family, Nets, Optimizers, latent_only_inputs, noise_images_batch
from .layers import Maxout, frozen


@dataclass(frozen=True, kw_only=True)
class Config:
    """Vanilla GAN hyperparameters; defaults reproduce mnist.yaml (28x28x1, batch 100 set by the loop)."""

    image_size: int = 28
    channels: int = 1
    nz: int = 100  # |z|
    z_dist: str = "uniform"  # "uniform": U(-√3, √3) per dim (unit variance) as the repo; or "normal"
    g_hidden: tuple[int, ...] = (1200, 1200)  # ReLU layers of G
    d_units: int = 240  # maxout units per D layer (two layers)
    d_pieces: int = 5  # linear pieces per maxout unit
    input_dropout: float = 0.2  # dropout on D's input pixels (repo: include prob 0.8, scale 1.25)
    dropout: float = 0.5  # dropout on the inputs of D's second maxout and output layers (include prob 0.5)
    g_loss: str = "nonsaturating"  # -log D(G(z)), what the repo trains; "minimax": log(1 - D(G(z))), eq. 1
    k: int = 1  # D steps per G step (Algorithm 1; the paper used k=1); the batch is split into k minibatches
    optimizer: str = "sgd"  # "sgd" (paper: SGD with momentum) or "adam"
    lr_g: float = 0.1  # repo: learning_rate 0.1
    lr_d: float = 0.05  # repo: 0.1 on a D objective scaled by 1/2, which is exactly 0.05 on d_loss_bce
    momentum: float = 0.5  # SGD momentum (repo: 0.5, ramped to 0.7 by epoch 250)
    beta1: float = 0.5  # Adam betas, used only when optimizer="adam"
    beta2: float = 0.999
    lr_decay: float = 1.000004  # lr /= lr_decay after every train_step (repo's ExponentialDecay); 1 = off
    min_lr: float = 1e-6  # floor of that decay
    g_init_range: float = 0.05  # G weights ~ U(-r, r), biases 0 (repo: irange .05)
    d_init_range: float = 0.005  # D weights ~ U(-r, r), biases 0 (repo: irange .005)

    def __post_init__(self) -> None:
        object.__setattr__(self, "g_hidden", tuple(self.g_hidden))  # a JSON round trip gives a list
        one_of("z_dist", self.z_dist, ("uniform", "normal"))
        one_of("g_loss", self.g_loss, ("nonsaturating", "minimax"))
        one_of("optimizer", self.optimizer, ("sgd", "adam"))
        positive(image_size=self.image_size, channels=self.channels, nz=self.nz, d_units=self.d_units,
                 d_pieces=self.d_pieces, k=self.k, lr_g=self.lr_g, lr_d=self.lr_d, min_lr=self.min_lr,
                 g_init_range=self.g_init_range, d_init_range=self.d_init_range)
        positive(**{f"g_hidden[{i}]": h for i, h in enumerate(self.g_hidden)})
        in_unit_interval(input_dropout=self.input_dropout, dropout=self.dropout, momentum=self.momentum,
                         beta1=self.beta1, beta2=self.beta2)
        if self.lr_decay < 1.0:
            raise ValueError(f"lr_decay must be >= 1 (1 turns the decay off), got {self.lr_decay!r}")


class Generator(nn.Module):
    """z (n, nz) -> image (n, C, H, W) in [-1, 1] through ReLU MLP layers and a tanh output."""

    def __init__(self, *, nz: int, hidden: tuple[int, ...], image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.image_shape = image_shape
        layers: list[nn.Module] = []
        width = nz
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers += [nn.Linear(width, math.prod(image_shape)), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.main(z).view(-1, *self.image_shape)


class Discriminator(nn.Module):
    """image (n, C, H, W) -> logits (n,) through two dropout+maxout layers and a linear output."""

    def __init__(
        self, *, in_features: int, units: int, pieces: int, input_dropout: float, dropout: float
    ) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(input_dropout),
            Maxout(in_features, units=units, pieces=pieces),
            nn.Dropout(dropout),
            Maxout(units, units=units, pieces=pieces),
            nn.Dropout(dropout),
            nn.Linear(units, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x).view(-1)


def _init_uniform_(module: nn.Module, r: float) -> nn.Module:
    # pylearn2's `irange`: every weight ~ U(-r, r), every bias 0.
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.uniform_(m.weight, -r, r)
            nn.init.zeros_(m.bias)
    return module


def build(cfg: Config) -> Nets:
    """{"G": Generator, "D": Discriminator} initialised as mnist.yaml (uniform, irange .05 / .005)."""
    if not isinstance(cfg, Config):  # field values were already checked by Config.__post_init__
        raise TypeError(f"vanilla.build needs a vanilla.Config, got {type(cfg).__name__}")
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    g = Generator(nz=cfg.nz, hidden=cfg.g_hidden, image_shape=shape)
    d = Discriminator(in_features=math.prod(shape), units=cfg.d_units, pieces=cfg.d_pieces,
                      input_dropout=cfg.input_dropout, dropout=cfg.dropout)
    return {"G": _init_uniform_(g, cfg.g_init_range), "D": _init_uniform_(d, cfg.d_init_range)}


def build_optimizers(cfg: Config, nets: Nets) -> Optimizers:
    """SGD with momentum (paper) or Adam, one per network."""
    def make(params, lr: float) -> torch.optim.Optimizer:
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum)
        return torch.optim.Adam(params, lr=lr, betas=(cfg.beta1, cfg.beta2))

    return {"G": make(nets["G"].parameters(), cfg.lr_g), "D": make(nets["D"].parameters(), cfg.lr_d)}


def sample_latent(
    cfg: Config, n: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> Tensor:
    """n latents of shape (n, nz): U(-√3, √3) (z_dist="uniform") or N(0, 1) ("normal"), both unit variance."""
    if cfg.z_dist == "uniform":
        u = torch.rand(n, cfg.nz, generator=generator, device=device)
        return (2.0 * u - 1.0) * math.sqrt(3.0)
    return torch.randn(n, cfg.nz, generator=generator, device=device)


def _decay_lr(opt: torch.optim.Optimizer, cfg: Config) -> None:
    # Python floats only (no GPU sync); the lr lives in param_groups, so it is saved with the optimizer state.
    for group in opt.param_groups:
        group["lr"] = max(group["lr"] / cfg.lr_decay, cfg.min_lr)


def train_step(nets: Nets, opts: Optimizers, batch: Batch, cfg: Config) -> dict[str, Tensor]:
    """One iteration of Algorithm 1: k discriminator updates, then one generator update.

    Paper -> code: G = nets["G"], D = nets["D"] (outputs a logit; D(x) in the paper is its sigmoid),
    x^(i) = rows of batch["image"] (B, C, H, W) in [-1, 1], z^(i) ~ p_g(z) = sample_latent (fresh each time,
    global RNG, batch device), m = B // k, k = cfg.k (paper: 1). The batch is split into k minibatches of
    m examples, one per D step, as Algorithm 1 samples a fresh minibatch for each. Hyperparameters (paper /
    mnist.yaml defaults): SGD lr 0.1 (D: 0.05, see Config), momentum 0.5, lr decay 1.000004 per step down to
    1e-6, dropout 0.2 on D's input and 0.5 inside D, batch 100; no λ weights.
    D(real) and D(fake) run as two forward+backward passes (each DDP forward gets its backward); fakes for
    the D steps are made under no_grad, so G's forward there builds no graph.
    Returns detached scalars averaged over the k D steps; no .item() here (a GPU sync point).
    """
    g_net, d_net = nets["G"], nets["D"]
    opt_g, opt_d = opts["G"], opts["D"]
    d_real_loss, d_fake_loss = losses.D_LOSS_TERMS["bce"]
    real_all = batch["image"]
    if real_all.shape[0] < cfg.k:
        raise ValueError(f"a batch of {real_all.shape[0]} cannot be split into k={cfg.k} D minibatches")
    minibatches = real_all.tensor_split(cfg.k)
    m = minibatches[0].shape[0]

    # (1) for k steps: ascend ∇_θd 1/m Σ [log D(x^(i)) + log(1 - D(G(z^(i))))].
    d_loss = real_score = fake_score = torch.zeros((), device=real_all.device)
    for real in minibatches:
        opt_d.zero_grad(set_to_none=True)
        # (1a) a minibatch of m examples x^(i) from the data (this slice of the batch) ...
        real_logits = d_net(real)
        err_real = d_real_loss(real_logits)
        err_real.backward()
        # (1b) ... and m noise samples z^(i) ~ p_g(z), through G without a graph.
        with torch.no_grad():
            fake = g_net(sample_latent(cfg, real.shape[0], device=real.device))
        fake_logits = d_net(fake)
        err_fake = d_fake_loss(fake_logits)
        err_fake.backward()
        opt_d.step()
        d_loss = d_loss + (err_real + err_fake).detach()
        real_score = real_score + torch.sigmoid(real_logits.detach().float()).mean()
        fake_score = fake_score + torch.sigmoid(fake_logits.detach().float()).mean()

    # (2) a fresh minibatch of m noise samples; descend ∇_θg 1/m Σ log(1 - D(G(z^(i)))) ("minimax"), or
    #     ascend log D(G(z^(i))) instead ("nonsaturating", the paper's sec. 3 advice and the repo's choice).
    opt_g.zero_grad(set_to_none=True)
    with frozen(d_net) as d_fixed:  # D's weights get no gradient here (and no DDP sync)
        err_g = losses.G_LOSSES[cfg.g_loss](d_fixed(g_net(sample_latent(cfg, m, device=real_all.device))))
    err_g.backward()
    opt_g.step()

    # (3) The repo's per-update learning-rate decay.
    _decay_lr(opt_d, cfg)
    _decay_lr(opt_g, cfg)

    return {
        "loss/D": d_loss / cfg.k,
        "loss/G": err_g.detach(),
        "d/real_score": real_score / cfg.k,
        "d/fake_score": fake_score / cfg.k,
    }


FAMILY = Family(
    name="vanilla",
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
