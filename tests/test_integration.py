"""The whole slice against real services: SeaweedFS S3, a local Ray runtime, a sqlite MLflow store.

prep -> s3:// shards -> 2 Ray Train workers -> checkpoints on S3 -> kill -> resume -> registered model ->
`ganpipe sample`. One training command runs twice (the second resumes), so Ray starts only twice.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cache_quick_evaluator

from data_prep.prep import PrepConfig, prep_images
from data_prep.reader import iter_samples
from data_prep.storage import open_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Enough steps after the first checkpoint that the kill (polled every 0.2 s) lands long before the end: a run
# killed after its final evaluation would, rightly, evaluate the last step again when it resumes.
STEPS, CHECKPOINT_EVERY = 200, 20


def _train_cmd(store: str, tracking_uri: str) -> list[str]:
    return [
        sys.executable, "-m", "pipelines.cli", "train", "--recipe", "dcgan", "--dataset", "digits",
        "--workers", "2", "--run-name", "resume-me", "--store", store, "--tracking-uri", tracking_uri,
        "--no-progress", f"loop.steps={STEPS}", f"loop.checkpoint_every={CHECKPOINT_EVERY}", "loop.log_every=10",
        "loop.sample_every=100", "loop.ema_decay=0.9", "loop.eval_every=100",
        "model.ngf=8", "model.ndf=8", "model.nz=16", "data.batch_size=16",
    ]  # fmt: skip


def _wait_for_registered_checkpoint(store_url: str, proc: subprocess.Popen, timeout: float = 300) -> int:
    """The step of the first checkpoint Ray Train has registered (listed in its run snapshot), not merely
    uploaded: only a registered checkpoint is what `get_checkpoint` resumes from."""
    store = open_store(store_url)
    snapshot = "ray/resume-me/checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.exists(snapshot):
            steps = [int(s) for s in re.findall(r"step_(\d{8})", store.get_bytes(snapshot).decode())]
            if steps:
                return max(steps)
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"training exited with {proc.returncode} before its first checkpoint:\n{out[-4000:]}")
        time.sleep(0.2)
    pytest.fail("no checkpoint was registered in time")


def test_prep_train_kill_resume_register_sample_on_s3(s3_server, bucket_url, tmp_path, monkeypatch):
    # 1. prep to S3; each of 2 ranks reads a disjoint half of the train split.
    result = prep_images(PrepConfig(source="digits", store=bucket_url, shard_size=400), progress=False)
    assert result.dataset_url.startswith("s3://")
    assert len(result.manifest.split_shards("train")) >= 2
    keys = [{s["key"] for s in iter_samples(result.dataset_url, rank=r, world_size=2)} for r in (0, 1)]
    assert not keys[0] & keys[1] and len(keys[0] | keys[1]) == result.manifest.counts["train"]
    cache_quick_evaluator(bucket_url, result)

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    cmd = _train_cmd(bucket_url, tracking_uri)

    # 2. Start training, kill the whole process group once the first checkpoint is on S3.
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    try:
        saved_step = _wait_for_registered_checkpoint(bucket_url, first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    assert saved_step % CHECKPOINT_EVERY == 0 and saved_step < STEPS

    # 3. The same command again resumes from the latest checkpoint on S3 and finishes.
    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-6000:]
    resumed_from = [int(line.rsplit(" ", 1)[1]) for line in output.splitlines()
                    if "[ganpipe] resuming resume-me from step" in line]
    assert resumed_from and resumed_from[0] >= saved_step, output[-4000:]
    assert "resuming)" in output  # the same MLflow run continues
    assert f"{STEPS} steps" in output
    # Progress (plain lines: no terminal here) comes from rank 0 alone, one line per log_every steps to the end.
    progress = [line for line in output.splitlines() if "[ganpipe] step " in line]
    steps = [int(re.search(r"\[ganpipe\] step (\d+)/(\d+)", line).group(1)) for line in progress]
    assert steps and steps == sorted(set(steps)) and steps[-1] == STEPS, output[-4000:]
    assert all(s % 10 == 0 and re.search(r" [\d,]+ img/s ", line) for s, line in zip(steps, progress, strict=True))
    assert len({line.split(")")[0] for line in progress}) == 1, progress  # one worker's lines

    # 4. MLflow: params, step metrics from both sessions, sample images, the dataset input, a model version.
    import mlflow

    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server.endpoint)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("dcgan-digits").experiment_id])[0]
    assert run.data.params["model.ngf"] == "8" and run.data.params["loop.steps"] == str(STEPS)
    assert run.data.tags["ganpipe.manifest_sha256"] == result.manifest.digest
    steps_logged = {m.step for m in client.get_metric_history(run.info.run_id, "loss/D")}
    assert {10, STEPS} <= steps_logged
    eval_steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval/fd")]
    assert eval_steps[-1] == STEPS and eval_steps.count(STEPS) == 1  # the final evaluation, logged once
    assert run.inputs.dataset_inputs[0].dataset.name == "digits"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "summary.json", "curves.png"} <= artifacts
    version = client.get_model_version_by_alias("dcgan-digits", "candidate")
    assert version.run_id == run.info.run_id

    # 5. Checkpoints and MLflow artifacts live on S3, not on local disk.
    store = open_store(bucket_url)
    assert any(k.startswith("mlartifacts/") for k in store.list("mlartifacts/"))
    assert [k for k in store.list("ray/resume-me/") if k.endswith(f"step_{STEPS:08d}/state.pt")]

    # 6. `ganpipe sample` loads the registered generator and writes a PNG.
    out = tmp_path / "grid.png"
    sample = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "sample", "--model", "models:/dcgan-digits@candidate",
         "--n", "9", "--out", str(out), "--tracking-uri", tracking_uri],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert sample.returncode == 0, sample.stderr[-3000:]
    from PIL import Image

    with Image.open(out) as img:
        assert img.size[0] > 32 and img.size == img.size[::-1]
    assert Path(out).stat().st_size > 0
