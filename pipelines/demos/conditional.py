"""`ganpipe demo --family stargan|text2img`: the built-in coloured mnist5k -> shards -> training -> registry ->
pictures, and a measured check judged by the attribute evaluator on held-out data (pipelines.evaluation.conditional).

StarGAN passes when the translated images show the changed attribute far more often than the untranslated
inputs do (the floor); Text2Img when the generated images match their captions' digit and colour far more often
than mismatched captions' (the floor) and G has not collapsed in z (its images for one caption vary at least
half as much as real images with the same description).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from pipelines.demos.bars import Check, floor_check, print_bar
from pipelines.spec.defaults import DEFAULT_HOME

BAR = 2.0  # a score reaches at least BAR x its floor and the floor + 0.25
SPREAD_BAR = 0.5  # text2img also: eval/z_spread reaches at least SPREAD_BAR x eval/z_spread_real
ATTR_BAR = 0.85  # stargan: mean accuracy of the asked-for attribute
KEPT_BAR = 0.85  # stargan: attributes outside the changed one's group left as they were
DIGIT_BAR = 0.8  # stargan: translations the dataset's digit classifier reads as the input's digit


def _prep(kind: str, image_size: int) -> str:
    from data_prep.kinds import prep_dataset
    from data_prep.prep import PrepConfig

    print(f"== 1/4 prepare mnist5k as {kind} (digits re-drawn in colours and stroke widths, offline) ==")
    name = f"mnist5k-{kind}" + ("" if image_size == 32 else f"-{image_size}px")
    result = prep_dataset(PrepConfig(source="mnist5k", kind=kind, name=name, image_size=image_size), progress=True)
    print(f"dataset {result.dataset_url}: {'unchanged' if result.reused else 'written'} ({result.manifest.counts})")
    return result.manifest.name


def run_conditional_demo(*, family: str, steps: int | None = None, workers: int | None = None,
                         seed: int | None = None, out: Path = Path(f"{DEFAULT_HOME}/demo")) -> int:
    from pipelines.spec.recipes import get_recipe, with_run_options
    from pipelines.training.train import train

    t0 = time.perf_counter()
    if family not in ("stargan", "text2img"):
        raise ValueError(f"no conditional demo for {family!r} (stargan, text2img)")
    recipe = get_recipe(f"{family}-mnist5k-demo")
    dataset = _prep("attributes" if family == "stargan" else "captioned", recipe().model.image_size)
    print(f"\n== 2/4 train {family} ==")
    spec = recipe(dataset=dataset)
    spec = with_run_options(spec, steps=steps, workers=workers, seed=seed)
    outcome = train(spec)
    m = outcome.metrics
    minutes_train = (time.perf_counter() - t0) / 60

    print("\n== 3/4 check against held-out data (attribute evaluator trained on the real images) ==")
    checks = _stargan_checks(m) if family == "stargan" else _text2img_checks(m)
    passed = print_bar(checks)
    from pipelines.tracking.runs import client, resolve_tracking_uri

    alias = outcome.spec.track.alias
    if passed:
        client(resolve_tracking_uri(outcome.spec.track.tracking_uri)).set_registered_model_alias(
            outcome.model_name, "champion", outcome.model_version)
        alias = "champion"
    model_uri = f"models:/{outcome.model_name}@{alias}"

    print("\n== 4/4 pictures from the registered model ==")
    out = Path(out)
    if family == "stargan":
        figures = _stargan_pictures(model_uri, dataset, spec.store, out)
    else:
        figures = _text2img_pictures(model_uri, out)
    print(f"\ndone in {(time.perf_counter() - t0) / 60:.1f} min (training incl. evaluator {minutes_train:.1f} min): "
          f"{model_uri} (version {outcome.model_version}), MLflow run {outcome.run_id}, bar "
          f"{'PASS' if passed else 'FAIL'}")
    for name, path in figures.items():
        print(f"figure  {name:<16}{path}")
    return 0 if passed else 1


def _stargan_checks(m: dict[str, float]) -> list[Check]:
    """Print the per-attribute table; the bar: the asked-for attribute changes, the rest and the digit stay."""
    nan = float("nan")
    names = [k.removeprefix("eval/attr_acc/") for k in m if k.startswith("eval/attr_acc/")]
    print(f"{'changed attribute':<20}{'attribute seen':>16}{'digit kept':>12}")
    for name in names:
        print(f"{name:<20}{m[f'eval/attr_acc/{name}']:>16.3f}{m.get(f'eval/class_kept/{name}', nan):>12.3f}")
    score, floor = m["eval/attr_acc"], m["eval/attr_acc_floor"]
    print(f"{'mean':<20}{score:>16.3f}{m.get('eval/class_kept', nan):>12.3f}   attribute floor (untranslated "
          f"inputs): {floor:.3f}")
    print(f"reconstruction L1 |G(G(x, c), c') - x| {m['eval/rec_l1']:.3f}, Fréchet distance {m['eval/fd']:.3f}")
    return [
        Check(aim="change", label="asked-for attribute seen (mean)", value=score, op=">=", threshold=ATTR_BAR),
        floor_check(aim="change", label="asked-for attribute vs untranslated", value=score, floor=floor,
                    floor_name="floor", ratio=BAR),
        Check(aim="keep", label="other attributes kept", value=m.get("eval/attr_kept_acc", nan), op=">=",
              threshold=KEPT_BAR),
        Check(aim="keep", label="digit kept (the dataset's digit classifier)", value=m.get("eval/class_kept", nan),
              op=">=", threshold=DIGIT_BAR),
    ]


def _text2img_checks(m: dict[str, float]) -> list[Check]:
    """Print the caption table; the bar: digit, colour and both as captioned against mismatched captions, and
    G's images for one caption keep the variety of real images with that description."""
    print(f"{'':<26}{'own caption':>12}{'mismatched':>12}")
    rows = (("class_acc", "digit as captioned"), ("colour_acc", "colour as captioned"), ("consistency", "both"))
    for key, label in rows:
        print(f"{label:<26}{m[f'eval/text_{key}']:>12.3f}{m[f'eval/text_{key}_mismatched']:>12.3f}")
    print(f"Fréchet distance {m['eval/fd']:.3f}")
    real_spread = m.get("eval/z_spread_real", float("nan"))
    checks = [floor_check(aim="change", label=label, value=m[f"eval/text_{key}"],
                          floor=m[f"eval/text_{key}_mismatched"], floor_name="mismatched", ratio=BAR)
              for key, label in rows]
    checks.append(Check(aim="keep", label="spread over z for one caption", value=m["eval/z_spread"], op=">=",
                        threshold=SPREAD_BAR * real_spread,
                        threshold_text=f"{SPREAD_BAR} x real images' spread {real_spread:.3f}"))
    return checks


