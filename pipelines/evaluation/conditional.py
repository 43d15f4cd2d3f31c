"""Task metrics of the conditional families (StarGAN, Text2Img), judged by an attribute evaluator.

The evaluator is a small CNN trained on the real prepared data and cached per manifest digest in the store: a
digit-class head (when the data has classes) and one output per attribute (BCE; a softmax over domains for
exclusive data). For `captioned` sets the attributes are read from the captions (the built-in mnist5k set says
colour, stroke and background in every caption). Its pooled features give the offline Fréchet distance.

StarGAN: every held-out image translated by every single-attribute change (the paper's figure); accuracy of
the changed attribute as the evaluator judges it, per attribute and mean, against the floor of the untranslated
input; attributes kept; reconstruction L1 |G(G(x, c'), c) - x|; Fréchet distance.
Text2Img: images generated from held-out captions; the evaluator's digit and colour against the caption's, and
the same score against mismatched captions as the floor; Fréchet distance.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data_prep import render
from data_prep.storage import open_store
from pipelines.engine.loop import generate
from pipelines.evaluation.evaluator import feature_stats, frechet_distance, random_shift, read_url, to_unit_range

FEATURES = 64
COLOURS = render.GROUPS[0]  # ("red", "green", "blue"): the colour words of the built-in captions
SPREAD_PROMPTS, SPREAD_DRAWS = 25, 8  # eval/z_spread: this many captions, each drawn with this many z


class AttrNet(nn.Module):
    """Three conv blocks -> 64-d features -> class and attribute logits. Narrower than the images kind's
    EvalNet (16-32-64 channels): 3.5x less compute, which the 2-core demo needs, and colour, stroke and
    background are easy to see.

    RGB input gets a fourth channel, the chroma max_c(x) - min_c(x): a coloured stroke on black or on white is
    then the same bright stroke on a dark ground, so the digit class does not have to be learnt once per colour
    and background (3 epochs on mnist5k-attributes: 43% held-out class accuracy without it)."""

    def __init__(self, *, channels: int, n_outputs: int) -> None:
        super().__init__()
        self.chroma = channels == 3
        self.body = nn.Sequential(
            nn.Conv2d(channels + int(self.chroma), 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, FEATURES, 3, padding=1), nn.BatchNorm2d(FEATURES), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(FEATURES, n_outputs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.chroma:
            x = torch.cat([x, x.amax(dim=1, keepdim=True) - x.amin(dim=1, keepdim=True) - 1.0], dim=1)
        features = self.body(x)
        return features, self.head(features)


@dataclass
class AttrEvaluator:
    """meta: class_names (may be empty), attr_names, groups (lists of attribute indices at most one of which is
    on), exclusive (one domain per image), channels, image_size, manifest_digest, held-out accuracies."""

    net: AttrNet
    meta: dict[str, Any]
    real_mu: np.ndarray
    real_sigma: np.ndarray
    device: torch.device = torch.device("cpu")

    @property
    def n_classes(self) -> int:
        return len(self.meta["class_names"])

    @torch.no_grad()
    def predict(self, images: np.ndarray | torch.Tensor, *, batch: int = 500) -> dict[str, np.ndarray]:
        """{"features", "class_probs" (N, n_classes; empty without classes), "attr_probs" (N, n_attrs)}."""
        self.net.eval()
        x = to_unit_range(images)
        feats, logits = [], []
        for i in range(0, len(x), batch):
            f, lg = self.net(x[i : i + batch].to(self.device))
            feats.append(f.float().cpu())
            logits.append(lg.float().cpu())
        lg = torch.cat(logits) if logits else torch.zeros(0, self.n_classes + len(self.meta["attr_names"]))
        cls, attr = lg[:, : self.n_classes], lg[:, self.n_classes :]
        return {
            "features": torch.cat(feats).numpy() if feats else np.zeros((0, FEATURES)),
            "class_probs": cls.softmax(dim=1).numpy(),
            "attr_probs": (attr.softmax(dim=1) if self.meta["exclusive"] else attr.sigmoid()).numpy(),
        }

    def decide(self, attr_probs: np.ndarray) -> np.ndarray:
        """0/1 attributes: the most probable domain when exclusive, else p >= 0.5 per attribute."""
        if self.meta["exclusive"]:
            return np.eye(attr_probs.shape[1], dtype=np.int64)[attr_probs.argmax(axis=1)]
        return (attr_probs >= 0.5).astype(np.int64)

    def fd(self, features: np.ndarray) -> float:
        mu, sigma = feature_stats(features)
        return frechet_distance(mu, sigma, self.real_mu, self.real_sigma)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save({"state": self.net.state_dict(), "meta": self.meta, "real_mu": torch.from_numpy(self.real_mu),
                    "real_sigma": torch.from_numpy(self.real_sigma)}, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, device: torch.device | str = "cpu") -> AttrEvaluator:
        blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        meta = blob["meta"]
        net = AttrNet(channels=meta["channels"], n_outputs=len(meta["class_names"]) + len(meta["attr_names"]))
        net.load_state_dict(blob["state"])
        device = torch.device(device)
        return cls(net=net.to(device).eval(), meta=meta, real_mu=blob["real_mu"].numpy(),
                   real_sigma=blob["real_sigma"].numpy(), device=device)

    @classmethod
    def load(cls, url: str, *, s3_endpoint: str | None = None, device: torch.device | str = "cpu") -> AttrEvaluator:
        return cls.from_bytes(read_url(url, s3_endpoint=s3_endpoint), device=device)


# --- labels of the real data --------------------------------------------------------------------------------

_WORDS = re.compile(r"[a-z]+")


def caption_attributes(caption: str) -> np.ndarray | None:
    """The built-in captions' attributes over render.ATTRIBUTES (colour, thick/thin, white background), or None
    when the caption names no single colour (not a caption of the built-in style)."""
    words = set(_WORDS.findall(caption.lower()))
    colours = [c for c in COLOURS if c in words]
    if len(colours) != 1:
        return None
    on = {colours[0]} | ({"thick"} & words) | ({"thin"} & words) | ({"inverted"} if "white" in words else set())
    return np.asarray([int(name in on) for name in render.ATTRIBUTES], dtype=np.int64)


def _captioned_attrs(captions: Sequence[Sequence[str]]) -> np.ndarray | None:
    """Each sample's attributes: what any of its captions says (some phrasings leave the stroke out); None
    unless every caption of every sample names one colour, the same for all of a sample's captions."""
    rows = []
    for caps in captions:
        parsed = [caption_attributes(c) for c in caps]
        if not parsed or any(p is None for p in parsed):
            return None
        if len({int(p[:len(COLOURS)].argmax()) for p in parsed}) != 1:
            return None
        rows.append(np.max(parsed, axis=0))
    return np.stack(rows) if rows else None


