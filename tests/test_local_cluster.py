"""The README's local Ray cluster, as a user starts it with `ray start`: every port it opens listens on 127.0.0.1,
local commands run beside it (or join it on purpose) and a shell without token auth gets one line, not a
traceback. One head for the module, on free ports, in a temp dir of its own (others may run Ray here)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import stop_ray

from pipelines.ops.seaweedfs import free_ports

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# README "Running it safely": the settings that keep a single-node Ray on loopback. Ray resolves
# --node-ip-address=127.0.0.1 to the machine's address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and its
# C++ servers bind every interface unless the node's address is 127.0.0.1.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
LOOPBACK_FLAGS = ("--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1")


@dataclass(frozen=True)
class Head:
    proc: subprocess.Popen
    ray_tmp: Path  # RAY_TMPDIR: Ray's temp dir (and its address file) is ray_tmp/ray
    gcs: str
    dashboard: str
    ports: dict[str, int]
    env: dict[str, str]  # a shell that did everything the README says: token auth, loopback setting

    def pids(self) -> set[int]:
        """This head's processes and the workers it started: descendants of its `ray start`, or processes whose
        command line names its temp dir (agents rename themselves, e.g. `ray::DashboardAgent`)."""
        mark, parents = str(self.ray_tmp).encode(), {}
        out = {self.proc.pid}
        for entry in Path("/proc").iterdir():
            try:
                if not entry.name.isdigit():
                    continue
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
                if mark in (entry / "cmdline").read_bytes():
                    out.add(int(entry.name))
            except OSError:  # ended while we looked
                continue
        for pid in parents:
            ancestor = parents.get(pid)
            while ancestor and ancestor not in out and ancestor in parents:
                ancestor = parents[ancestor]
            if ancestor in out:
                out.add(pid)
        return out


def _env(**extra: str) -> dict[str, str]:
    """No Ray, store or tracking settings of the calling shell; this venv on PATH; this checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MLFLOW_", "GANPIPE_"))}
    return {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "PYTHONPATH": str(ROOT), **extra}


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    ray_tmp = Path(tempfile.mkdtemp(prefix="gploop-", dir="/tmp"))  # short: Ray's socket paths are limited
    token_file = ray_tmp / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    names = ("gcs", "dashboard", "client", "agent", "agent_grpc", "metrics", "runtime_env", "node_manager",
             "object_manager", "autoscaler_metrics", "dashboard_metrics")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    env = _env(RAY_TMPDIR=str(ray_tmp), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file),
               AUTOSCALER_METRIC_PORT=str(ports["autoscaler_metrics"]),
               DASHBOARD_METRIC_PORT=str(ports["dashboard_metrics"]), **LOOPBACK_ENV)
    cmd = [str(BIN / "ray"), "start", "--head", "--block", *LOOPBACK_FLAGS, f"--port={ports['gcs']}",
           f"--dashboard-port={ports['dashboard']}", f"--ray-client-server-port={ports['client']}",
           f"--dashboard-agent-listen-port={ports['agent']}", f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
           f"--metrics-export-port={ports['metrics']}", f"--runtime-env-agent-port={ports['runtime_env']}",
           f"--node-manager-port={ports['node_manager']}", f"--object-manager-port={ports['object_manager']}",
           "--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]
    log_path = ray_tmp / "head.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    head = Head(proc=proc, ray_tmp=ray_tmp, gcs=f"127.0.0.1:{ports['gcs']}",
                dashboard=f"http://127.0.0.1:{ports['dashboard']}", ports=ports, env=env)
    try:
        deadline = time.monotonic() + 120
        # Up: the address file a later `ray.init()` would find is written, and the Jobs API answers.
        while not ((ray_tmp / "ray" / "ray_current_cluster").exists() and _answers(ports["dashboard"])):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray head did not come up:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield head
    finally:
        stop_ray(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _ganpipe(*args: str, env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


# ---- listening addresses (/proc/net) ------------------------------------------------------------------------


def _socket_inodes(pids: set[int]) -> set[int]:
    inodes = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def _address(hex_ip: str) -> str:
    raw = bytes.fromhex(hex_ip)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # /proc/net/tcp6 writes the address as four host-order 32-bit words
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))


def listening(pids: set[int]) -> dict[int, str]:
    """port -> bound address of every TCP socket in LISTEN state that one of `pids` holds."""
    inodes = _socket_inodes(pids)
    out = {}
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and int(fields[9]) in inodes:  # 0A: TCP_LISTEN
                ip, port = fields[1].split(":")
                out[int(port, 16)] = _address(ip)
    return out


