"""`ganpipe services up|down|status`: a local SeaweedFS S3 store and an MLflow tracking server in the background.

Both bind 127.0.0.1. Everything lives under `.ganpipe/services/`: pid and log files, the SeaweedFS data and
identity file, MLflow's sqlite database, and `env` (mode 0600, it holds the S3 keys), which every other
ganpipe command run from this folder reads while the services are up; a variable already set in the
environment wins over the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipelines.ops import seaweedfs
from pipelines.spec.defaults import DEFAULT_HOME, STORE_ENV

REGION = "us-east-1"
SERVICES = ("seaweedfs", "mlflow")
# Only these names are ever taken from the env file.
ENV_KEYS = ("GANPIPE_STORE", "GANPIPE_S3_ENDPOINT", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI")
SECRET_KEYS = ("AWS_SECRET_ACCESS_KEY",)


@dataclass(frozen=True)
class Layout:
    """Where one home folder's services keep their files."""

    root: Path

    @classmethod
    def of(cls, home: str | Path = DEFAULT_HOME) -> Layout:
        return cls((Path(home) / "services").absolute())

    def pid(self, name: str) -> Path:
        return self.root / f"{name}.pid"

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    @property
    def env(self) -> Path:
        return self.root / "env"

    @property
    def state(self) -> Path:  # ports, URLs and bucket; no secrets
        return self.root / "services.json"

    @property
    def identity(self) -> Path:  # SeaweedFS identities (0600)
        return self.root / "s3-identity.json"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    def marker(self, name: str) -> str:
        """A string found only in the command line of this home's `name` process (guards against pid reuse)."""
        return str(self.identity) if name == "seaweedfs" else str(self.mlflow_db)


@dataclass(frozen=True)
class Health:
    name: str
    state: str  # healthy | unhealthy | stopped
    url: str
    pid: int | None
    log: Path


# ---- processes ----------------------------------------------------------------------------------------


def _cmdline(pid: int) -> str | None:
    """The command line of a live (non-zombie) process, or None."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return None
            return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
    out = subprocess.run(["ps", "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True)
    line = out.stdout.strip()
    return None if not line or line.startswith("Z") else line


def running_pid(layout: Layout, name: str) -> int | None:
    """The pid in `name`'s pid file if that process is alive and really ours; a stale pid file is removed."""
    path = layout.pid(name)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    cmd = _cmdline(pid)
    if cmd is None or layout.marker(name) not in cmd:
        path.unlink(missing_ok=True)
        return None
    return pid


