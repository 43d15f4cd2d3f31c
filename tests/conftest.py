"""Shared fixtures: a real SeaweedFS S3 server for the session, and a fresh bucket URL per test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.ops import seaweedfs
from pipelines.ops.seaweedfs import S3Server, free_ports

__all__ = ["MlflowServer", "S3Server", "cache_quick_evaluator", "free_ports"]

_START_TIMEOUT_S = 60.0


def cache_quick_evaluator(store_url: str, prep_result) -> None:
    """Cache a 1-epoch offline evaluator for a freshly prepared labelled dataset, where a test trains on it but
    judges nothing by eval/*: training then finds it (as it finds a team's cached one) instead of spending 20
    epochs, the largest single cost of such a test on 2 cores."""
    from pipelines.evaluation.evaluator import ensure_evaluator

    ensure_evaluator(store_url=store_url, dataset_url=prep_result.dataset_url, manifest=prep_result.manifest,
                     epochs=1)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Start `weed server` (master, volume, filer, S3) from the venv on free ports; stop it after."""
    try:
        seaweedfs.weed_binary()
    except FileNotFoundError as exc:
        pytest.fail(f"{exc} (dev extra)")
    root = tmp_path_factory.mktemp("seaweedfs")
    data_dir, log = root / "data", root / "weed.log"
    ports = seaweedfs.allocate_ports()
    access_key, secret_key = seaweedfs.new_credentials()
    server = S3Server(endpoint=f"http://127.0.0.1:{ports['s3']}", access_key=access_key, secret_key=secret_key,
                      region="us-east-1", data_dir=data_dir, log=log)
    identity = root / "s3.json"
    seaweedfs.write_identity(identity, access_key=access_key, secret_key=secret_key, name="ganpipe-tests")
    proc = seaweedfs.start(data_dir=data_dir, identity=identity, ports=ports, log=log)
    try:
        try:
            seaweedfs.wait_ready(server, proc, timeout_s=_START_TIMEOUT_S)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        with pytest.MonkeyPatch.context() as mp:
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
                mp.delenv(name, raising=False)
            mp.setenv("AWS_ACCESS_KEY_ID", server.access_key)
            mp.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
            mp.setenv("AWS_DEFAULT_REGION", server.region)
            mp.setenv("AWS_CONFIG_FILE", os.devnull)  # no user profile leaks into the tests
            mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
            mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
            mp.setenv("GANPIPE_S3_ENDPOINT", server.endpoint)
            yield server
    finally:
        seaweedfs.stop(proc, ports)


@pytest.fixture
def bucket_url(s3_server: S3Server) -> str:
    """A fresh s3://bucket-<uuid>/prefix on the session's SeaweedFS (the bucket is created on first write)."""
    return f"s3://bucket-{uuid.uuid4().hex[:16]}/prefix"


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 (sqlite backend, artifacts under `root`), its log in root/mlflow.log.
    stop() and start() keep the port and the database, so a test can take the server away and bring it back."""

    def __init__(self, root: Path, *, backend_uri: str = "") -> None:
        self.root, self.port = Path(root), free_ports(1)[0]
        self.backend_uri = backend_uri or f"sqlite:///{self.root / 'mlflow.db'}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, *, timeout: float = 180) -> None:
        from pipelines.ops.services import mlflow_healthy

        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_uri,
               "--artifacts-destination", (self.root / "artifacts").as_uri(), "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]
        # The test's own MLflow settings are not the server's.
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        log_path = self.root / "mlflow.log"
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while not mlflow_healthy(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log_tail = log_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"mlflow server did not answer on {self.url}:\n{log_tail}")
            time.sleep(0.3)

    def stop(self, *, crash: bool = False) -> None:
        """SIGTERM, or SIGKILL with `crash` (no clean shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL if crash else signal.SIGTERM)
            self.proc.wait(timeout=30)


def stop_ray(proc: subprocess.Popen) -> None:
    """SIGTERM `ray start --block` (it stops its node's processes), then kill whatever is left in its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait(timeout=10)
