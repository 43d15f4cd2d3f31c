"""The image-to-image families in the pipeline: task metrics against closed forms and torchmetrics, the small
U-Nets, `ganpipe translate` (file names, bad inputs, CycleGAN's second direction), and Pix2Pix and CycleGAN on 2
Ray Train workers from SeaweedFS shards, stopped after a checkpoint and resumed with the same pool and
scheduler state. One Ray runtime serves the whole module."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.testing import assert_close

from gan_models import get_family
from gan_models.i2i_nets import check_g_arch, define_g
from gan_models.layers import count_parameters
from pipelines.evaluation.i2i import cyclegan_metrics, image_metrics, pix2pix_metrics, psnr, ssim
from pipelines.spec.config import TrainSpec, apply_overrides
from pipelines.spec.recipes import get_recipe

# --- the small U-Nets -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "size", "dropouts"), [("unet_32", 32, 0), ("unet_64", 64, 1), ("unet_64", 128, 1)])
def test_small_unets_keep_the_official_block_structure(arch: str, size: int, dropouts: int):
    torch.manual_seed(0)
    g = define_g(arch, 1, 3, ngf=4, norm="batch", dropout=True)
    y = g(torch.rand(2, 1, size, size) * 2 - 1)
    assert y.shape == (2, 3, size, size) and y.abs().max() <= 1
    assert sum(isinstance(m, nn.Dropout) for m in g.modules()) == dropouts  # num_downs - 5 blocks
    with pytest.raises(ValueError, match=f"multiple of {2 ** (5 if arch == 'unet_32' else 6)}"):
        check_g_arch(arch, size + 16)


def test_each_unet_level_adds_one_8ngf_block():
    # unet_64 = unet_32 plus one 8ngf level (down conv + norm, up conv + norm); unet_128/256 keep their counts.
    p = {a: count_parameters(define_g(a, 3, 3, ngf=64, norm="batch", dropout=True))
         for a in ("unet_32", "unet_64", "unet_128", "unet_256")}
    assert p["unet_256"] == 54_413_955 and p["unet_128"] == 41_828_995
    assert p["unet_256"] - p["unet_128"] == p["unet_128"] - p["unet_64"] == p["unet_64"] - p["unet_32"]


# --- task metrics --------------------------------------------------------------------------------------------


def _images(n: int = 4, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(n, c, size + 4, size + 4, generator=g), 5, stride=1)
    return (smooth * 2 - 1).clamp(-1, 1)


def test_ssim_equals_torchmetrics_and_skimage_gaussian_ssim():
    from skimage.metrics import structural_similarity
    from torchmetrics.functional import structural_similarity_index_measure as tm_ssim

    x = _images()
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(-1, 1)
    for y in (x, _images(seed=1), noisy):
        # Ours takes [-1, 1] images and computes on (x + 1) / 2; the references get the [0, 1] images.
        x01, y01 = ((x + 1) / 2).double(), ((y + 1) / 2).double()
        # torchmetrics reflect-pads and averages the whole map; the standard (Wang et al.'s code, skimage) averages
        # the window positions inside the image: its map cropped by the 5-pixel pad.
        _, full = tm_ssim(y01, x01, data_range=1.0, gaussian_kernel=True, sigma=1.5, kernel_size=11,
                          return_full_image=True)
        assert ssim(y, x) == pytest.approx(float(full[..., 5:-5, 5:-5].mean()), abs=1e-6)
        ref = np.mean([structural_similarity(y01[i, c].numpy(), x01[i, c].numpy(), gaussian_weights=True, sigma=1.5,
                                             use_sample_covariance=False, data_range=1.0)
                       for i in range(len(x)) for c in range(x.shape[1])])
        assert ssim(y, x) == pytest.approx(ref, abs=1e-6)
    assert ssim(x, x) == pytest.approx(1.0)
    assert ssim(x, -x) < 0.5


def test_psnr_is_the_mean_of_per_image_psnrs():
    x = torch.zeros(2, 1, 16, 16)
    y = x.clone()
    y[0] += 0.1  # MSE 0.01
    y[1] += 0.2  # MSE 0.04
    expected = (10 * math.log10(4 / 0.01) + 10 * math.log10(4 / 0.04)) / 2
    assert psnr(y, x) == pytest.approx(expected)
    assert psnr(x, x) == pytest.approx(10 * math.log10(4 / 1e-10))  # finite for identical images


def test_pix2pix_metrics_of_identity_and_perfect_generators():
    a, b = _images(seed=3), _images(seed=4)
    identity = pix2pix_metrics(lambda x: x, a, b)
    for name in ("l1", "psnr", "ssim"):
        assert identity[f"eval/{name}"] == pytest.approx(identity[f"eval/{name}_identity"])
    assert identity["eval/l1"] == pytest.approx(float((a - b).abs().mean()))
    perfect = pix2pix_metrics(lambda x: b, a, b)  # one batch: G returns the targets
    assert perfect["eval/l1"] == 0 and perfect["eval/ssim"] == pytest.approx(1.0)
    median = b.median(dim=0, keepdim=True).values
    assert perfect["eval/l1_median_target"] == pytest.approx(float((b - median).abs().mean()))
    assert image_metrics(a[:, :, :8, :8], b[:, :, :8, :8]).keys() == {"eval/l1", "eval/psnr"}  # too small for SSIM


def _bright_side_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: the left half is bright, class 1: the right half, with noise; uint8 (n, 1, 16, 16)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    x = rng.integers(0, 60, (n, 1, 16, 16))
    for i, c in enumerate(labels):
        x[i, :, :, 8 * c : 8 * c + 8] += 150
    return x.astype(np.uint8), labels.astype(np.int64)


def test_cycle_l1_and_class_preservation_by_a_trained_domain_classifier():
    from pipelines.evaluation.evaluator import Evaluator, feature_stats, train_evaluator

    train_x, train_y = _bright_side_data(256, seed=0)
    net = train_evaluator(train_x, train_y, class_names=["left", "right"], epochs=4, batch_size=32)
    test_x, test_y = _bright_side_data(64, seed=1)
    ev = Evaluator(net=net, meta={"class_names": ["left", "right"]}, real_mu=np.zeros(1), real_sigma=np.eye(1))
    ev.real_mu, ev.real_sigma = feature_stats(ev.predict(test_x)[0])
    a = torch.from_numpy(test_x).float() / 127.5 - 1
    evaluators = {"domain_a": ev, "domain_b": ev}
    kept = cyclegan_metrics(lambda x: x, lambda x: x, a, a, label_a=test_y, label_b=test_y, evaluators=evaluators)
    assert kept["eval/cycle_l1_A"] == kept["eval/cycle_l1_B"] == 0
    assert kept["eval/class_preserved_AtoB"] == kept["eval/class_preserved_AtoB_identity"] > 0.9
    assert kept["eval/fd_B"] == pytest.approx(0, abs=1e-4)  # G(a) = a: the real held-out statistics (sqrtm noise)

    def mirror(x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1)

    flipped = cyclegan_metrics(mirror, lambda x: 0.5 * x, a, a, label_a=test_y, label_b=test_y,
                               evaluators=evaluators)
    assert flipped["eval/class_preserved_AtoB"] < 0.1  # mirroring swaps the classes
    assert flipped["eval/class_preserved_AtoB_identity"] == kept["eval/class_preserved_AtoB_identity"]
    assert flipped["eval/cycle_l1_A"] == pytest.approx(float((0.5 * a.flip(-1) - a).abs().mean()))
    assert flipped["eval/fd_B"] > 1.0
    assert flipped["eval/fd_B_identity"] == pytest.approx(kept["eval/fd_B"], abs=1e-4)  # the untranslated a


# --- ganpipe translate ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A tiny (untrained) Pix2Pix and CycleGAN registered in a sqlite MLflow, as `ganpipe train` registers them."""
    from pipelines.tracking.runs import client
    from pipelines.training.train import register_generator

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlf = client(uri)
    exp = mlf.create_experiment("i2i", artifact_location=(root / "artifacts").as_uri())
    out: dict[str, object] = {"uri": uri}
    for family, overrides in (("pix2pix", ["model.g_arch=unet_32", "model.channels=1", "model.eval_mode=true"]),
                              ("cyclegan", ["model.g_arch=resnet_6blocks", "model.channels=1"])):
        spec = apply_overrides(get_recipe(family)(dataset="toy"), [
            *overrides, "model.image_size=32", "model.ngf=4", "model.ndf=4"])
        torch.manual_seed(0)
        g = get_family(family).build(spec.model)["G"].eval()
        run_id = mlf.create_run(exp).info.run_id
        register_generator(spec, family=get_family(family), generator=g, tracking_uri=uri, run_id=run_id,
                           name=f"{family}-toy", manifest_digest="sha256:toy")
        out[family] = g
    return out


