"""`ganpipe bench`: training-step throughput of a family on synthetic in-memory data, CPU or GPU.

Several settings (compile mode x precision x layout) are timed in one process, interleaved: every round times
one block of steps of each setting, in an order rotated from round to round, so a ratio between two settings is a
same-run ratio even on a machine whose load changes. Imports neither Ray nor MLflow, so it runs on a bare GPU box
with only torch installed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gan_models import get_family
from pipelines.engine.compiled import check_mode, compile_nets, compile_seconds
from pipelines.engine.precision import fused, to_channels_last, wants_channels_last
from pipelines.spec.config import check_gpu_compile, parse_value
from pipelines.spec.defaults import LAYOUTS


@dataclass(frozen=True, kw_only=True)
class Setting:
    """One way of running the same step: torch.compile mode, bf16 autocast or not, and the memory layout."""

    compile: str = "off"
    amp: bool = False
    layout: str = "auto"

    def __post_init__(self) -> None:
        check_mode(self.compile)
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}; got {self.layout!r}")

    @property
    def label(self) -> str:
        return f"{'bf16' if self.amp else 'fp32'} compile={self.compile} layout={self.layout}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels are asynchronous: time only finished work


def _config(fam: Any, *, family: str, image_size: int, channels: int, overrides: dict[str, str] | None) -> Any:
    hints = typing.get_type_hints(fam.config)
    values: dict[str, Any] = {"image_size": image_size, "channels": channels}
    for key, raw in (overrides or {}).items():
        if key not in hints:
            raise ValueError(f"unknown {family} config key {key!r}; valid: {', '.join(hints)}")
        values[key] = parse_value(hints[key], raw, key)
    return fam.config(**values)  # built once with the overrides, so they may fix what the size requires


class _Runner:
    """One setting's networks, optimizers, extra state and batch, built from the same seed as the others."""

    def __init__(self, fam: Any, cfg: Any, setting: Setting, *, batch: int, dev: torch.device, seed: int) -> None:
        self.fam, self.cfg, self.setting, self.dev = fam, cfg, setting, dev
        torch.manual_seed(seed)
        self.nets = {k: v.to(dev) for k, v in fam.build(cfg).items()}
        self.amp_dtype = torch.bfloat16 if setting.amp else None
        self.opts = fam.build_optimizers(cfg, self.nets)
        # What training does with loop.layout (pipelines/training/worker.py).
        nhwc = wants_channels_last(dev, self.amp_dtype, setting.layout, fused_optimizer=fused(self.opts),
                                   compiled=setting.compile != "off")
        if nhwc:
            for net in self.nets.values():
                to_channels_last(net)
        self.channels_last = nhwc
        self.extra = fam.extra_state(cfg, self.opts, seed=seed) if fam.extra_state is not None else None
        self.batch = fam.example_batch(cfg, batch, generator=torch.Generator(dev).manual_seed(seed), device=dev)
        compile_nets(self.nets, mode=setting.compile, log=None)
        self.compile_s = 0.0  # seconds compiling, wherever it happened (warm-up, normally)
        self.rates: list[float] = []

    def run(self, n: int) -> float:
        """Seconds for n steps, less any compiling inside them (which goes to compile_s)."""
        compiled_before = compile_seconds()
        t0 = time.perf_counter()
        for _ in range(n):
            with torch.autocast(self.dev.type, dtype=self.amp_dtype or torch.float32, enabled=self.setting.amp):
                self.fam.step(self.nets, self.opts, self.batch, self.cfg, self.extra)
        _sync(self.dev)
        spent = compile_seconds() - compiled_before
        self.compile_s += spent
        return time.perf_counter() - t0 - spent


def bench_settings(
    *, family: str, image_size: int, channels: int, batch: int, settings: list[Setting], device: str = "cpu",
    steps: int = 10, warmup: int = 3, repeats: int = 5, overrides: dict[str, str] | None = None, seed: int = 0,
) -> list[dict[str, Any]]:
    """Median images/s of each setting over `repeats` rounds; each round times a block of `steps` train steps
    of every setting, in an order rotated by one each round, after `warmup` untimed steps of each (at least
    n_critic when compiling, so StarGAN's G step compiles before timing). One result per setting, with its
    compile seconds and its median's ratio to the first setting's.

    One image = one sample of the batch: for CycleGAN's unpaired kind one (A, B) pair, i.e. one official
    iteration at batch 1 (the official train.py counts iterations the same way).
    """
    fam = get_family(family)
    dev = torch.device(device)
    cfg = _config(fam, family=family, image_size=image_size, channels=channels, overrides=overrides)
    # One train_step is one iteration (StarGAN: one D step, and a G step every n_critic-th call): a timed
    # block of a multiple of n_critic calls holds the same number of G steps wherever it starts.
    n_critic = getattr(cfg, "n_critic", 1)
    if steps % n_critic:
        raise ValueError(f"steps={steps} must be a multiple of {family}'s n_critic={n_critic}")
    if not settings:
        raise ValueError("give at least one setting to time")
    for s in settings:
        check_gpu_compile(s.compile, on_gpu=dev.type == "cuda", key="--compile")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    load_before = _load()
    runners = [_Runner(fam, cfg, s, batch=batch, dev=dev, seed=seed) for s in settings]
    for r in runners:
        r.run(max(warmup, n_critic) if r.setting.compile != "off" else warmup)
    for i in range(repeats):
        shift = i % len(runners)
        for r in runners[shift:] + runners[:shift]:
            r.rates.append(batch * steps / max(r.run(steps), 1e-9))
    load_after = _load()
    base = statistics.median(runners[0].rates)
    common = {
        "family": family, "image_size": image_size, "channels": channels, "batch": batch,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu {platform.machine()}",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "steps_per_repeat": steps,
        "repeats": repeats, "warmup": warmup, "interleaved": len(runners), "load_before": load_before,
        "load_after": load_after,
        "params": {k: sum(p.numel() for p in v.parameters()) for k, v in runners[0].nets.items()},
        "config": dataclasses.asdict(cfg), "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    return [
        {**common, "setting": r.setting.label, "amp": r.setting.amp, "compile": r.setting.compile,
         "layout": r.setting.layout, "channels_last": r.channels_last,
         "img_per_s_median": statistics.median(r.rates), "img_per_s_all": r.rates,
         "ratio_to_first": statistics.median(r.rates) / base if base > 0 else 0.0, "compile_s": r.compile_s}
        for r in runners
    ]


