"""`loop.compile`: every family trains compiled through the plain loop with the eager run's losses, penalties
fall back to eager with one note, and a compiled run resumes from a checkpoint.

Tiny nets and 3 steps, but compiling is real (Inductor, C++ on the CPU): a cold Inductor cache costs about a
minute per family on a 2-core machine, a warm one (`.ganpipe/cache/inductor`, kept between runs) a few seconds.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gan_models import get_family
from pipelines.engine.checkpoint import load_state, restore, save_state, training_state
from pipelines.engine.compiled import compile_nets, is_compiled, mode_for_run
from pipelines.engine.loop import GeneratorEMA, Report, fit
from pipelines.ops.bench import Setting, bench_settings
from pipelines.spec.config import LoopConfig, apply_overrides
from pipelines.spec.recipes import get_recipe

# Each family with its data-dependent parts switched on: lazy R1 (dcgan, text2img), CycleGAN's image pools,
# StarGAN's n_critic schedule (a G step on every 2nd iteration) and gradient penalty, GAN-CLS's wrong
# captions, pix2pix's dropout.
TINY = {
    "vanilla": dict(image_size=8, channels=1, nz=8, g_hidden=(16, 16), d_units=8, d_pieces=3),
    "dcgan": dict(image_size=32, channels=1, nz=16, ngf=8, ndf=8, r1_gamma=1.0, r1_every=2),
    "pix2pix": dict(image_size=128, channels=1, g_arch="unet_128", ngf=4, ndf=4),
    "cyclegan": dict(image_size=32, channels=1, g_arch="resnet_6blocks", ngf=4, ndf=4, pool_size=2),
    "stargan": dict(image_size=16, c_dim=3, g_conv_dim=4, d_conv_dim=4, g_repeat_num=1, d_repeat_num=3,
                    n_critic=2),
    "text2img": dict(image_size=32, nz=8, emb_dim=12, proj_dim=6, ngf=4, ndf=4, r1_gamma=1.0, r1_every=2),
}
PENALISED = {"dcgan", "stargan", "text2img"}  # a critic pass differentiated twice: runs eagerly
# fp32 losses of a compiled run against the eager run's over 3 steps: Inductor fuses and reorders float
# reductions, so not bit-equal; measured worst relative difference about 5e-6 (StarGAN).
RTOL, ATOL = 1e-4, 1e-5


def _batches(family, cfg, seed: int = 0):
    i = 0
    while True:
        yield family.example_batch(cfg, 4, generator=torch.Generator().manual_seed(seed + i))
        i += 1


def _train(name: str, mode: str, *, steps: int = 3, notes: list[str] | None = None, ema: bool = False):
    family = get_family(name)
    cfg = family.config(**TINY[name])
    torch.manual_seed(0)
    nets = family.build(cfg)
    opts = family.build_optimizers(cfg, nets)
    extra = family.extra_state(cfg, opts, seed=0) if family.extra_state else None
    averaged = GeneratorEMA.of(nets[family.generator], decay=0.9) if ema else None
    compile_nets(nets, mode=mode, log=None if notes is None else notes.append)
    reports: list[Report] = []
    torch.manual_seed(1)
    fit(family=family, model_cfg=cfg, nets=nets, opts=opts, batches=_batches(family, cfg), extra=extra,
        loop=LoopConfig(steps=steps, log_every=1, sample_every=0, compile=mode), report=reports.append, ema=averaged)
    return nets, reports


def _losses(reports: list[Report]) -> list[dict[str, float]]:
    return [{k: v for k, v in r.metrics.items() if not k.startswith("perf/")} for r in reports]


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_family_trains_compiled_with_the_eager_runs_losses(name: str):
    eager_nets, eager = _train(name, "off")
    notes: list[str] = []
    nets, compiled = _train(name, "default", notes=notes, ema=name == "dcgan")
    assert all(is_compiled(net) for net in nets.values())
    assert len(compiled) == 3
    for step, (a, b) in enumerate(zip(_losses(eager), _losses(compiled), strict=True), start=1):
        assert a.keys() == b.keys(), step
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=RTOL, abs=ATOL), f"step {step} {key}"
    # Compile time is reported apart from throughput, and only by compiled runs.
    assert compiled[0].metrics["perf/compile_s"] > 0 and "perf/compile_s" not in eager[0].metrics
    assert compiled[-1].metrics["perf/img_per_s"] > 0
    # Compiled in place: the same state-dict keys as an eager run (checkpoints, EMA and export see no wrapper).
    for key, net in nets.items():
        assert list(net.state_dict()) == list(eager_nets[key].state_dict())
    penalty_notes = [n for n in notes if "double backward" in n]
    assert len(penalty_notes) == (name in PENALISED), notes  # one line, naming the network that falls back
    if penalty_notes:
        assert penalty_notes[0].startswith("[ganpipe] loop.compile: D's penalty pass")


def test_a_compiled_run_resumes_from_its_checkpoint_as_if_never_stopped(tmp_path):
    name = "dcgan"
    family = get_family(name)
    cfg = family.config(**TINY[name])
    loop = LoopConfig(steps=4, log_every=1, sample_every=0, compile="default")

    def build():
        torch.manual_seed(0)
        nets = family.build(cfg)
        return nets, family.build_optimizers(cfg, nets)

    def run(nets, opts, ema, *, start: int, steps: int) -> list[Report]:
        reports: list[Report] = []
        torch.manual_seed(100 + start)  # the RNG state a restored run gets back (restore_rng in run_rank)
        fit(family=family, model_cfg=cfg, nets=nets, opts=opts, batches=_batches(family, cfg, seed=start),
            loop=dataclasses.replace(loop, steps=steps), report=reports.append, ema=ema, start_step=start)
        return reports

    nets, opts = build()
    ema = GeneratorEMA.of(nets["G"], decay=0.9)
    compile_nets(nets, mode="default", log=None)
    run(nets, opts, ema, start=0, steps=2)
    save_state(tmp_path, training_state(spec={"family": name}, step=2, nets=nets, opts=opts, ema=ema))
    through = run(nets, opts, ema, start=2, steps=4)

    # A new process's view: fresh networks, the checkpoint restored into them, then compiled (as run_rank does).
    nets2, opts2 = build()
    ema2 = GeneratorEMA.of(nets2["G"], decay=0.9)
    assert restore(load_state(tmp_path), nets=nets2, opts=opts2, ema=ema2) == 2
    assert not any(k.startswith("_orig_mod") for k in load_state(tmp_path)["nets"]["G"])
    compile_nets(nets2, mode="default", log=None)
    resumed = run(nets2, opts2, ema2, start=2, steps=4)
    assert [r.step for r in resumed] == [3, 4]
    for a, b in zip(_losses(through), _losses(resumed), strict=True):
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=RTOL, abs=ATOL), key
    for p1, p2 in zip(ema.module.parameters(), ema2.module.parameters(), strict=True):
        torch.testing.assert_close(p1, p2, rtol=RTOL, atol=ATOL)


def test_cuda_graphs_on_a_gpu_are_refused_in_one_line_before_anything_starts():
    # "reduce-overhead" stopped DCGAN's step mid-run on an H200 (a network's output overwritten by its next call);
    # a GPU run or GPU bench asking for it is refused up front, pointing at the mode that runs.
    gpu_spec = apply_overrides(get_recipe("dcgan")(), ["scale.use_gpu=true"])
    with pytest.raises(ValueError, match=r"^loop.compile=reduce-overhead \(CUDA graphs\) .*use loop.compile=default$"):
        apply_overrides(gpu_spec, ["loop.compile=reduce-overhead"])
    assert apply_overrides(gpu_spec, ["loop.compile=default"]).loop.compile == "default"
    on_cpu = apply_overrides(get_recipe("dcgan")(), ["loop.compile=reduce-overhead"])  # no CUDA graphs on a CPU
    assert on_cpu.loop.compile == "reduce-overhead"
    with pytest.raises(ValueError, match=r"^--compile=reduce-overhead .*use --compile=default$"):
        bench_settings(family="dcgan", image_size=32, channels=1, batch=2, device="cuda", steps=1, warmup=0,
                       repeats=1, settings=[Setting(compile="off"), Setting(compile="reduce-overhead")])


def test_loop_compile_names_the_valid_modes():
    assert LoopConfig(compile="max-autotune").compile == "max-autotune"
    with pytest.raises(ValueError, match="loop.compile must be one of off, default, reduce-overhead, max-autotune"):
        LoopConfig(compile="fast")


def test_a_run_shorter_than_compile_min_steps_trains_eagerly_and_says_why():
    lines: list[str] = []
    assert mode_for_run("default", steps_left=60, min_steps=500, log=lines.append) == "off"
    assert len(lines) == 1 and "60 steps to train < loop.compile_min_steps 500" in lines[0], lines
    assert mode_for_run("default", steps_left=500, min_steps=500, log=lines.append) == "default"
    assert mode_for_run("off", steps_left=1, min_steps=500, log=lines.append) == "off" and len(lines) == 1
    with pytest.raises(ValueError, match="loop.compile_min_steps must be 0 or more"):
        LoopConfig(compile_min_steps=-1)
    # The paper recipes carry the measured settings (README, "loop.compile").
    loops = {name: get_recipe(name)().loop for name in ("dcgan", "cyclegan", "pix2pix", "stargan")}
    assert {n: (lp.precision, lp.layout, lp.compile) for n, lp in loops.items()} == {
        n: ("bf16", "auto", "off") for n in loops}