def _write_inputs(folder: Path) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(folder / "colour wide.jpg")
    Image.fromarray(rng.integers(0, 255, (20, 20, 4), dtype=np.uint8), "RGBA").save(folder / "small.rgba.png")
    good = (folder / "grey.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 3])
    (folder / "notes.txt").write_text("not an image")


def test_translate_keeps_file_names_and_skips_bad_files(registered, tmp_path, capsys):
    from pipelines.cli.main import main

    _write_inputs(tmp_path / "in")
    rc = main(["translate", "--model", "models:/pix2pix-toy@candidate", "--input", str(tmp_path / "in"),
               "--out", str(tmp_path / "out"), "--tracking-uri", registered["uri"], "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 1, captured  # some inputs were skipped
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["colour wide.png", "grey.png", "small.rgba.png"]
    for p in (tmp_path / "out").iterdir():
        with Image.open(p) as im:
            assert im.size == (32, 32) and im.mode == "L"
    assert "truncated.png: corrupt or unreadable image" in captured.err
    assert "notes.txt: not an image" in captured.err
    assert "translated 3 of 5 files" in captured.out

    # The written image is G(input) as the registered graph computes it, quantised to 8 bits.
    from pipelines.tracking.runs import to_uint8_hwc

    with Image.open(tmp_path / "in" / "grey.png") as im:
        x = torch.from_numpy(np.asarray(im)).float()[None, None] / 127.5 - 1
    with torch.no_grad():
        expected = to_uint8_hwc(registered["pix2pix"](x)[0].clamp(-1, 1))
    got = np.asarray(Image.open(tmp_path / "out" / "grey.png"))
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_translate_uses_the_cyclegan_partner_for_the_other_direction(registered, tmp_path, capsys):
    from pipelines.cli.main import main
    from pipelines.inference.translate import translate_files
    from pipelines.tracking.loading import load_translator

    _write_inputs(tmp_path / "in")
    x_path = tmp_path / "in" / "grey.png"
    out = translate_files(model="models:/cyclegan-toy@candidate", input_path=x_path, out=tmp_path / "ba",
                          direction="BtoA", tracking_uri=registered["uri"], progress=False, log=lambda _: None)
    assert out.model == "cyclegan-toy-BtoA/1" and out.direction == "BtoA" and out.written == [tmp_path / "ba/grey.png"]
    assert load_translator("models:/cyclegan-toy-BtoA@candidate", direction="AtoB",
                           tracking_uri=registered["uri"]).label == "cyclegan-toy/1"
    with Image.open(x_path) as im:
        x = torch.from_numpy(np.asarray(im)).float()[None, None] / 127.5 - 1
    g = registered["cyclegan"]
    with torch.no_grad():
        back, there = g(x, "BtoA")[0], g(x, "AtoB")[0]
    got = torch.from_numpy(np.asarray(Image.open(out.written[0])).astype(np.float32)) / 127.5 - 1
    assert (got - back[0]).abs().max() < 2 / 255 + 1e-6
    assert (got - there[0]).abs().max() > 0.05  # and it is not the forward direction

    rc = main(["translate", "--model", "models:/pix2pix-toy@candidate", "--input", str(x_path), "--out",
               str(tmp_path / "x"), "--direction", "BtoA", "--tracking-uri", registered["uri"]])
    assert rc == 2 and "translates AtoB only" in capsys.readouterr().err


# --- Ray Train on SeaweedFS: stop after a checkpoint, resume ----------------------------------------------------

STEPS_FIRST, STEPS_TOTAL = 4, 6


@pytest.fixture(scope="module")
def ray_runtime(s3_server):
    """One local Ray runtime for the module, started after the S3 environment is set (workers inherit it)."""
    import ray

    from pipelines.training.ray_train import ensure_ray

    ensure_ray(num_cpus=2)
    yield
    ray.shutdown()


def _prep(bucket_url: str, family: str) -> object:
    from data_prep.kinds import prep_dataset
    from data_prep.options import PairedOptions, SourceOptions
    from data_prep.prep import PrepConfig

    common = dict(store=bucket_url, holdout=8, shard_size=8, inputs=SourceOptions(
        limit=40, source_b="mnist5k" if family == "cyclegan" else None))
    if family == "pix2pix":
        cfg = PrepConfig(source="mnist5k", kind="paired", paired=PairedOptions(derive="edges"), **common)
    else:
        cfg = PrepConfig(source="digits", kind="unpaired", **common)
    return prep_dataset(cfg, progress=False)


def _spec(family: str, dataset: str, *, store: str, tracking_uri: str, steps: int) -> TrainSpec:
    arch = ["model.g_arch=unet_32", "model.eval_mode=true"] if family == "pix2pix" else [
        "model.g_arch=resnet_6blocks", "model.pool_size=16"]
    spec = apply_overrides(get_recipe(family)(dataset=dataset), [
        f"loop.steps={steps}", "loop.checkpoint_every=2", "loop.log_every=2", "loop.eval_every=2",
        "loop.sample_every=2", "loop.threads=1", "scale.workers=2", "data.batch_size=4", "data.shuffle_buffer=8",
        f"store={store}", f"track.tracking_uri={tracking_uri}", "model.ngf=4", "model.ndf=4", "model.n_epochs=1",
        "model.n_epochs_decay=10", *arch])
    import dataclasses

    return dataclasses.replace(spec, run_name=f"{family}-resume")


def _checkpoint(bucket_url: str, run_name: str, step: int) -> dict:
    import io

    from data_prep.storage import open_store

    store = open_store(bucket_url)
    keys = [k for k in store.list(f"ray/{run_name}/") if k.endswith(f"step_{step:08d}/state.pt")]
    assert keys, f"no checkpoint of step {step} under ray/{run_name}/"
    return torch.load(io.BytesIO(store.get_bytes(keys[0])), map_location="cpu", weights_only=True)


def _assert_same(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert_close(a, b, rtol=0, atol=0)
    else:
        assert a == b


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("family", ["pix2pix", "cyclegan"])
def test_two_ray_workers_train_stop_and_resume_with_the_same_pool_and_schedulers(
    family, ray_runtime, s3_server, bucket_url, tmp_path, monkeypatch
):
    from pipelines.engine.checkpoint import restore
    from pipelines.evaluation.evaluate import evaluate_model
    from pipelines.tracking.runs import client
    from pipelines.training.train import train
    from pipelines.training.worker import steps_per_epoch_of

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    prep = _prep(bucket_url, family)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    name = prep.manifest.name

    # 1. Train to step 4 (checkpoints at 2 and 4) and stop.
    first = train(_spec(family, name, store=bucket_url, tracking_uri=tracking_uri, steps=STEPS_FIRST),
                  progress=False, log=lambda _: None)
    assert first.steps == STEPS_FIRST and not first.resumed
    saved = _checkpoint(bucket_url, first.run_name, STEPS_FIRST)

    # The saved extra state, restored into freshly built objects, is the saved state exactly.
    fam = get_family(family)
    spec = TrainSpec.from_dict(saved["spec"])
    nets = fam.build(spec.model)
    opts = fam.build_optimizers(spec.model, nets)
    extra = fam.extra_state(spec.model, opts)
    assert restore(saved, nets=nets, opts=opts, ema=None, extra=extra) == STEPS_FIRST
    for key, obj in extra.items():
        _assert_same(obj.state_dict(), saved["extra"][key])

    # 2. The same run name again with more steps resumes from step 4 (same MLflow run) and finishes.
    second = train(_spec(family, name, store=bucket_url, tracking_uri=tracking_uri, steps=STEPS_TOTAL),
                   progress=False, log=lambda _: None)
    assert second.resumed and second.run_id == first.run_id and second.steps == STEPS_TOTAL
    final = _checkpoint(bucket_url, second.run_name, STEPS_TOTAL)

    # 3. The schedulers continued from the saved epoch count (a fresh one would have restarted at 0): each epoch
    #    start (step % steps_per_epoch == 0) advanced it once.
    per_epoch = steps_per_epoch_of(prep.manifest, batch_size=4, world_size=2)
    starts = sum(1 for s in range(STEPS_FIRST, STEPS_TOTAL) if s % per_epoch == 0)
    for key in ("scheduler_G", "scheduler_D"):
        assert saved["extra"][key]["last_epoch"] >= 1
        assert final["extra"][key]["last_epoch"] == saved["extra"][key]["last_epoch"] + starts
    epochs = final["extra"]["scheduler_G"]["last_epoch"]
    expected_lr = 2e-4 * (1 - max(0, epochs + 1 - 1) / 11)  # the official linear rule, n_epochs 1, decay 10
    assert final["opts"]["G"]["param_groups"][0]["lr"] == pytest.approx(expected_lr)

    # 4. CycleGAN's pools continued from the saved ones: still full, and at most one slot per queried image
    #    (2 steps x batch 4) replaced, so at least 8 of the 16 saved images are still there unchanged.
    if family == "cyclegan":
        for key in ("pool_fake_A", "pool_fake_B"):
            before, after = saved["extra"][key]["images"], final["extra"][key]["images"]
            assert len(before) == len(after) == 16
            kept = sum(bool((after == img).all(dim=(1, 2, 3)).any()) for img in before)
            assert kept >= 16 - 2 * 4

    # 5. eval/* came from rank 0 every 2 steps in both sessions, and once more at the end.
    mlf = client(tracking_uri)
    metric = "eval/l1" if family == "pix2pix" else "eval/cycle_l1_A"
    assert {m.step for m in mlf.get_metric_history(first.run_id, metric)} >= {2, 4, 6}
    final_metrics = second.metrics
    if family == "pix2pix":
        assert final_metrics["eval/l1_identity"] > 0 and "eval/ssim" in final_metrics
    else:
        assert 0 <= final_metrics["eval/class_preserved_AtoB"] <= 1 and "eval/fd_A" in final_metrics

    # 6. `ganpipe eval` of the registered graph(s) reproduces the training's final task metrics.
    evaluated = evaluate_model(model=f"models:/{second.model_name}@candidate", tracking_uri=tracking_uri,
                               log=lambda _: None)
    for key, value in final_metrics.items():
        assert evaluated.metrics[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key