DRIVER = """
import ray, sys, time
ray.init(address=sys.argv[1])
@ray.remote(num_cpus=0)
class Ping:
    def ping(self):
        return "pong"
actor = Ping.remote()
print(ray.get(actor.ping.remote()), flush=True)
time.sleep(60)
"""


@pytest.mark.integration
@pytest.mark.slow
def test_every_port_of_the_local_recipe_listens_on_loopback(head: Head, tmp_path: Path) -> None:
    """Issue 20 item 6: the head's processes, a driver joining it and the worker running its actor listen on
    127.0.0.1 (or its IPv6-mapped form) only, on every port they open, including those Ray picks itself."""
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, head.gcs], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=head.env, cwd=tmp_path)
    try:
        assert driver.stdout.readline().strip() == "pong", driver.stderr.read() if driver.poll() is not None else ""
        deadline = time.monotonic() + 60  # the agents open their ports a while after `ray start` returns
        while not set(head.ports.values()) <= set(ports := listening(head.pids() | {driver.pid})):
            if time.monotonic() > deadline:
                break
            time.sleep(1)
    finally:
        driver.kill()
        driver.wait(timeout=30)
    assert set(head.ports.values()) <= set(ports), (head.ports, ports)  # every port we chose, and more
    assert len(ports) > len(head.ports)  # workers' and the driver's own gRPC ports are in the list too
    exposed = {port: addr for port, addr in ports.items() if addr not in ("127.0.0.1", "::ffff:127.0.0.1")}
    assert exposed == {}, ports


TRAIN_RAY = """
import ray
from pipelines.training.ray_train import ensure_ray
ensure_ray(num_cpus=1)
print(ray.get_runtime_context().gcs_address)
"""


@pytest.mark.integration
@pytest.mark.slow
def test_local_command_runs_its_own_ray_beside_a_started_cluster_or_joins_it_on_purpose(
    head: Head, tmp_path: Path
) -> None:
    """Issue 20 item 2: with a `ray start` cluster on the machine (its address file where `ray.init()` looks),
    a local command without RAY_ADDRESS starts its own runtime and says so; with RAY_ADDRESS it joins."""
    store = tmp_path / "store"
    prep = ("prep", "digits", "--workers", "1", "--limit", "40", "--holdout", "8", "--no-progress")
    own = _ganpipe(*prep, "--store", str(store / "own"), env=head.env, cwd=tmp_path)
    assert own.returncode == 0, own.stdout + own.stderr
    lines = [line for line in own.stderr.splitlines() if line.startswith("ray: ")]
    assert lines == [f"ray: a local Ray runtime of 1 CPU(s) for this command; the cluster started with `ray start` "
                     f"at {head.gcs} is left alone (RAY_ADDRESS={head.gcs} joins it)"], own.stderr
    assert (store / "own" / "datasets" / "digits" / "manifest.json").is_file()

    # Training, sweeps and pipelines take the same way (pipelines.training.ray_train.ensure_ray): a runtime of their
    # own, its GCS not the started cluster's.
    train = subprocess.run([sys.executable, "-c", TRAIN_RAY], capture_output=True, text=True, env=head.env,
                           cwd=tmp_path, timeout=300)
    assert train.returncode == 0, train.stdout + train.stderr
    assert train.stdout.split()[0] != head.gcs and "is left alone" in train.stderr, train.stdout + train.stderr

    joined = _ganpipe(*prep, "--store", str(store / "joined"), env={**head.env, "RAY_ADDRESS": head.gcs},
                      cwd=tmp_path)
    assert joined.returncode == 0, joined.stdout + joined.stderr
    assert f"ray: joining the Ray cluster at {head.gcs} (RAY_ADDRESS)" in joined.stderr.splitlines(), joined.stderr
    assert (store / "joined" / "datasets" / "digits" / "manifest.json").is_file()


@pytest.mark.integration
@pytest.mark.slow
def test_jobs_without_token_auth_is_one_line_naming_the_setting(head: Head, tmp_path: Path) -> None:
    """Issue 20 item 7: a new shell that forgot `export RAY_AUTH_MODE=token` gets one line saying what to set."""
    env = {k: v for k, v in head.env.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token of this machine's user either
    proc = _ganpipe("jobs", "ls", "--address", head.dashboard, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "RAY_AUTH_MODE=token" in lines[0] and head.dashboard in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr

    listing = _ganpipe("jobs", "ls", "--address", head.dashboard, env=head.env, cwd=tmp_path, timeout=120)
    assert listing.returncode == 0 and listing.stdout.startswith("submission id"), listing.stdout + listing.stderr
