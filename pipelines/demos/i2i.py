"""`ganpipe demo --family pix2pix|cyclegan`: a built-in image-to-image task end to end on 2 Ray Train workers —
prep -> train -> evaluate on held-out data -> register -> translate with the registered model -> a stated check.

pix2pix:  Canny edges -> digits on mnist5k (32 px). Passes when the held-out L1 of G(edges) against the digits is
          below both baselines: the identity (the edges themselves: it must change them) and the best constant
          image (the targets' per-pixel median: it must keep what the input says).
cyclegan: scikit-learn digits <-> MNIST digits (32 px). Passes when the translated held-out scikit-learn digits
          are nearer real MNIST than the untranslated ones (Fréchet distance in the MNIST classifier's features:
          the style changes) and the MNIST classifier recognises the class of more than half of them (class
          preservation A -> B > 50%: the digit is kept).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from data_prep.kinds import prep_dataset
from data_prep.options import PairedOptions, SourceOptions
from data_prep.prep import PrepConfig
from gan_models import make_grid
from pipelines.demos.bars import Check, print_bar
from pipelines.evaluation.figures import save_png, upscale
from pipelines.evaluation.i2i import heldout, translate_all
from pipelines.spec.recipes import cyclegan_digits_demo, pix2pix_edges_demo, with_run_options
from pipelines.tracking.loading import load_translator
from pipelines.tracking.registry import PARTNER_TAG
from pipelines.tracking.runs import client, resolve_tracking_uri
from pipelines.training.train import train

CLASS_BAR = 0.5  # cyclegan: share of translated digits that keep their class


def _prep(family: str) -> Any:
    if family == "pix2pix":
        cfg = PrepConfig(source="mnist5k", kind="paired", paired=PairedOptions(derive="edges"), holdout=1000)
    else:
        cfg = PrepConfig(source="digits", kind="unpaired", inputs=SourceOptions(source_b="mnist5k"))
    return prep_dataset(cfg, progress=True)


def _checks(family: str, m: dict[str, float]) -> list[Check]:
    """Print the outcome table and return the demo's bar: what the translation must change and what it must keep."""
    nan = float("nan")
    if family == "pix2pix":
        print(f"{'held-out (1000 pairs)':<36}{'G(edges)':>10}{'identity':>10}{'median':>10}")
        print(f"{'L1 vs target ([-1, 1] scale)':<36}{m['eval/l1']:>10.4f}{m['eval/l1_identity']:>10.4f}"
              f"{m['eval/l1_median_target']:>10.4f}")
        print(f"{'PSNR (dB)':<36}{m['eval/psnr']:>10.2f}{m['eval/psnr_identity']:>10.2f}")
        print(f"{'SSIM':<36}{m['eval/ssim']:>10.4f}{m['eval/ssim_identity']:>10.4f}")
        return [
            Check(aim="change", label="L1 to the digit, below the edges' own", value=m["eval/l1"], op="<",
                  threshold=m["eval/l1_identity"], threshold_text="identity: G returns the edges"),
            Check(aim="keep", label="L1 to the digit, below any fixed image's", value=m["eval/l1"], op="<",
                  threshold=m["eval/l1_median_target"],
                  threshold_text="the targets' per-pixel median: G ignores its input"),
        ]
    print(f"{'held-out':<44}{'translated':>12}{'untranslated':>14}")
    for name, label in (("AtoB", "digits -> MNIST, class kept (MNIST clf)"),
                        ("BtoA", "MNIST -> digits, class kept (digits clf)")):
        print(f"{label:<44}{m.get(f'eval/class_preserved_{name}', nan):>12.3f}"
              f"{m.get(f'eval/class_preserved_{name}_identity', nan):>14.3f}")
    print(f"{'Fréchet distance G(digits) to real MNIST':<44}{m.get('eval/fd_B', nan):>12.3f}"
          f"{m.get('eval/fd_B_identity', nan):>14.3f}")
    print(f"{'Fréchet distance F(MNIST) to real digits':<44}{m.get('eval/fd_A', nan):>12.3f}"
          f"{m.get('eval/fd_A_identity', nan):>14.3f}")
    print(f"cycle L1: |F(G(a)) - a| {m['eval/cycle_l1_A']:.4f}, |G(F(b)) - b| {m['eval/cycle_l1_B']:.4f}")
    return [
        Check(aim="change", label="G(digits) nearer real MNIST than digits", value=m.get("eval/fd_B", nan), op="<",
              threshold=m.get("eval/fd_B_identity", nan),
              threshold_text="Fréchet distance of the untranslated digits, MNIST clf features"),
        Check(aim="keep", label="class kept digits -> MNIST (MNIST clf)",
              value=m.get("eval/class_preserved_AtoB", nan), op=">", threshold=CLASS_BAR),
    ]


