"""GAN objectives as pure functions of discriminator logits (means over the batch); none calls backward.

Every loss works on raw logits through softplus or squares, never sigmoid followed by BCE, so it is safe under
autocast; half-precision logits are promoted to float32 before reducing.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

LogitLoss = Callable[[Tensor], Tensor]

# True while a penalty runs its critic pass, whose graph is differentiated twice (create_graph=True). A compiled
# network (pipelines/engine/compiled.py) reads it and runs that pass eagerly: AOT-compiled graphs have no double
# backward.
_DOUBLE_BACKWARD = contextvars.ContextVar("gan_models_double_backward", default=False)


@contextlib.contextmanager
def double_backward_pass() -> Iterator[None]:
    """Marks the forward passes inside as ones whose gradients will be differentiated again."""
    token = _DOUBLE_BACKWARD.set(True)
    try:
        yield
    finally:
        _DOUBLE_BACKWARD.reset(token)


def in_double_backward_pass() -> bool:
    return _DOUBLE_BACKWARD.get()


def _f32(x: Tensor) -> Tensor:
    # bf16/fp16 means over a large batch lose digits; float32/float64 inputs are left as they are.
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# --- the D loss of each name, split into its real and fake halves -------------------------------------
# Families that run D(real) and D(fake) as two forward+backward passes (official DCGAN, and DDP-friendly)
# backpropagate the halves separately; d_loss_* below is always real half + fake half.


def _bce_real(r: Tensor) -> Tensor:  # -log D(x)
    return F.softplus(-_f32(r)).mean()


def _bce_fake(f: Tensor) -> Tensor:  # -log(1 - D(G(z)))
    return F.softplus(_f32(f)).mean()


def _lsgan_real(r: Tensor) -> Tensor:  # 1/2 E[(D(x) - b)^2], b = 1
    return 0.5 * (_f32(r) - 1.0).square().mean()


def _lsgan_fake(f: Tensor) -> Tensor:  # 1/2 E[(D(G(z)) - a)^2], a = 0
    return 0.5 * _f32(f).square().mean()


def _hinge_real(r: Tensor) -> Tensor:
    return F.relu(1.0 - _f32(r)).mean()


def _hinge_fake(f: Tensor) -> Tensor:
    return F.relu(1.0 + _f32(f)).mean()


def _wgan_real(r: Tensor) -> Tensor:
    return -_f32(r).mean()


def _wgan_fake(f: Tensor) -> Tensor:
    return _f32(f).mean()


D_LOSS_TERMS: dict[str, tuple[LogitLoss, LogitLoss]] = {
    "bce": (_bce_real, _bce_fake),
    "lsgan": (_lsgan_real, _lsgan_fake),
    "hinge": (_hinge_real, _hinge_fake),
    "wgan": (_wgan_real, _wgan_fake),
}


# --- discriminator losses ------------------------------------------------------------------------------


def d_loss_bce(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """-log D(x) - log(1 - D(G(z))), Goodfellow et al. 2014 eq. 1 negated (D maximises V)."""
    return _bce_real(real_logits) + _bce_fake(fake_logits)


def d_loss_lsgan(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Mao et al. 2017 eq. 2 with a=0, b=1 and its 1/2 factors: 1/2 E[(D(x)-1)^2] + 1/2 E[D(G(z))^2].

    CycleGAN's code computes the same D loss ((mse_real + mse_fake) * 0.5); its G loss is 2x g_loss_lsgan.
    """
    return _lsgan_real(real_logits) + _lsgan_fake(fake_logits)


