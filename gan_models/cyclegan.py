"""CycleGAN (Zhu et al. 2017, "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial Networks"),
as the official junyanz/pytorch-CycleGAN-and-pix2pix `models/cycle_gan_model.py` trains it with its defaults.

Paper -> code (official names in brackets): X = domain A = batch["a"], Y = domain B = batch["b"] (swapped when
direction="BtoA"); G: X -> Y [G_A] = nets["G"].G_A, F: Y -> X [G_B] = nets["G"].G_B; D_Y [D_A] = nets["D_A"]
tells real y from G(x); D_X [D_B] = nets["D_B"] tells real x from F(y). Objective (paper eq. 3):
L(G, F, D_X, D_Y) = L_GAN(G, D_Y, X, Y) + L_GAN(F, D_X, Y, X) + λ L_cyc(G, F), with least-squares GAN losses
(sec. 4: "lsgan"), L_cyc = λ_A ‖F(G(x)) - x‖_1 + λ_B ‖G(F(y)) - y‖_1, λ_A = `lambda_a` = 10, λ_B = `lambda_b`
= 10, plus the identity loss (sec. 5.2) L_idt = λ_idt (λ_B ‖G(y) - y‖_1 + λ_A ‖F(x) - x‖_1), λ_idt =
`lambda_identity` = 0.5. Each D is trained on a history of 50 generated images (sec. 4, Shrivastava et al.):
`ImagePool`. ResNet-9-block generators, 70x70 PatchGANs, instance norm, Adam lr 2e-4 β (0.5, 0.999), one
optimizer over G and F and one over D_X and D_Y, batch 1, weights N(0, 0.02), linear LR decay after 100 epochs.

Generator module: one module, `CycleGenerators`, holding both directions: forward(x) is G (X -> Y), forward(x,
"BtoA") is F. One module because the figure (x | G(x) | F(G(x)), and y | F(y) | G(F(y))), cycle-consistency
evaluation and an EMA all need both directions, and the official optimizer steps G and F together; its
submodules G_A/G_B load official `latest_net_G_A.pth` / `latest_net_G_B.pth` state dicts directly. Under DDP the
train step calls the wrapper (never a submodule), so gradients are all-reduced; every forward of it uses one
direction and the one backward reaches both.

Registered models (both directions usable from the registry): two plain one-input, one-output torch.export
(pt2) graphs, so each loads with `mlflow.pytorch.load_model` without pickle and is called as model(x) like any
other image-to-image model. `NAME` (default `cyclegan-DATASET`) is forward(x) = G, direction `direction`
(AtoB by default: dataset domain a -> b); `NAME-BtoA` (`NAME-AtoB` when direction="BtoA") is F = G_B, the module
`FAMILY.reverse_generator` returns. Each version carries its direction in its MLmodel metadata
(`ganpipe.direction`) and its partner in the version tag `ganpipe.partner` (NAME/VERSION of the other
direction, logged by the same run), which `ganpipe translate --direction` follows. Two graphs rather than one
with two outputs or a direction input: each call computes only the direction asked for, and the exported graph
needs no data-dependent branch.
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

DIRECTIONS = ("AtoB", "BtoA")


@dataclass(frozen=True, kw_only=True)
class Config:
    """CycleGAN options; defaults are the official train defaults for `--model cycle_gan` (official flag in [])."""

    image_size: int = 256  # [--crop_size] 256 (loaded at 286, randomly cropped: the data reader's job)
    channels: int = 3  # [--input_nc], [--output_nc] (both 3; the identity loss needs them equal)
    direction: str = "AtoB"  # [--direction] AtoB: X = batch["a"], Y = batch["b"]; BtoA swaps them
    g_arch: str = "resnet_9blocks"  # [--netG] resnet_9blocks, resnet_6blocks, unet_256, unet_128
    d_arch: str = "basic"  # [--netD] basic (70x70 PatchGAN), n_layers, pixel
    n_layers_d: int = 3  # [--n_layers_D], used when d_arch="n_layers"
    ngf: int = 64  # [--ngf]
    ndf: int = 64  # [--ndf]
    norm: str = "instance"  # [--norm] instance (affine=False), batch, none
    dropout: bool = False  # [not --no_dropout]; cycle_gan sets no_dropout=True
    init_type: str = "normal"  # [--init_type] normal, xavier, kaiming, orthogonal
    init_gain: float = 0.02  # [--init_gain]
    gan_mode: str = "lsgan"  # [--gan_mode] lsgan (MSE vs 1/0), vanilla, wgangp, hinge
    lambda_a: float = 10.0  # [--lambda_A] λ of the cycle loss x -> G -> F -> x
    lambda_b: float = 10.0  # [--lambda_B] λ of the cycle loss y -> F -> G -> y
    lambda_identity: float = 0.5  # [--lambda_identity] identity weight, relative to λ_A / λ_B; 0 = off
    lambda_gp: float = 10.0  # gradient-penalty weight, only with gan_mode="wgangp"
    pool_size: int = 50  # [--pool_size] generated images kept per D; 0 = no pool
    lr: float = 2e-4  # [--lr]
    beta1: float = 0.5  # [--beta1]
    beta2: float = 0.999  # Adam β2 (official: fixed 0.999)
    # Implementation, not a hyperparameter: True runs the same Adam update in torch's fused kernel (CPU and CUDA;
    # one pass over each tensor instead of one per operation), False the for-loop Adam the official code runs.
    fused_adam: bool = True
    lr_policy: str = "linear"  # [--lr_policy] linear, step, cosine (LR scheduler stepped once per epoch)
    n_epochs: int = 100  # [--n_epochs]
    n_epochs_decay: int = 100  # [--n_epochs_decay]
    lr_decay_iters: int = 50  # [--lr_decay_iters]
    epoch_count: int = 1  # [--epoch_count]
    eval_mode: bool = False  # [--eval] at test time (no effect with instance norm and no dropout)

    def __post_init__(self) -> None:
        check_g_arch(self.g_arch, self.image_size)
        one_of("direction", self.direction, DIRECTIONS)
        one_of("d_arch", self.d_arch, D_ARCHS)
        one_of("norm", self.norm, NORMS)
        one_of("init_type", self.init_type, INIT_TYPES)
        one_of("gan_mode", self.gan_mode, tuple(losses.GAN_CRITERIA))
        one_of("lr_policy", self.lr_policy, LR_POLICIES)
        positive(channels=self.channels, n_layers_d=self.n_layers_d, ngf=self.ngf, ndf=self.ndf, lr=self.lr,
                 init_gain=self.init_gain, n_epochs=self.n_epochs, lr_decay_iters=self.lr_decay_iters)
        for name in ("lambda_a", "lambda_b", "lambda_identity", "lambda_gp", "pool_size", "n_epochs_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        in_unit_interval(beta1=self.beta1, beta2=self.beta2)


class CycleGenerators(nn.Module):
    """G [G_A]: A -> B and F [G_B]: B -> A in one module; forward(x) = G(x), forward(x, "BtoA") = F(x)."""

    def __init__(self, g_a: nn.Module, g_b: nn.Module) -> None:
        super().__init__()
        self.G_A, self.G_B = g_a, g_b

    def forward(self, x: Tensor, direction: str = "AtoB") -> Tensor:
        if direction == "AtoB":
            return self.G_A(x)
        if direction == "BtoA":
            return self.G_B(x)
        raise ValueError(f"direction={direction!r} is not supported; valid: {', '.join(DIRECTIONS)}")


def reverse_generator(g: nn.Module) -> nn.Module:
    """F [G_B] of a CycleGenerators (the direction opposite to forward(x)), as a one-input module to export."""
    if not isinstance(g, CycleGenerators):
        raise TypeError(f"reverse_generator needs a CycleGenerators, got {type(g).__name__}")
    return g.G_B


class ImagePool:
    """A history of generated images (Shrivastava et al. 2017), with the official `ImagePool.query` rule.

    Image by image: while fewer than `size` are stored, the image is stored and returned; afterwards, with
    probability 1/2 a uniformly chosen stored image is returned and replaced by the new one, else the new image
    is returned. size 0 returns its input. Images are stored detached, on the device of the last query. Its
    random draws come from its own CPU torch.Generator (no GPU sync, not the global RNG); `state_dict` holds the
    stored images and the generator state, tensors only, so it loads with `torch.load(weights_only=True)`.
    """

    def __init__(self, size: int = 50, *, seed: int = 0) -> None:
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        self.size = size
        self.generator = torch.Generator().manual_seed(seed)
        self.images: Tensor | None = None  # (size, C, H, W), allocated at the first query; rows [:count] in use
        self.count = 0

    def __len__(self) -> int:
        return self.count

    @torch.no_grad()
    def query(self, images: Tensor) -> Tensor:
        if self.size == 0:
            return images
        images = images.detach()
        if self.images is None:
            self.images = images.new_empty((self.size, *images.shape[1:]))
        elif self.images.device != images.device or self.images.dtype != images.dtype:
            self.images = self.images.to(images.device, images.dtype)
        out = []
        for image in images:
            if self.count < self.size:  # fill the pool: store and return the new image
                self.images[self.count] = image
                self.count += 1
                out.append(image)
            elif torch.rand((), generator=self.generator) > 0.5:  # return an old image, store the new one
                i = int(torch.randint(self.size, (), generator=self.generator))
                out.append(self.images[i].clone())
                self.images[i] = image
            else:  # return the new image
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict[str, Tensor]:
        stored = self.images[: self.count].clone() if self.images is not None else torch.empty(0)
        return {"images": stored, "rng": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        stored = state["images"]
        if len(stored) > self.size:
            raise ValueError(f"pool state holds {len(stored)} images, more than its size {self.size}")
        self.count = len(stored)
        self.images = None
        if self.count:
            self.images = stored.new_empty((self.size, *stored.shape[1:]))
            self.images[: self.count] = stored
        self.generator.set_state(state["rng"])


def build(cfg: Config) -> Nets:
    """{"G": CycleGenerators(G_A, G_B), "D_A": D_Y, "D_B": D_X}, each network initialised as `init_type`."""
    if not isinstance(cfg, Config):
        raise TypeError(f"cyclegan.build needs a cyclegan.Config, got {type(cfg).__name__}")
    init = dict(init_type=cfg.init_type, init_gain=cfg.init_gain)

    def g() -> nn.Module:
        return define_g(cfg.g_arch, cfg.channels, cfg.channels, ngf=cfg.ngf, norm=cfg.norm, dropout=cfg.dropout,
                        **init)

    def d() -> nn.Module:
        return define_d(cfg.d_arch, cfg.channels, ndf=cfg.ndf, n_layers=cfg.n_layers_d, norm=cfg.norm, **init)

    return {"G": CycleGenerators(g(), g()), "D_A": d(), "D_B": d()}


def build_optimizers(cfg: Config, nets: Nets) -> Optimizers:
    """Adam over G and F together ("G"), Adam over D_Y and D_X together ("D"); lr 2e-4, β (0.5, 0.999)."""
    betas, fused = (cfg.beta1, cfg.beta2), cfg.fused_adam or None  # None: torch's default implementation
    d_params = [*nets["D_A"].parameters(), *nets["D_B"].parameters()]
    return {
        "G": torch.optim.Adam(nets["G"].parameters(), lr=cfg.lr, betas=betas, fused=fused),
        "D": torch.optim.Adam(d_params, lr=cfg.lr, betas=betas, fused=fused),
    }


def extra_state(cfg: Config, opts: Optimizers, *, seed: int = 0) -> dict[str, Any]:
    """The two image pools and the two LR schedulers, each with state_dict/load_state_dict.

    "pool_fake_B" holds G(x) for D_Y [fake_B_pool], "pool_fake_A" holds F(y) for D_X [fake_A_pool]; their draws
    are seeded from `seed` (give each DDP rank its own). "scheduler_G"/"scheduler_D" are stepped once per epoch
    by the caller (`family.step_schedulers`), never by train_step.
    """
    kw = dict(policy=cfg.lr_policy, n_epochs=cfg.n_epochs, n_epochs_decay=cfg.n_epochs_decay,
              lr_decay_iters=cfg.lr_decay_iters, epoch_count=cfg.epoch_count)
    return {
        "pool_fake_B": ImagePool(cfg.pool_size, seed=2 * seed),
        "pool_fake_A": ImagePool(cfg.pool_size, seed=2 * seed + 1),
        "scheduler_G": build_scheduler(opts["G"], **kw),
        "scheduler_D": build_scheduler(opts["D"], **kw),
    }


def _domains(batch: Batch, cfg: Config) -> tuple[Tensor, Tensor]:
    return (batch["a"], batch["b"]) if cfg.direction == "AtoB" else (batch["b"], batch["a"])


def example_batch(
    cfg: Config, n: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> dict[str, Tensor]:
    """A synthetic `unpaired` batch: independent noise images "a" and "b" in [-1, 1] and labels 0."""
    shape = (n, cfg.channels, cfg.image_size, cfg.image_size)
    out = {k: torch.rand(shape, generator=generator, device=device) * 2 - 1 for k in ("a", "b")}
    zeros = torch.zeros(n, dtype=torch.long, device=device)
    return {**out, "label_a": zeros, "label_b": zeros.clone()}


def generator_inputs(
    cfg: Config, batch: Batch | None, n: int, *, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Tensor]:
    """(x,): the first n images of domain X (batch["a"]; ["b"] for BtoA), the input of forward(x) = G(x)."""
    if batch is None:
        batch = example_batch(cfg, n, generator=generator, device=device)
    return (_domains(batch, cfg)[0][:n].to(device),)


@torch.no_grad()
def sample_grid(g: nn.Module, batch: Batch, cfg: Config, generator: torch.Generator | None = None) -> Tensor:
    """Rows x | G(x) | F(G(x)) for every x of the batch, then y | F(y) | G(F(y)); CPU, [-1, 1], G in test mode.

    `generator` seeds a fork of the global RNG (only dropout, off by default, draws from it)."""
    device = next(g.parameters()).device
    real_a, real_b = (t.to(device) for t in _domains(batch, cfg))
    seed = int(torch.randint(2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            inference(g, eval_mode=cfg.eval_mode):
        torch.manual_seed(seed)
        fake_b = g(real_a, "AtoB")
        fake_a = g(real_b, "BtoA")
        rows = [real_a, fake_b, g(fake_b, "BtoA"), real_b, fake_a, g(fake_a, "AtoB")]
    n = real_a.shape[0]
    images = torch.stack(rows, dim=1).reshape(n, 2, 3, *real_a.shape[1:]).transpose(0, 1).flatten(0, 2)
    return make_grid(images.float().cpu().clamp(-1, 1), nrow=3)


def train_step(
    nets: Nets, opts: Optimizers, batch: Batch, cfg: Config, *, extra: Mapping[str, Any]
) -> dict[str, Tensor]:
    """One CycleGAN iteration in the official `optimize_parameters` order: forward, update G and F with D_X
    and D_Y frozen, then update D_Y and D_X (each on a pooled fake).

    D losses are the official 1/2 (ℓ(D(real), 1) + ℓ(D(fake), 0)), each half its own forward+backward (DDP-safe,
    the same gradient). `extra` is `extra_state(cfg, opts)`: the pools are queried here; the schedulers are
    not touched. gan_mode="wgangp" adds λ_gp · gradient penalty to each D (the official models never call
    cal_gradient_penalty). Returns detached scalars; no .item() on device tensors (a GPU sync point).
    """
    g, d_a, d_b = nets["G"], nets["D_A"], nets["D_B"]
    opt_g, opt_d = opts["G"], opts["D"]
    d_real_loss, d_fake_loss, g_gan_loss = losses.GAN_CRITERIA[cfg.gan_mode]
    real_a, real_b = _domains(batch, cfg)
    lambda_a, lambda_b, lambda_idt = cfg.lambda_a, cfg.lambda_b, cfg.lambda_identity

    # (0) Forward both cycles: x -> G(x) -> F(G(x)), y -> F(y) -> G(F(y)).
    fake_b = g(real_a, "AtoB")  # G(x)
    rec_a = g(fake_b, "BtoA")  # F(G(x))
    fake_a = g(real_b, "BtoA")  # F(y)
    rec_b = g(fake_a, "AtoB")  # G(F(y))

    # (1) Update G and F, D_Y and D_X frozen: L_GAN(G, D_Y) + L_GAN(F, D_X) + L_cyc + L_idt  (eq. 3 + sec. 5.2).
    opt_g.zero_grad(set_to_none=True)
    zero = real_a.new_zeros((), dtype=torch.float32)
    loss_idt_a = loss_idt_b = zero
    if lambda_idt > 0:
        # (1a) Identity: λ_idt λ_B ‖G(y) - y‖_1 + λ_idt λ_A ‖F(x) - x‖_1.
        loss_idt_a = F.l1_loss(g(real_b, "AtoB"), real_b) * lambda_b * lambda_idt
        loss_idt_b = F.l1_loss(g(real_a, "BtoA"), real_a) * lambda_a * lambda_idt
    # (1b) Adversarial (least squares): E[(D_Y(G(x)) - 1)^2] + E[(D_X(F(y)) - 1)^2]  (eq. 1, sec. 4).
    with frozen(d_a) as d_y, frozen(d_b) as d_x:
        loss_g_a = g_gan_loss(d_y(fake_b))
        loss_g_b = g_gan_loss(d_x(fake_a))
    # (1c) Cycle consistency: λ_A ‖F(G(x)) - x‖_1 + λ_B ‖G(F(y)) - y‖_1  (eq. 2).
    loss_cycle_a = F.l1_loss(rec_a, real_a) * lambda_a
    loss_cycle_b = F.l1_loss(rec_b, real_b) * lambda_b
    loss_g = loss_g_a + loss_g_b + loss_cycle_a + loss_cycle_b + loss_idt_a + loss_idt_b
    loss_g.backward()
    opt_g.step()

    # (2) Update D_Y and D_X: min 1/2 [ℓ(D(real), 1) + ℓ(D(pooled fake), 0)] each.
    opt_d.zero_grad(set_to_none=True)
    d_out = {}
    for name, d_net, real, fake, pool in (
        ("A", d_a, real_b, fake_b, extra["pool_fake_B"]),  # D_Y: y vs G(x)
        ("B", d_b, real_a, fake_a, extra["pool_fake_A"]),  # D_X: x vs F(y)
    ):
        fake = pool.query(fake.detach())
        pred_real = d_net(real)
        loss_real = d_real_loss(pred_real)
        (0.5 * loss_real).backward()
        pred_fake = d_net(fake)
        loss_fake = d_fake_loss(pred_fake)
        loss_d = 0.5 * (loss_real + loss_fake).detach()
        if cfg.gan_mode == "wgangp":  # with the fake half's backward: alone it leaves D's last bias without grad
            penalty = cfg.lambda_gp * losses.gradient_penalty(d_net, real, fake)
            loss_fake = loss_fake + 2.0 * penalty
            loss_d = loss_d + penalty.detach()
        (0.5 * loss_fake).backward()
        d_out[name] = (loss_d, torch.sigmoid(pred_real.detach().float()).mean(),
                       torch.sigmoid(pred_fake.detach().float()).mean())
    opt_d.step()

    return {
        "loss/D": d_out["A"][0] + d_out["B"][0],
        "loss/D_A": d_out["A"][0],
        "loss/D_B": d_out["B"][0],
        "loss/G": loss_g.detach(),
        "loss/G_A": loss_g_a.detach(),
        "loss/G_B": loss_g_b.detach(),
        "loss/cycle_A": loss_cycle_a.detach(),
        "loss/cycle_B": loss_cycle_b.detach(),
        "loss/idt_A": loss_idt_a.detach(),
        "loss/idt_B": loss_idt_b.detach(),
        # Mean sigmoid of both D's outputs on real and on (pooled) fake inputs: a monotone score for lsgan.
        "d/real_score": 0.5 * (d_out["A"][1] + d_out["B"][1]),
        "d/fake_score": 0.5 * (d_out["A"][2] + d_out["B"][2]),
    }


FAMILY = Family(
    name="cyclegan",
    dataset_kind="unpaired",
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
    reverse_generator=reverse_generator,
)
