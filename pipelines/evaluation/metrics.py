"""Evaluation formulas beyond the offline evaluator's: KID (Bińkowski et al. 2018), real-data feature
statistics cached per dataset manifest in the store, and the per-family task-metric hooks (`TASK_METRICS`).

FID itself is `pipelines.evaluation.evaluator.frechet_distance` applied to Inception pool features.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pipelines.spec.defaults import KID_SUBSET_SIZE, KID_SUBSETS


def polynomial_kernel(x: np.ndarray, y: np.ndarray, *, degree: int = 3, gamma: float | None = None,
                      coef: float = 1.0) -> np.ndarray:
    """k(x, y) = (gamma <x, y> + coef)^degree with gamma = 1/d by default (KID's kernel)."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef) ** degree


def mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    """The unbiased MMD² estimate of the KID paper's code (equal subset sizes m):

    sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (m (m-1)) - 2 sum_{i, j} k(x_i, y_j) / m².
    It can be negative when the two sets come from one distribution.
    """
    m = k_xx.shape[0]
    off_xx = k_xx.sum() - np.trace(k_xx)
    off_yy = k_yy.sum() - np.trace(k_yy)
    return float((off_xx + off_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kernel_distance(
    real: np.ndarray, fake: np.ndarray, *, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: mean and standard deviation of the unbiased polynomial-kernel MMD² over random subsets.

    Each subset draws `subset_size` real and `subset_size` fake feature vectors without replacement (capped at
    the smaller set), as in the paper's code (100 subsets of 1,000). Computed in float64.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(real)} real and {len(fake)} fake")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        values.append(mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(x, y), polynomial_kernel(y, y)))
    return float(np.mean(values)), float(np.std(values))


@dataclass
class FeatureStats:
    """A feature network's statistics of one image set: mean, covariance (float64) and the features (for KID)."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureStats:
        f64 = np.asarray(features, np.float64)
        return cls(mu=f64.mean(axis=0), sigma=np.cov(f64, rowvar=False), features=np.asarray(features, np.float32))

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, mu=self.mu, sigma=self.sigma, features=self.features)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> FeatureStats:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(mu=z["mu"], sigma=z["sigma"], features=z["features"])


def stats_key(*, manifest_digest: str, network: str, split: str, n: int) -> str:
    """Where the real statistics of `network` on `split` (first n images) of a dataset live in the store."""
    return f"cache/stats/{manifest_digest}/{network}-{split}-{n}.npz"


def cached_real_stats(store: Any, key: str, compute: Callable[[], np.ndarray]) -> tuple[FeatureStats, bool]:
    """The cached statistics at `key`, else `compute()`'s features summarised and stored; returns (stats, hit)."""
    if store.exists(key):
        return FeatureStats.from_bytes(store.get_bytes(key)), True
    stats = FeatureStats.of(compute())
    store.put_bytes(key, stats.to_bytes())
    return stats, False


@dataclass(frozen=True, kw_only=True)
class TaskInputs:
    """What a family's task metrics may use. Families with paired or conditional data read what they need
    from `dataset_url`; the unconditional ones use the generated images and the evaluator's classes."""

    family: str
    generator: nn.Module  # as loaded from the registry (exported graph)
    fake: torch.Tensor | None  # generated images, float in [-1, 1], (n, C, H, W); None for the conditional
    #                            families, which make their own from the dataset's held-out conditioning
    real: np.ndarray  # real images of the evaluation split, uint8 (N, C, H, W)
    real_labels: np.ndarray  # int64 (N,), -1 where unlabelled
    fake_probs: np.ndarray | None  # the offline evaluator's class probabilities of `fake` (None: no evaluator)
    class_names: list[str] | None
    dataset_url: str
    seed: int
    model_cfg: Any = None  # the family's Config of the model (the conditional families need it)
    # Image-to-image families (their hooks read the held-out pairs/domains from `dataset_url`):
    reverse_generator: nn.Module | None = None  # CycleGAN: the registered model of the other direction
    direction: str = "AtoB"  # what `generator` maps: dataset a -> b ("AtoB") or b -> a
    store_url: str = ""  # where evaluator caches live (domain classifiers, attribute evaluators)
    split: str = ""  # held-out split ("": test, else train)
    n: int = 0  # samples asked for (0: the hook's default)


def class_balance_metrics(inputs: TaskInputs) -> dict[str, float]:
    """Unconditional GANs on labelled data: do the samples cover the classes as the real data does?

    eval/class_kl:      KL(real class frequencies || generated class frequencies), the generated ones
                        counted by the evaluator's argmax with add-one smoothing (0 when they match).
    eval/mode_coverage: share of classes whose generated frequency is at least half the real one.
    """
    if inputs.fake_probs is None or not inputs.class_names or (inputs.real_labels < 0).all():
        return {}
    k = len(inputs.class_names)
    labels = inputs.real_labels[inputs.real_labels >= 0]
    p_real = np.bincount(labels, minlength=k)[:k] / len(labels)
    counts = np.bincount(inputs.fake_probs.argmax(axis=1), minlength=k)[:k]
    p_fake = (counts + 1.0) / (counts.sum() + k)
    present = p_real > 0
    kl = float(np.sum(p_real[present] * np.log(p_real[present] / p_fake[present])))
    coverage = float(np.mean(counts[present] / counts.sum() >= 0.5 * p_real[present]))
    return {"eval/class_kl": kl, "eval/mode_coverage": coverage}


def conditional_metrics(inputs: TaskInputs) -> dict[str, float]:
    """StarGAN attribute accuracy / Text2Img caption consistency (pipelines.evaluation.conditional.task_metrics)."""
    from pipelines.evaluation.conditional import task_metrics

    return task_metrics(inputs)


# Per-family task metrics: family name -> TaskInputs -> eval/* values. Add a family's entry with the family.
def translation_metrics(inputs: TaskInputs) -> dict[str, float]:
    """Pix2Pix L1/PSNR/SSIM against targets, CycleGAN cycle L1, class preservation and per-domain Fréchet
    distance (pipelines/evaluation/i2i.py; imported here on use, it loads the dataset and trains domain classifiers)."""
    from pipelines.evaluation.i2i import registered_task_metrics

    return registered_task_metrics(inputs)


# Per-family task metrics: family name -> TaskInputs -> eval/* values. Add a family's entry with the family.
TASK_METRICS: dict[str, Callable[[TaskInputs], dict[str, float]]] = {
    "dcgan": class_balance_metrics,
    "vanilla": class_balance_metrics,
    "stargan": conditional_metrics,
    "text2img": conditional_metrics,
    "pix2pix": translation_metrics,
    "cyclegan": translation_metrics,
}
