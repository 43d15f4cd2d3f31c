"""The GAN losses against their closed forms on hand-picked logits."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from gan_models import losses

R = [2.0, -1.0, 0.5, 0.0]  # real logits
F = [-3.0, 0.0, 1.0, 4.0]  # fake logits


def t(xs: list[float]) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def mean(xs) -> torch.Tensor:
    xs = list(xs)
    return torch.tensor(sum(xs) / len(xs), dtype=torch.float64)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_d_loss_bce_is_minus_log_d_real_minus_log_one_minus_d_fake():
    expected = mean(-math.log(sigmoid(r)) for r in R) + mean(-math.log(1 - sigmoid(f)) for f in F)
    assert_close(losses.d_loss_bce(t(R), t(F)), expected)
    # ... which is PyTorch's BCE-with-logits against labels 1 and 0.
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    ones, zeros = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    assert_close(losses.d_loss_bce(t(R), t(F)), bce(t(R), ones) + bce(t(F), zeros))


def test_generator_losses_closed_forms():
    assert_close(losses.g_loss_minimax(t(F)), mean(math.log(1 - sigmoid(f)) for f in F))
    assert_close(losses.g_loss_nonsaturating(t(F)), mean(-math.log(sigmoid(f)) for f in F))
    assert_close(losses.g_loss_lsgan(t(F)), mean(0.5 * (f - 1) ** 2 for f in F))
    assert_close(losses.g_loss_hinge(t(F)), mean(-f for f in F))
    assert_close(losses.g_loss_wgan(t(F)), mean(-f for f in F))


def test_discriminator_losses_closed_forms():
    lsgan = mean(0.5 * (r - 1) ** 2 for r in R) + mean(0.5 * f**2 for f in F)
    assert_close(losses.d_loss_lsgan(t(R), t(F)), lsgan)
    assert_close(
        losses.d_loss_hinge(t(R), t(F)), mean(max(0.0, 1 - r) for r in R) + mean(max(0.0, 1 + f) for f in F)
    )
    assert_close(losses.d_loss_wgan(t(R), t(F)), mean(F) - mean(R))


def test_softplus_forms_stay_finite_for_extreme_logits():
    big = t([-200.0, 200.0])
    for fn in (losses.g_loss_minimax, losses.g_loss_nonsaturating):
        assert torch.isfinite(fn(big))
    assert torch.isfinite(losses.d_loss_bce(big, big))
    assert_close(losses.g_loss_nonsaturating(t([-200.0])), t([200.0])[0])


def test_minimax_saturates_where_nonsaturating_does_not():
    # When D confidently rejects a fake (logit -10), log(1 - D) has almost no gradient; -log D has ~ -1.
    f = t([-10.0]).requires_grad_(True)
    (g_minimax,) = torch.autograd.grad(losses.g_loss_minimax(f), f)
    (g_nonsat,) = torch.autograd.grad(losses.g_loss_nonsaturating(f), f)
    assert abs(g_minimax.item()) < 1e-4
    assert_close(g_nonsat, t([-sigmoid(10.0)]))


@pytest.mark.parametrize("name", sorted(losses.D_LOSSES))
def test_d_loss_is_the_sum_of_its_real_and_fake_terms(name: str):
    real_term, fake_term = losses.D_LOSS_TERMS[name]
    assert_close(losses.D_LOSSES[name](t(R), t(F)), real_term(t(R)) + fake_term(t(F)))


def test_registries_name_every_loss():
    assert set(losses.D_LOSSES) == set(losses.D_LOSS_TERMS) == {"bce", "lsgan", "hinge", "wgan"}
    assert set(losses.G_LOSSES) == {"nonsaturating", "minimax", "lsgan", "hinge", "wgan"}


def test_half_precision_logits_reduce_in_float32():
    out = losses.d_loss_bce(t(R).bfloat16(), t(F).bfloat16())
    assert out.dtype == torch.float32


def test_gradient_penalty_of_a_linear_critic_is_norm_minus_one_squared():
    # D(x) = <w, x>: ∇_x D = w everywhere, so GP = (||w|| - 1)^2 whatever the interpolates.
    torch.manual_seed(0)
    w = torch.tensor([3.0, 0.0, 4.0, 0.0, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    real, fake = torch.randn(5, 2, 3, dtype=torch.float64), torch.randn(5, 2, 3, dtype=torch.float64)
    gp = losses.gradient_penalty(lambda x: x.flatten(1) @ w, real, fake)
    norm = math.sqrt(9 + 16 + 1 + 4)
    assert_close(gp, torch.tensor((norm - 1) ** 2, dtype=torch.float64))
    # create_graph=True: the penalty is differentiable in D's parameters, d/dw = 2(||w|| - 1) w / ||w||.
    gp.backward()
    assert_close(w.grad, 2 * (norm - 1) * w.detach() / norm)


def test_gradient_penalty_norm_is_per_sample_over_all_non_batch_dims():
    # D(x) = sum(x^2) / 2 per sample: ∇ = x̂; with real == fake, x̂ = real whatever ε is.
    x = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[3.0, 4.0], [0.0, 0.0]]], dtype=torch.float64)
    gp = losses.gradient_penalty(lambda v: 0.5 * v.square().flatten(1).sum(1), x, x.clone())
    assert_close(gp, mean([(1.0 - 1) ** 2, (5.0 - 1) ** 2]))


def test_r1_penalty_is_the_mean_squared_input_gradient_norm_and_trains_d():
    # D(x) = <w, x>: ∇_x D = w, so R1 = ||w||^2 for every sample; d/dw = 2w.
    w = torch.tensor([3.0, 0.0, 4.0, 1.0], dtype=torch.float64, requires_grad=True)
    real = torch.randn(5, 2, 2, dtype=torch.float64)
    r1 = losses.r1_penalty(lambda x: x.flatten(1) @ w, real)
    assert_close(r1, torch.tensor(26.0, dtype=torch.float64))
    r1.backward()
    assert_close(w.grad, 2 * w.detach())
    # D(x) = sum(x^2) / 2 per sample: ∇ = x, so R1 = mean of ||x||^2 over samples (1 and 25).
    x = torch.tensor([[1.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    assert_close(losses.r1_penalty(lambda v: 0.5 * v.square().sum(1), x), mean([1.0, 25.0]))


def test_gradient_penalty_draws_eps_from_the_given_generator():
    real, fake = torch.randn(4, 3), torch.randn(4, 3)

    def critic(v: torch.Tensor) -> torch.Tensor:
        return v.square().sum(1)  # gradient depends on where x̂ lies

    def gp(seed: int) -> torch.Tensor:
        return losses.gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(gp(1), gp(1))
    assert not torch.equal(gp(1), gp(2))


def test_i2i_gan_criteria_are_the_official_ganloss():
    # junyanz GANLoss: vanilla = BCEWithLogitsLoss vs 1/0, lsgan = MSELoss vs 1/0 (no 1/2), wgangp = ∓mean;
    # hinge is the SNGAN hinge. The G term scores fakes as real (hinge/wgangp: -mean).
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    mse = torch.nn.functional.mse_loss
    ones, zeros = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    expected = {
        "vanilla": (bce(t(R), ones), bce(t(F), zeros), bce(t(F), ones)),
        "lsgan": (mean((r - 1) ** 2 for r in R), mean(f**2 for f in F), mean((f - 1) ** 2 for f in F)),
        "wgangp": (-mean(R), mean(F), -mean(F)),
        "hinge": (mean(max(0.0, 1 - r) for r in R), mean(max(0.0, 1 + f) for f in F), -mean(F)),
    }
    assert set(losses.GAN_CRITERIA) == set(expected)
    for name, (real, fake, gen) in expected.items():
        d_real, d_fake, g = losses.GAN_CRITERIA[name]
        assert_close(d_real(t(R)), real, msg=name)
        assert_close(d_fake(t(F)), fake, msg=name)
        assert_close(g(t(F)), gen, msg=name)
    assert_close(losses.GAN_CRITERIA["lsgan"][0](t(R)), mse(t(R), ones))
    # A PatchGAN's logits (N, 1, h, w) average over every patch.
    patches = torch.arange(8.0, dtype=torch.float64).reshape(2, 1, 2, 2)
    assert_close(losses.GAN_CRITERIA["lsgan"][1](patches), patches.square().mean())


def test_mode_seeking_is_the_inverse_of_image_distance_over_latent_distance():
    z1, z2 = torch.zeros(2, 4), torch.full((2, 4), 2.0)  # mean |z1 - z2| = 2
    a, b = torch.zeros(2, 1, 3, 3), torch.full((2, 1, 3, 3), 0.5)  # mean |a - b| = 0.5
    assert_close(losses.mode_seeking(a, b, z1, z2), torch.tensor(1 / (0.25 + 1e-5)))
    # A generator that ignores z is what the term punishes: identical images give 1 / eps.
    assert float(losses.mode_seeking(a, a, z1, z2)) == pytest.approx(1e5)
    a.requires_grad_(True)
    losses.mode_seeking(a, b, z1, z2).backward()
    assert float(a.grad.sum()) > 0  # lowering it pushes a away from b (a < b)
