"""Evaluator formulas against closed forms, and the benchmark's output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import linalg

from pipelines.evaluation.evaluator import classifier_score, feature_stats, frechet_distance
from pipelines.ops.bench import bench, format_table, write_json


def test_frechet_distance_matches_float64_reference():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    b = rng.normal(loc=0.5, scale=1.5, size=(300, 6)) @ rng.normal(size=(6, 6))
    mu1, s1 = feature_stats(a)
    mu2, s2 = feature_stats(b)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    # Diagonal covariances commute: FD = |mu1 - mu2|^2 + sum (sqrt(v1) - sqrt(v2))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, np.diag(v1), mu1, np.diag(v1)) == pytest.approx(0.0, abs=1e-9)


def test_classifier_score_closed_forms():
    # Confident and evenly spread over k classes: exp(log k) = k. One class only: 1.
    k = 7
    assert classifier_score(np.eye(k)[np.arange(70) % k]) == pytest.approx(k, rel=1e-6)
    assert classifier_score(np.tile(np.eye(k)[2], (50, 1))) == pytest.approx(1.0, rel=1e-6)
    assert classifier_score(np.full((30, k), 1.0 / k)) == pytest.approx(1.0, rel=1e-6)


def test_bench_reports_throughput_and_writes_json(tmp_path):
    result = bench(family="dcgan", image_size=32, channels=1, batch=4, steps=2, warmup=1, repeats=2,
                   overrides={"ngf": "4", "ndf": "4", "nz": "8"})
    assert result["img_per_s_median"] > 0 and len(result["img_per_s_all"]) == 2
    assert result["config"]["ngf"] == 4 and result["params"]["G"] > 0
    assert "dcgan" in format_table([result])
    path = write_json([result], tmp_path / "b.json")
    assert json.loads(path.read_text())[0]["batch"] == 4
    with pytest.raises(ValueError, match="unknown dcgan config key 'ngg'"):
        bench(family="dcgan", image_size=32, channels=1, batch=4, overrides={"ngg": "4"})


def test_bench_and_the_plain_loop_run_without_ray_mlflow_or_webdataset(tmp_path):
    # A bare GPU box has torch only: `ganpipe bench`, gan_models and the loop must not need the rest.
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for m in ('ray', 'mlflow', 'webdataset', 'boto3', 'pyarrow'): sys.modules[m] = None\n"
        "import gan_models, pipelines.engine.loop, pipelines.engine.checkpoint\n"
        "from pipelines.cli.main import main\n"
        "sys.exit(main(['bench', '--family', 'dcgan', '--image-size', '32', '--channels', '1', '--batch', '4',\n"
        "               '--steps', '1', '--repeats', '1', '--warmup', '1', '--out', 'b.json', 'ngf=4', 'ndf=4']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "b.json").read_text())[0]["img_per_s_median"] > 0


def test_second_evaluator_differs_from_the_first_is_cached_by_manifest_and_knows_real_digits(tmp_path):
    """The demo's second judge (issue 18): another network, seed and training subset than the first evaluator,
    trained once per manifest digest, and confident on held-out real digits."""
    from data_prep.prep import PrepConfig, prep_images
    from data_prep.reader import load_split
    from pipelines.evaluation.evaluator import EvalNet, Evaluator, ensure_evaluator
    from pipelines.evaluation.second_evaluator import (
        ARCH,
        SecondNet,
        ensure_second_evaluator,
        load_second_evaluator,
        training_subset,
    )

    store = str(tmp_path / "store")
    prep = prep_images(PrepConfig(source="digits", store=store, image_size=16), progress=False)
    args = {"store_url": store, "dataset_url": prep.dataset_url, "manifest": prep.manifest}
    first = Evaluator.load(ensure_evaluator(**args, epochs=1))
    url = ensure_second_evaluator(**args, epochs=8)
    assert url.endswith(f"cache/evaluator2/{prep.manifest.digest}-{ARCH}.pt")
    cached = tmp_path / "store" / "cache" / "evaluator2" / f"{prep.manifest.digest}-{ARCH}.pt"
    stamp = cached.stat().st_mtime_ns
    assert ensure_second_evaluator(**args, epochs=8) == url and cached.stat().st_mtime_ns == stamp  # not retrained

    second = load_second_evaluator(url)
    assert isinstance(second.net, SecondNet) and isinstance(first.net, EvalNet)
    n_train = prep.manifest.counts["train"]
    assert second.meta["seed"] != 0 and second.meta["train_n"] == len(training_subset(n_train)) < n_train
    test_x, test_y = load_split(prep.dataset_url, split="test")
    features, probs = second.predict(test_x)
    assert features.shape == (len(test_x), 256) != first.predict(test_x)[0].shape
    accuracy = float((probs.argmax(axis=1) == test_y).mean())
    assert accuracy == pytest.approx(second.meta["test_accuracy"]) and accuracy >= 0.8
    assert second.meta["real"]["confident_share"] >= 0.5 and second.meta["real"]["n"] == len(test_x)
