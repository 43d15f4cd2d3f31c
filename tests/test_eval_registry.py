"""Evaluation and the registry: FD/KID against references (scipy, closed forms, torchmetrics with both feature
networks), `ganpipe eval` on tiny registered DCGANs, `models ls`, and `promote`'s rules, on a real sqlite
MLflow store with real registered versions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MlflowServer
from scipy import linalg
from torch import nn

from pipelines.evaluation.evaluator import EvalNet, frechet_distance, to_unit_range
from pipelines.evaluation.inception import InceptionFeatures, InceptionV3, load_inception
from pipelines.evaluation.metrics import FeatureStats, kernel_distance, mmd2_unbiased, polynomial_kernel

REL = 5e-3  # the bar for agreement with torchmetrics: 0.5%


# ---------------------------------------------------------------- formulas


def test_frechet_distance_equals_float64_scipy_sqrtm_reference():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 48)) @ rng.normal(size=(48, 48))
    b = rng.normal(loc=0.3, size=(250, 48)) @ rng.normal(size=(48, 48)) * 0.7
    s1, s2 = FeatureStats.of(a), FeatureStats.of(b)
    c1, c2 = np.cov(a.T), np.cov(b.T)
    ref = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(linalg.sqrtm(c1 @ c2).real)
    assert frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma) == pytest.approx(ref, rel=1e-6)


def test_kid_closed_form_on_tiny_sets():
    # d = 1, gamma = 1, coef = 1, degree 3: k(x, y) = (xy + 1)^3.  X = {0, 1}, Y = {0, 2}:
    # off-diagonal XX: 2 k(0,1) = 2 -> /2 = 1; YY: 2 k(0,2) = 2 -> /2 = 1; XY: 1 + 1 + 1 + 27 = 30 -> 2*30/4 = 15.
    x, y = np.array([[0.0], [1.0]]), np.array([[0.0], [2.0]])
    assert mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(x, y), polynomial_kernel(y, y)) == -13.0
    # With subsets as large as the sets every subset is the whole set: mean = the value, std = 0.
    mean, std = kernel_distance(x, y, subsets=5, subset_size=10)
    assert mean == pytest.approx(-13.0) and std == 0.0


def test_kid_matches_its_definition_written_as_loops():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(6, 3)), rng.normal(loc=0.5, size=(6, 3))

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    m = 6
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    assert kernel_distance(x, y, subsets=1, subset_size=m)[0] == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    # Subsets smaller than the sets vary, so the spread is reported.
    assert kernel_distance(x, y, subsets=20, subset_size=3, seed=0)[1] > 0


# ---------------------------------------------------------------- agreement with torchmetrics


class EvaluatorFeatures(nn.Module):
    """The offline evaluator's feature network as a torchmetrics `feature` extractor (uint8 or [-1, 1] in)."""

    num_features = 128

    def __init__(self, net: EvalNet) -> None:
        super().__init__()
        self.net = net.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(to_unit_range(x))[0]


