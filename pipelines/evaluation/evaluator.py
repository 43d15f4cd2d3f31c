"""The offline evaluator: a small CNN classifier trained on the real prepared data, cached per manifest.

It gives (a) a Fréchet distance between real and generated features (FID's formula in this network's
feature space) and (b) a classifier score (the Inception-score formula with this classifier), plus the share
of samples it classifies with probability >= 0.9 — the "recognisable" check of the demo.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn
from tqdm import tqdm

from data_prep.reader import load_split
from data_prep.storage import open_store
from pipelines.engine.loop import generate

CONFIDENT = 0.9
FEATURES = 128


class EvalNet(nn.Module):
    """Three conv blocks -> 128-d features -> class logits. Small enough to train in seconds on a CPU."""

    def __init__(self, *, channels: int, n_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, FEATURES, 3, padding=1), nn.BatchNorm2d(FEATURES), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(FEATURES, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return features, self.head(features)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), in float64 as in the reference FID code."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # handled below
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # Near-singular product: regularise both covariances slightly, as the reference implementation does.
        offset = np.eye(sigma1.shape[0]) * 1e-6
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def classifier_score(probs: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))): the Inception-score formula with our classifier's probabilities."""
    probs = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
    marginal = probs.mean(axis=0, keepdims=True)
    return float(np.exp((probs * (np.log(probs) - np.log(marginal))).sum(axis=1).mean()))


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def to_unit_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float in [-1, 1]; float tensors are assumed to be in [-1, 1] already."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    return images.float()


def read_url(url: str, *, s3_endpoint: str | None = None) -> bytes:
    """The bytes of one object named by its full URL (a store URL and a key), as cached evaluators are."""
    parent, key = url.rstrip("/").rsplit("/", 1)
    return open_store(parent, s3_endpoint=s3_endpoint).get_bytes(key)


