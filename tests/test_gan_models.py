"""Conformance of every registered GAN family on tiny seeded configs, paper parameter counts, latent tools."""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch
import torch.nn.functional as F

import gan_models
from gan_models import FAMILIES, dcgan, get_family, interpolate, lerp, losses, make_grid, slerp, vanilla
from gan_models.layers import Maxout, count_parameters, init_normal_

# Every registered family needs a tiny config here (a new family fails test_every_family_has_a_tiny_config).
TINY = {
    "vanilla": dict(image_size=8, channels=1, nz=8, g_hidden=(16, 16), d_units=8, d_pieces=3),
    "dcgan": dict(image_size=32, channels=1, nz=16, ngf=8, ndf=8),
    "pix2pix": dict(image_size=128, channels=1, g_arch="unet_128", ngf=4, ndf=4),
    "cyclegan": dict(image_size=32, channels=1, g_arch="resnet_6blocks", ngf=4, ndf=4),
    "stargan": dict(image_size=16, c_dim=3, g_conv_dim=4, d_conv_dim=4, g_repeat_num=1, d_repeat_num=3, n_critic=1),
    "text2img": dict(image_size=32, nz=8, emb_dim=12, proj_dim=6, ngf=4, ndf=4),
}
BAD = {
    "vanilla": dict(g_loss="wasserstein"),
    "dcgan": dict(image_size=48),
    "pix2pix": dict(g_arch="unet_512"),
    "cyclegan": dict(gan_mode="wgan"),
    "stargan": dict(label_mode="soft"),
    "text2img": dict(image_size=48),
}


def tiny_batch(family, cfg, n: int = 4) -> dict[str, torch.Tensor]:
    """The family's synthetic batch, seeded (for images: uniform noise in [-1, 1], label 0)."""
    return family.example_batch(cfg, n, generator=torch.Generator().manual_seed(123))


def one_step(name: str, seed: int = 0):
    family = get_family(name)
    cfg = family.config(**TINY[name])
    torch.manual_seed(seed)
    nets = family.build(cfg)
    opts = family.build_optimizers(cfg, nets)
    before = {k: {n: p.detach().clone() for n, p in net.named_parameters()} for k, net in nets.items()}
    extra = family.extra_state(cfg, opts) if family.extra_state is not None else None
    out = family.step(nets, opts, tiny_batch(family, cfg), cfg, extra)
    return family, cfg, nets, opts, before, out


