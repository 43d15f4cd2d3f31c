"""One table from dataset kind to how a run of that kind is evaluated: which evaluators are trained (once per
manifest digest, cached in the store) before training, and which eval/* function a worker builds from them.

images      the offline digit/class evaluator (pipelines.evaluation.evaluator): FD, KD, classifier score
paired      Pix2Pix translation metrics against held-out pairs (pipelines.evaluation.i2i), no evaluator
unpaired    CycleGAN metrics plus one class evaluator per domain (class preservation)
attributes  StarGAN task metrics judged by the attribute evaluator (pipelines.evaluation.conditional)
captioned   Text2Img task metrics judged by the same kind of attribute evaluator
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pipelines.evaluation import conditional, evaluator, i2i

MetricsFn = Callable[[nn.Module], dict[str, float]]


@dataclass(frozen=True)
class Evaluators:
    """URLs of the evaluators a run's workers load: the dataset's own, and one per domain (unpaired)."""

    evaluator_url: str = ""
    task_evaluators: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class KindEvaluation:
    prepare: Callable[..., Evaluators]  # (store_url, dataset_url, manifest, progress, log) -> Evaluators
    metrics_fn: Callable[..., MetricsFn | None]  # (family, model_cfg, dataset_url, manifest, evaluators, ...) -> fn


def _prepare_images(*, store_url: str, dataset_url: str, manifest: Any, progress: bool, log: Callable) -> Evaluators:
    url = evaluator.ensure_evaluator(store_url=store_url, dataset_url=dataset_url, manifest=manifest,
                                     progress=progress)
    return Evaluators(evaluator_url=url or "")


def _prepare_attributes(*, store_url: str, dataset_url: str, manifest: Any, progress: bool,
                        log: Callable) -> Evaluators:
    url = conditional.ensure_attr_evaluator(store_url=store_url, dataset_url=dataset_url, manifest=manifest, log=log)
    return Evaluators(evaluator_url=url or "")


def _prepare_domains(*, store_url: str, dataset_url: str, manifest: Any, progress: bool, log: Callable) -> Evaluators:
    return Evaluators(task_evaluators=i2i.ensure_domain_evaluators(store_url=store_url, dataset_url=dataset_url,
                                                                   manifest=manifest, progress=progress))


def _prepare_nothing(**_: Any) -> Evaluators:
    return Evaluators()


def _images_metrics(*, family: Any, model_cfg: Any, dataset_url: str, manifest: Any, evaluators: Evaluators,
                    device: torch.device, seed: int, s3_endpoint: str | None) -> MetricsFn | None:
    if not evaluators.evaluator_url:
        return None
    ev = evaluator.Evaluator.load(evaluators.evaluator_url, s3_endpoint=s3_endpoint, device=device)
    return ev.generator_metrics_fn(family=family, model_cfg=model_cfg, seed=seed)


def _translation_metrics(*, family: Any, model_cfg: Any, dataset_url: str, manifest: Any, evaluators: Evaluators,
                         device: torch.device, seed: int, s3_endpoint: str | None) -> MetricsFn | None:
    return i2i.translation_metrics_fn(family=family, model_cfg=model_cfg, dataset_url=dataset_url, manifest=manifest,
                                      evaluator_urls=evaluators.task_evaluators, device=device, seed=seed,
                                      s3_endpoint=s3_endpoint)


def _conditional_metrics(*, family: Any, model_cfg: Any, dataset_url: str, manifest: Any, evaluators: Evaluators,
                         device: torch.device, seed: int, s3_endpoint: str | None) -> MetricsFn | None:
    if not evaluators.evaluator_url:
        return None
    return conditional.metrics_fn(evaluator_url=evaluators.evaluator_url, family=family.name, model_cfg=model_cfg,
                                  dataset_url=dataset_url, seed=seed, s3_endpoint=s3_endpoint, device=device)


EVALUATION: dict[str, KindEvaluation] = {
    "images": KindEvaluation(prepare=_prepare_images, metrics_fn=_images_metrics),
    "paired": KindEvaluation(prepare=_prepare_nothing, metrics_fn=_translation_metrics),
    "unpaired": KindEvaluation(prepare=_prepare_domains, metrics_fn=_translation_metrics),
    "attributes": KindEvaluation(prepare=_prepare_attributes, metrics_fn=_conditional_metrics),
    "captioned": KindEvaluation(prepare=_prepare_attributes, metrics_fn=_conditional_metrics),
}


def prepare_evaluators(kind: str, *, store_url: str, dataset_url: str, manifest: Any, progress: bool = False,
                       log: Callable[[str], Any] = print) -> Evaluators:
    """Train (or find cached) the evaluators a run on a dataset of `kind` reports eval/* with."""
    return EVALUATION[kind].prepare(store_url=store_url, dataset_url=dataset_url, manifest=manifest,
                                    progress=progress, log=log)


def kind_metrics_fn(kind: str, *, family: Any, model_cfg: Any, dataset_url: str, manifest: Any,
                    evaluators: Evaluators, device: torch.device, seed: int,
                    s3_endpoint: str | None = None) -> MetricsFn | None:
    """G -> eval/* for a dataset of `kind`, or None where there is nothing to evaluate with."""
    return EVALUATION[kind].metrics_fn(family=family, model_cfg=model_cfg, dataset_url=dataset_url,
                                       manifest=manifest, evaluators=evaluators, device=device, seed=seed,
                                       s3_endpoint=s3_endpoint)
