"""The plain loop, checkpoints and config overrides, without Ray or MLflow."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gan_models import dcgan, get_family
from pipelines.engine.checkpoint import load_state, restore, save_state, training_state
from pipelines.engine.loop import GeneratorEMA, Report, fit
from pipelines.engine.precision import autocast_dtype, fused, native_bf16, wants_channels_last
from pipelines.spec.config import LoopConfig, TrainSpec, apply_overrides
from pipelines.spec.recipes import dcgan_paper

TINY = dcgan.Config(image_size=32, channels=1, nz=8, ngf=4, ndf=4)


def _batches(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield {"image": torch.rand(4, 1, 32, 32, generator=g) * 2 - 1}


def _build(seed: int = 0):
    torch.manual_seed(seed)
    fam = get_family("dcgan")
    nets = fam.build(TINY)
    return fam, nets, fam.build_optimizers(TINY, nets)


def test_fit_updates_both_networks_and_reports_every_log_every():
    fam, nets, opts = _build()
    before = {k: [p.detach().clone() for p in n.parameters()] for k, n in nets.items()}
    reports: list[Report] = []
    loop = LoopConfig(steps=5, log_every=2, checkpoint_every=4, sample_every=0)
    last = fit(family=fam, model_cfg=TINY, nets=nets, opts=opts, batches=_batches(), loop=loop,
               report=reports.append, make_checkpoint=lambda step: {"step": step})
    assert last == 5
    assert [r.step for r in reports] == [2, 4, 5]
    assert [r.checkpoint for r in reports] == [None, {"step": 4}, {"step": 5}]
    assert reports[-1].final and not reports[0].final
    for key in ("loss/D", "loss/G", "d/real_score", "d/fake_score", "perf/img_per_s", "perf/data_wait_frac"):
        assert all(torch.isfinite(torch.tensor(r.metrics[key])) for r in reports), key
    for name, net in nets.items():
        for p0, p1 in zip(before[name], net.parameters(), strict=True):
            assert not torch.equal(p0, p1), f"a parameter of {name} did not move"


def test_only_checkpoints_evaluations_and_the_end_reach_ray_train():
    from pipelines.training.ray_train import reaches_ray

    fam, nets, opts = _build()
    reports: list[Report] = []
    loop = LoopConfig(steps=12, log_every=1, checkpoint_every=8, eval_every=3, sample_every=0)
    fit(family=fam, model_cfg=TINY, nets=nets, opts=opts, batches=_batches(), loop=loop, report=reports.append,
        make_checkpoint=lambda step: {})  # what ranks other than 0 hand over: an empty checkpoint
    assert [r.step for r in reports] == list(range(1, 13))  # MLflow still gets every step
    assert [r.step for r in reports if reaches_ray(r, eval_every=loop.eval_every)] == [3, 6, 8, 9, 12]
    assert [r.step for r in reports if reaches_ray(r, eval_every=0)] == [8, 12]


def test_samples_evaluation_and_checkpoints_fire_at_their_own_steps():
    fam, nets, opts = _build()
    reports: list[Report] = []
    loop = LoopConfig(steps=30, log_every=10, sample_every=25, eval_every=25, checkpoint_every=25)
    fit(family=fam, model_cfg=TINY, nets=nets, opts=opts, batches=_batches(), loop=loop, report=reports.append,
        make_checkpoint=lambda step: {"step": step}, evaluate=lambda g: {"eval/x": 1.0},
        figure=lambda g: torch.zeros(1, 2, 2))
    assert [r.step for r in reports] == [10, 20, 25, 30]
    assert [r.step for r in reports if r.samples is not None] == [25, 30]
    assert [r.step for r in reports if r.checkpoint is not None] == [25, 30]
    assert [r.step for r in reports if "eval/x" in r.metrics] == [25]  # the driver evaluates the final generator
    assert [r.step for r in reports if "loss/D" in r.metrics] == [10, 20, 30]  # windows stay log_every long

    # Ranks other than 0 (no evaluate, no figure) report on exactly the same steps: Ray Train's report is a barrier.
    others: list[Report] = []
    fam, nets, opts = _build()
    fit(family=fam, model_cfg=TINY, nets=nets, opts=opts, batches=_batches(), loop=loop, report=others.append,
        make_checkpoint=lambda step: {})
    assert [r.step for r in others] == [10, 20, 25, 30]


def test_checkpoint_round_trip_restores_identical_outputs(tmp_path):
    fam, nets, opts = _build()
    ema = GeneratorEMA.of(nets["G"], decay=0.9)
    loop = LoopConfig(steps=3, log_every=1, sample_every=0)
    fit(family=fam, model_cfg=TINY, nets=nets, opts=opts, batches=_batches(), loop=loop, report=lambda r: None,
        ema=ema)
    save_state(tmp_path, training_state(spec={"family": "dcgan"}, step=3, nets=nets, opts=opts, ema=ema))

    fam2, nets2, opts2 = _build(seed=1)
    ema2 = GeneratorEMA.of(nets2["G"], decay=0.9)
    assert restore(load_state(tmp_path), nets=nets2, opts=opts2, ema=ema2) == 3
    z = fam.sample_latent(TINY, 5, generator=torch.Generator().manual_seed(0))
    for a, b in ((nets["G"], nets2["G"]), (ema.module, ema2.module)):
        a.eval(), b.eval()
        torch.testing.assert_close(a(z), b(z), rtol=0, atol=0)
    # Training continues identically from the restored optimizer state.
    for net in (*nets.values(), *nets2.values()):
        net.train()
    loop4 = dataclasses.replace(loop, steps=4)
    torch.manual_seed(7)
    fit(family=fam, model_cfg=TINY, nets=nets, opts=opts, batches=_batches(5), loop=loop4, report=lambda r: None,
        start_step=3)
    torch.manual_seed(7)
    fit(family=fam, model_cfg=TINY, nets=nets2, opts=opts2, batches=_batches(5), loop=loop4,
        report=lambda r: None, start_step=3)
    for p1, p2 in zip(nets["G"].parameters(), nets2["G"].parameters(), strict=True):
        torch.testing.assert_close(p1, p2, rtol=0, atol=0)


def test_ema_recalibration_matches_batch_statistics():
    fam, nets, _ = _build()
    ema = GeneratorEMA.of(nets["G"], decay=0.5)
    z = fam.sample_latent(TINY, 64, generator=torch.Generator().manual_seed(0))
    ema.recalibrate((z,), batch_size=64)
    bn = next(m for m in ema.module.modules() if isinstance(m, torch.nn.BatchNorm2d))
    first_conv = ema.module.main[0]
    with torch.no_grad():
        h = first_conv(z)
    torch.testing.assert_close(bn.running_mean, h.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not ema.module.training


def test_overrides_parse_types_and_reject_unknown_keys():
    spec = apply_overrides(dcgan_paper(), ["loop.steps=7", "model.ngf=16", "scale.use_gpu=true",
                                           "loop.ema_decay=0.99", "data.dataset=digits"])
    assert (spec.loop.steps, spec.model.ngf, spec.scale.use_gpu, spec.loop.ema_decay) == (7, 16, True, 0.99)
    with pytest.raises(ValueError, match=r"unknown config key 'loop.stepz'.*valid keys here: steps, seed"):
        apply_overrides(spec, ["loop.stepz=3"])
    with pytest.raises(ValueError, match="not a valid int"):
        apply_overrides(spec, ["loop.steps=many"])
    with pytest.raises(ValueError, match="loss"):
        apply_overrides(spec, ["model.loss=wasserstein"])
    with pytest.raises(ValueError, match="section.key=value"):
        apply_overrides(spec, ["steps"])


def test_spec_round_trips_through_a_dict():
    spec = apply_overrides(dcgan_paper(), ["model.ngf=16", "run_name=x"])
    again = TrainSpec.from_dict(spec.to_dict())
    assert again == spec
    assert again.flat()["model.ngf"] == 16


def test_linear_lr_decay_reaches_zero_and_survives_a_restore():
    fam, nets, opts = _build()
    loop = LoopConfig(steps=10, log_every=5, lr_decay_from=0.6, sample_every=0)
    lrs = []
    fit(family=fam, model_cfg=TINY, nets=nets, opts=opts, batches=_batches(), loop=loop,
        report=lambda r: lrs.append(opts["G"].param_groups[0]["lr"]))
    base = TINY.lr_g
    assert lrs == [pytest.approx(base), pytest.approx(0.0)]  # constant through step 6, then down to 0
    state = opts["G"].state_dict()
    assert state["param_groups"][0]["initial_lr"] == base


def test_window_averages_each_metric_over_the_steps_that_returned_it():
    from pipelines.engine.loop import MetricWindow

    window = MetricWindow()
    for step in range(10):
        losses = {"loss/D": torch.tensor(1.0)}
        if step % 5 == 4:  # a G step every 5th iteration, as StarGAN's n_critic = 5
            losses["loss/G"] = torch.tensor(3.0)
        window.add(losses, batch_size=2, wait_s=0.0)
    metrics = window.summary(world_size=1)
    assert metrics["loss/D"] == 1.0
    assert metrics["loss/G"] == 3.0


def test_overrides_of_one_section_apply_together():
    from pipelines.spec.recipes import get_recipe

    spec = get_recipe("stargan")()
    # Each alone would make an invalid Config (num_iters_decay > num_iters); together they are valid.
    spec = apply_overrides(spec, ["model.num_iters=3000", "model.num_iters_decay=1500", "loop.steps=3000"])
    assert (spec.model.num_iters, spec.model.num_iters_decay, spec.loop.steps) == (3000, 1500, 3000)
    with pytest.raises(ValueError, match="num_iters_decay"):
        apply_overrides(get_recipe("stargan")(), ["model.num_iters=3000"])


def test_precision_resolves_per_device_and_rejects_unknown_names():
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("auto", cpu) is None  # CPUs keep float32 unless a recipe asks for bf16
    if native_bf16(cpu):
        assert autocast_dtype("bf16", cpu) is torch.bfloat16
    else:  # emulated bf16 would only be slower: float32, and a warning that says so
        with pytest.warns(UserWarning, match="no native bf16"):
            assert autocast_dtype("bf16", cpu) is None
    assert wants_channels_last(cpu, torch.bfloat16) and not wants_channels_last(cpu, None)
    with pytest.raises(ValueError, match="loop.precision must be one of auto, fp32, bf16; got 'fp16'"):
        apply_overrides(dcgan_paper(), ["loop.precision=fp16"])


def test_loop_layout_is_channels_last_for_bf16_on_cpu_unless_adam_is_fused():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for name, fused_adam in (("dcgan", False), ("pix2pix", True), ("cyclegan", True), ("stargan", True)):
        fam = get_family(name)
        cfg = fam.config()
        assert fused(fam.build_optimizers(cfg, fam.build(cfg))) is fused_adam, name
    # The CPU's fused Adam would copy channels_last weights every step; a GPU keeps channels_last either way.
    assert wants_channels_last(cpu, torch.bfloat16, fused_optimizer=False)
    assert not wants_channels_last(cpu, torch.bfloat16, fused_optimizer=True)
    assert wants_channels_last(gpu, torch.bfloat16, fused_optimizer=True)
    assert not wants_channels_last(cpu, torch.bfloat16, "contiguous")
    assert not wants_channels_last(gpu, None, "contiguous") and wants_channels_last(cpu, None, "channels_last")
    assert wants_channels_last(gpu, None, "auto") and not wants_channels_last(cpu, None, "auto")
    # Compiled on a GPU, "auto" stays contiguous (Inductor's conv backward refused channels_last there); asked
    # for by name, channels_last is still what the run gets.
    assert not wants_channels_last(gpu, torch.bfloat16, compiled=True)
    assert wants_channels_last(gpu, torch.bfloat16, "channels_last", compiled=True)
    assert wants_channels_last(cpu, torch.bfloat16, compiled=True)
    with pytest.raises(ValueError, match="loop.layout must be one of auto, channels_last, contiguous; got 'nhwc'"):
        apply_overrides(dcgan_paper(), ["loop.layout=nhwc"])


def test_a_bf16_step_on_cpu_keeps_float32_weights_and_moves_them():
    fam, nets, opts = _build()
    for net in nets.values():
        net.to(memory_format=torch.channels_last)
    before = [p.detach().clone() for p in nets["G"].parameters()]
    reports: list[Report] = []
    fit(family=fam, model_cfg=TINY, nets=nets, opts=opts, batches=_batches(), loop=LoopConfig(steps=2, log_every=1),
        report=reports.append, amp_dtype=torch.bfloat16)
    assert all(torch.isfinite(torch.tensor(r.metrics["loss/G"])) for r in reports)
    assert all(p.dtype == torch.float32 for net in nets.values() for p in net.parameters())
    assert any(not torch.equal(p0, p1) for p0, p1 in zip(before, nets["G"].parameters(), strict=True))