def test_every_family_has_a_tiny_config():
    assert set(FAMILIES) == set(TINY) == set(BAD)
    assert all(name == fam.name for name, fam in FAMILIES.items())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_train_step_moves_every_network_and_reports_finite_scalars(name: str):
    family, cfg, nets, _, before, out = one_step(name)
    assert {"loss/D", "loss/G", "d/real_score", "d/fake_score"} <= set(out)
    for key, value in out.items():
        assert value.dim() == 0 and not value.requires_grad, key
        assert torch.isfinite(value), key
    assert 0 < out["d/real_score"] < 1 and 0 < out["d/fake_score"] < 1
    for net_name, net in nets.items():
        for p_name, p in net.named_parameters():
            assert not torch.equal(before[net_name][p_name], p.detach()), f"{net_name}.{p_name} did not move"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_generator_maps_its_inputs_to_images_in_range(name: str):
    family = get_family(name)
    cfg = family.config(**TINY[name])
    nets = family.build(cfg)
    batch = tiny_batch(family, cfg, n=5)

    def inputs(seed: int) -> tuple[torch.Tensor, ...]:
        return family.generator_inputs(cfg, batch, 3, generator=torch.Generator().manual_seed(seed))

    assert all(torch.equal(a, b) for a, b in zip(inputs(0), inputs(0), strict=True))
    images = nets[family.generator](*inputs(0))
    assert images.shape == (3, cfg.channels, cfg.image_size, cfg.image_size)
    assert images.abs().max() <= 1
    if family.dataset_kind == "images":
        assert nets["D"](images).shape == (3,)
    if family.sample_grid is not None:
        grid = family.sample_grid(nets[family.generator], batch, cfg, torch.Generator().manual_seed(0))
        assert grid.dim() == 3 and grid.shape[0] == cfg.channels and grid.abs().max() <= 1


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_train_step_is_deterministic_under_a_seed(name: str):
    first, second = one_step(name, seed=7)[-1], one_step(name, seed=7)[-1]
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_bad_config_value_is_a_value_error(name: str):
    family = get_family(name)
    with pytest.raises(ValueError, match="valid"):
        family.build(family.config(**{**TINY[name], **BAD[name]}))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_checkpoint_round_trips_with_weights_only(name: str):
    family, cfg, nets, opts, _, _ = one_step(name)
    buf = io.BytesIO()
    state = {"config": dataclasses.asdict(cfg), "nets": {k: n.state_dict() for k, n in nets.items()},
             "opts": {k: o.state_dict() for k, o in opts.items()}}
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    cfg2 = family.config(**loaded["config"])
    nets2 = family.build(cfg2)
    for k, net in nets2.items():
        net.load_state_dict(loaded["nets"][k])
    opts2 = family.build_optimizers(cfg2, nets2)
    for k, opt in opts2.items():
        opt.load_state_dict(loaded["opts"][k])
    inputs = family.generator_inputs(cfg, tiny_batch(family, cfg), 2)
    g1, g2 = nets[family.generator].eval(), nets2[family.generator].eval()
    assert torch.equal(g1(*inputs), g2(*inputs))


def test_get_family_lists_valid_names():
    assert get_family("dcgan") is dcgan.FAMILY
    with pytest.raises(ValueError, match="vanilla"):
        get_family("stylegan")


# --- paper parameter counts --------------------------------------------------------------------------


def test_dcgan_64x64x3_parameter_counts_match_the_official_example():
    nets = dcgan.build(dcgan.Config())
    assert count_parameters(nets["G"]) == 3_576_704
    assert count_parameters(nets["D"]) == 2_765_568
    assert nets["D"](nets["G"](dcgan.sample_latent(dcgan.Config(), 2))).shape == (2,)


def test_dcgan_init_is_normal_0_02():
    g = dcgan.build(dcgan.Config(image_size=32, channels=1))["G"]
    w = g.main[3].weight  # a hidden ConvTranspose2d
    assert abs(w.mean().item()) < 2e-3 and abs(w.std().item() - 0.02) < 2e-3
    assert abs(g.main[1].weight.mean().item() - 1) < 0.01  # BatchNorm scale ~ N(1, 0.02)


def test_vanilla_mnist_parameter_counts():
    # G: 100*1200+1200 = 121,200; 1200*1200+1200 = 1,441,200; 1200*784+784 = 941,584  -> 2,503,984.
    # D: maxout 784 -> 240x5: 784*1200+1200 = 942,000; maxout 240 -> 240x5: 240*1200+1200 = 289,200;
    #    output 240 -> 1: 241                                                          -> 1,231,441.
    nets = vanilla.build(vanilla.Config())
    assert count_parameters(nets["G"]) == 2_503_984
    assert count_parameters(nets["D"]) == 1_231_441


def test_vanilla_k_discriminator_steps_split_the_batch():
    cfg = vanilla.Config(**{**TINY["vanilla"], "k": 2})
    nets = vanilla.build(cfg)
    out = vanilla.train_step(nets, vanilla.build_optimizers(cfg, nets), tiny_batch(vanilla.FAMILY, cfg), cfg)
    assert torch.isfinite(out["loss/D"])
    with pytest.raises(ValueError, match="k=5"):
        cfg5 = dataclasses.replace(cfg, k=5)
        vanilla.train_step(nets, vanilla.build_optimizers(cfg5, nets), tiny_batch(vanilla.FAMILY, cfg5), cfg5)


