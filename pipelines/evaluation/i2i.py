"""Task metrics of the image-to-image families, on the dataset's held-out split: Pix2Pix L1/PSNR/SSIM of G(x)
against y (with the identity baseline x against y), CycleGAN cycle L1 both ways, class preservation judged by
each domain's offline classifier, and the Fréchet distance per domain.

Used three ways: every `loop.eval_every` steps on rank 0 and at the end of training (`translation_metrics_fn`),
and by `ganpipe eval` through `evaluation.metrics.TASK_METRICS` (`registered_task_metrics`).
Metric names (`eval/*`) are in dataset terms: A = the dataset's `a` images (domain_a), B = its `b` images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipelines.evaluation.evaluator import Evaluator, classifier_score, feature_stats, frechet_distance, train_evaluator

I2I_KINDS = ("paired", "unpaired")
DOMAINS = ("domain_a", "domain_b")
DEFAULT_N = 1000  # held-out samples per evaluation during training (all of them when fewer)
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03  # Wang et al. 2004's constants
DATA_RANGE = 2.0  # images are in [-1, 1]
MIN_MSE = 1e-10  # PSNR of identical images: 10 log10(4 / 1e-10) ≈ 106 dB instead of inf

Translate = Callable[[Tensor], Tensor]


# --- formulas -----------------------------------------------------------------------------------------------


def l1(x: Tensor, y: Tensor) -> float:
    """Mean absolute difference over all pixels, on the [-1, 1] scale of the training loss."""
    return float((x.double() - y.double()).abs().mean())


def psnr(x: Tensor, y: Tensor, *, data_range: float = DATA_RANGE) -> float:
    """Mean over images of 10 log10(data_range² / MSE_i) (dB); MSE floored at 1e-10 so identical images stay finite."""
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1).clamp_min(MIN_MSE)
    return float((10 * torch.log10(data_range**2 / mse)).mean())


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """The normalised 2-D Gaussian window (size x size, float64) of SSIM."""
    d = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(d**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: Tensor, y: Tensor, *, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, k1: float = SSIM_K1,
         k2: float = SSIM_K2) -> float:
    """Mean SSIM (Wang et al. 2004) of images in [-1, 1], computed on the intensities (x + 1) / 2 in [0, 1] (data
    range 1; SSIM's luminance term is not shift-invariant, and the standard defines it on non-negative
    intensities); 11x11 Gaussian window (σ 1.5), K1 0.01, K2 0.03, over the window positions fully inside the
    image ("valid"), every channel and every image; (N, C, H, W) with H, W >= window.

    SSIM = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)), C_i = K_i²; local moments are
    Gaussian-weighted, variances clamped at 0 (rounding). Computed in float64.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim needs two (N, C, H, W) tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    if min(x.shape[-2:]) < window:
        raise ValueError(f"ssim's {window}x{window} window needs images at least that large, got {tuple(x.shape)}")
    x, y = (x.double() + 1) / 2, (y.double() + 1) / 2
    channels = x.shape[1]
    w = gaussian_window(window, sigma).to(x.device).expand(channels, 1, window, window)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, w, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = (blur(x * x) - mu_x**2).clamp_min(0)
    var_y = (blur(y * y) - mu_y**2).clamp_min(0)
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = k1**2, k2**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(s.mean())


def image_metrics(x: Tensor, y: Tensor, *, prefix: str = "eval/", suffix: str = "") -> dict[str, float]:
    """L1, PSNR and SSIM of x against y (SSIM only when the images are at least 11 px)."""
    out = {f"{prefix}l1{suffix}": l1(x, y), f"{prefix}psnr{suffix}": psnr(x, y)}
    if min(x.shape[-2:]) >= SSIM_WINDOW:
        out[f"{prefix}ssim{suffix}"] = ssim(x, y)
    return out


# --- the families' task metrics -----------------------------------------------------------------------------


