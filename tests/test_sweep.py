"""`ganpipe sweep`: search spaces and their validation (no Ray), then two real sweeps of a tiny DCGAN on digits
through the CLI, with Ray Tune on this machine and an `mlflow server` (sqlite) on 127.0.0.1:

1. four trials under ASHA, one of them planted to diverge (lr 1e30): four child runs, the diverged one recorded
   as such, trials.csv and the plot on the parent, the best finite trial registered as `candidate`;
2. a sweep killed after its first checkpoint and started again with the same --name: Tune restores it, the
   unfinished trial resumes from its checkpoint, and no child run is duplicated.
"""

from __future__ import annotations

import csv
import io
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from conftest import MlflowServer

from gan_models import FAMILIES, get_family
from pipelines.engine.checkpoint import load_state, save_state, training_state
from pipelines.spec.config import TrainSpec
from pipelines.spec.recipes import get_recipe
from pipelines.spec.sweep_space import (
    SPACES,
    apply_params,
    count_trials,
    grid_values,
    load_space,
    parse_space,
    tune_param_space,
    validate_space,
)
from pipelines.training.sweep import (
    SweepConfig,
    TrialRecord,
    best_record,
    check_settings,
    plot_params,
    trials_csv,
    with_cadence,
)
from pipelines.training.sweep_trial import adopt_config, metric_first

TINY = ["model.ngf=8", "model.ndf=8", "model.nz=16", "data.batch_size=16"]


# ---------------------------------------------------------------- spaces (no Ray)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_registered_family_has_a_default_space_valid_for_its_recipe(family):
    params = load_space("default", family)
    validate_space(params, get_recipe(family)())
    # Each searched key exists in the family's Config (or another TrainSpec section).
    for p in params:
        for target in p.targets:
            section, key = target.split(".", 1)
            obj = get_recipe(family)().model if section == "model" else getattr(get_recipe(family)(), section)
            assert hasattr(obj, key), target


def test_default_spaces_name_the_papers_lambdas():
    assert SPACES["pix2pix"] == {"model.lambda_l1": {"loguniform": [1, 300]}}
    cyc = {p.name: p for p in load_space("default", "cyclegan")}
    assert cyc["lambda_cycle"].targets == ("model.lambda_a", "model.lambda_b")
    assert set(SPACES["stargan"]) == {"model.lambda_cls", "model.lambda_rec", "model.lambda_gp"}
    assert set(SPACES["text2img"]) == {"model.wrong_weight", "model.int_beta"}


def test_yaml_space_all_kinds_and_a_tied_parameter(tmp_path):
    f = tmp_path / "space.yaml"
    f.write_text("model.lambda_l1: {loguniform: [1e-1, 300]}\n"  # YAML 1.1 reads 1e-1 as a string
                 "data.batch_size: {choice: [1, 2, 4]}\n"
                 "model.ngf: {randint: [8, 17]}\n"
                 "model.lr: {grid: [1.0e-4, 2.0e-4]}\n")
    params = load_space(str(f), "pix2pix")
    validate_space(params, get_recipe("pix2pix")())
    assert params[0].values == (0.1, 300)
    space, n = tune_param_space(params, search="random", num_samples=3)
    assert n == 3 and count_trials(params, search="random", num_samples=3) == 6  # 3 draws x 2 grid points
    cyc = parse_space({"lambda_cycle": {"uniform": [2, 20], "sets": ["model.lambda_a", "model.lambda_b"]}})
    spec = apply_params(get_recipe("cyclegan")(), {"lambda_cycle": 7.5}, cyc)
    assert spec.model.lambda_a == spec.model.lambda_b == 7.5


def test_grid_search_spaces_ranges_evenly_on_their_scale():
    (p,) = load_space("default", "pix2pix")
    assert grid_values(p, 5) == [1.0, 4.16179, 17.3205, 72.0843, 300.0]
    (u,) = parse_space({"model.lambda_identity": {"uniform": [0, 1]}})
    assert grid_values(u, 3) == [0.0, 0.5, 1.0]
    space, n = tune_param_space(load_space("default", "cyclegan"), search="grid", num_samples=3)
    assert n == 1 and count_trials(load_space("default", "cyclegan"), search="grid", num_samples=3) == 9
    assert space["lambda_cycle"] == {"grid_search": [1.0, 5.47723, 30.0]}