def test_vanilla_uniform_latents_have_unit_variance():
    z = vanilla.sample_latent(vanilla.Config(), 4000, generator=torch.Generator().manual_seed(0))
    assert z.abs().max() <= math.sqrt(3) and abs(z.var().item() - 1) < 0.02


def test_maxout_and_init_helpers():
    m = Maxout(3, units=2, pieces=4)
    with torch.no_grad():
        m.linear.weight.zero_()
        m.linear.bias.copy_(torch.arange(8.0))
    assert torch.equal(m(torch.randn(5, 3)), torch.tensor([3.0, 7.0]).expand(5, 2))
    bn = init_normal_(torch.nn.BatchNorm2d(4))
    assert torch.equal(bn.bias, torch.zeros(4))


# --- latent tools ----------------------------------------------------------------------------------


def test_slerp_endpoints_norm_and_parallel_fallback():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(3, 4, 2, generator=g), torch.randn(3, 4, 2, generator=g)
    torch.testing.assert_close(slerp(z0, z1, 0.0), z0)
    torch.testing.assert_close(slerp(z0, z1, 1.0), z1)
    # Equal norms stay on the sphere; the straight line cuts inside it.
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(slerp(a, b, 0.5).norm(), torch.tensor(1.0))
    torch.testing.assert_close(lerp(a, b, 0.5).norm(), torch.tensor(math.sqrt(0.5)))
    # (Anti)parallel rows fall back to lerp instead of dividing by sin(0).
    for c in (2 * a, -a):
        torch.testing.assert_close(slerp(a, c, 0.25), lerp(a, c, 0.25))
    torch.testing.assert_close(slerp(a[0], b[0], 0.5), slerp(a, b, 0.5)[0])  # a 1-D input is one vector


def test_interpolate_shapes_and_endpoints():
    z0, z1 = torch.randn(16, 1, 1), torch.randn(16, 1, 1)
    for mode in ("slerp", "linear"):
        path = interpolate(z0, z1, steps=5, mode=mode)
        assert path.shape == (5, 16, 1, 1)
        torch.testing.assert_close(path[0], z0)
        torch.testing.assert_close(path[-1], z1)
    with pytest.raises(ValueError, match="valid"):
        interpolate(z0, z1, steps=5, mode="cubic")


def test_vector_arithmetic_of_constant_groups_is_a_minus_b_plus_c():
    shape = (3, 8, 1, 1)  # three exemplars per concept, as in Radford et al. sec. 6.3
    out = gan_models.vector_arithmetic(torch.full(shape, 5.0), torch.full(shape, 2.0), torch.full(shape, 0.5))
    assert torch.equal(out, torch.full((8, 1, 1), 3.5))


def test_make_grid_layout():
    images = torch.ones(5, 3, 4, 6)
    grid = make_grid(images, nrow=2, padding=1)
    assert grid.shape == (3, 3 * (4 + 1) + 1, 2 * (6 + 1) + 1)
    assert grid[:, 0].eq(-1).all() and grid[:, 1:5, 1:7].eq(1).all()
    assert grid[:, 11:15, 8:14].eq(-1).all()  # the sixth cell is empty
    assert make_grid(images, nrow=8).shape == (3, 4 + 4, 5 * 8 + 2)


def test_diff_augment_translation_keeps_content_and_cutout_masks_a_square():
    from gan_models.augment import diff_augment

    torch.manual_seed(0)
    x = -torch.ones(8, 1, 16, 16)
    x[:, :, 6:10, 6:10] = 1.0
    shifted = diff_augment(x, "translation")
    assert shifted.shape == x.shape
    # A 4x4 square shifted by at most 2 px stays whole inside a 16x16 frame.
    assert torch.equal((shifted == 1).flatten(1).sum(1), torch.full((8,), 16))
    cut = diff_augment(torch.ones(8, 1, 16, 16), "cutout")
    zeros = (cut == 0).flatten(1).sum(1)
    assert (zeros > 0).all() and (zeros <= 64).all()  # one square of side 8, clipped at the border
    assert torch.equal(diff_augment(x, ""), x)
    with pytest.raises(ValueError, match="augment policy"):
        dcgan.Config(augment="rotate")