def _terminate(pid: int, *, timeout_s: float) -> None:
    """SIGTERM the process group the service leads, wait, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + (timeout_s if sig == signal.SIGTERM else 10.0)
        while time.monotonic() < deadline:
            if _cmdline(pid) is None:
                return
            time.sleep(0.2)


def _spawn(cmd: list[str], *, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)  # its own group: outlives this command and Ctrl-C


# ---- health -------------------------------------------------------------------------------------------


def load_state(layout: Layout) -> dict:
    try:
        return json.loads(layout.state.read_text())
    except (OSError, ValueError):
        return {}


def _credentials(layout: Layout) -> tuple[str, str]:
    ident = json.loads(layout.identity.read_text())["identities"][0]["credentials"][0]
    return ident["accessKey"], ident["secretKey"]


def _s3_server(layout: Layout, endpoint: str) -> seaweedfs.S3Server:
    access, secret = _credentials(layout)
    return seaweedfs.S3Server(endpoint=endpoint, access_key=access, secret_key=secret, region=REGION,
                              data_dir=layout.root / "seaweedfs", log=layout.log("seaweedfs"))


def s3_healthy(layout: Layout, endpoint: str, bucket: str) -> bool:
    try:
        seaweedfs.s3_client(_s3_server(layout, endpoint), timeout_s=3).head_bucket(Bucket=bucket)
        return True
    except Exception:
        return False


def mlflow_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=3) as resp:
            return resp.status == 200 and resp.read().strip() == b"OK"
    except OSError:
        return False


def status(home: str | Path = DEFAULT_HOME) -> list[Health]:
    layout = Layout.of(home)
    state = load_state(layout)
    out = []
    for name in SERVICES:
        pid = running_pid(layout, name)
        info = state.get(name, {})
        url = info.get("url", "")
        if pid is None:
            health = "stopped"
        elif name == "seaweedfs":
            health = "healthy" if s3_healthy(layout, url, info["bucket"]) else "unhealthy"
        else:
            health = "healthy" if mlflow_healthy(url) else "unhealthy"
        out.append(Health(name, health, url, pid, layout.log(name)))
    return out


def _wait(check, *, name: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; log tail:\n{seaweedfs.log_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not healthy in {timeout_s:.0f} s; log tail:\n{seaweedfs.log_tail(log)}")
        time.sleep(0.5)


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _pick_port(port: int, flag: str) -> int:
    if port == 0:
        return seaweedfs.free_ports(1)[0]
    if not _port_free(port):
        raise ValueError(f"port {port} on 127.0.0.1 is in use; choose another with {flag} (0 picks a free one)")
    return port


# ---- up / down ----------------------------------------------------------------------------------------


def up(
    home: str | Path = DEFAULT_HOME, *, s3_port: int = 8333, mlflow_port: int = 5000, bucket: str = "ganpipe",
    timeout_s: float = 120.0, log=print,
) -> list[Health]:
    """Start whatever is not running, wait until healthy, write the env file. Running services are kept."""
    layout = Layout.of(home)
    layout.root.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.root, 0o700)
    state = load_state(layout)
    if not layout.identity.exists():
        access, secret = seaweedfs.new_credentials()
        seaweedfs.write_identity(layout.identity, access_key=access, secret_key=secret)

    # 1. SeaweedFS, then its bucket.
    s3 = state.get("seaweedfs", {})
    if running_pid(layout, "seaweedfs") is None:
        ports = seaweedfs.allocate_ports(_pick_port(s3_port, "--s3-port"))
        s3 = {"url": f"http://127.0.0.1:{ports['s3']}", "ports": ports, "bucket": bucket}
        proc = seaweedfs.start(data_dir=layout.root / "seaweedfs", identity=layout.identity, ports=ports,
                               log=layout.log("seaweedfs"), detach=True)
        layout.pid("seaweedfs").write_text(f"{proc.pid}\n")
        state["seaweedfs"] = s3
        _save_state(layout, state)
        log(f"seaweedfs  starting (pid {proc.pid}, log {layout.log('seaweedfs')})")
        server = _s3_server(layout, s3["url"])
        try:
            seaweedfs.wait_ready(server, proc, timeout_s=timeout_s)
        except RuntimeError:
            _terminate(proc.pid, timeout_s=5)
            layout.pid("seaweedfs").unlink(missing_ok=True)
            raise
        client = seaweedfs.s3_client(server)
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
            client.create_bucket(Bucket=s3["bucket"])
    else:
        log(f"seaweedfs  already running (pid {running_pid(layout, 'seaweedfs')})")
        if "url" not in s3:
            raise ValueError(f"{layout.state} is missing or damaged: `ganpipe services down`, then `up` again")

    # 2. MLflow: sqlite under services/, artifacts proxied to the bucket (clients need no S3 keys for them).
    if running_pid(layout, "mlflow") is None:
        port = _pick_port(mlflow_port, "--mlflow-port")
        url = f"http://127.0.0.1:{port}"
        access, secret = _credentials(layout)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret,
               "AWS_DEFAULT_REGION": REGION, "MLFLOW_S3_ENDPOINT_URL": s3["url"],
               # MLflow's GenAI job runner (eight huey consumer processes) is not used by ganpipe.
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_URI"):
            env.pop(name, None)
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{layout.mlflow_db}",
               # Proxied: new experiments get mlflow-artifacts:/ locations and the server writes the bucket.
               "--serve-artifacts", "--default-artifact-root", "mlflow-artifacts:/",
               "--artifacts-destination", f"s3://{s3['bucket']}/mlartifacts", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
        proc = _spawn(cmd, log=layout.log("mlflow"), env=env)
        layout.pid("mlflow").write_text(f"{proc.pid}\n")
        state["mlflow"] = {"url": url}
        _save_state(layout, state)
        log(f"mlflow     starting (pid {proc.pid}, log {layout.log('mlflow')})")
        try:
            _wait(lambda: mlflow_healthy(url), name="mlflow server", proc=proc, log=layout.log("mlflow"),
                  timeout_s=timeout_s)
        except RuntimeError:
            _terminate(proc.pid, timeout_s=5)
            layout.pid("mlflow").unlink(missing_ok=True)
            raise
    else:
        log(f"mlflow     already running (pid {running_pid(layout, 'mlflow')})")

    write_env_file(layout, state)
    return status(home)


def _save_state(layout: Layout, state: dict) -> None:
    layout.state.write_text(json.dumps(state, indent=2) + "\n")


def service_env(layout: Layout, state: dict) -> dict[str, str]:
    access, secret = _credentials(layout)
    return {
        STORE_ENV: f"s3://{state['seaweedfs']['bucket']}/store",  # every command's --store default
        "GANPIPE_S3_ENDPOINT": state["seaweedfs"]["url"],
        "MLFLOW_S3_ENDPOINT_URL": state["seaweedfs"]["url"],
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": REGION,
        "MLFLOW_TRACKING_URI": state["mlflow"]["url"],
    }


def write_env_file(layout: Layout, state: dict) -> None:
    lines = [
        "# Written by `ganpipe services up`. ganpipe commands run from this folder read it while the services",
        "# are up (a variable already in the environment wins). Other tools: set -a; . THIS_FILE; set +a",
    ]
    lines += [f"{k}={shlex.quote(v)}" for k, v in service_env(layout, state).items()]
    seaweedfs.write_private(layout.env, "\n".join(lines) + "\n")


def down(home: str | Path = DEFAULT_HOME, *, log=print) -> None:
    """Stop both services (MLflow first: it writes to the store), remove pid files and the env file."""
    layout = Layout.of(home)
    state = load_state(layout)
    for name in reversed(SERVICES):
        pid = running_pid(layout, name)
        if pid is None:
            log(f"{name:<10} not running")
        else:
            _terminate(pid, timeout_s=10 if name == "seaweedfs" else 15)
            log(f"{name:<10} stopped (pid {pid})")
        layout.pid(name).unlink(missing_ok=True)
    if "ports" in state.get("seaweedfs", {}):
        seaweedfs.remove_sockets(state["seaweedfs"]["ports"])
    layout.env.unlink(missing_ok=True)


def load_env_file(home: str | Path = DEFAULT_HOME) -> dict[str, str]:
    """Put the env file's variables into os.environ (without overriding any) while the services run.

    Returns what was set. A file left behind by services that are no longer running is ignored, with a
    one-line note on stderr.
    """
    layout = Layout.of(home)
    if not layout.env.is_file():
        return {}
    if None in [running_pid(layout, name) for name in SERVICES]:  # every one checked: stale pid files go
        print(f"ganpipe: note: ignoring {layout.env}: the local services are not running "
              "(`ganpipe services up` starts them)", file=sys.stderr)
        return {}
    loaded = {}
    for line in layout.env.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#") or "=" not in line:
            continue
        key, raw = line.split("=", 1)
        if key in ENV_KEYS and key not in os.environ:
            value = shlex.split(raw)[0] if raw else ""
            os.environ[key] = loaded[key] = value
    return loaded


# ---- the command --------------------------------------------------------------------------------------