def _stargan_pictures(model_uri: str, dataset: str, store: str, out: Path) -> dict[str, Path]:
    from data_prep.batches import load_split_arrays
    from pipelines.evaluation.figures import save_png
    from pipelines.inference.conditional import translate_attributes
    from pipelines.spec.datasets import dataset_url

    arrays = load_split_arrays(dataset_url(dataset, store), split="test")
    inputs = out / "stargan-inputs"
    for i in range(8):  # eight held-out digits as files, as a user would give them
        save_png(torch.from_numpy(arrays["image"][i]).float() / 127.5 - 1, inputs / f"digit{i}.png")
    report = translate_attributes(model_uri, [inputs], out / "stargan", {"blue": 1, "thick": 1}, scale=3)
    print(f"attribute grid  {report.grid}  (columns: {', '.join(report.grid_columns)})")
    print(f"--set blue=1,thick=1  {len(report.outputs)} images in {report.outputs[0].parent}")
    return {"attribute grid": Path(report.grid), "blue=1,thick=1": Path(report.outputs[0].parent)}


def _text2img_pictures(model_uri: str, out: Path) -> dict[str, Path]:
    from pipelines.evaluation.figures import save_png, upscale
    from pipelines.inference.conditional import generate_from_prompts

    grid = generate_from_prompts(model_uri, prompt="a thick red seven on a black background", n=16)
    paths = {"prompt grid": save_png(upscale(grid, 3), out / "text2img-red-seven.png")}
    print(f"prompt grid     {paths['prompt grid']}")
    strip = generate_from_prompts(model_uri, interpolate=["a green one on a black background",
                                                          "a blue eight on a white background"], n=4)
    paths["interpolation"] = save_png(upscale(strip, 3), out / "text2img-interpolation.png")
    print(f"interpolation   {paths['interpolation']}")
    return paths