@dataclass(frozen=True)
class RealSplit:
    """A split's images (uint8), labels (-1 unknown), attributes (None when the data has none) and, for
    captioned data, captions and embeddings (N, max captions, D) with counts."""

    images: np.ndarray
    labels: np.ndarray
    attrs: np.ndarray | None
    captions: list[list[str]] | None = None
    emb: np.ndarray | None = None
    n_captions: np.ndarray | None = None


def real_split(dataset_url: str, *, split: str, s3_endpoint: str | None = None) -> RealSplit:
    from data_prep.batches import load_split_arrays

    arrays = load_split_arrays(dataset_url, split=split, s3_endpoint=s3_endpoint)
    if "attrs" in arrays:
        return RealSplit(images=arrays["image"], labels=arrays["label"], attrs=arrays["attrs"].astype(np.int64))
    if "captions" in arrays:
        return RealSplit(images=arrays["image"], labels=arrays["label"], attrs=_captioned_attrs(arrays["captions"]),
                         captions=arrays["captions"], emb=arrays["emb"], n_captions=arrays["n_captions"])
    raise ValueError(f"{dataset_url} is neither an attributes nor a captioned dataset")


# --- the evaluator --------------------------------------------------------------------------------------------


def train_attr_net(
    images: np.ndarray, labels: np.ndarray, attrs: np.ndarray, *, n_classes: int, exclusive: bool,
    epochs: int = 10, batch_size: int = 64, seed: int = 0,
) -> AttrNet:
    """Fit the evaluator on real images: cross-entropy on the classes (rows with a label), BCE per attribute
    (cross-entropy over domains when exclusive); light shift augmentation, one-cycle Adam, seeded."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = to_unit_range(images)
    y = torch.from_numpy(np.asarray(labels, np.int64))
    a = torch.from_numpy(np.asarray(attrs, np.float32))
    net = AttrNet(channels=x.shape[1], n_outputs=n_classes + a.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    per_epoch = max(1, len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=epochs * per_epoch)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            logits = net(random_shift(x[idx], g))[1]
            cls, attr = logits[:, :n_classes], logits[:, n_classes:]
            loss = F.cross_entropy(attr, a[idx].argmax(1)) if exclusive else (
                F.binary_cross_entropy_with_logits(attr, a[idx]))
            labelled = y[idx] >= 0
            if n_classes and bool(labelled.any()):
                loss = loss + F.cross_entropy(cls[labelled], y[idx][labelled])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def evaluator_key(manifest_digest: str) -> str:
    return f"cache/evaluator/{manifest_digest}-attributes.pt"


def ensure_attr_evaluator(
    *, store_url: str, dataset_url: str, manifest: Any, s3_endpoint: str | None = None, epochs: int = 10,
    log: Callable[[str], Any] = print,
) -> str | None:
    """Train (once per manifest digest) and cache the attribute evaluator in the store; returns its URL, or None
    for data without attributes (a captioned set whose captions do not name the built-in attributes)."""
    store = open_store(store_url, s3_endpoint=s3_endpoint)
    key = evaluator_key(manifest.digest)
    url = f"{store.url.rstrip('/')}/{key}"
    if store.exists(key):
        return url
    train = real_split(dataset_url, split="train", s3_endpoint=s3_endpoint)
    if train.attrs is None:
        return None
    test = real_split(dataset_url, split="test" if manifest.counts.get("test") else "train", s3_endpoint=s3_endpoint)
    if manifest.kind == "attributes":
        names = list(manifest.extra["attributes"])
        groups = [[names.index(n) for n in grp] for grp in manifest.extra.get("groups", [])]
        exclusive = bool(manifest.extra.get("exclusive"))
    else:
        names = list(render.ATTRIBUTES)
        groups = [[names.index(n) for n in grp] for grp in render.GROUPS]
        exclusive = False
    class_names = list(manifest.class_names or []) if (train.labels >= 0).any() else []
    log(f"training the attribute evaluator on {len(train.images)} real images ({epochs} epochs)")
    net = train_attr_net(train.images, train.labels, train.attrs, n_classes=len(class_names), exclusive=exclusive,
                         epochs=epochs)
    meta: dict[str, Any] = {"class_names": class_names, "attr_names": names, "groups": groups,
                            "exclusive": exclusive, "channels": int(train.images.shape[1]),
                            "image_size": int(train.images.shape[2]), "manifest_digest": manifest.digest}
    ev = AttrEvaluator(net=net, meta=meta, real_mu=np.zeros(FEATURES), real_sigma=np.eye(FEATURES))
    out = ev.predict(test.images)
    ev.real_mu, ev.real_sigma = feature_stats(out["features"])
    meta["test_attr_accuracy"] = [float(v) for v in (ev.decide(out["attr_probs"]) == test.attrs).mean(axis=0)]
    if class_names:
        known = test.labels >= 0
        meta["test_class_accuracy"] = float((out["class_probs"].argmax(1) == test.labels)[known].mean())
    store.put_bytes(key, ev.to_bytes())
    return url


# --- StarGAN -------------------------------------------------------------------------------------------------


def stargan_metrics(
    generator: nn.Module, ev: AttrEvaluator, *, images: np.ndarray | torch.Tensor, attrs: np.ndarray,
    labels: np.ndarray, model_cfg: Any,
) -> dict[str, float]:
    """Translate each image by every single-attribute change (stargan.single_flips) and judge the results.

    eval/attr_acc/NAME: share of translations towards a change of NAME that the evaluator sees with NAME as the
    target says (exclusive data: the target domain); eval/attr_acc: their mean; eval/attr_acc_floor: the same
    for the untranslated inputs (what a generator that ignores c scores); eval/attr_kept_acc: the attributes
    outside the changed one's group left as they were; eval/class_kept: the digit class kept (when the data
    has classes), eval/class_kept/NAME the same for the changes of NAME alone; eval/rec_l1: mean
    |G(G(x, c), c') - x| in [-1, 1] units; eval/fd: Fréchet distance of all
    translations to the held-out real images in the evaluator's feature space.
    """
    from gan_models import stargan

    x = to_unit_range(images)
    c_org = torch.as_tensor(np.asarray(attrs), dtype=torch.float32)
    names = ev.meta["attr_names"]
    group_of = {i: set(g) for g in ev.meta["groups"] for i in g}
    seen_in = ev.predict(x)
    floor_pred = ev.decide(seen_in["attr_probs"])
    out: dict[str, float] = {}
    accs, floors, kept, class_kept, rec, feats = [], [], [], [], [], []
    known = labels >= 0
    for i, target in enumerate(stargan.single_flips(c_org, model_cfg)):
        fake = generate(generator, (x, target))
        rec.append(float((generate(generator, (fake, c_org)) - x).abs().mean()))
        seen = ev.predict(fake)
        feats.append(seen["features"])
        pred, t = ev.decide(seen["attr_probs"]), target.numpy().astype(np.int64)
        accs.append(float((pred[:, i] == t[:, i]).mean()))
        floors.append(float((floor_pred[:, i] == t[:, i]).mean()))
        out[f"eval/attr_acc/{names[i]}"] = accs[-1]
        others = [j for j in range(len(names)) if j not in group_of.get(i, {i})]
        if others and not ev.meta["exclusive"]:
            kept.append(float((pred[:, others] == t[:, others]).mean()))
        if ev.n_classes and known.any():
            class_kept.append(float((seen["class_probs"].argmax(1) == labels)[known].mean()))
            out[f"eval/class_kept/{names[i]}"] = class_kept[-1]
    out["eval/attr_acc"] = float(np.mean(accs))
    out["eval/attr_acc_floor"] = float(np.mean(floors))
    if kept:
        out["eval/attr_kept_acc"] = float(np.mean(kept))
    if class_kept:
        out["eval/class_kept"] = float(np.mean(class_kept))
    out["eval/rec_l1"] = float(np.mean(rec))
    out["eval/fd"] = ev.fd(np.concatenate(feats))
    return out


# --- Text2Img ------------------------------------------------------------------------------------------------


def derangement(n: int, *, seed: int) -> np.ndarray:
    """A seeded permutation with no fixed point (a shuffled order, each index sent to the next one in it)."""
    if n < 2:
        raise ValueError(f"mismatched prompts need at least 2 samples, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[order] = np.roll(order, -1)
    return out


def prompt_scores(ev: AttrEvaluator, seen: dict[str, np.ndarray], *, classes: np.ndarray,
                  attrs: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per image, does the evaluator see the prompt's digit class, the prompt's colour, both?"""
    scores: dict[str, np.ndarray] = {}
    if ev.n_classes:
        scores["class"] = seen["class_probs"].argmax(1) == classes
    if attrs is not None and set(COLOURS) <= set(ev.meta["attr_names"]):
        cols = [ev.meta["attr_names"].index(c) for c in COLOURS]
        scores["colour"] = seen["attr_probs"][:, cols].argmax(1) == attrs[:, cols].argmax(1)
    if scores:
        scores["both"] = np.logical_and.reduce(list(scores.values()))
    return scores


def group_spread(images: np.ndarray | torch.Tensor, keys: np.ndarray) -> float:
    """Mean over the groups of equal `keys` rows that hold at least 2 images of the per-pixel standard deviation
    across the group, in [-1, 1] units: how much images that share a description differ."""
    x = to_unit_range(images)
    _, group = np.unique(np.asarray(keys).reshape(len(x), -1), axis=0, return_inverse=True)
    spreads = [float(x[group == g].std(dim=0, unbiased=False).mean()) for g in np.unique(group)
               if (group == g).sum() >= 2]
    if not spreads:
        raise ValueError("no two images share a description: nothing to measure the spread of")
    return float(np.mean(spreads))


def text2img_metrics(
    generator: nn.Module, ev: AttrEvaluator, *, emb: np.ndarray | torch.Tensor, classes: np.ndarray,
    attrs: np.ndarray | None, nz: int, seed: int, real_spread: float | None = None,
) -> dict[str, float]:
    """Generate one image per caption embedding (row of `emb`) and judge it against that caption's digit class
    and colour (`classes`, `attrs` rows); the `_mismatched` scores judge the same images against another
    caption's (a seeded derangement): the floor a generator that ignores the text reaches.

    eval/text_class_acc, eval/text_colour_acc, eval/text_consistency (both right), each also `_mismatched`;
    eval/fd: Fréchet distance to the held-out real images in the evaluator's feature space; eval/z_spread:
    `group_spread` of SPREAD_DRAWS images (fresh z) for each of the first SPREAD_PROMPTS captions, near 0 when G
    ignores z; eval/z_spread_real: `real_spread` (the same measure over real images with the same description)
    when given.
    """
    emb_t = torch.as_tensor(np.asarray(emb, np.float32))
    z = torch.randn(len(emb_t), nz, generator=torch.Generator().manual_seed(seed + 12345))
    seen = ev.predict(generate(generator, (z, emb_t)))
    perm = derangement(len(emb_t), seed=seed)
    names = {"class": "eval/text_class_acc", "colour": "eval/text_colour_acc", "both": "eval/text_consistency"}
    out = {names[k]: float(v.mean()) for k, v in prompt_scores(ev, seen, classes=classes, attrs=attrs).items()}
    wrong = prompt_scores(ev, seen, classes=classes[perm], attrs=None if attrs is None else attrs[perm])
    out.update({f"{names[k]}_mismatched": float(v.mean()) for k, v in wrong.items()})
    out["eval/fd"] = ev.fd(seen["features"])
    k = min(SPREAD_PROMPTS, len(emb_t))
    z_many = torch.randn(k * SPREAD_DRAWS, nz, generator=torch.Generator().manual_seed(seed + 54321))
    drawn = generate(generator, (z_many, emb_t[:k].repeat_interleave(SPREAD_DRAWS, dim=0)))
    out["eval/z_spread"] = group_spread(drawn, np.repeat(np.arange(k), SPREAD_DRAWS))
    if real_spread is not None:
        out["eval/z_spread_real"] = real_spread
    return out


def caption_prompts(split: RealSplit, *, seed: int, n: int | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray | None]:
    """One seeded caption per sample (the first n): (embeddings (n, D) float32, digit classes, attributes)."""
    if split.emb is None or split.n_captions is None:
        raise ValueError("caption prompts need a captioned split")
    n = len(split.emb) if n is None else min(n, len(split.emb))
    rng = np.random.default_rng([seed, 0x7478])
    pick = np.asarray([rng.integers(k) for k in split.n_captions[:n]], dtype=np.int64)
    emb = split.emb[np.arange(n), pick].astype(np.float32)
    attrs = None
    if split.captions is not None:
        parsed = [caption_attributes(split.captions[i][pick[i]]) for i in range(n)]
        attrs = None if any(p is None for p in parsed) else np.stack(parsed)
    return emb, split.labels[:n], attrs


# --- one entry point for the loop, the driver and `ganpipe eval` ----------------------------------------------


def metrics_fn(
    *, evaluator_url: str, family: str, model_cfg: Any, dataset_url: str, seed: int, n: int = 200,
    s3_endpoint: str | None = None, device: torch.device | str = "cpu",
) -> Callable[[nn.Module], dict[str, float]]:
    """G -> eval/* on the first `n` held-out samples (train samples when nothing is held out), the same inputs
    at every call. Loads the evaluator and the real split once."""
    from data_prep.reader import read_manifest

    ev = AttrEvaluator.load(evaluator_url, s3_endpoint=s3_endpoint, device=device)
    manifest = read_manifest(dataset_url, s3_endpoint=s3_endpoint)
    split = real_split(dataset_url, split="test" if manifest.counts.get("test") else "train", s3_endpoint=s3_endpoint)
    if family == "stargan":
        images, attrs, labels = split.images[:n], split.attrs[:n], split.labels[:n]
        return lambda g: stargan_metrics(g, ev, images=images, attrs=attrs, labels=labels, model_cfg=model_cfg)
    if family == "text2img":
        emb, classes, attrs = caption_prompts(split, seed=seed, n=n)
        # Every held-out image, so that most (digit, colour, stroke) descriptions have several.
        keys = split.labels[:, None] if split.attrs is None else np.column_stack([split.labels, split.attrs])
        try:
            real_spread: float | None = group_spread(split.images, keys)
        except ValueError:  # a held-out split too small for two images to share a description
            real_spread = None
        return lambda g: text2img_metrics(g, ev, emb=emb, classes=classes, attrs=attrs, nz=model_cfg.nz, seed=seed,
                                          real_spread=real_spread)
    raise ValueError(f"no conditional metrics for family {family!r} (stargan, text2img)")


def task_metrics(inputs: Any) -> dict[str, float]:
    """`ganpipe eval`'s hook (evaluation.metrics.TASK_METRICS) for stargan and text2img: the metrics of `metrics_fn`
    on the first inputs.n held-out samples, with the dataset's attribute evaluator (trained and cached on first
    use). {} when the data has no attributes to judge."""
    from data_prep.reader import read_manifest

    manifest = read_manifest(inputs.dataset_url)
    url = ensure_attr_evaluator(store_url=inputs.store_url, dataset_url=inputs.dataset_url, manifest=manifest)
    if url is None:
        return {}
    fn = metrics_fn(evaluator_url=url, family=inputs.family, model_cfg=inputs.model_cfg,
                    dataset_url=inputs.dataset_url, seed=inputs.seed, n=inputs.n or 200)
    return fn(inputs.generator)