@torch.no_grad()
def translate_all(fn: Translate, x: Tensor, *, device: torch.device | str = "cpu", batch: int = 200) -> Tensor:
    """fn over x in batches on `device`; CPU float32 in [-1, 1]."""
    out = [fn(x[i : i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)]
    return torch.cat(out).clamp(-1, 1) if out else x.new_empty(x.shape)


def pix2pix_metrics(translate: Translate, source: Tensor, target: Tensor, *,
                    device: torch.device | str = "cpu") -> dict[str, float]:
    """eval/l1, eval/psnr, eval/ssim of G(x) against y, and two baselines a trained G must beat: the same of x
    against y (`*_identity`: a G that returns its input), and eval/l1_median_target, the L1 of the single image
    that is best in L1 for these very targets (their per-pixel median: a G that ignores its input)."""
    fake = translate_all(translate, source, device=device)
    median = target.median(dim=0, keepdim=True).values.expand_as(target)
    return {**image_metrics(fake, target), **image_metrics(source, target, suffix="_identity"),
            "eval/l1_median_target": l1(median, target)}


def cyclegan_metrics(
    to_b: Translate, to_a: Translate, a: Tensor, b: Tensor, *, label_a: np.ndarray | None = None,
    label_b: np.ndarray | None = None, evaluators: dict[str, Evaluator] | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Cycle L1 both ways, eval/cycle_l1_A = mean |F(G(a)) - a| and eval/cycle_l1_B = mean |G(F(b)) - b|; with the
    domain classifiers (`evaluators` keyed "domain_a"/"domain_b", trained on the same class names):
    eval/class_preserved_AtoB = accuracy of argmax clf_B(G(a)) against label_a (eval/class_preserved_BtoA the
    reverse), the `*_identity` baseline clf_B(a) against label_a (no translation at all), and eval/fd_B /
    eval/fd_A, the Fréchet distance of G(a) / F(b) to the real held-out B / A in that classifier's feature space,
    with eval/fd_B_identity / eval/fd_A_identity the same of the untranslated a / b (what translating must beat).
    """
    fake_b = translate_all(to_b, a, device=device)
    fake_a = translate_all(to_a, b, device=device)
    out = {
        "eval/cycle_l1_A": l1(translate_all(to_a, fake_b, device=device), a),
        "eval/cycle_l1_B": l1(translate_all(to_b, fake_a, device=device), b),
    }
    evaluators = evaluators or {}
    for name, fake, source, labels, judge in (
        ("AtoB", fake_b, a, label_a, evaluators.get("domain_b")),
        ("BtoA", fake_a, b, label_b, evaluators.get("domain_a")),
    ):
        if judge is None:
            continue
        features, probs = judge.predict(fake)
        mu, sigma = feature_stats(features)
        out[f"eval/fd_{name[-1]}"] = frechet_distance(mu, sigma, judge.real_mu, judge.real_sigma)
        out[f"eval/cls_score_{name[-1]}"] = classifier_score(probs)
        features_id, probs_id = judge.predict(source)
        mu_id, sigma_id = feature_stats(features_id)
        out[f"eval/fd_{name[-1]}_identity"] = frechet_distance(mu_id, sigma_id, judge.real_mu, judge.real_sigma)
        if labels is not None and (np.asarray(labels) >= 0).any():
            known = np.asarray(labels) >= 0
            out[f"eval/class_preserved_{name}"] = float((probs.argmax(1) == labels)[known].mean())
            out[f"eval/class_preserved_{name}_identity"] = float((probs_id.argmax(1) == labels)[known].mean())
    return out


# --- held-out data and the domain classifiers ----------------------------------------------------------------


def eval_split(manifest: Any) -> str:
    """The held-out split ("test"), or "train" when the dataset holds nothing out."""
    domains = manifest.extra.get("domains")
    counts = [d["counts"].get("test", 0) for d in domains.values()] if domains else [manifest.counts.get("test", 0)]
    return "test" if min(counts) > 0 else "train"


def to_unit(images: np.ndarray) -> Tensor:
    """uint8 (N, C, H, W) -> float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float() / 127.5 - 1.0


def heldout(dataset_url: str, manifest: Any, *, n: int = DEFAULT_N, split: str | None = None,
            s3_endpoint: str | None = None) -> dict[str, Any]:
    """The first n samples (per domain) of the held-out split in manifest order: {"a", "b"} float [-1, 1] and
    {"label_a", "label_b"} int64 (-1 unknown), plus "split"; the same images at every evaluation."""
    from data_prep.batches import load_split_arrays

    split = split or eval_split(manifest)
    arrays = load_split_arrays(dataset_url, split=split, s3_endpoint=s3_endpoint)
    if manifest.kind == "paired":
        arrays["label_a"] = arrays["label_b"] = arrays["label"]
    out: dict[str, Any] = {"split": split}
    for side in ("a", "b"):
        out[side] = to_unit(arrays[side][:n])
        out[f"label_{side}"] = np.asarray(arrays[f"label_{side}"][:n], np.int64)
    return out


def domain_evaluator_key(manifest_digest: str, domain: str) -> str:
    return f"cache/evaluator/{manifest_digest}-{domain}.pt"


def ensure_domain_evaluators(
    *, store_url: str, dataset_url: str, manifest: Any, s3_endpoint: str | None = None, epochs: int = 20,
    progress: bool = False,
) -> dict[str, str]:
    """An offline classifier per labelled domain of an unpaired dataset, trained once per (manifest digest,
    domain) on that domain's train images and labels (`train_evaluator`) and cached in the store; returns
    {domain: URL}. Real-data statistics and the held-out accuracy come from the domain's test split. Class
    preservation compares labels across domains, so both domains must have the same class names; a domain
    without labels gets no classifier."""
    from data_prep.batches import load_split_arrays
    from data_prep.storage import open_store

    domains = manifest.extra.get("domains") or {}
    if manifest.kind != "unpaired" or not domains:
        return {}
    store = open_store(store_url, s3_endpoint=s3_endpoint)
    urls: dict[str, str] = {}
    arrays: dict[str, dict[str, Any]] = {}
    for domain, side in zip(DOMAINS, ("a", "b"), strict=True):
        class_names = list(domains.get(domain, {}).get("class_names") or [])
        if not class_names:
            continue
        key = domain_evaluator_key(manifest.digest, domain)
        urls[domain] = f"{store.url.rstrip('/')}/{key}"
        if store.exists(key):
            continue
        for split in ("train", eval_split(manifest)):
            if split not in arrays:
                arrays[split] = load_split_arrays(dataset_url, split=split, s3_endpoint=s3_endpoint)
        train_x, train_y = arrays["train"][side], arrays["train"][f"label_{side}"]
        test = arrays[eval_split(manifest)]
        test_x, test_y = test[side], test[f"label_{side}"]
        labelled = train_y >= 0
        net = train_evaluator(train_x[labelled], train_y[labelled], class_names=class_names, epochs=epochs,
                              batch_size=min(128, int(labelled.sum())), progress=progress)
        meta = {"class_names": class_names, "channels": int(train_x.shape[1]), "image_size": int(train_x.shape[2]),
                "manifest_digest": manifest.digest, "domain": domain}
        ev = Evaluator(net=net, meta=meta, real_mu=np.zeros(1), real_sigma=np.eye(1))
        features, probs = ev.predict(test_x)
        ev.real_mu, ev.real_sigma = feature_stats(features)
        known = test_y >= 0
        meta["test_accuracy"] = float((probs.argmax(1) == test_y)[known].mean()) if known.any() else math.nan
        meta["real"] = {"cls_score": classifier_score(probs), "n": int(len(test_x))}
        store.put_bytes(key, ev.to_bytes())
    if len(urls) == 2 and domains["domain_a"].get("class_names") != domains["domain_b"].get("class_names"):
        return {}  # labels mean different things in the two domains: class preservation is undefined
    return urls


def load_evaluators(urls: dict[str, str], *, s3_endpoint: str | None = None,
                    device: torch.device | str = "cpu") -> dict[str, Evaluator]:
    return {d: Evaluator.load(url, s3_endpoint=s3_endpoint, device=device) for d, url in urls.items()}


# --- wiring: training, `ganpipe eval` ----------------------------------------------------------------------


def _directions(forward: Translate, backward: Translate | None, direction: str) -> tuple[Translate, Translate | None]:
    """(a -> b, b -> a) from a generator's forward (which maps `direction`) and its reverse."""
    return (forward, backward) if direction == "AtoB" else (backward, forward)  # type: ignore[return-value]


def task_metrics(
    kind: str, *, forward: Translate, backward: Translate | None, direction: str, data: dict[str, Any],
    evaluators: dict[str, Evaluator], device: torch.device | str,
) -> dict[str, float]:
    """The task metrics of a `kind` dataset for a generator whose forward maps `direction` (and whose backward, for
    unpaired data, the other way)."""
    to_b, to_a = _directions(forward, backward, direction)
    if kind == "paired":
        source, target = (data["a"], data["b"]) if direction == "AtoB" else (data["b"], data["a"])
        return pix2pix_metrics(forward, source, target, device=device)
    if to_a is None or to_b is None:
        raise ValueError("cycle metrics need both directions of the generator")
    return cyclegan_metrics(to_b, to_a, data["a"], data["b"], label_a=data["label_a"], label_b=data["label_b"],
                            evaluators=evaluators, device=device)


def translation_metrics_fn(
    *, family: Any, model_cfg: Any, dataset_url: str, manifest: Any, evaluator_urls: dict[str, str],
    device: torch.device | str = "cpu", seed: int = 0, n: int = DEFAULT_N, s3_endpoint: str | None = None,
) -> Callable[[nn.Module], dict[str, float]]:
    """A callable G -> eval/* on the first n held-out samples (loaded once), G in the family's inference mode.

    Dropout noise (pix2pix with eval_mode=False) comes from a fork of the global RNG seeded with `seed`, so every
    evaluation sees the same noise and training's RNG is not advanced."""
    from gan_models.i2i_nets import inference

    data = heldout(dataset_url, manifest, n=n, s3_endpoint=s3_endpoint)
    evaluators = load_evaluators(evaluator_urls, s3_endpoint=s3_endpoint, device=device)
    device = torch.device(device)

    def evaluate(g: nn.Module) -> dict[str, float]:
        reverse = family.reverse_generator(g) if family.reverse_generator is not None else None
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                inference(g, eval_mode=getattr(model_cfg, "eval_mode", True)):
            torch.manual_seed(seed)
            return task_metrics(manifest.kind, forward=g, backward=reverse, direction=model_cfg.direction,
                                data=data, evaluators=evaluators, device=device)

    return evaluate


def registered_task_metrics(inputs: Any) -> dict[str, float]:
    """`ganpipe eval`'s hook for both families: the registered graph (fixed in the mode it was exported in) and,
    for CycleGAN, its partner of the other direction, on the first `inputs.n` held-out samples."""
    from data_prep.reader import read_manifest

    manifest = read_manifest(inputs.dataset_url)
    data = heldout(inputs.dataset_url, manifest, n=inputs.n or DEFAULT_N, split=inputs.split or None)
    evaluators = {}
    if manifest.kind == "unpaired" and inputs.store_url:
        urls = ensure_domain_evaluators(store_url=inputs.store_url, dataset_url=inputs.dataset_url,
                                        manifest=manifest)
        evaluators = load_evaluators(urls)
    return task_metrics(manifest.kind, forward=inputs.generator, backward=inputs.reverse_generator,
                        direction=inputs.direction, data=data, evaluators=evaluators, device="cpu")

