"""`ganpipe eval`: score a registered generator (or a run's) against its dataset and log an evaluation run.

Metrics: FID/KID with Inception-v3 pool features when a local weights file is given; the offline evaluator's
Fréchet distance, kernel distance and classifier score; the family's task metrics (`TASK_METRICS`). Real-data
statistics are cached per dataset manifest and feature network under `<store>/cache/stats/`.

Each evaluation is its own MLflow run, nested under the model's training run (tag mlflow.parentRunId) in the
same experiment, with the evaluation set recorded as params and tags. The training run stays as it finished;
evaluations with other n, seeds or feature networks sit side by side, and `promote` compares only like with
like.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipelines.spec.datasets import dataset_url
from pipelines.spec.defaults import DEFAULT_EVAL_N as DEFAULT_N
from pipelines.spec.defaults import KID_SUBSET_SIZE, KID_SUBSETS, default_store
from pipelines.spec.provenance import git_commit
from pipelines.tracking.loading import describe, load_module, load_translator, training_config
from pipelines.tracking.registry import (
    EVAL_EVALUATOR_TAG,
    EVAL_INCEPTION_TAG,
    EVAL_MODEL_TAG,
    EVAL_SET_TAG,
    ModelRef,
)

if TYPE_CHECKING:  # numpy and torch load only when a command runs, not for `ganpipe --help`
    import numpy as np
    import torch



@dataclass
class EvalOutcome:
    run_id: str
    model: ModelRef
    metrics: dict[str, float]
    params: dict[str, Any]
    notes: list[str] = field(default_factory=list)



def feature_batches(fn: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray | torch.Tensor, *, batch: int,
              desc: str, progress: bool) -> np.ndarray:
    import numpy as np
    import torch  # noqa: F811
    from tqdm import tqdm

    x = torch.from_numpy(images) if isinstance(images, np.ndarray) else images
    out = []
    for i in tqdm(range(0, len(x), batch), desc=desc, disable=None if progress else True, leave=False):
        out.append(fn(x[i : i + batch]).double().numpy())
    return np.concatenate(out)


def evaluate_model(
    *, model: str, tracking_uri: str = "", n: int = DEFAULT_N, seed: int = 0, inception_weights: str | None = None,
    dataset: str | None = None, store: str | None = None, split: str | None = None, n_real: int | None = None,
    kid_subsets: int = KID_SUBSETS, kid_subset_size: int = KID_SUBSET_SIZE, batch: int = 50, progress: bool = False,
    log: Callable[[str], Any] = print,
) -> EvalOutcome:
    """Evaluate one model (see the module docstring) and log the evaluation run; returns its id and metrics."""
    import torch

    from data_prep.reader import load_split, read_manifest
    from data_prep.storage import open_store
    from gan_models import get_family
    from pipelines.engine.loop import generate
    from pipelines.evaluation.evaluator import (
        CONFIDENT,
        Evaluator,
        classifier_score,
        ensure_evaluator,
        evaluator_key,
        frechet_distance,
    )
    from pipelines.evaluation.inception import WEIGHTS_HELP, load_inception
    from pipelines.evaluation.metrics import (
        TASK_METRICS,
        FeatureStats,
        TaskInputs,
        cached_real_stats,
        kernel_distance,
        stats_key,
    )
    from pipelines.spec.config import TrainSpec
    from pipelines.tracking.runs import client, resolve_tracking_uri

    if n < 2:
        raise ValueError(f"--n must be at least 2, got {n}")
    net = load_inception(inception_weights) if inception_weights else None  # a bad file fails before any work
    uri = resolve_tracking_uri(tracking_uri)
    mlf = client(uri)
    card = describe(model, tracking_uri=uri)  # refuses anything but the torch.export archive, before any work
    ref = card.ref
    source = mlf.get_run(ref.run_id)
    config = training_config(card, tracking_uri=uri)
    family = config.get("family") or source.data.tags.get("ganpipe.family", "")
    # Generators conditioned on held-out data: image-to-image ones translate held-out inputs, StarGAN and Text2Img
    # (which also draws z) take held-out attributes or captions; their task metrics (TASK_METRICS) make those
    # inputs themselves. Only the images kind's generators are judged on latents alone.
    kind = get_family(family).dataset_kind if family else "images"
    conditional = kind != "images"
    store_url = store or config.get("store") or default_store()
    url = dataset_url(dataset or config["data"]["dataset"], store_url)
    manifest = read_manifest(url)
    trained_on = source.data.tags.get("ganpipe.manifest_sha256", "")
    notes: list[str] = []
    if trained_on and trained_on != manifest.digest:
        notes.append(f"the model was trained on manifest {trained_on[:12]}; evaluating against {manifest.digest[:12]}")
    if kind in ("paired", "unpaired"):  # image-to-image: translate the held-out inputs instead of drawing latents
        metrics, eval_set = _translation_metrics(mlf, ref, family=family, url=url, manifest=manifest,
                                                 store_url=store_url, split=split, n=n, seed=seed, log=log)
        return _finish(mlf, source=source, ref=ref, family=family, manifest=manifest, url=url, metrics=metrics,
                       eval_set=eval_set, notes=notes, log=log, extra_params={}, extra_tags={})
    split = split or ("test" if manifest.counts.get("test") else "train")
    real, real_labels = load_split(url, split=split)
    if n_real is not None:  # the first n_real in manifest order: the same images every time
        real, real_labels = real[:n_real], real_labels[:n_real]
    log(f"model     {ref.label} (run {ref.run_id[:8]}, family {family or '?'})")
    log(f"dataset   {url} ({split} split: {len(real)} real images, manifest {manifest.digest[:12]})")

    generator, latent_shape = load_module(card, tracking_uri=uri), card.input_shape(0)
    fake = None
    if not conditional:
        z = torch.randn((n, *latent_shape), generator=torch.Generator().manual_seed(seed))
        fake = generate(generator, z)
        log(f"generated {n} samples (seed {seed})")

    cache = open_store(store_url)
    metrics: dict[str, float] = {}
    fake_probs = None
    evaluator_sha = inception_sha = "none"
    evaluator_url = None if conditional else ensure_evaluator(store_url=store_url, dataset_url=url, manifest=manifest,
                                                              progress=progress)
    if evaluator_url is not None:
        blob = cache.get_bytes(evaluator_key(manifest.digest))
        evaluator_sha = hashlib.sha256(blob).hexdigest()
        ev = Evaluator.from_bytes(blob)
        fake_feats, fake_probs = ev.predict(fake)
        key = stats_key(manifest_digest=manifest.digest, network=f"evaluator-{evaluator_sha[:12]}", split=split,
                        n=len(real))
        real_stats, hit = cached_real_stats(cache, key, lambda: ev.predict(real)[0])
        fs = FeatureStats.of(fake_feats)
        metrics["eval/fd"] = frechet_distance(fs.mu, fs.sigma, real_stats.mu, real_stats.sigma)
        metrics["eval/kd"] = kernel_distance(real_stats.features, fake_feats, subsets=kid_subsets,
                                             subset_size=kid_subset_size, seed=seed)[0]
        metrics["eval/cls_score"] = classifier_score(fake_probs)
        metrics["eval/confident_share"] = float((fake_probs.max(axis=1) >= CONFIDENT).mean())
        log(f"evaluator real statistics {'from cache' if hit else 'computed and cached'}: {cache.url}/{key}")
    elif not conditional:
        notes.append("no offline evaluator: the dataset has no class labels (eval/fd, eval/kd, eval/cls_score skipped)")

    if net is not None and conditional:
        notes.append(f"FID/KID are not computed for {family} yet; its eval/fd is in the attribute evaluator's space")
    elif net is not None:
        inception_sha = net.weights_sha256
        fake_feats = feature_batches(net, fake, batch=batch, desc="Inception features (generated)", progress=progress)
        key = stats_key(manifest_digest=manifest.digest, network=f"inception-{inception_sha[:12]}", split=split,
                        n=len(real))
        real_stats, hit = cached_real_stats(
            cache, key,
            lambda: feature_batches(net, real, batch=batch, desc="Inception features (real)", progress=progress))
        fs = FeatureStats.of(fake_feats)
        metrics["eval/fid"] = frechet_distance(fs.mu, fs.sigma, real_stats.mu, real_stats.sigma)
        metrics["eval/kid"], metrics["eval/kid_std"] = kernel_distance(
            real_stats.features, fake_feats, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
        log(f"Inception real statistics {'from cache' if hit else 'computed and cached'}: {cache.url}/{key}")
    else:
        notes.append(f"FID/KID skipped. {WEIGHTS_HELP}")

    hook = TASK_METRICS.get(family)
    if hook is not None:
        metrics.update(hook(TaskInputs(
            family=family, generator=generator, fake=fake, real=real, real_labels=real_labels, fake_probs=fake_probs,
            class_names=list(manifest.class_names or []) or None, dataset_url=url, seed=seed,
            model_cfg=TrainSpec.from_dict(config).model if conditional else None, store_url=store_url,
            n=n)))

    eval_set = {"manifest_sha256": manifest.digest, "split": split, "n_real": len(real), "n": n, "seed": seed}
    return _finish(mlf, source=source, ref=ref, family=family, manifest=manifest, url=url, metrics=metrics,
                   eval_set=eval_set, notes=notes, log=log,
                   extra_params={"inception_sha256": inception_sha if inception_weights else "",
                                 "evaluator_sha256": evaluator_sha, "kid_subsets": kid_subsets,
                                 "kid_subset_size": kid_subset_size},
                   extra_tags={EVAL_INCEPTION_TAG: inception_sha, EVAL_EVALUATOR_TAG: evaluator_sha})


def _finish(mlf: Any, *, source: Any, ref: ModelRef, family: str, manifest: Any, url: str, metrics: dict[str, float],
            eval_set: dict[str, Any], notes: list[str], log: Callable[[str], Any], extra_params: dict[str, Any],
            extra_tags: dict[str, str]) -> EvalOutcome:

    set_hash = hashlib.sha256(json.dumps(eval_set, sort_keys=True).encode()).hexdigest()[:16]
    params = {**eval_set, "model": ref.label, "dataset_url": url, "dataset_name": manifest.name, **extra_params}
    run_id = _log_eval_run(mlf, source=source, ref=ref, metrics=metrics, params=params, notes=notes, tags={
        EVAL_MODEL_TAG: ref.label, EVAL_SET_TAG: set_hash, "ganpipe.family": family, "ganpipe.dataset": manifest.name,
        "ganpipe.manifest_sha256": manifest.digest, "ganpipe.git_commit": git_commit(),
        "mlflow.parentRunId": ref.run_id, **extra_tags,
    })
    for note in notes:
        log(f"note: {note}")
    return EvalOutcome(run_id=run_id, model=ref, metrics=metrics, params=params, notes=notes)


def _translation_metrics(mlf: Any, ref: ModelRef, *, family: str, url: str, manifest: Any, store_url: str,
                         split: str | None, n: int, seed: int,
                         log: Callable[[str], Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """An image-to-image model's task metrics (TASK_METRICS -> pipelines/evaluation/i2i.py) on the first n held-out
    samples: the model's own direction and, for CycleGAN, its registered partner of the other direction."""
    import numpy as np  # noqa: F811
    import torch  # noqa: F811

    from pipelines.evaluation.i2i import eval_split
    from pipelines.evaluation.metrics import TASK_METRICS, TaskInputs

    loaded = load_translator(ref.uri)
    reverse = None
    if family == "cyclegan":
        other = "BtoA" if loaded.direction == "AtoB" else "AtoB"
        reverse = load_translator(ref.uri, direction=other).module
    split = split or eval_split(manifest)
    log(f"model     {ref.label} (run {ref.run_id[:8]}, family {family}, {loaded.direction})")
    log(f"dataset   {url} ({split} split: up to {n} held-out samples, manifest {manifest.digest[:12]})")
    metrics = TASK_METRICS[family](TaskInputs(
        family=family, generator=loaded.module, fake=torch.empty(0), real=np.empty(0, np.uint8),
        real_labels=np.empty(0, np.int64), fake_probs=None, class_names=None, dataset_url=url, seed=seed,
        reverse_generator=reverse, direction=loaded.direction, store_url=store_url, split=split, n=n))
    domains = manifest.extra.get("domains")
    held = min(d["counts"].get(split, 0) for d in domains.values()) if domains else manifest.counts.get(split, 0)
    return metrics, {"manifest_sha256": manifest.digest, "split": split, "n_real": min(n, held), "n": n, "seed": seed,
                     "direction": loaded.direction}


def _log_eval_run(mlf: Any, *, source: Any, ref: ModelRef, metrics: dict[str, float], params: dict[str, Any],
                  notes: list[str], tags: dict[str, str]) -> str:
    import numpy as np
    from mlflow.entities import Metric, Param

    name = f"eval-{ref.name}-v{ref.version}" if ref.name else f"eval-{ref.run_id[:8]}"
    run_id = mlf.create_run(source.info.experiment_id, run_name=name, tags=tags).info.run_id
    now = int(time.time() * 1000)
    mlf.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()],
                  metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if np.isfinite(v)])
    mlf.log_dict(run_id, {"metrics": metrics, "params": params, "notes": notes}, "eval.json")
    mlf.set_terminated(run_id)
    if ref.name:
        mlf.set_model_version_tag(ref.name, ref.version, "ganpipe.eval_run_id", run_id)
    return run_id



