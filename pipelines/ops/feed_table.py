"""`ganpipe bench-data --feed-table`: the CPU cores per GPU that reading needs to feed each family at its paper
config, computed from the per-core decode rates a `bench-data` run measured (never typed by hand).

Targets are the official implementations' training rates on one H200 (the issue's measurements), in decoded
images per second: a pix2pix or CycleGAN sample is two images. A rate of N decode workers counts as N cores'
work: the per-core rate at a size is the rate of the largest worker count measured there divided by that
count, so whatever scaling a machine loses is in it. Cores per GPU = ceil(target / per-core rate) decode
workers + 1 for the training process (its training thread; the reading thread beside it verifies, orders and
collates, and is the lighter part).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Target:
    """A family's paper config and its official training rate on one H200."""

    family: str
    config: str
    size: int
    samples_per_s: float
    images_per_sample: int = 1

    @property
    def images_per_s(self) -> float:
        return self.samples_per_s * self.images_per_sample


OFFICIAL_H200 = (
    Target(family="DCGAN", config="64 px, batch 64", size=64, samples_per_s=6762.0),
    Target(family="StarGAN", config="128 px, batch 16", size=128, samples_per_s=623.0),
    Target(family="pix2pix", config="256 px, batch 1", size=256, samples_per_s=85.6, images_per_sample=2),
    Target(family="CycleGAN", config="256 px, batch 1", size=256, samples_per_s=13.1, images_per_sample=2),
)


def decode_row(*, size: int, pool: str, workers: int, runs: list[float], images: int, batch: int) -> dict[str, Any]:
    """One decode measurement as bench-data's JSON row (best of `runs` as img_per_s)."""
    where = "training thread" if workers == 0 else f"{workers} decode {pool}{'es' if pool == 'process' else 's'}"
    return {"what": f"decode {size}px, {where}", "kind": "decode", "size": size, "pool": pool, "workers": workers,
            "img_per_s": max(runs), "runs": runs, "images": images, "batch": batch}  # fmt: skip


def per_core_rates(rows: Iterable[dict[str, Any]], *, pool: str) -> dict[int, tuple[float, int]]:
    """size -> (images/s per decode worker, the worker count it comes from) for `pool`'s decode rows."""
    best: dict[int, tuple[float, int]] = {}
    for row in rows:
        if row.get("kind") != "decode" or row["pool"] != pool or row["workers"] < 1:
            continue
        size, workers = int(row["size"]), int(row["workers"])
        if size not in best or workers > best[size][1]:
            best[size] = (row["img_per_s"] / workers, workers)
    return best


def cores_per_gpu(images_per_s: float, per_core: float) -> int:
    """Decode workers to read `images_per_s`, plus one core for the training process."""
    return math.ceil(images_per_s / per_core) + 1


def scaling(rows: Iterable[dict[str, Any]], *, pool: str) -> dict[int, dict[int, float]]:
    """size -> {workers: rate / (workers x rate of 1 worker)}: 1.0 is perfect scaling."""
    rates: dict[int, dict[int, float]] = {}
    for row in rows:
        if row.get("kind") == "decode" and row["pool"] == pool and row["workers"] >= 1:
            rates.setdefault(int(row["size"]), {})[int(row["workers"])] = row["img_per_s"]
    return {size: {w: r / (w * by[1]) for w, r in sorted(by.items())} for size, by in rates.items() if 1 in by}


def format_feed_table(rows: list[dict[str, Any]], *, pool: str = "process", factors: tuple[float, ...] = (1.0, 3.0),
                      targets: tuple[Target, ...] = OFFICIAL_H200) -> str:  # fmt: skip
    """The markdown table: per family, the target rate(s) and the cores per GPU that feed them."""
    per_core = per_core_rates(rows, pool=pool)
    rate_heads = " | ".join(f"{'official' if f == 1 else f'{f:g}x'} img/s" for f in factors)
    core_heads = " | ".join(f"cores/GPU at {'official' if f == 1 else f'{f:g}x'}" for f in factors)
    lines = [f"| family | paper config | decode img/s per core ({pool} pool) | {rate_heads} | {core_heads} |",
             "|---" * (3 + 2 * len(factors)) + "|"]  # fmt: skip
    for t in targets:
        rates = " | ".join(f"{t.images_per_s * f:,.1f}" for f in factors)
        if t.size not in per_core:
            cores = " | ".join("not measured" for _ in factors)
            lines.append(f"| {t.family} | {t.config} | not measured at {t.size} px | {rates} | {cores} |")
            continue
        rate, workers = per_core[t.size]
        cores = " | ".join(str(cores_per_gpu(t.images_per_s * f, rate)) for f in factors)
        lines.append(f"| {t.family} | {t.config} | {rate:,.0f} (from {workers} workers) | {rates} | {cores} |")
    return "\n".join(lines)