def bench(
    *, family: str, image_size: int, channels: int, batch: int, device: str = "cpu", steps: int = 10,
    warmup: int = 3, repeats: int = 5, amp: bool = False, overrides: dict[str, str] | None = None, seed: int = 0,
    compile: str = "off", layout: str = "auto",
) -> dict[str, Any]:
    """Median images/s over `repeats` timed blocks of `steps` train steps, after `warmup` untimed steps: one
    setting of `bench_settings`."""
    setting = Setting(compile=compile, amp=amp, layout=layout)
    return bench_settings(family=family, image_size=image_size, channels=channels, batch=batch,
                          settings=[setting], device=device, steps=steps, warmup=warmup, repeats=repeats,
                          overrides=overrides, seed=seed)[0]


def graph_breaks(
    *, family: str, image_size: int, channels: int, batch: int, overrides: dict[str, str] | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """What torch.compile makes of each network of `family`: `torch._dynamo.explain` on the inputs of its first
    training-mode call in one eager train step (n_critic steps for StarGAN, so G is called): graphs, graph
    breaks and their reasons, one row per network."""
    fam = get_family(family)
    cfg = _config(fam, family=family, image_size=image_size, channels=channels, overrides=overrides)
    torch.manual_seed(seed)
    nets = fam.build(cfg)
    opts = fam.build_optimizers(cfg, nets)
    extra = fam.extra_state(cfg, opts, seed=seed) if fam.extra_state is not None else None
    data = fam.example_batch(cfg, batch, generator=torch.Generator().manual_seed(seed))
    calls: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    def keep(name: str) -> Any:
        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
            calls.setdefault(name, (detached, kwargs))
        return hook

    handles = [net.register_forward_pre_hook(keep(name), with_kwargs=True) for name, net in nets.items()]
    for _ in range(getattr(cfg, "n_critic", 1)):
        fam.step(nets, opts, data, cfg, extra)
    for handle in handles:
        handle.remove()
    rows = []
    for name, (args, kwargs) in calls.items():
        explained = torch._dynamo.explain(nets[name])(*args, **kwargs)
        rows.append({"family": family, "net": name, "graphs": explained.graph_count,
                     "graph_breaks": explained.graph_break_count,
                     "reasons": sorted({str(b.reason) for b in explained.break_reasons})})
    return rows


def format_breaks(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'family':<10} {'net':<6} {'graphs':>6} {'breaks':>6}  reasons"]
    for r in rows:
        lines.append(f"{r['family']:<10} {r['net']:<6} {r['graphs']:>6} {r['graph_breaks']:>6}  "
                     f"{'; '.join(r['reasons']) or '-'}")
    return "\n".join(lines)


def _load() -> list[float]:
    """The 1, 5 and 15 minute load averages: how busy the machine was (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def format_table(results: list[dict[str, Any]]) -> str:
    head = (f"{'family':<10} {'size':>5} {'ch':>3} {'batch':>6} {'amp':>5} {'compile':>15} {'layout':>13} "
            f"{'threads':>7} {'img/s':>10} {'ratio':>6} {'compile_s':>9}  device")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r['family']:<10} {r['image_size']:>5} {r['channels']:>3} {r['batch']:>6} {str(r['amp']):>5} "
            f"{r.get('compile', 'off'):>15} {r.get('layout', 'auto'):>13} {r['threads']:>7} "
            f"{r['img_per_s_median']:>10.1f} {r.get('ratio_to_first', 1.0):>6.2f} {r.get('compile_s', 0.0):>9.1f}  "
            f"{r['device']}"
        )
    loads = sorted({(tuple(r.get("load_before", [])), tuple(r.get("load_after", []))) for r in results})
    for before, after in loads:
        if before:
            lines.append(f"load average before {'/'.join(map(str, before))}, after {'/'.join(map(str, after))}")
    return "\n".join(lines)


def write_json(results: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    return path
