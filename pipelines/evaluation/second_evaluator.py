"""The second evaluator: a digit classifier that differs from the first (pipelines/evaluation/evaluator.py) in
architecture, seed and training split, so that a recipe tuned against one judge is checked by another.

The first is three 3x3 conv blocks with batch norm and global average pooling, seed 0, all training digits.
This one is LeNet-like: two 5x5 conv layers (20, 40 channels) without batch norm, max pooling, a 4x4 spatial
map flattened into a two-layer head with dropout (its 256-d hidden layer is the feature space), seed 1, and a seeded 75%
of the training digits. It is scored on the same held-out real digits and cached the same way, once per
manifest digest and version of this network, at `<store>/cache/evaluator2/DIGEST-ARCH.pt`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from pipelines.evaluation.evaluator import Evaluator, cached_evaluator, read_url, train_evaluator

ARCH = "lenet5x5-v3"  # changes to the network or its training change this name, and with it the cache key
SEED = 1
TRAIN_SHARE = 0.75  # of the training split: a different subset from the first evaluator's (all of it)
FEATURES = 256


class SecondNet(nn.Module):
    """5x5 convs (20, 40) with ELU and max pooling, no batch norm -> 4x4 map -> 256-d features -> logits.
    ~5.8 M multiply-adds per 32x32 image against the first's ~9.7 M; with 3/4 of its images for 1/2 of its
    epochs, about a fifth of the first's training work, which the demo pays in a fresh folder."""

    def __init__(self, *, channels: int, n_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 20, 5, padding=2), nn.ELU(), nn.MaxPool2d(2),
            nn.Conv2d(20, 40, 5, padding=2), nn.ELU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Dropout(0.25),
            nn.Linear(40 * 16, FEATURES), nn.ELU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Linear(FEATURES, n_classes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return features, self.head(features)


def _second_net(meta: dict[str, Any]) -> nn.Module:
    return SecondNet(channels=meta["channels"], n_classes=len(meta["class_names"]))


def second_evaluator_key(manifest_digest: str) -> str:
    return f"cache/evaluator2/{manifest_digest}-{ARCH}.pt"


def training_subset(n: int, *, seed: int = SEED, share: float = TRAIN_SHARE) -> np.ndarray:
    """The sorted indices of the training images this evaluator learns from (seeded, so the same every time)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return np.sort(order[: max(1, int(n * share))])


def ensure_second_evaluator(*, store_url: str, dataset_url: str, manifest: Any, s3_endpoint: str | None = None,
                            epochs: int = 10, progress: bool = False) -> str | None:
    """Train (once per manifest digest) and cache the second evaluator in the store; returns its URL, or None
    for a dataset without labels."""

    def fit(train_x: np.ndarray, train_y: np.ndarray, meta: dict[str, Any]) -> nn.Module:
        subset = training_subset(len(train_x))
        meta.update(arch=ARCH, seed=SEED, train_share=TRAIN_SHARE, train_n=int(len(subset)))
        return train_evaluator(train_x[subset], train_y[subset], class_names=meta["class_names"], epochs=epochs,
                               batch_size=64, seed=SEED, progress=progress, build_net=lambda: _second_net(meta),
                               lr=2e-3)

    return cached_evaluator(store_url=store_url, dataset_url=dataset_url, manifest=manifest,
                            key=second_evaluator_key(manifest.digest), s3_endpoint=s3_endpoint, fit=fit)


def load_second_evaluator(url: str, *, s3_endpoint: str | None = None,
                          device: torch.device | str = "cpu") -> Evaluator:
    return Evaluator.from_bytes(read_url(url, s3_endpoint=s3_endpoint), device=device, net_factory=_second_net)
