"""Pix2Pix and CycleGAN: official parameter counts, network shapes, the image pool, LR policies, and one train
step of each checked against a hand computation of the official `optimize_parameters`."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from gan_models import cyclegan, get_family, pix2pix
from gan_models.family import step_schedulers
from gan_models.i2i_nets import build_scheduler, define_d, define_g, inference, init_weights_, linear_decay
from gan_models.layers import convert_sync_batchnorm, count_parameters

P2P_TINY = dict(image_size=128, channels=3, g_arch="unet_128", ngf=4, ndf=4)
CYC_TINY = dict(image_size=32, channels=3, g_arch="resnet_6blocks", ngf=4, ndf=4)


def roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# --- parameter counts of the official defaults ------------------------------------------------------------


def test_pix2pix_default_parameter_counts_match_the_official_printout():
    nets = pix2pix.build(pix2pix.Config())
    assert count_parameters(nets["G"]) == 54_413_955  # unet_256, batch norm
    assert count_parameters(nets["D"]) == 2_768_705  # 70x70 PatchGAN on 6 channels, batch norm
    g128 = pix2pix.build(pix2pix.Config(image_size=128, g_arch="unet_128"))["G"]
    assert count_parameters(g128) == 41_828_995


def test_cyclegan_default_parameter_counts_match_the_official_printout():
    nets = cyclegan.build(cyclegan.Config())
    assert count_parameters(nets["G"].G_A) == count_parameters(nets["G"].G_B) == 11_378_179  # resnet_9blocks
    assert count_parameters(nets["D_A"]) == count_parameters(nets["D_B"]) == 2_764_737  # PatchGAN, 3 ch, IN
    assert count_parameters(define_g("resnet_6blocks", 3, 3, ngf=64, norm="instance", dropout=False)) == 7_837_699


# --- network shapes and structure -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "size"),
    [("unet_128", 128), ("unet_128", 256), ("unet_256", 256), ("resnet_6blocks", 128), ("resnet_6blocks", 256),
     ("resnet_9blocks", 128), ("resnet_9blocks", 256)],
)
def test_generators_map_images_to_images_in_range(arch: str, size: int):
    torch.manual_seed(0)
    norm = "batch" if arch.startswith("unet") else "instance"
    g = define_g(arch, 3, 2, ngf=4, norm=norm, dropout=True)
    y = g(torch.rand(1, 3, size, size) * 2 - 1)
    assert y.shape == (1, 2, size, size)
    assert y.abs().max() <= 1 and y.std() > 0


def test_unet_256_refuses_an_image_smaller_than_its_depth():
    with pytest.raises(ValueError, match="multiple of 256"):
        pix2pix.Config(image_size=128)
    with pytest.raises(ValueError, match="multiple of 4"):
        cyclegan.Config(image_size=30)


def test_unet_dropout_and_norm_layout_follow_the_official_builder():
    def count(net, kind):
        return sum(isinstance(m, kind) for m in net.modules())

    g256 = define_g("unet_256", 3, 3, ngf=4, norm="batch", dropout=True)
    g128 = define_g("unet_128", 3, 3, ngf=4, norm="batch", dropout=True)
    assert count(g256, nn.Dropout) == 3 and count(g128, nn.Dropout) == 2  # num_downs - 5 blocks
    assert count(define_g("unet_256", 3, 3, ngf=4, norm="batch", dropout=False), nn.Dropout) == 0
    # Convs before a BatchNorm have no bias; only the outermost up-conv keeps one.
    assert sum(m.bias is not None for m in g256.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))) == 1
    res = define_g("resnet_9blocks", 3, 3, ngf=4, norm="instance", dropout=False)
    norms = [m for m in res.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 3 + 2 * 9 + 2
    assert all(not m.affine and not m.track_running_stats for m in norms)
    assert count(res, nn.ReflectionPad2d) == 2 + 2 * 9


@pytest.mark.parametrize(("arch", "n_layers", "patch"), [("basic", 3, 30), ("n_layers", 2, 62), ("pixel", 3, 256)])
def test_discriminators_give_one_logit_per_patch(arch: str, n_layers: int, patch: int):
    d = define_d(arch, 6, ndf=4, n_layers=n_layers, norm="batch")
    assert d(torch.randn(2, 6, 256, 256)).shape == (2, 1, patch, patch)


def test_init_types():
    torch.manual_seed(0)
    g = define_g("resnet_6blocks", 3, 3, ngf=16, norm="batch", dropout=False)
    w = g.model[4].weight  # a stride-2 conv
    assert abs(w.mean().item()) < 2e-3 and abs(w.std().item() - 0.02) < 2e-3
    bn = g.model[5]
    assert abs(bn.weight.mean().item() - 1) < 0.01 and bn.weight.std() > 0 and torch.equal(bn.bias, torch.zeros(32))
    conv = init_weights_(nn.Conv2d(4, 8, 3), "orthogonal", 0.5)
    rows = conv.weight.flatten(1)
    assert_close(rows @ rows.T, 0.25 * torch.eye(8), atol=1e-5, rtol=0)
    assert torch.equal(conv.bias, torch.zeros(8))
    kaiming = init_weights_(nn.Conv2d(64, 64, 3), "kaiming").weight
    assert abs(kaiming.std().item() - math.sqrt(2 / (64 * 9))) < 0.005
    init_weights_(nn.Conv2d(4, 8, 3), "xavier")
    with pytest.raises(ValueError, match="valid"):
        init_weights_(nn.Conv2d(4, 8, 3), "uniform")


def test_inference_keeps_dropout_and_running_statistics_as_the_official_test():
    torch.manual_seed(0)
    g = define_g("unet_128", 3, 3, ngf=4, norm="batch", dropout=True)
    x = torch.rand(1, 3, 128, 128)
    before = copy.deepcopy(g.state_dict())
    with torch.no_grad(), inference(g, eval_mode=False):
        assert g.training
        assert not torch.equal(g(x), g(x))  # dropout on
    for k, v in g.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running statistics untouched
    assert g.training and all(m.momentum == 0.1 for m in g.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad(), inference(g, eval_mode=True):
        assert not g.training and torch.equal(g(x), g(x))
    assert g.training


# --- the image pool ------------------------------------------------------------------------------------------


def test_image_pool_fills_then_swaps_half_the_time():
    pool = cyclegan.ImagePool(50, seed=0)
    images = torch.arange(60.0).reshape(60, 1, 1, 1)
    for i in range(50):  # the first 50 go in and come out
        assert torch.equal(pool.query(images[i : i + 1]), images[i : i + 1])
    assert len(pool) == 50 and torch.equal(pool.images, images[:50])
    swapped = 0
    for step in range(400):
        new = torch.full((1, 1, 1, 1), 1000.0 + step)
        stored = pool.images.clone()
        out = pool.query(new)
        if torch.equal(out, new):  # kept: the pool is unchanged
            assert torch.equal(pool.images, stored)
        else:  # returned an old image, and the new one took its place
            swapped += 1
            slot = (stored == out).flatten().nonzero().flatten()
            assert len(slot) == 1 and pool.images[slot[0]] == new.flatten()
            assert torch.equal(pool.images[torch.arange(50) != slot[0]], stored[torch.arange(50) != slot[0]])
    assert 0.42 < swapped / 400 < 0.58
    # A batch is handled image by image; size 0 returns its input.
    assert pool.query(torch.zeros(3, 1, 1, 1)).shape == (3, 1, 1, 1)
    x = torch.randn(2, 3, 4, 4)
    assert cyclegan.ImagePool(0).query(x) is x


def test_image_pool_state_round_trips_with_weights_only():
    pool = cyclegan.ImagePool(4, seed=3)
    for i in range(6):
        pool.query(torch.full((1, 2, 3, 3), float(i)))
    restored = cyclegan.ImagePool(4, seed=99)
    restored.load_state_dict(roundtrip(pool.state_dict()))
    assert len(restored) == 4 and torch.equal(restored.images, pool.images)
    for i in range(20):  # same contents and same RNG: the same answers from here on
        x = torch.full((1, 2, 3, 3), 100.0 + i)
        assert torch.equal(pool.query(x), restored.query(x))
    half = cyclegan.ImagePool(4)
    half.query(torch.ones(2, 2, 3, 3))
    again = cyclegan.ImagePool(4)
    again.load_state_dict(roundtrip(half.state_dict()))
    assert len(again) == 2
    empty = cyclegan.ImagePool(4)
    empty.load_state_dict(roundtrip(cyclegan.ImagePool(4).state_dict()))
    assert len(empty) == 0


# --- learning-rate policies -----------------------------------------------------------------------------------


def lr_curve(policy: str, epochs: int, **kw) -> tuple[list[float], torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, policy=policy, **kw)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(epochs):
        opt.step()  # no gradients: a no-op, but the order the scheduler expects
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs, sched


def test_linear_policy_is_the_official_curve():
    lrs, _ = lr_curve("linear", 200, n_epochs=100, n_epochs_decay=100)
    # After k scheduler steps the factor is 1 - max(0, k + 1 - 100) / 101.
    assert lrs[:100] == [1.0] * 100
    assert_close(lrs[100], 100 / 101)
    assert_close(lrs[150], 50 / 101)
    assert_close(lrs[200], 0.0)
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert linear_decay(10, n_epochs=5, n_epochs_decay=10, epoch_count=3) == 1 - 8 / 11


def test_step_and_cosine_policies():
    lrs, _ = lr_curve("step", 120, n_epochs=100, n_epochs_decay=100, lr_decay_iters=50)
    expected = [0.1 ** (k // 50) for k in range(121)]
    assert_close(torch.tensor(lrs, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64))
    lrs, _ = lr_curve("cosine", 100, n_epochs=100, n_epochs_decay=100)
    expected = [0.5 * (1 + math.cos(math.pi * k / 100)) for k in range(101)]
    assert_close(torch.tensor(lrs, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64))
    with pytest.raises(ValueError, match="valid"):
        pix2pix.Config(lr_policy="plateau")


def test_scheduler_state_round_trips_and_step_schedulers_steps_each_once():
    _, sched = lr_curve("linear", 130, n_epochs=100, n_epochs_decay=100)
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1.0)
    fresh = build_scheduler(opt, policy="linear", n_epochs=100, n_epochs_decay=100)
    fresh.load_state_dict(roundtrip(sched.state_dict()))
    opt.load_state_dict(roundtrip(sched.optimizer.state_dict()))
    step_schedulers({"s": fresh, "pool": cyclegan.ImagePool(1)})
    assert fresh.last_epoch == 131
    assert_close(opt.param_groups[0]["lr"], 1 - 32 / 101)


# --- one train step against the official optimize_parameters, written out by hand ---------------------------


def test_pix2pix_step_equals_the_official_update_by_hand():
    cfg = pix2pix.Config(**P2P_TINY)
    torch.manual_seed(0)
    nets = pix2pix.build(cfg)
    g0, d0 = copy.deepcopy(nets["G"]), copy.deepcopy(nets["D"])
    opts = pix2pix.build_optimizers(cfg, nets)
    batch = pix2pix.example_batch(cfg, 2, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    out = pix2pix.train_step(nets, opts, batch, cfg)

    a, b = batch["a"], batch["b"]
    opt_g = torch.optim.Adam(g0.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d0.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = F.binary_cross_entropy_with_logits
    torch.manual_seed(5)  # the same dropout masks
    fake_b = g0(a)
    # backward_D: fake then real, one backward of the halved sum.
    pred_fake = d0(torch.cat((a, fake_b.detach()), 1))
    loss_d_fake = bce(pred_fake, torch.zeros_like(pred_fake))
    pred_real = d0(torch.cat((a, b), 1))
    loss_d_real = bce(pred_real, torch.ones_like(pred_real))
    loss_d = (loss_d_fake + loss_d_real) * 0.5
    opt_d.zero_grad()
    loss_d.backward()
    opt_d.step()
    # backward_G through the updated D (its weight gradients discarded).
    pred = d0(torch.cat((a, fake_b), 1))
    loss_g_gan = bce(pred, torch.ones_like(pred))
    loss_l1 = (fake_b - b).abs().mean() * 100.0
    opt_g.zero_grad()
    (loss_g_gan + loss_l1).backward()
    opt_g.step()

    assert_close(out["loss/D"], loss_d.detach())
    assert_close(out["loss/G_GAN"], loss_g_gan.detach())
    assert_close(out["loss/L1"], loss_l1.detach())
    assert_close(out["loss/G"], (loss_g_gan + loss_l1).detach())
    for mine, ref in ((nets["G"], g0), (nets["D"], d0)):
        for (name, p), q in zip(mine.state_dict().items(), ref.state_dict().values(), strict=True):
            assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


def test_cyclegan_step_equals_the_official_update_by_hand():
    cfg = cyclegan.Config(**CYC_TINY)
    torch.manual_seed(0)
    nets = cyclegan.build(cfg)
    ref = {k: copy.deepcopy(v) for k, v in nets.items()}
    opts = cyclegan.build_optimizers(cfg, nets)
    extra = cyclegan.extra_state(cfg, opts)
    batch = cyclegan.example_batch(cfg, 1, generator=torch.Generator().manual_seed(1))
    out = cyclegan.train_step(nets, opts, batch, cfg, extra=extra)

    g_a, g_b, d_a, d_b = ref["G"].G_A, ref["G"].G_B, ref["D_A"], ref["D_B"]
    a, b = batch["a"], batch["b"]
    opt_g = torch.optim.Adam([*g_a.parameters(), *g_b.parameters()], lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam([*d_a.parameters(), *d_b.parameters()], lr=2e-4, betas=(0.5, 0.999))

    def mse(x, target):
        return F.mse_loss(x, torch.full_like(x, target))

    fake_b, fake_a = g_a(a), g_b(b)
    rec_a, rec_b = g_b(fake_b), g_a(fake_a)
    loss_idt_a = (g_a(b) - b).abs().mean() * 10 * 0.5
    loss_idt_b = (g_b(a) - a).abs().mean() * 10 * 0.5
    loss_g_a, loss_g_b = mse(d_a(fake_b), 1.0), mse(d_b(fake_a), 1.0)
    loss_cycle_a = (rec_a - a).abs().mean() * 10
    loss_cycle_b = (rec_b - b).abs().mean() * 10
    loss_g = loss_g_a + loss_g_b + loss_cycle_a + loss_cycle_b + loss_idt_a + loss_idt_b
    opt_g.zero_grad()
    loss_g.backward()
    opt_g.step()
    # The pools are empty: the first query returns the current fakes.
    loss_d_a = (mse(d_a(b), 1.0) + mse(d_a(fake_b.detach()), 0.0)) * 0.5
    loss_d_b = (mse(d_b(a), 1.0) + mse(d_b(fake_a.detach()), 0.0)) * 0.5
    opt_d.zero_grad()
    (loss_d_a + loss_d_b).backward()
    opt_d.step()

    expected = {"loss/G": loss_g, "loss/G_A": loss_g_a, "loss/G_B": loss_g_b, "loss/cycle_A": loss_cycle_a,
                "loss/cycle_B": loss_cycle_b, "loss/idt_A": loss_idt_a, "loss/idt_B": loss_idt_b,
                "loss/D_A": loss_d_a, "loss/D_B": loss_d_b, "loss/D": loss_d_a + loss_d_b}
    for key, value in expected.items():
        assert_close(out[key], value.detach(), msg=key)
    for k in nets:
        for (name, p), q in zip(nets[k].state_dict().items(), ref[k].state_dict().values(), strict=True):
            assert_close(p, q, rtol=1e-4, atol=1e-6, msg=f"{k}.{name}")
    assert len(extra["pool_fake_B"]) == len(extra["pool_fake_A"]) == 1


def test_cyclegan_without_identity_and_pool():
    cfg = cyclegan.Config(**CYC_TINY, lambda_identity=0.0, pool_size=0)
    torch.manual_seed(0)
    nets = cyclegan.build(cfg)
    opts = cyclegan.build_optimizers(cfg, nets)
    out = cyclegan.train_step(nets, opts, cyclegan.example_batch(cfg, 1), cfg, extra=cyclegan.extra_state(cfg, opts))
    assert out["loss/idt_A"] == 0 and out["loss/idt_B"] == 0
    assert_close(out["loss/G"], out["loss/G_A"] + out["loss/G_B"] + out["loss/cycle_A"] + out["loss/cycle_B"])


@pytest.mark.parametrize("gan_mode", ["lsgan", "wgangp", "hinge"])
def test_every_gan_mode_trains_with_finite_losses(gan_mode: str):
    for family, kw in ((pix2pix, dict(CYC_TINY, norm="none", d_arch="pixel")), (cyclegan, CYC_TINY)):
        cfg = family.Config(**kw, gan_mode=gan_mode)
        torch.manual_seed(0)
        fam = get_family(family.FAMILY.name)
        nets = fam.build(cfg)
        opts = fam.build_optimizers(cfg, nets)
        out = fam.step(nets, opts, fam.example_batch(cfg, 2), cfg, fam.extra_state(cfg, opts))
        assert all(torch.isfinite(v) for v in out.values()), (family.__name__, out)


def test_cyclegan_training_state_resumes_exactly():
    fam = get_family("cyclegan")
    cfg = cyclegan.Config(**CYC_TINY, pool_size=2)
    batches = [fam.example_batch(cfg, 1, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    torch.manual_seed(0)
    nets = fam.build(cfg)
    opts = fam.build_optimizers(cfg, nets)
    extra = fam.extra_state(cfg, opts, seed=1)
    for batch in batches[:3]:  # the pools are full after two steps and start swapping
        fam.step(nets, opts, batch, cfg, extra)
    state = roundtrip({"nets": {k: v.state_dict() for k, v in nets.items()},
                       "opts": {k: v.state_dict() for k, v in opts.items()},
                       "extra": {k: v.state_dict() for k, v in extra.items()}})
    nets2 = fam.build(cfg)
    opts2 = fam.build_optimizers(cfg, nets2)
    extra2 = fam.extra_state(cfg, opts2, seed=7)
    for group, loaded in ((nets2, "nets"), (opts2, "opts"), (extra2, "extra")):
        for k, obj in group.items():
            obj.load_state_dict(state[loaded][k])
    first = fam.step(nets, opts, batches[3], cfg, extra)
    second = fam.step(nets2, opts2, batches[3], cfg, extra2)
    for k in first:
        assert torch.equal(first[k], second[k]), k


# --- sample grids, generator inputs, SyncBatchNorm ------------------------------------------------------------


def test_sample_grids_and_generator_inputs():
    cfg = pix2pix.Config(**P2P_TINY, direction="BtoA")
    nets = pix2pix.build(cfg)
    batch = pix2pix.example_batch(cfg, 2, generator=torch.Generator().manual_seed(0))
    (x,) = pix2pix.generator_inputs(cfg, batch, 1)
    assert torch.equal(x, batch["b"][:1])
    grid = pix2pix.sample_grid(nets["G"], batch, cfg, torch.Generator().manual_seed(0))
    assert grid.shape == (3, 2 * 130 + 2, 3 * 130 + 2) and grid.abs().max() <= 1
    assert torch.equal(grid[:, 2:130, 2:130], batch["b"][0])  # input | output | target, BtoA
    assert torch.equal(grid, pix2pix.sample_grid(nets["G"], batch, cfg, torch.Generator().manual_seed(0)))

    cfg = cyclegan.Config(**CYC_TINY)
    nets = cyclegan.build(cfg)
    batch = cyclegan.example_batch(cfg, 2)
    grid = cyclegan.sample_grid(nets["G"], batch, cfg, torch.Generator().manual_seed(0))
    assert grid.shape == (3, 4 * 34 + 2, 3 * 34 + 2)
    assert torch.equal(grid[:, 2:34, 2:34], batch["a"][0]) and torch.equal(grid[:, 70:102, 2:34], batch["b"][0])
    assert_close(grid[:, 2:34, 36:68], nets["G"](batch["a"][:1])[0].detach())  # forward(x) = G(x), A -> B
    with pytest.raises(ValueError, match="valid"):
        nets["G"](batch["a"], "AtoC")


def test_convert_sync_batchnorm_only_for_batch_norm_nets_on_several_processes():
    p2p = pix2pix.build(pix2pix.Config(**P2P_TINY))
    assert convert_sync_batchnorm(p2p, world_size=1) == p2p
    synced = convert_sync_batchnorm(p2p, world_size=2)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced["G"].modules())
    assert not any(type(m) is nn.BatchNorm2d for n in synced.values() for m in n.modules())
    assert synced["G"].state_dict().keys() == pix2pix.build(pix2pix.Config(**P2P_TINY))["G"].state_dict().keys()
    cyc = cyclegan.build(cyclegan.Config(**CYC_TINY))
    assert all(convert_sync_batchnorm(cyc, world_size=4)[k] is v for k, v in cyc.items())


@pytest.mark.parametrize(
    ("family", "overrides"),
    [("pix2pix", {"g_arch": "unet_128", "ngf": "4", "ndf": "4"}),  # unet_256's default needs 256 px
     ("cyclegan", {"g_arch": "resnet_6blocks", "ngf": "4", "ndf": "4", "pool_size": "1"})],
)
def test_bench_runs_the_image_to_image_families(family: str, overrides: dict[str, str]):
    from pipelines.ops.bench import bench

    size = 128 if family == "pix2pix" else 32
    result = bench(family=family, image_size=size, channels=1, batch=1, steps=1, warmup=1, repeats=1,
                   overrides=overrides)
    assert result["img_per_s_median"] > 0 and result["config"]["g_arch"] == overrides["g_arch"]


@pytest.mark.parametrize(
    ("family", "kw"),
    [("cyclegan", dict(CYC_TINY)), ("pix2pix", dict(CYC_TINY, gan_mode="wgangp", norm="instance"))],
)
def test_train_step_under_ddp_equals_the_plain_step(tmp_path, family: str, kw: dict):
    # One process, gloo: DDP's reducer still checks that every parameter gets a gradient once per backward
    # (several forwards of one wrapped G per backward; the gradient penalty's backward).
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    fam = get_family(family)
    cfg = fam.config(**kw)
    torch.manual_seed(0)
    plain = fam.build(cfg)
    ref = copy.deepcopy(plain)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        nets = {k: DDP(v) for k, v in convert_sync_batchnorm(plain, world_size=1).items()}
        runs = []
        for group in (nets, ref):
            opts = fam.build_optimizers(cfg, group)
            extra = fam.extra_state(cfg, opts)
            batch = fam.example_batch(cfg, 2, generator=torch.Generator().manual_seed(0))
            torch.manual_seed(1)  # the same dropout masks and penalty interpolates in both runs
            runs.append([fam.step(group, opts, batch, cfg, extra) for _ in range(2)])
    finally:
        dist.destroy_process_group()
    for k in ref:
        for p, q in zip(nets[k].module.parameters(), ref[k].parameters(), strict=True):
            assert torch.equal(p, q)
    assert all(torch.equal(runs[0][-1][k], runs[1][-1][k]) for k in runs[1][-1])