@pytest.mark.parametrize("raw, message", [
    ({"model.lamda_l1": {"loguniform": [1, 300]}}, "valid keys here: .*lambda_l1"),
    ({"modle.lambda_l1": {"uniform": [1, 2]}}, "unknown config key 'modle.lambda_l1'; valid keys here: family, model"),
    ({"model.lambda_l1": {"uniform": [-5, 2]}}, "lambda_l1.*>= 0"),
    ({"model.ngf": {"uniform": [8, 16]}}, "not a valid int"),
    ({"model.model": {"choice": [1]}}, "unknown config key"),
    ({"model.lambda_l1": {"loguniform": [0, 300]}}, "loguniform needs low > 0"),
    ({"model.lambda_l1": {"uniform": [3, 1]}}, "low < high"),
    ({"model.lambda_l1": {"uniform": [1, 3], "choice": [1]}}, "exactly one of"),
    ({"model.lambda_l1": {"normal": [1, 3]}}, "exactly one of loguniform, uniform, randint, choice, grid"),
    ({"model.lambda_l1": [1, 3]}, "expected {KIND: VALUES}"),
    ({"x": {"uniform": [1, 3], "sets": ["model.lambda_l1", "model.lambda_l1"]}}, "set by both"),
])
def test_space_errors_are_clear(raw, message):
    with pytest.raises(ValueError, match=message):
        validate_space(parse_space(raw), get_recipe("pix2pix")())


def test_unknown_default_space_and_missing_file():
    with pytest.raises(ValueError, match="no default search space for 'nope'"):
        load_space("default", "nope")
    with pytest.raises(ValueError, match="no such file"):
        load_space("missing.yaml", "dcgan")


def test_settings_refuse_what_a_trial_cannot_report():
    cfg = SweepConfig(name="s", metric="eval/fd", mode="min")
    with pytest.raises(ValueError, match="eval/fd is not reported while training on edges"):
        check_settings(cfg, has_evaluator=False, dataset="edges")
    check_settings(SweepConfig(name="s", metric="eval/l1", mode="min"), has_evaluator=False, dataset="edges",
                   task_metrics=True)  # Pix2Pix's held-out L1 is reported by the image-to-image families
    with pytest.raises(ValueError, match="unknown metric 'eval/fid'"):
        check_settings(SweepConfig(name="s", metric="eval/fid", mode="min"), has_evaluator=True, dataset="d")
    with pytest.raises(ValueError, match="pbt needs --workers-per-trial 1"):
        check_settings(SweepConfig(name="s", metric="loss/G", mode="min", scheduler="pbt", workers_per_trial=2),
                       has_evaluator=False, dataset="d")
    try:
        import optuna  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"pip install 'ganpipe\[optuna\]'"):
            check_settings(SweepConfig(name="s", metric="loss/G", mode="min", search="optuna"),
                           has_evaluator=False, dataset="d")
    with pytest.raises(ValueError, match="multiple of --report-every"):
        with_cadence(get_recipe("dcgan")(), SweepConfig(name="s", metric="loss/G", report_every=7))


def test_cadence_aligns_evaluation_checkpoints_and_reports():
    spec = with_cadence(get_recipe("dcgan")(), SweepConfig(name="s", metric="eval/fd"))
    assert spec.loop.eval_every == spec.loop.checkpoint_every == 1250 and 1250 % spec.loop.log_every == 0
    assert spec.scale.workers == 1


def test_trials_report_the_optimised_metric_first_for_tunes_table():
    report = {"loss/D": 1.0, "loss/G": 2.0, "d/real_score": 0.5, "d/fake_score": 0.4, "step": 40, "eval/fd": 9.0}
    assert list(metric_first(report, "eval/fd")) == ["eval/fd", "step", "loss/D", "loss/G", "d/real_score",
                                                      "d/fake_score"]
    assert metric_first(report, "eval/fd") == report


def test_pbt_exploit_continues_under_the_new_learning_rate(tmp_path):
    """A checkpoint saved at lr 2e-4 continues at the trial's perturbed lr; the networks are the donor's."""
    family = get_family("dcgan")
    spec = TrainSpec.from_dict({**get_recipe("dcgan")().to_dict()})
    nets = family.build(spec.model)
    opts = family.build_optimizers(spec.model, nets)
    save_state(tmp_path, training_state(spec=spec.to_dict(), step=40, nets=nets, opts=opts, ema=None))
    perturbed = apply_params(spec, {"model.lr_g": 1e-3}, load_space("default", "dcgan")[:1])
    adopted = load_state(adopt_config(tmp_path, perturbed, family, tmp_path / "adopted"))
    assert adopted["opts"]["G"]["param_groups"][0]["lr"] == 1e-3
    assert adopted["opts"]["D"]["param_groups"][0]["lr"] == 2e-4 and adopted["step"] == 40
    torch.testing.assert_close(adopted["nets"]["G"], nets["G"].state_dict())
    assert adopt_config(tmp_path, spec, family, tmp_path / "same") == tmp_path  # same config: untouched


