"""`ganpipe bench`: training-step throughput of a family on synthetic in-memory data, CPU or GPU.

Imports neither Ray nor MLflow, so it runs on a bare GPU box with only torch installed.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import time
import typing
from pathlib import Path
from typing import Any

import torch

from gan_models import get_family
from pipelines.engine.precision import to_channels_last, wants_channels_last
from pipelines.spec.config import parse_value


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels are asynchronous: time only finished work


def bench(
    *, family: str, image_size: int, channels: int, batch: int, device: str = "cpu", steps: int = 10,
    warmup: int = 3, repeats: int = 5, amp: bool = False, overrides: dict[str, str] | None = None, seed: int = 0,
) -> dict[str, Any]:
    """Median images/s over `repeats` timed blocks of `steps` train steps, after `warmup` untimed steps.

    One image = one sample of the batch: for CycleGAN's unpaired kind one (A, B) pair, i.e. one official
    iteration at batch 1 (the official train.py counts iterations the same way).
    """
    fam = get_family(family)
    dev = torch.device(device)
    hints = typing.get_type_hints(fam.config)
    values: dict[str, Any] = {"image_size": image_size, "channels": channels}
    for key, raw in (overrides or {}).items():
        if key not in hints:
            raise ValueError(f"unknown {family} config key {key!r}; valid: {', '.join(hints)}")
        values[key] = parse_value(hints[key], raw, key)
    cfg = fam.config(**values)  # built once with the overrides, so they may fix what the size requires
    # One train_step is one iteration (StarGAN: one D step, and a G step every n_critic-th call): a timed
    # block of a multiple of n_critic calls holds the same number of G steps wherever it starts.
    n_critic = getattr(cfg, "n_critic", 1)
    if steps % n_critic:
        raise ValueError(f"steps={steps} must be a multiple of {family}'s n_critic={n_critic}")
    torch.manual_seed(seed)
    nets = {k: v.to(dev) for k, v in fam.build(cfg).items()}
    amp_dtype = torch.bfloat16 if amp else None
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if wants_channels_last(dev, amp_dtype):  # the layout training uses for this device and precision
        for net in nets.values():
            to_channels_last(net)
    opts = fam.build_optimizers(cfg, nets)
    extra = fam.extra_state(cfg, opts, seed=seed) if fam.extra_state is not None else None
    batch_data = fam.example_batch(cfg, batch, generator=torch.Generator(dev).manual_seed(seed), device=dev)

    def run(n: int) -> None:
        for _ in range(n):
            with torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=amp):
                fam.step(nets, opts, batch_data, cfg, extra)

    run(warmup)
    _sync(dev)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(steps)
        _sync(dev)
        rates.append(batch * steps / (time.perf_counter() - t0))
    return {
        "family": family, "image_size": image_size, "channels": channels, "batch": batch,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu {platform.machine()}",
        "threads": torch.get_num_threads(), "amp": amp, "torch": torch.__version__,
        "img_per_s_median": statistics.median(rates), "img_per_s_all": rates,
        "steps_per_repeat": steps, "repeats": repeats, "warmup": warmup,
        "params": {k: sum(p.numel() for p in v.parameters()) for k, v in nets.items()},
        "config": dataclasses.asdict(cfg), "date": time.strftime("%Y-%m-%d"),
    }


def format_table(results: list[dict[str, Any]]) -> str:
    head = f"{'family':<10} {'size':>5} {'ch':>3} {'batch':>6} {'amp':>5} {'threads':>7} {'img/s':>10}  device"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r['family']:<10} {r['image_size']:>5} {r['channels']:>3} {r['batch']:>6} {str(r['amp']):>5} "
            f"{r['threads']:>7} {r['img_per_s_median']:>10.1f}  {r['device']}"
        )
    return "\n".join(lines)


def write_json(results: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    return path