def test_frozen_passes_gradient_to_inputs_only_and_restores_flags():
    from gan_models.layers import frozen

    d = torch.nn.Linear(3, 1)
    wrapped = torch.nn.Module()
    wrapped.module = d  # stands in for a DDP wrapper: `frozen` must use the inner network
    x = torch.randn(2, 3, requires_grad=True)
    with frozen(wrapped) as inner:
        assert inner is d
        inner(x).sum().backward()
    assert d.weight.grad is None and d.bias.grad is None
    assert x.grad is not None and d.weight.requires_grad and d.bias.requires_grad


def test_dcgan_spectral_norm_discriminator_trains_and_has_no_batch_norm():
    torch.manual_seed(0)
    cfg = dcgan.Config(image_size=32, channels=1, nz=8, ngf=4, ndf=4, d_norm="spectral", loss="hinge")
    nets = dcgan.build(cfg)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in nets["D"].modules())
    convs = [m for m in nets["D"].modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in convs)
    losses = dcgan.train_step(nets, dcgan.build_optimizers(cfg, nets), {"image": torch.rand(4, 1, 32, 32) * 2 - 1}, cfg)
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("name", ["dcgan", "text2img"])
def test_lazy_r1_runs_every_kth_d_step_reaches_d_and_survives_an_optimizer_restore(name: str):
    family = get_family(name)
    cfg = family.config(**TINY[name], r1_gamma=10.0, r1_every=2)
    batch = tiny_batch(family, cfg)

    def first_d(gamma: float) -> list[torch.Tensor]:
        torch.manual_seed(0)
        c = dataclasses.replace(cfg, r1_gamma=gamma)
        nets = family.build(c)
        family.step(nets, family.build_optimizers(c, nets), batch, c)
        return [p.detach().clone() for p in nets["D"].parameters()]

    # The penalty reaches D's update: same seed and batch, different γ, different D after one step.
    assert any(not torch.equal(a, b) for a, b in zip(first_d(0.0), first_d(10.0), strict=True))
    torch.manual_seed(0)
    nets = family.build(cfg)
    opts = family.build_optimizers(cfg, nets)
    assert ["loss/D_r1" in family.step(nets, opts, batch, cfg) for _ in range(3)] == [True, False, True]
    restored = family.build_optimizers(cfg, nets)
    for key, opt in restored.items():
        opt.load_state_dict(opts[key].state_dict())
    assert "loss/D_r1" not in family.step(nets, restored, batch, cfg)  # step 3: 3 % 2 != 0
    with pytest.raises(ValueError, match="r1_gamma"):
        family.config(r1_gamma=-1.0)


def test_dcgan_one_sided_label_smoothing_is_bce_against_the_smoothed_target():
    # The step's real term is t * (-log D(x)) + (1 - t) * (-log(1 - D(x))): BCE against target t.
    logits = torch.tensor([-2.0, 0.0, 0.5, 3.0])
    t = 0.9
    smoothed = t * losses._bce_real(logits) + (1 - t) * losses._bce_fake(logits)
    assert torch.allclose(smoothed, F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, t)))
    cfg = dcgan.Config(image_size=32, channels=1, nz=8, ngf=4, ndf=4, real_label=0.9)
    torch.manual_seed(0)
    nets = dcgan.build(cfg)
    out = dcgan.train_step(nets, dcgan.build_optimizers(cfg, nets), {"image": torch.rand(4, 1, 32, 32) * 2 - 1}, cfg)
    assert all(torch.isfinite(v) for v in out.values())
    for bad in ({"real_label": 0.4}, {"real_label": 1.1}, {"real_label": 0.9, "loss": "hinge"}):
        with pytest.raises(ValueError, match="real_label"):
            dcgan.Config(**bad)