def test_csv_plot_and_best_skip_diverged_trials(tmp_path):
    params = load_space("default", "dcgan")
    recs = [TrialRecord("a", "r1", "finished", 8, 3.0, {"model.lr_g": 1e-4, "model.lr_d": 2e-4}),
            TrialRecord("b", "r2", "stopped", 4, 2.5, {"model.lr_g": 3e-4, "model.lr_d": 2e-4}),
            TrialRecord("c", "r3", "diverged", 2, math.nan, {"model.lr_g": 1e-3, "model.lr_d": 2e-4})]
    assert best_record(recs, "min").trial_id == "b" and best_record(recs, "max").trial_id == "a"
    rows = list(csv.DictReader(io.StringIO(trials_csv(recs, params, "eval/fd"))))
    assert [r["status"] for r in rows] == ["finished", "stopped", "diverged"] and rows[2]["eval/fd"] == ""
    out = plot_params(recs, params, metric="eval/fd", spec=get_recipe("dcgan")(), out=tmp_path / "p.png")
    from PIL import Image

    with Image.open(out) as img:
        assert img.size[0] > img.size[1] > 100


def test_a_stopped_sweep_ends_its_parent_and_unfinished_trial_runs_killed(tmp_path):
    """What `ganpipe jobs stop` (SIGTERM) does to a sweep's MLflow runs: the unfinished ones end KILLED."""
    import mlflow

    from pipelines.training.sweep import _stopped
    from pipelines.training.sweep_trial import SWEEP_TAG, TRIAL_TAG

    mlf = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlf.create_experiment("sweeps", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = mlf.create_run(exp, tags={SWEEP_TAG: "sw"}).info.run_id
    done, running = (mlf.create_run(exp, tags={SWEEP_TAG: "sw", TRIAL_TAG: t}).info.run_id for t in ("t0", "t1"))
    other = mlf.create_run(exp, tags={SWEEP_TAG: "another", TRIAL_TAG: "t0"}).info.run_id
    mlf.set_terminated(done, status="FINISHED")
    _stopped(mlf, parent_id=parent, name="sw")
    status = {k: mlf.get_run(v).info.status for k, v in
              {"parent": parent, "done": done, "running": running, "other": other}.items()}
    assert status == {"parent": "KILLED", "done": "FINISHED", "running": "KILLED", "other": "RUNNING"}


# ---------------------------------------------------------------- real sweeps (Ray Tune + mlflow server)


def _digits_with_evaluator(store: str) -> str:
    """digits prepared once, with a quickly trained evaluator cached beside it (the sweeps reuse the cache)."""
    from data_prep.prep import PrepConfig, prep_images
    from pipelines.evaluation.evaluator import ensure_evaluator

    result = prep_images(PrepConfig(source="digits", store=store, shard_size=400), progress=False)
    ensure_evaluator(store_url=store, dataset_url=result.dataset_url, manifest=result.manifest, epochs=1)
    return store


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory):
    return _digits_with_evaluator(str(tmp_path_factory.mktemp("sweep-store")))


@pytest.fixture(scope="module")
def digits_s3_store(s3_server):
    """The same in a bucket of the session's SeaweedFS: trials read shards and write checkpoints there."""
    return _digits_with_evaluator(f"s3://sweep-{uuid.uuid4().hex[:12]}/store")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server.url
    server.stop()


def _sweep_cmd(store: str, uri: str, name: str, *extra: str, progress: bool = False) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "sweep", "--family", "dcgan", "--dataset", "digits", "--store",
            store, "--tracking-uri", uri, "--name", name, "--metric", "eval/fd", "--mode", "min",
            *([] if progress else ["--no-progress"]), *extra, *TINY]


def _env() -> dict[str, str]:
    # The CLI under test is this checkout's, whatever the working directory or the installed package.
    path = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "RAY_DEDUP_LOGS": "0"}


def _children(client, name: str):
    exp = client.get_experiment_by_name("dcgan-digits")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`ganpipe.sweep` = '{name}' and "
                                                                 "tags.`ganpipe.trial_id` != ''")