def d_loss_hinge(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """E[relu(1 - D(x))] + E[relu(1 + D(G(z)))] (Lim & Ye 2017; SNGAN, SAGAN)."""
    return _hinge_real(real_logits) + _hinge_fake(fake_logits)


def d_loss_wgan(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Critic loss E[D(G(z))] - E[D(x)] (Arjovsky et al. 2017); pair it with gradient_penalty or clipping."""
    return _wgan_real(real_logits) + _wgan_fake(fake_logits)


# --- generator losses ----------------------------------------------------------------------------------


def g_loss_minimax(fake_logits: Tensor) -> Tensor:
    """log(1 - D(G(z))), the G term of eq. 1 as written; its gradient vanishes when D rejects fakes."""
    return -F.softplus(_f32(fake_logits)).mean()


def g_loss_nonsaturating(fake_logits: Tensor) -> Tensor:
    """-log D(G(z)), the paper's practical alternative (sec. 3) and what every official code trains."""
    return F.softplus(-_f32(fake_logits)).mean()


def g_loss_lsgan(fake_logits: Tensor) -> Tensor:
    """1/2 E[(D(G(z)) - c)^2] with c = 1 (Mao et al. eq. 2)."""
    return 0.5 * (_f32(fake_logits) - 1.0).square().mean()


def g_loss_hinge(fake_logits: Tensor) -> Tensor:
    """-E[D(G(z))], the G side of the hinge loss."""
    return -_f32(fake_logits).mean()


def g_loss_wgan(fake_logits: Tensor) -> Tensor:
    """-E[D(G(z))], the G side of WGAN / WGAN-GP."""
    return -_f32(fake_logits).mean()


D_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "bce": d_loss_bce,
    "lsgan": d_loss_lsgan,
    "hinge": d_loss_hinge,
    "wgan": d_loss_wgan,
}
G_LOSSES: dict[str, LogitLoss] = {
    "nonsaturating": g_loss_nonsaturating,
    "minimax": g_loss_minimax,
    "lsgan": g_loss_lsgan,
    "hinge": g_loss_hinge,
    "wgan": g_loss_wgan,
}


def gradient_penalty(
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    *,
    generator: torch.Generator | None = None,
    eps: Tensor | None = None,
) -> Tensor:
    """E[(||∇_x̂ D(x̂)||_2 - 1)^2] at x̂ = ε x + (1 - ε) x̃, ε ~ U[0, 1] per sample (Gulrajani et al. 2017).

    The norm is per sample over all non-batch dims; a critic with several outputs per sample (a PatchGAN)
    is differentiated through their sum, as StarGAN's code does. `real` and `fake` are detached here: the
    penalty trains D only. The graph is kept (create_graph=True) so the caller can backpropagate it;
    λ_gp is the caller's. `generator` draws ε (on its own device, then moved); or pass `eps` (shape (B,)) to
    fix the draw, e.g. so a batch split across processes sees the same ε as one process on the whole batch.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real and fake shapes differ: {tuple(real.shape)} vs {tuple(fake.shape)}")
    eps_shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    if eps is None:
        eps_device = generator.device if generator is not None else real.device
        eps = torch.rand(eps_shape, generator=generator, device=eps_device)
    elif eps.shape != (real.shape[0],):
        raise ValueError(f"eps must have shape ({real.shape[0]},), got {tuple(eps.shape)}")
    eps = eps.reshape(eps_shape).to(real.device, real.dtype)
    x_hat = (eps * real.detach() + (1.0 - eps) * fake.detach()).requires_grad_(True)
    with double_backward_pass():
        out = critic(x_hat)
    (grad,) = torch.autograd.grad(outputs=out.sum(), inputs=x_hat, create_graph=True)
    norm = _f32(grad).flatten(1).norm(2, dim=1)
    return (norm - 1.0).square().mean()


def r1_penalty(critic: Callable[[Tensor], Tensor], real: Tensor) -> Tensor:
    """E[||∇_x D(x)||_2^2] on real samples only (Mescheder et al. 2018; the R1 term is γ/2 times this).

    Pushes D's gradient to zero on the data, which makes the non-saturating GAN converge locally instead of
    circling. Per sample over all non-batch dims; `real` is detached here (the penalty trains D only) and the
    graph is kept (create_graph=True) for the caller's backward. γ is the caller's.
    """
    x = real.detach().requires_grad_(True)
    with double_backward_pass():
        out = critic(x)
    (grad,) = torch.autograd.grad(outputs=out.sum(), inputs=x, create_graph=True)
    return _f32(grad).flatten(1).square().sum(1).mean()


def lazy_r1(critic: Callable[[Tensor], Tensor], real: Tensor, *, gamma: float, every: int,
            iteration: int) -> tuple[Tensor, Tensor] | None:
    """(γ/2 · every · R1, R1) on iterations that are multiples of `every`, None on the others and when γ is 0:
    lazy regularisation (Karras et al. 2020), which scales the penalty up by the interval it skips."""
    if gamma <= 0 or iteration % every:
        return None
    r1 = r1_penalty(critic, real)
    return gamma / 2 * every * r1, r1


def mode_seeking(images_1: Tensor, images_2: Tensor, z_1: Tensor, z_2: Tensor, *, eps: float = 1e-5) -> Tensor:
    """MSGAN's term to minimise (Mao et al. 2019): 1 / (mean |G(z1, c) - G(z2, c)| / mean |z1 - z2| + eps), for
    pairs drawn with the same condition c. It grows without bound as G's output stops depending on z."""
    ratio = _f32((images_1 - images_2).abs().mean()) / _f32((z_1 - z_2).abs().mean())
    return 1.0 / (ratio + eps)


# --- the image-to-image families' criterion: the official junyanz GANLoss(gan_mode)(prediction, is_real) ----
# Means over every element, so a PatchGAN's (N, 1, h, w) logits average over patches too. Each entry is
# (D term for real inputs, D term for fake inputs, G term on fakes). Scales are the official ones, which differ
# from the split above: lsgan is nn.MSELoss against 1/0 without a 1/2 (so the G term is 2x g_loss_lsgan), and
# the families, not these functions, apply the official x0.5 to the D sum. "hinge" is not in the official
# GANLoss; it is the SNGAN/SAGAN hinge. "wgangp" is the official critic loss; the penalty is the caller's.


def _mse_real(r: Tensor) -> Tensor:  # nn.MSELoss()(pred, 1)
    return (_f32(r) - 1.0).square().mean()


def _mse_fake(f: Tensor) -> Tensor:  # nn.MSELoss()(pred, 0)
    return _f32(f).square().mean()


GAN_CRITERIA: dict[str, tuple[LogitLoss, LogitLoss, LogitLoss]] = {
    "vanilla": (_bce_real, _bce_fake, _bce_real),  # BCEWithLogits vs 1 / 0; G: vs 1 (non-saturating)
    "lsgan": (_mse_real, _mse_fake, _mse_real),  # MSE vs 1 / 0; G: MSE vs 1
    "wgangp": (_wgan_real, _wgan_fake, _wgan_real),  # -E[D(x)] / E[D(x̃)]; G: -E[D(x̃)]
    "hinge": (_hinge_real, _hinge_fake, g_loss_hinge),  # relu(1 - D(x)) / relu(1 + D(x̃)); G: -E[D(x̃)]
}