class ReuseLastOutput(nn.Module):
    """Feeds torchmetrics' KID the features its FID computed a moment earlier for the very same tensor object,
    so the slow Inception forward runs once per batch for torchmetrics (ours runs it separately)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.num_features, self.last = net, net.num_features, (None, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.last[0] is not x:
            self.last = (x, self.net(x))
        return self.last[1]


def _torchmetrics_fid_kid(feature: nn.Module, real: torch.Tensor, fake: torch.Tensor, *, subset_size: int):
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    shared = ReuseLastOutput(feature)
    fid = FrechetInceptionDistance(feature=shared)
    kid = KernelInceptionDistance(feature=shared, subsets=3, subset_size=subset_size)
    for images, is_real in ((real, True), (fake, False)):
        fid.update(images, real=is_real)
        kid.update(images, real=is_real)
    return float(fid.compute()), float(kid.compute()[0])


def _ours(feature, real: torch.Tensor, fake: torch.Tensor, *, subset_size: int) -> tuple[float, float]:
    from pipelines.evaluation.evaluate import feature_batches

    f_real = feature_batches(feature, real, batch=16, desc="", progress=False)
    f_fake = feature_batches(feature, fake, batch=16, desc="", progress=False)
    sr, sf = FeatureStats.of(f_real), FeatureStats.of(f_fake)
    return (frechet_distance(sf.mu, sf.sigma, sr.mu, sr.sigma),
            kernel_distance(f_real, f_fake, subsets=3, subset_size=subset_size)[0])


def _image_sets(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Real: uint8 like the dataset; fake: [-1, 1] floats like a generator's output, with a different spread.
    g = torch.Generator().manual_seed(3)
    real = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    fake = (torch.rand((n, 1, size, size), generator=g) * 1.4 - 0.6).clamp(-1, 1)
    return real, fake


def test_fid_and_kid_match_torchmetrics_with_the_offline_evaluator_features():
    torch.manual_seed(0)
    feature = EvaluatorFeatures(EvalNet(channels=1, n_classes=10))
    real, fake = _image_sets(200, 16)
    ours = _ours(feature, real, fake, subset_size=200)
    theirs = _torchmetrics_fid_kid(feature, real, fake, subset_size=200)
    assert ours[0] > 0 and ours[1] != 0
    assert ours[0] == pytest.approx(theirs[0], rel=REL)
    assert ours[1] == pytest.approx(theirs[1], rel=REL)


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory) -> Path:
    """An Inception-v3 state dict saved from a random initialisation (batch-norm statistics calibrated on a few
    noise images so features are of order one), to exercise the file-loading path."""
    torch.manual_seed(0)
    net = InceptionV3(num_classes=1008)  # the FID network's class count: loads as variant "fid"
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        net.train()(torch.rand(4, 3, 299, 299) * 2 - 1)
    path = tmp_path_factory.mktemp("weights") / "inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


def test_fid_and_kid_match_torchmetrics_with_inception_loaded_from_a_file(inception_weights):
    feature = load_inception(inception_weights)
    assert feature.net.variant == "fid" and len(feature.weights_sha256) == 64
    real, fake = _image_sets(32, 16)
    ours = _ours(feature, real, fake, subset_size=32)
    theirs = _torchmetrics_fid_kid(feature, real, fake, subset_size=32)
    assert ours[0] > 0
    assert ours[0] == pytest.approx(theirs[0], rel=REL)
    assert ours[1] == pytest.approx(theirs[1], rel=REL)


def test_inception_has_torchvisions_parameter_count_and_refuses_other_files(tmp_path):
    # torchvision's inception_v3(aux_logits=False): 23,834,568 parameters; the FID graph has 1008 classes.
    assert sum(p.numel() for p in InceptionV3().parameters()) == 23_834_568
    assert sum(p.numel() for p in InceptionV3(num_classes=1008).parameters()) == 23_834_568 + 8 * 2049
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        load_inception(tmp_path / "missing.pth")
    wrong = tmp_path / "evalnet.pt"
    torch.save(EvalNet(channels=1, n_classes=10).state_dict(), wrong)
    with pytest.raises(ValueError, match="not an Inception-v3 state dict"):
        load_inception(wrong)
    assert isinstance(InceptionFeatures(InceptionV3()).train(), InceptionFeatures)


# ---------------------------------------------------------------- eval, models ls, promote on real MLflow


@dataclasses.dataclass
class Registry:
    store: str
    tracking_uri: str
    name: str
    versions: list[str]
    digest: str


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    """Two tiny DCGANs trained in-process (workers=0) on `digits`, registered as versions 1 and 2."""
    from data_prep.prep import PrepConfig, prep_images
    from pipelines.evaluation.evaluator import ensure_evaluator
    from pipelines.spec.config import apply_overrides
    from pipelines.spec.recipes import dcgan_paper
    from pipelines.training.train import train

    root = tmp_path_factory.mktemp("registry")
    store, tracking_uri = str(root / "store"), f"sqlite:///{root / 'mlflow.db'}"
    prep = prep_images(PrepConfig(source="digits", store=store, image_size=32), progress=False)
    # The offline evaluator, cached before training finds it: 2 epochs instead of 20 keep this fixture short.
    ensure_evaluator(store_url=store, dataset_url=prep.dataset_url, manifest=prep.manifest, epochs=2)
    versions = []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # MLflow's local artifacts go under ./.ganpipe: keep them in the temp folder
        for steps in (2, 6):
            spec = apply_overrides(dcgan_paper("digits"), [
                "scale.workers=0", f"loop.steps={steps}", "loop.log_every=2", "loop.checkpoint_every=100",
                "loop.sample_every=0", "model.ngf=8", "model.ndf=8", "model.nz=16", "data.batch_size=16",
                f"track.tracking_uri={tracking_uri}", f"store={store}",
            ])
            outcome = train(dataclasses.replace(spec, run_name=f"tiny-{steps}"), progress=False, log=lambda _: None)
            versions.append(outcome.model_version)
    return Registry(store=store, tracking_uri=tracking_uri, name=outcome.model_name, versions=versions,
                    digest=prep.manifest.digest)


def _client(reg: Registry):
    from pipelines.tracking.runs import client

    return client(reg.tracking_uri)


def test_registered_generator_carries_its_config_and_loads_without_pickle(registry, monkeypatch, tmp_path):
    import mlflow

    from pipelines.tracking.loading import load_generator

    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)
    mlflow.set_tracking_uri(registry.tracking_uri)
    uri = f"models:/{registry.name}/{registry.versions[0]}"
    files = {p.name for p in Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path))).rglob("*")}
    assert "model.pt2" in files and "model.pth" not in files  # torch.export archive, no pickled module
    config = mlflow.models.get_model_info(uri).metadata["ganpipe"]["config"]
    assert config["family"] == "dcgan" and config["model"]["ngf"] == 8 and config["model"]["nz"] == 16
    # ganpipe's loader pins MLFLOW_ALLOW_PICKLE_DESERIALIZATION off, so MLflow checks the archive is pickle-free.
    generator, _ = load_generator(uri, tracking_uri=registry.tracking_uri)
    assert generator(torch.randn(3, 16, 1, 1)).shape == (3, 1, 32, 32)


def test_eval_logs_eval_metrics_to_a_run_nested_under_the_training_run(registry, inception_weights, capsys,
                                                                        tmp_path):
    import mlflow

    from pipelines.cli.main import main

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")  # --tracking-uri must win over global state

    args = ["eval", "--model", f"models:/{registry.name}@candidate", "--n", "12", "--n-real", "12",
            "--kid-subsets", "2", "--inception-weights", str(inception_weights), "--tracking-uri",
            registry.tracking_uri, "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "computed and cached" in out and "eval/fid" in out
    mlf = _client(registry)
    mv = mlf.get_model_version(registry.name, registry.versions[1])
    run = mlf.get_run(mv.tags["ganpipe.eval_run_id"])
    metrics = run.data.metrics
    for key in ("eval/fid", "eval/kid", "eval/kid_std", "eval/fd", "eval/kd", "eval/cls_score",
                "eval/confident_share", "eval/class_kl", "eval/mode_coverage"):
        assert key in metrics and np.isfinite(metrics[key]), key
    assert metrics["eval/fid"] > 0 and metrics["eval/fd"] > 0
    assert run.data.tags["mlflow.parentRunId"] == mv.run_id
    assert run.data.params["n"] == "12" and run.data.params["manifest_sha256"] == registry.digest
    stats_dir = Path(registry.store) / "cache" / "stats" / registry.digest
    cached = sorted(p.name for p in stats_dir.iterdir() if p.name.endswith("-12.npz"))
    assert len(cached) == 2 and cached[0].startswith("evaluator-") and cached[1].startswith("inception-")

    # Again (without Inception, whose 2048-d sqrtm is the slow part): the evaluator's real statistics come from
    # the cache, and the numbers are the same (same latents, same set); a new run, FID not claimed.
    assert main([a for a in args if a not in ("--inception-weights", str(inception_weights))]) == 0
    out = capsys.readouterr().out
    assert "from cache" in out and "computed" not in out and "FID/KID skipped" in out
    again = mlf.get_run(mlf.get_model_version(registry.name, registry.versions[1]).tags["ganpipe.eval_run_id"])
    assert again.info.run_id != run.info.run_id and "eval/fid" not in again.data.metrics
    assert again.data.metrics["eval/fd"] == pytest.approx(metrics["eval/fd"], rel=1e-9)


def test_eval_without_inception_weights_says_how_to_get_them_and_skips_fid(registry, capsys):
    from pipelines.evaluation.evaluate import evaluate_model

    lines: list[str] = []
    out = evaluate_model(model=f"models:/{registry.name}/{registry.versions[0]}", tracking_uri=registry.tracking_uri,
                         n=16, n_real=16, kid_subsets=2, log=lines.append)
    assert "eval/fid" not in out.metrics and "eval/fd" in out.metrics
    assert any("FID/KID skipped" in line and "pt_inception-2015-12-05" in line for line in lines)


def _eval(reg: Registry, version: str, *, seed: int = 0) -> float:
    from pipelines.evaluation.evaluate import evaluate_model

    out = evaluate_model(model=f"models:/{reg.name}/{version}", tracking_uri=reg.tracking_uri, n=64, seed=seed,
                         n_real=64, kid_subsets=2, log=lambda _: None)
    return out.metrics["eval/fd"]


def test_promote_needs_a_common_evaluation_refuses_worse_accepts_better_and_records_why(registry, capsys):
    from pipelines.cli.main import main
    from pipelines.tracking.registry import PROMOTION_TAG

    mlf = _client(registry)
    v1, v2 = registry.versions
    base = ["--metric", "eval/fd", "--mode", "min", "--tracking-uri", registry.tracking_uri]

    # v1 evaluated with seed 7 only: nothing comparable with v2's seed-0 evaluations -> refused, with the command.
    mlf.set_registered_model_alias(registry.name, "champion", v1)
    _eval(registry, v1, seed=7)
    _eval(registry, v2)
    assert main(["promote", registry.name, "--version", v2, *base]) == 1
    out = capsys.readouterr().out
    assert "no common evaluation set" in out and f"ganpipe eval --model models:/{registry.name}/{v1}" in out
    assert str(mlf.get_model_version_by_alias(registry.name, "champion").version) == v1

    # Both on the same set (seed 0, n 64): the better one wins, whichever it is.
    fd = {v1: _eval(registry, v1), v2: _eval(registry, v2)}
    better, worse = sorted(fd, key=fd.get)
    assert fd[better] < fd[worse]

    mlf.set_registered_model_alias(registry.name, "champion", better)
    assert main(["promote", registry.name, "--version", worse, *base]) == 1
    assert "does not beat the champion" in capsys.readouterr().out
    assert str(mlf.get_model_version_by_alias(registry.name, "champion").version) == better
    assert "not promoted" in mlf.get_model_version(registry.name, worse).tags[PROMOTION_TAG]

    mlf.set_registered_model_alias(registry.name, "champion", worse)
    assert main(["promote", registry.name, "--version", better, *base]) == 0
    out = capsys.readouterr().out
    assert f"promoted {registry.name} v{better} to champion (was v{worse})" in out
    assert f"{fd[better]:.6g} < v{worse} {fd[worse]:.6g}" in out
    assert str(mlf.get_model_version_by_alias(registry.name, "champion").version) == better
    assert "promoted" in mlf.get_model_version(registry.name, better).tags[PROMOTION_TAG]

    # --force moves it anyway, and says so.
    assert main(["promote", registry.name, "--version", worse, *base, "--force"]) == 0
    assert "forced (--force)" in capsys.readouterr().out
    assert str(mlf.get_model_version_by_alias(registry.name, "champion").version) == worse
    assert "forced" in mlf.get_model_version(registry.name, worse).tags[PROMOTION_TAG]


def test_models_ls_lists_versions_aliases_dataset_and_metrics(registry, capsys):
    from pipelines.cli.main import main

    assert main(["models", "ls", "--tracking-uri", registry.tracking_uri]) == 0
    out = capsys.readouterr().out
    assert registry.name in out and "candidate=v2" in out
    assert main(["models", "ls", registry.name, "--tracking-uri", registry.tracking_uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["VERSION", "ALIASES", "CREATED", "DATASET"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(registry.versions)
    for row in rows.values():
        assert registry.digest[:12] in row and "fd=" in row
    assert "candidate" in rows[registry.versions[1]]


def test_models_ls_and_promote_through_an_mlflow_server(registry, tmp_path):
    """The same registry served by `mlflow server` (sqlite backend) on 127.0.0.1, used over HTTP."""
    import subprocess
    import sys

    server = MlflowServer(tmp_path, backend_uri=registry.tracking_uri)
    server.start()
    try:
        uri = server.url
        ls = subprocess.run([sys.executable, "-m", "pipelines.cli", "models", "ls", registry.name, "--tracking-uri",
                             uri], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert ls.returncode == 0, ls.stderr[-2000:]
        assert len(ls.stdout.strip().splitlines()) == 1 + len(registry.versions) and registry.digest[:12] in ls.stdout
        # The version already holding `champion` is reported as unchanged (exit 0) over HTTP as well.
        champion = registry.versions[0]
        _client(registry).set_registered_model_alias(registry.name, "champion", champion)
        promote = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "promote", registry.name, "--version", champion, "--metric",
             "eval/fd", "--mode", "min", "--tracking-uri", uri], capture_output=True, text=True, timeout=120,
            cwd=tmp_path)
        assert promote.returncode == 0 and f"v{champion} already is champion" in promote.stdout, promote.stderr
    finally:
        server.stop()