@dataclass
class Evaluator:
    net: nn.Module  # (features, logits) from images in [-1, 1]: EvalNet, or the second evaluator's network
    meta: dict[str, Any]  # class names, image size, channels, held-out accuracy, real statistics
    real_mu: np.ndarray
    real_sigma: np.ndarray
    device: torch.device = torch.device("cpu")

    @torch.no_grad()
    def predict(self, images: np.ndarray | torch.Tensor, *, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """(features, class probabilities) for images (uint8 or [-1, 1] floats)."""
        self.net.eval()
        x = to_unit_range(images)
        feats, probs = [], []
        for i in range(0, len(x), batch):
            f, logits = self.net(x[i : i + batch].to(self.device))
            feats.append(f.float().cpu())
            probs.append(logits.float().softmax(dim=1).cpu())
        return torch.cat(feats).numpy(), torch.cat(probs).numpy()

    def image_metrics(self, images: np.ndarray | torch.Tensor) -> dict[str, float]:
        features, probs = self.predict(images)
        mu, sigma = feature_stats(features)
        return {
            "eval/fd": frechet_distance(mu, sigma, self.real_mu, self.real_sigma),
            "eval/cls_score": classifier_score(probs),
            "eval/confident_share": float((probs.max(axis=1) >= CONFIDENT).mean()),
        }

    def generator_metrics_fn(
        self, *, family: Any, model_cfg: Any, seed: int, n: int = 1000
    ) -> Callable[[nn.Module], dict[str, float]]:
        """A callable G -> eval/* on `n` samples from a fixed seed (the same latents at every evaluation)."""
        inputs = family.generator_inputs(model_cfg, None, n, generator=torch.Generator().manual_seed(seed + 12345))

        def evaluate(generator: nn.Module) -> dict[str, float]:
            return self.image_metrics(generate(generator, inputs))

        return evaluate

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save(
            {"state": self.net.state_dict(), "meta": self.meta,
             "real_mu": torch.from_numpy(self.real_mu), "real_sigma": torch.from_numpy(self.real_sigma)},
            buf,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, device: torch.device | str = "cpu",
                   net_factory: Callable[[dict[str, Any]], nn.Module] | None = None) -> Evaluator:
        """`net_factory`: meta -> an untrained network of the cached weights' architecture (default EvalNet)."""
        blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        meta = blob["meta"]
        net = (net_factory or _eval_net)(meta)
        net.load_state_dict(blob["state"])
        device = torch.device(device)
        return cls(net=net.to(device).eval(), meta=meta, real_mu=blob["real_mu"].numpy(),
                   real_sigma=blob["real_sigma"].numpy(), device=device)

    @classmethod
    def load(cls, url: str, *, s3_endpoint: str | None = None, device: torch.device | str = "cpu") -> Evaluator:
        return cls.from_bytes(read_url(url, s3_endpoint=s3_endpoint), device=device)


def _eval_net(meta: dict[str, Any]) -> nn.Module:
    return EvalNet(channels=meta["channels"], n_classes=len(meta["class_names"]))


def train_evaluator(
    train_images: np.ndarray, train_labels: np.ndarray, *, class_names: list[str], epochs: int = 20,
    batch_size: int = 128, seed: int = 0, progress: bool = False,
    build_net: Callable[[], nn.Module] | None = None, lr: float = 5e-3,
) -> nn.Module:
    """Fit the classifier (EvalNet unless `build_net` gives another) on real labelled images with light shift
    augmentation (seeded, CPU-sized)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # before the network is built: its initial weights come from this seed too
    x = to_unit_range(train_images)
    y = torch.from_numpy(np.asarray(train_labels, np.int64))
    net = build_net() if build_net is not None else EvalNet(channels=x.shape[1], n_classes=len(class_names))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * (len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    net.train()
    bar = tqdm(total=steps, desc="training the evaluator", disable=None if progress else True, leave=False)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            xb = random_shift(x[idx], g)
            loss = F.cross_entropy(net(xb)[1], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
    bar.close()
    return net.eval()


def random_shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    # Generated digits are rarely centred exactly like MNIST's; shifts keep the classifier from keying on that.
    dx, dy = torch.randint(-max_shift, max_shift + 1, (2,), generator=g).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def evaluator_key(manifest_digest: str) -> str:
    return f"cache/evaluator/{manifest_digest}.pt"


def ensure_evaluator(
    *, store_url: str, dataset_url: str, manifest: Any, s3_endpoint: str | None = None, progress: bool = False,
    epochs: int = 20,
) -> str | None:
    """Train (once per manifest digest) and cache the evaluator in the store; returns its URL.

    Returns None for a dataset without labels: the classifier needs classes to learn features from.
    """

    def fit(train_x: np.ndarray, train_y: np.ndarray, meta: dict[str, Any]) -> nn.Module:
        return train_evaluator(train_x, train_y, class_names=meta["class_names"], epochs=epochs, progress=progress)

    return cached_evaluator(store_url=store_url, dataset_url=dataset_url, manifest=manifest,
                            key=evaluator_key(manifest.digest), s3_endpoint=s3_endpoint, fit=fit)


def cached_evaluator(
    *, store_url: str, dataset_url: str, manifest: Any, key: str, s3_endpoint: str | None,
    fit: Callable[[np.ndarray, np.ndarray, dict[str, Any]], nn.Module],
) -> str | None:
    """The URL of the evaluator cached at `key` in the store, trained first if missing: `fit(train images, train
    labels, meta)` returns the trained net (and may add to `meta`), which is judged on the held-out split and
    stored. None for a dataset without labels."""
    if not manifest.class_names:
        return None
    store = open_store(store_url, s3_endpoint=s3_endpoint)
    url = f"{store.url.rstrip('/')}/{key}"
    if store.exists(key):
        return url
    train_x, train_y = load_split(dataset_url, split="train", s3_endpoint=s3_endpoint)
    test_x, test_y = load_split(dataset_url, split="test", s3_endpoint=s3_endpoint)
    meta = {"class_names": list(manifest.class_names), "channels": int(train_x.shape[1]),
            "image_size": int(train_x.shape[2]), "manifest_digest": manifest.digest}
    net = fit(train_x, train_y, meta)
    store.put_bytes(key, judged_on_real(net, meta=meta, test_x=test_x, test_y=test_y).to_bytes())
    return url


def judged_on_real(net: nn.Module, *, meta: dict[str, Any], test_x: np.ndarray, test_y: np.ndarray) -> Evaluator:
    """An Evaluator around a trained `net`, with the held-out real digits' feature statistics (the Fréchet
    distance's reference), test accuracy, classifier score and confident share added to `meta`."""
    evaluator = Evaluator(net=net, meta=meta, real_mu=np.zeros(1), real_sigma=np.eye(1))
    features, probs = evaluator.predict(test_x)
    evaluator.real_mu, evaluator.real_sigma = feature_stats(features)
    meta["test_accuracy"] = float((probs.argmax(axis=1) == test_y).mean())
    meta["real"] = {"cls_score": classifier_score(probs),
                    "confident_share": float((probs.max(axis=1) >= CONFIDENT).mean()),
                    "n": int(len(test_x))}
    return evaluator