def _figures(family: str, model_uri: str, dataset_url: str, manifest: Any, out: Path) -> dict[str, Path]:
    """Held-out inputs translated by the registered model(s): rows input | output | target (pix2pix), or
    x | G(x) | F(G(x)) for both domains (cyclegan)."""
    data = heldout(dataset_url, manifest, n=16)
    forward = load_translator(model_uri).module
    if family == "pix2pix":
        rows = torch.stack([data["a"], translate_all(forward, data["a"]), data["b"]], dim=1).flatten(0, 1)
        return {"translations": save_png(upscale(make_grid(rows, nrow=6), 3), out / "translations.png")}
    backward = load_translator(model_uri, direction="BtoA").module
    paths = {}
    for name, x, there, back in (("AtoB", data["a"], forward, backward), ("BtoA", data["b"], backward, forward)):
        y = translate_all(there, x)
        rows = torch.stack([x, y, translate_all(back, y)], dim=1).flatten(0, 1)
        paths[f"cycle {name}"] = save_png(upscale(make_grid(rows, nrow=6), 3), out / f"cycle-{name}.png")
    return paths


def run_i2i_demo(*, family: str, steps: int | None = None, workers: int | None = None, seed: int | None = None,
                 out: Path) -> int:
    t0 = time.perf_counter()
    task = "edges -> digits on mnist5k" if family == "pix2pix" else "digits <-> mnist5k"
    print(f"== 1/4 prepare the {family} dataset ({task}, 32x32) ==")
    prep = _prep(family)
    print(f"dataset {prep.dataset_url}: {'unchanged' if prep.reused else 'written'} ({prep.manifest.counts})")

    print(f"\n== 2/4 train {family} with Ray Train ==")
    spec = pix2pix_edges_demo() if family == "pix2pix" else cyclegan_digits_demo()
    spec = with_run_options(spec, steps=steps, workers=workers, seed=seed)
    t_train = time.perf_counter()
    outcome = train(spec)
    train_min = (time.perf_counter() - t_train) / 60

    print("\n== 3/4 check the translations of held-out inputs ==")
    passed = print_bar(_checks(family, outcome.metrics))
    mlf = client(resolve_tracking_uri(outcome.spec.track.tracking_uri))
    alias = outcome.spec.track.alias
    if passed:
        alias = "champion"
        mlf.set_registered_model_alias(outcome.model_name, alias, outcome.model_version)
        partner = mlf.get_model_version(outcome.model_name, outcome.model_version).tags.get(PARTNER_TAG)
        if partner:
            name, version = partner.rsplit("/", 1)
            mlf.set_registered_model_alias(name, alias, version)
    else:
        print(f"not promoted: {outcome.model_uri} keeps alias {alias!r}")

    print("\n== 4/4 translations by the registered model ==")
    model_uri = f"models:/{outcome.model_name}@{alias}"
    figures = _figures(family, model_uri, prep.dataset_url, prep.manifest, out)
    for name, path in figures.items():
        print(f"{name:<14} {path}")
    print(f"try:           ganpipe translate --model {model_uri} --input DIR --out DIR"
          + (" [--direction BtoA]" if family == "cyclegan" else ""))
    minutes = (time.perf_counter() - t0) / 60
    print(f"\ndone in {minutes:.1f} min (training + evaluation + registration {train_min:.1f} min): {model_uri} "
          f"(version {outcome.model_version}), MLflow run {outcome.run_id}, bar {'PASS' if passed else 'FAIL'}")
    for name, path in figures.items():
        print(f"figure  {name:<16}{path}")
    return 0 if passed else 1
