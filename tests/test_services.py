"""`ganpipe services`: real SeaweedFS and MLflow server processes started, used, found again, and stopped."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pipelines.ops import services
from pipelines.spec.defaults import DEFAULT_HOME

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    """This environment without any store/tracking settings, so only the services' env file can supply them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "GANPIPE_"))}
    return {**env, "PYTHONPATH": str(ROOT), "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true", **extra}


def _ganpipe(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=_env(), timeout=timeout)


def _listening(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# Runs in a process with no AWS_* variable (and no profile): only the tracking server can reach the bucket.
_PROXIED_CLIENT = """
import dataclasses
import os
assert not any(k.startswith("AWS_") and "KEY" in k for k in os.environ)
from pipelines.spec.recipes import get_recipe
from pipelines.tracking.runs import client, start_run
spec = dataclasses.replace(get_recipe("dcgan")("digits"), store="s3://ganpipe/store", run_name="keyless")
run_id, _ = start_run(spec, tracking_uri="{uri}", dataset_name="digits", dataset_url="s3://ganpipe/store/d",
                      manifest_digest="0" * 64)
mlf = client("{uri}")
mlf.log_text(run_id, "written without bucket keys", "notes/keyless.txt")
print(mlf.get_experiment(mlf.get_run(run_id).info.experiment_id).artifact_location, run_id)
"""


def test_home_default_matches_config() -> None:
    assert services.DEFAULT_HOME == DEFAULT_HOME


@pytest.mark.integration
@pytest.mark.slow
def test_services_up_status_use_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / ".ganpipe"
    layout = services.Layout.of(home)
    layout.root.mkdir(parents=True)
    # Stale pid files naming a live process that is not a service (this test): must be ignored, not killed.
    for name in services.SERVICES:
        layout.pid(name).write_text(f"{os.getpid()}\n")
    pids: dict[str, int] = {}
    try:
        up = _ganpipe("services", "up", "--s3-port", "0", "--mlflow-port", "0", cwd=tmp_path)
        assert up.returncode == 0, up.stdout + up.stderr
        assert up.stdout.count(" healthy ") == 2, up.stdout
        pids = {name: int(layout.pid(name).read_text()) for name in services.SERVICES}
        assert os.getpid() not in pids.values() and all(_alive(p) for p in pids.values())

        # The env file: owner-only, holds the keys; the secret is never printed.
        assert stat.S_IMODE(layout.env.stat().st_mode) == 0o600
        assert stat.S_IMODE(layout.identity.stat().st_mode) == 0o600
        env = dict(line.split("=", 1) for line in layout.env.read_text().splitlines() if not line.startswith("#"))
        assert set(env) == set(services.ENV_KEYS)
        secret = env["AWS_SECRET_ACCESS_KEY"]
        assert secret not in up.stdout + up.stderr
        assert f"GANPIPE_S3_ENDPOINT={env['GANPIPE_S3_ENDPOINT']}" in up.stdout

        # Idempotent: a second `up` keeps the running processes.
        again = _ganpipe("services", "up", "--s3-port", "0", "--mlflow-port", "0", cwd=tmp_path)
        assert again.returncode == 0 and again.stdout.count("already running") == 2, again.stdout + again.stderr
        assert {name: int(layout.pid(name).read_text()) for name in services.SERVICES} == pids
        st = _ganpipe("services", "status", cwd=tmp_path)
        assert st.returncode == 0 and st.stdout.count(" healthy ") == 2, st.stdout
        assert env["MLFLOW_TRACKING_URI"] in st.stdout and env["GANPIPE_S3_ENDPOINT"] in st.stdout

        # What ganpipe commands do before running: read the file, an explicit variable winning.
        monkeypatch.chdir(tmp_path)
        for key in services.ENV_KEYS:  # setenv first, so monkeypatch restores the original state afterwards
            monkeypatch.setenv(key, "")
            monkeypatch.delenv(key)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
        loaded = services.load_env_file()
        assert os.environ["AWS_DEFAULT_REGION"] == "eu-west-3" and "AWS_DEFAULT_REGION" not in loaded
        assert os.environ["MLFLOW_TRACKING_URI"] == env["MLFLOW_TRACKING_URI"]
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")

        # An object put and read back on the store, with the keys from the env file.
        import boto3

        s3 = boto3.client("s3", endpoint_url=env["GANPIPE_S3_ENDPOINT"], region_name="us-east-1",
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=secret)
        s3.put_object(Bucket="ganpipe", Key="hello/object.bin", Body=b"\x00ganpipe\xff")
        assert s3.get_object(Bucket="ganpipe", Key="hello/object.bin")["Body"].read() == b"\x00ganpipe\xff"

        # A ganpipe command started here finds the store through the env file alone (_env() has no AWS_* and no
        # GANPIPE_STORE): no --store needed, and --help says which store and tracking server it means.
        assert env["GANPIPE_STORE"] == "s3://ganpipe/store" and "GANPIPE_STORE=s3://ganpipe/store" in up.stdout
        helped = _ganpipe("sweep", "--help", cwd=tmp_path)
        assert helped.returncode == 0, helped.stderr
        flat = " ".join(helped.stdout.split())
        assert f"(default: {env['MLFLOW_TRACKING_URI']}, from $MLFLOW_TRACKING_URI)" in flat, helped.stdout
        assert "(default: s3://ganpipe/store, from $GANPIPE_STORE)" in flat and "sqlite" not in flat, helped.stdout
        prep = _ganpipe("prep", "digits", "--no-progress", "--holdout", "100", cwd=tmp_path)
        assert prep.returncode == 0, prep.stdout + prep.stderr
        assert not (tmp_path / ".ganpipe" / "store").exists()

        # `ganpipe ui` points at the running server's own UI instead of starting `mlflow ui` on its URL.
        ui = _ganpipe("ui", "--port", str(services.seaweedfs.free_ports(1)[0]), cwd=tmp_path, timeout=60)
        assert ui.returncode == 0, ui.stdout + ui.stderr
        assert ui.stdout.startswith(f"MLflow UI: {env['MLFLOW_TRACKING_URI']} "), ui.stdout
        assert s3.head_object(Bucket="ganpipe", Key="store/datasets/digits/manifest.json")["ContentLength"] > 0

        # An MLflow run on the server; its artifact lands in the bucket through the server's proxy.
        import mlflow

        mlf = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
        exp_id = mlf.create_experiment(f"services-{uuid.uuid4().hex[:8]}")
        run = mlf.create_run(exp_id)
        mlf.log_param(run.info.run_id, "lr", "0.0002")
        mlf.log_metric(run.info.run_id, "loss/G", 1.5, step=3)
        mlf.log_text(run.info.run_id, "hello from the test", "notes/hello.txt")
        mlf.set_terminated(run.info.run_id)
        got = mlf.get_run(run.info.run_id)
        assert got.data.params == {"lr": "0.0002"} and got.data.metrics == {"loss/G": 1.5}
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="ganpipe", Prefix="mlartifacts/")["Contents"]]
        assert any(k.endswith(f"{run.info.run_id}/artifacts/notes/hello.txt") for k in keys), keys

        # A ganpipe run created by a client WITHOUT bucket keys (store on S3): its experiment's artifacts are
        # proxied (mlflow-artifacts:/), so the client's artifact still lands in the bucket.
        client = _PROXIED_CLIENT.format(uri=env["MLFLOW_TRACKING_URI"])
        proc = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True, cwd=tmp_path,
                              env=_env(), timeout=240)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        location, run_id = proc.stdout.split()[-2:]
        assert location.startswith("mlflow-artifacts:"), location
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="ganpipe", Prefix="mlartifacts/")["Contents"]]
        assert any(k.endswith(f"{run_id}/artifacts/notes/keyless.txt") for k in keys), keys
    finally:
        down = _ganpipe("services", "down", cwd=tmp_path)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(_alive(p) for p in pids.values())
    assert not _listening(env["GANPIPE_S3_ENDPOINT"]) and not _listening(env["MLFLOW_TRACKING_URI"])
    assert not layout.env.exists() and not any(layout.pid(n).exists() for n in services.SERVICES)
    st = _ganpipe("services", "status", cwd=tmp_path)
    assert st.returncode == 1 and st.stdout.count(" stopped ") == 2, st.stdout


def test_env_file_of_stopped_services_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    layout = services.Layout.of(tmp_path / DEFAULT_HOME)
    layout.root.mkdir(parents=True)
    layout.env.write_text("MLFLOW_TRACKING_URI=http://127.0.0.1:9\n")
    layout.pid("mlflow").write_text("999999999\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert services.load_env_file() == {}
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert "not running" in capsys.readouterr().err
    assert not layout.pid("mlflow").exists()  # the stale pid file is cleaned up