@pytest.mark.integration
@pytest.mark.slow
def test_asha_sweep_with_a_diverging_trial_registers_the_best(digits_s3_store, mlflow_server, s3_server, tmp_path,
                                                              monkeypatch):
    import mlflow

    # The run's artifacts (trials.csv, the plot) live in the S3 store, as on a cluster; this process reads them.
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server.endpoint)
    space = tmp_path / "lr.yaml"
    space.write_text("model.lr_g: {grid: [1.0e-4, 4.0e-4, 1.0e-3, 1.0e+30]}\n")  # 1e30: NaN within two steps
    cmd = _sweep_cmd(digits_s3_store, mlflow_server, "asha4", "--space", str(space), "--num-samples", "1",
                     "--steps", "8", "--report-every", "4", "--max-concurrent", "2", "--scheduler", "asha",
                     progress=True)
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    # Off a terminal (a log file, a job's log) Tune's live table is silenced (pipelines/engine/quiet.py); the
    # sweep's own trial table is what a reader gets, with a column for the metric being optimised.
    assert not [line for line in proc.stdout.splitlines() if "Trial name" in line], proc.stdout[-4000:]
    header = next((line.split() for line in proc.stdout.splitlines() if line.split()[:2] == ["TRIAL", "STATUS"]), [])
    assert "eval/fd" in header, proc.stdout[-4000:]

    client = mlflow.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    children = _children(client, "asha4")
    parent = client.search_runs([children[0].info.experiment_id], filter_string="attributes.run_name = 'asha4'")[0]
    assert len(children) == 4 and {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    by_lr = {float(c.data.params["model.lr_g"]): c for c in children}
    assert by_lr[1e30].data.tags["ganpipe.trial_status"] == "diverged" and by_lr[1e30].info.status == "FAILED"
    finite = [c for lr, c in by_lr.items() if lr < 1]
    assert all(c.data.tags["ganpipe.trial_status"] in ("finished", "stopped") for c in finite)
    assert all("eval/fd" in c.data.metrics and c.data.params["model.ngf"] == "8" for c in finite)

    rows = list(csv.DictReader(open(client.download_artifacts(parent.info.run_id, "trials.csv", str(tmp_path)))))
    assert len(rows) == 4 and [r["status"] for r in rows if float(r["model.lr_g"]) > 1] == ["diverged"]
    png = client.download_artifacts(parent.info.run_id, "params_vs_metric.png", str(tmp_path))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    best = min(finite, key=lambda c: c.data.metrics["eval/fd"])
    version = client.get_model_version_by_alias("dcgan-digits", "candidate")
    assert version.run_id == best.info.run_id and version.tags["ganpipe.sweep"] == "asha4"
    assert version.tags["ganpipe.sweep_parent_run"] == parent.info.run_id
    assert parent.data.tags["ganpipe.best_run_id"] == best.info.run_id
    assert parent.data.metrics["best/eval/fd"] == pytest.approx(best.data.metrics["eval/fd"], rel=1e-4)


def _wait_for_checkpoint(store: Path, name: str, proc: subprocess.Popen, timeout: float = 400) -> None:
    """Until Tune's experiment state lists a trial checkpoint (one only on disk is not what a restore uses)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any("checkpoint_0000" in f.read_text(errors="replace")
               for f in (store / "sweeps" / name).glob("experiment_state-*.json")):
            return
        if proc.poll() is not None:
            pytest.fail(f"the sweep exited ({proc.returncode}) before its first checkpoint:\n"
                        f"{(proc.stdout.read() if proc.stdout else '')[-4000:]}")
        time.sleep(0.5)
    pytest.fail("no trial checkpoint was registered in time")


@pytest.mark.integration
@pytest.mark.slow
def test_interrupted_sweep_resumes_with_the_same_name(digits_store, mlflow_server, tmp_path):
    import mlflow

    cmd = _sweep_cmd(digits_store, mlflow_server, "resume2", "--num-samples", "2", "--steps", "60",
                     "--report-every", "10", "--max-concurrent", "1", "--scheduler", "none")
    first = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    try:
        _wait_for_checkpoint(Path(digits_store), "resume2", first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    second = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-6000:]
    assert "resuming  sweep resume2" in out and "(resuming)" in out
    resumed = [int(line.rsplit(" ", 1)[1]) for line in out.splitlines() if "[ganpipe] resuming resume2-" in line]
    assert resumed and min(resumed) >= 10, out[-4000:]

    client = mlflow.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    children = _children(client, "resume2")
    assert len(children) == 2, [c.info.run_name for c in children]  # resumed trials kept their child runs
    assert all(c.data.tags["ganpipe.trial_status"] == "finished" for c in children)
    steps = {m.step for m in client.get_metric_history(children[0].info.run_id, "eval/fd")}
    assert max(steps) == 60
