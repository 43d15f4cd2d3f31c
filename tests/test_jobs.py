"""`ganpipe submit` / `ganpipe jobs` against a real Ray head (token auth, 127.0.0.1, free ports), and the rules
that keep secrets out of what a job carries."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import cache_quick_evaluator, stop_ray

from pipelines.ops import jobs
from pipelines.ops.seaweedfs import free_ports
from pipelines.spec.errors import UserError as CliError
from pipelines.spec.options import build_parser

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PLANTED = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYPLANTEDKEY"  # a fake AWS secret that must never leave this process


def _clean_env(**extra: str) -> dict[str, str]:
    """No store, tracking or Ray settings; this venv first on PATH (as if activated); no PYTHONPATH, so a job
    imports ganpipe from its working_dir."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "MLFLOW_", "GANPIPE_", "RAY_")) and k != "PYTHONPATH"}
    return {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", **extra}


def _submit_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["submit", "--address", "http://127.0.0.1:1", *argv])


# ---- without a cluster ----------------------------------------------------------------------------------


def test_workers_and_gpus_become_the_train_commands_settings() -> None:
    words = jobs.inner_command(["--", "ganpipe", "train", "--recipe", "dcgan", "loop.steps=5"], workers=None, gpus=4)
    assert words == ["train", "--recipe", "dcgan", "loop.steps=5", "scale.workers=4", "scale.use_gpu=true"]
    assert jobs.inner_command(["config", "--recipe", "dcgan"], workers=3, gpus=None)[-1] == "scale.workers=3"
    assert jobs.inner_command(["demo"], workers=2, gpus=None) == ["demo", "--workers", "2"]
    # prep's --workers is its number of parallel Ray tasks
    assert jobs.inner_command(["prep", "mnist5k"], workers=2, gpus=None) == ["prep", "mnist5k", "--workers", "2"]
    with pytest.raises(CliError, match="do not apply"):
        jobs.inner_command(["models", "ls"], workers=2, gpus=None)
    with pytest.raises(CliError, match="contradicts"):
        jobs.inner_command(["train", "--recipe", "dcgan"], workers=2, gpus=4)
    with pytest.raises(CliError, match="unknown ganpipe command"):
        jobs.inner_command(["trian"], workers=None, gpus=None)


def test_a_command_that_does_not_parse_is_refused_before_submission() -> None:
    with pytest.raises(CliError, match="does not parse"):
        jobs.inner_command(["train", "--recipe", "dcgan", "--no-such-flag"], workers=None, gpus=None)


def test_submission_carries_settings_but_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in jobs.FORWARDED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", PLANTED)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPLANTED0000000000")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "mlflow-" + PLANTED)
    monkeypatch.setenv("GANPIPE_S3_ENDPOINT", "http://10.0.0.5:8333")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.0.0.5:5000")
    plan = jobs.build_submission(_submit_args("--workers", "2", "--", "train", "--recipe", "dcgan"))
    text = json.dumps(plan)
    assert PLANTED not in text and "AKIAPLANTED" not in text
    kwargs = plan["kwargs"]
    assert kwargs["runtime_env"]["env_vars"] == {"GANPIPE_S3_ENDPOINT": "http://10.0.0.5:8333",
                                                 "MLFLOW_TRACKING_URI": "http://10.0.0.5:5000"}
    assert kwargs["runtime_env"]["working_dir"] == str(ROOT)
    assert {".venv/", ".ganpipe/", ".git/"} <= set(kwargs["runtime_env"]["excludes"])
    assert kwargs["entrypoint"].endswith("train --recipe dcgan scale.workers=2")

    with pytest.raises(CliError, match=r"\$AWS_SECRET_ACCESS_KEY") as err:  # a secret typed into the command
        jobs.build_submission(_submit_args("--", "train", "--recipe", "dcgan", f"run_name={PLANTED}"))
    assert PLANTED not in str(err.value)
    with pytest.raises(CliError, match="credential"):
        jobs.build_submission(_submit_args("--env", "AWS_SECRET_ACCESS_KEY", "--", "config", "--recipe", "dcgan"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://me:hunter2-pass@10.0.0.5:5000")
    with pytest.raises(CliError, match="password") as err:
        jobs.build_submission(_submit_args("--", "config", "--recipe", "dcgan"))
    assert "hunter2" not in str(err.value)


def test_unreachable_jobs_api_is_one_line(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "jobs", "ls", "--address", f"http://127.0.0.1:{port}"],
                          capture_output=True, text=True, cwd=tmp_path, env=_clean_env(PYTHONPATH=str(ROOT)),
                          timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], proc.stderr


def test_boto_credentials_line_is_quiet_where_ray_train_logs_info(monkeypatch, caplog) -> None:
    """Ray Train sets its workers' root logger to INFO, and botocore then logs "Found credentials in
    environment variables." for every S3 client; quiet_logs (run by every ganpipe process) silences it."""
    import logging

    import boto3

    from pipelines.engine.quiet import quiet_logs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPLANTED0000000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", PLANTED)
    monkeypatch.setattr(logging.getLogger("botocore.credentials"), "level", logging.NOTSET)
    with caplog.at_level(logging.INFO):
        boto3.session.Session().client("s3", region_name="us-east-1")
        assert "Found credentials in environment variables." in caplog.text  # what a job's log showed
        caplog.clear()
        quiet_logs()
        boto3.session.Session().client("s3", region_name="us-east-1")
    assert "Found credentials" not in caplog.text


# ---- against a real Ray head ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RayHead:
    address: str  # Jobs API
    gcs: str
    env: dict[str, str]  # what a client (or another node) needs: token auth, this venv on PATH
    temp_dir: Path


def ray_start_args(*, ports: list[int], temp_dir: Path, head: bool, gcs: str = "", num_cpus: int = 1) -> list[str]:
    """`ray start --block` on 127.0.0.1 with every port a free one (others may run Ray on this machine)."""
    if head:
        gcs_port, dash, client, agent, agent_grpc, metrics, rt_env, node_mgr, obj_mgr = ports
        role = ["--head", f"--port={gcs_port}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
                f"--ray-client-server-port={client}", "--include-dashboard=true"]
    else:
        agent, agent_grpc, metrics, rt_env, node_mgr, obj_mgr = ports
        role = [f"--address={gcs}"]
    return [str(BIN / "ray"), "start", "--block", *role, "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
            f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_env}",
            f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}", f"--temp-dir={temp_dir}",
            "--object-store-memory=150000000", "--disable-usage-stats"]  # small: the machine is shared


def _dashboard_up(address: str, token: str) -> bool:
    req = urllib.request.Request(f"{address}/api/version", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    # A short private temp dir: Ray's unix socket paths must stay under ~107 characters, and /tmp/ray is shared.
    temp_dir = Path(tempfile.mkdtemp(prefix="gpray-", dir="/tmp"))
    token_file = temp_dir / "auth_token"
    token = secrets.token_hex(32)
    token_file.write_text(token)
    token_file.chmod(0o600)
    env = _clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    ports = free_ports(9)
    address, gcs = f"http://127.0.0.1:{ports[1]}", f"127.0.0.1:{ports[0]}"
    log = open(temp_dir / "head.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(ray_start_args(ports=ports, temp_dir=temp_dir, head=True), stdout=log,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    head = RayHead(address=address, gcs=gcs, env=env, temp_dir=temp_dir)
    try:
        deadline = time.monotonic() + 120
        # Up means the Jobs API answers and the state API lists the head node (it can lag the dashboard).
        while not (_dashboard_up(address, token) and _nodes(head, retry=True)):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray head did not come up:\n{(temp_dir / 'head.log').read_text()[-3000:]}")
            time.sleep(1)
        yield head
    finally:
        stop_ray(proc)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ganpipe(head: RayHead, *args: str, cwd: Path, timeout: float = 300):
    """The CLI as a user runs it, with AWS keys planted in its environment."""
    env = {**head.env, "PYTHONPATH": str(ROOT), "AWS_SECRET_ACCESS_KEY": PLANTED,
           "AWS_ACCESS_KEY_ID": "AKIAPLANTED0000000000"}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


@pytest.mark.integration
@pytest.mark.slow
def test_submit_runs_a_ganpipe_command_and_jobs_show_it(ray_head: RayHead, tmp_path: Path) -> None:
    addr = ("--address", ray_head.address)
    sub = _ganpipe(ray_head, "submit", *addr, "--workers", "2", "--follow", "--",
                   "config", "--recipe", "dcgan", "loop.steps=77", cwd=tmp_path)
    printed = sub.stdout + sub.stderr
    assert sub.returncode == 0, printed
    job_id = next(line.split()[1].rstrip(":") for line in sub.stdout.splitlines() if line.startswith("submitted "))
    assert "ganpipe jobs logs" in sub.stdout and "SUCCEEDED" in sub.stdout.splitlines()[-1]

    logs = _ganpipe(ray_head, "jobs", "logs", job_id, *addr, cwd=tmp_path)
    assert logs.returncode == 0, logs.stderr
    values = dict(line.split(None, 1) for line in logs.stdout.splitlines() if line.startswith(("loop.", "scale.")))
    assert values["loop.steps"] == "77" and values["scale.workers"] == "2", logs.stdout

    status = _ganpipe(ray_head, "jobs", "status", job_id, *addr, cwd=tmp_path)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout, status.stdout + status.stderr
    assert "ganpipe.command=config" in status.stdout
    listing = _ganpipe(ray_head, "jobs", "ls", *addr, cwd=tmp_path)
    assert listing.returncode == 0 and job_id in listing.stdout, listing.stdout + listing.stderr

    # What the cluster holds about the job, read straight from the Jobs API.
    req = urllib.request.Request(f"{ray_head.address}/api/jobs/{job_id}", headers={
        "Authorization": f"Bearer {Path(ray_head.env['RAY_AUTH_TOKEN_PATH']).read_text()}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        info = resp.read().decode()
    assert json.loads(info)["status"] == "SUCCEEDED"
    for text in (printed, logs.stdout, logs.stderr, status.stdout, listing.stdout, info):
        assert PLANTED not in text and "AKIAPLANTED" not in text

    unknown = _ganpipe(ray_head, "jobs", "status", "raysubmit_doesnotexist", *addr, cwd=tmp_path)
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1, unknown.stderr
    assert "raysubmit_doesnotexist" in unknown.stderr

    # A job that fails shows as failed, with exit status 1 from --follow.
    bad = _ganpipe(ray_head, "submit", *addr, "--follow", "--", "train", "--recipe", "dcgan",
                   "--dataset", "/nonexistent/dataset", "--workers", "0", cwd=tmp_path)
    assert bad.returncode == 1 and "FAILED" in bad.stdout.splitlines()[-1], bad.stdout + bad.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_plain_ray_job_submit_runs_ganpipe(ray_head: RayHead, tmp_path: Path) -> None:
    """README: `ray job submit --working-dir . -- ganpipe ...` works too (ganpipe installed on the nodes)."""
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", ray_head.address, "--working-dir", str(ROOT),
         "--", "ganpipe", "config", "--recipe", "dcgan", "loop.steps=33"],
        capture_output=True, text=True, cwd=tmp_path, env=ray_head.env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert any(line.split() == ["loop.steps", "33"] for line in proc.stdout.splitlines()), proc.stdout[-3000:]
    assert "succeeded" in proc.stdout.lower()


@dataclass(frozen=True)
class RayNode:
    """A worker node: its `ray start --block` process (a session of its own) and its private temp dir."""

    proc: subprocess.Popen
    temp_dir: Path
    node_id: str

    def raylet_pid(self) -> int:
        """The pid of this node's raylet (a child of its `ray start`; no other node's)."""
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # not a process, or one that just ended
                continue
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its closing parenthesis.
            comm, ppid = stat[stat.index("(") + 1 : stat.rindex(")")], int(stat[stat.rindex(")") + 2 :].split()[1])
            if comm == "raylet" and ppid == self.proc.pid:
                return int(entry.name)
        raise AssertionError(f"no raylet under `ray start` pid {self.proc.pid}:\n{self.log()}")

    def log(self) -> str:
        return (self.temp_dir / "worker.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        stop_ray(self.proc)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _join_node(head: RayHead, *, known: set[str]) -> RayNode:
    """Start a node of 1 CPU joining `head` and wait until the cluster lists it: an ALIVE node not in `known`.

    It gets its own temp dir: nodes sharing one also share runtime_resources/, and one node's cleanup of a
    job's working_dir then deletes the directory the other node's job driver runs in."""
    temp_dir = Path(tempfile.mkdtemp(prefix="gpray-w-", dir="/tmp"))
    with open(temp_dir / "worker.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            ray_start_args(ports=free_ports(6), temp_dir=temp_dir, head=False, gcs=head.gcs),
            stdout=log, stderr=subprocess.STDOUT, env=head.env, start_new_session=True,
        )
    node = RayNode(proc=proc, temp_dir=temp_dir, node_id="")
    deadline = time.monotonic() + 120
    while not (new := set(_nodes(head, retry=True)) - known):
        if proc.poll() is not None or time.monotonic() > deadline:
            log = node.log()
            node.stop()
            pytest.fail(f"a node did not join:\n{log}")
        time.sleep(1)
    return dataclasses.replace(node, node_id=new.pop())


@pytest.fixture
def second_node(ray_head: RayHead) -> Iterator[RayNode]:
    """A second Ray node on 127.0.0.1 joining the head (token auth alike); it leaves after the test."""
    node = _join_node(ray_head, known=set(_nodes(ray_head)))
    try:
        yield node
    finally:
        node.stop()


def _ray_list(head: RayHead, *what: str) -> list[dict]:
    out = subprocess.run([str(BIN / "ray"), "list", *what, "--address", head.address, "--format", "json",
                          "--detail", "--limit", "1000"], capture_output=True, text=True, env=head.env, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def _nodes(head: RayHead, *, retry: bool = False) -> list[str]:
    try:
        return [n["node_id"] for n in _ray_list(head, "nodes") if n["state"] == "ALIVE"]
    except (AssertionError, ValueError):  # while a node joins, the state API can answer with a warning, not JSON
        if not retry:
            raise
        return []


TINY_DCGAN = ("model.ngf=8", "model.ndf=8", "model.nz=16", "data.batch_size=16")


def _prep_digits(root: Path) -> Path:
    from data_prep.prep import PrepConfig, prep_images

    store = root / "store"  # one machine: every node sees this folder
    cache_quick_evaluator(str(store), prep_images(PrepConfig(source="digits", store=str(store), holdout=100,
                                                             shard_size=400), progress=False))
    return store


def _submit_training(head: RayHead, *settings: str, store: Path, tracking: str, job_id: str, run_name: str,
                     cwd: Path, follow: bool, workers: int = 2) -> subprocess.CompletedProcess:
    """`ganpipe submit --workers N -- train` (DCGAN on digits) as a user runs it, AWS secret planted."""
    env = {**head.env, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": tracking, "AWS_SECRET_ACCESS_KEY": PLANTED}
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "submit", "--address", head.address, "--workers", str(workers),
         "--submission-id", job_id, *(["--follow"] if follow else []), "--",
         "train", "--recipe", "dcgan", "--dataset", "digits", "--store", str(store), "--run-name", run_name,
         "--no-progress", *settings],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=600,
    )


def _jobs_api(head: RayHead, path: str, *, method: str = "GET") -> dict:
    """What the Jobs API answers at /api/jobs/PATH (token auth, as every client here uses)."""
    token = Path(head.env["RAY_AUTH_TOKEN_PATH"]).read_text()
    req = urllib.request.Request(f"{head.address}/api/jobs/{path}", method=method,
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read().decode())


def _train_workers(head: RayHead, job_id: str) -> list[dict]:
    """The Ray Train worker actors (dead ones too) of the job submitted as `job_id`."""
    ray_job = _jobs_api(head, job_id)["job_id"]  # the driver's Ray job id, which its actors carry
    return [a for a in _ray_list(head, "actors") if a["class_name"].endswith("TrainWorker") and a["job_id"] == ray_job]


@pytest.mark.integration
@pytest.mark.slow
def test_training_job_spreads_its_workers_over_two_nodes(ray_head: RayHead, second_node, tmp_path: Path) -> None:
    """Stretch: 2 Ray nodes (1 CPU each) on 127.0.0.1; a training job submitted through the Jobs API runs its
    2 Ray Train workers one per node, tracks into MLflow and registers the generator."""
    store = _prep_digits(tmp_path)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    nodes = set(_nodes(ray_head))
    assert len(nodes) == 2

    job_id = f"multinode-{secrets.token_hex(4)}"
    sub = _submit_training(ray_head, "loop.steps=4", "loop.log_every=2", "loop.checkpoint_every=4",
                           "loop.sample_every=4", *TINY_DCGAN, store=store, tracking=tracking, job_id=job_id,
                           run_name="two-nodes", cwd=tmp_path, follow=True)
    assert sub.returncode == 0, sub.stdout[-4000:] + sub.stderr[-2000:]
    assert PLANTED not in sub.stdout + sub.stderr
    assert "registered models:/dcgan-digits/1" in sub.stdout, sub.stdout[-3000:]
    assert not _noise(sub.stdout + sub.stderr), _noise(sub.stdout + sub.stderr)  # issue 20: readable job logs

    workers = _train_workers(ray_head, job_id)
    assert len(workers) == 2, [a["class_name"] for a in workers]
    assert {a["node_id"] for a in workers} == nodes  # one worker on each node

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking)
    run = client.search_runs([client.get_experiment_by_name("dcgan-digits").experiment_id])[0]
    assert run.data.tags["ganpipe.ray_job_id"] == job_id and run.info.status == "FINISHED"
    assert "loss/D" in run.data.metrics


# ---- issue 7: a worker node lost mid-training ---------------------------------------------------------------


def _registered_checkpoint(experiment_dir: Path) -> int:
    """The step of the latest checkpoint Ray Train has registered (what a restart resumes from), 0 before one.

    Ray Train V2 keeps that record in checkpoint_manager_snapshot.json; a checkpoint folder alone is not enough
    (it exists, partly written, before every rank has reported it). The file is rewritten in place, so a read
    can catch it half-written: that reads as "not yet"."""
    try:
        snapshot = json.loads((experiment_dir / "checkpoint_manager_snapshot.json").read_text())
        latest = snapshot["latest_checkpoint_result"]
    except (OSError, ValueError, KeyError):
        return 0
    return int(latest["metrics"]["step"]) if latest else 0


def _metric_history(tracking: str, key: str = "loss/D") -> tuple[list, list]:
    """(runs, `key`'s history of the first run in logging order) across the tracking store's experiments."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    history = client.get_metric_history(runs[0].info.run_id, key) if runs else []
    return runs, sorted(history, key=lambda m: (m.timestamp, m.step))


def _strike_point(experiment_dir: Path, tracking: str, *, every: int) -> int | None:
    """The registered checkpoint while training is inside the interval after it (past the first checkpoint),
    else None. Inside means before the next checkpoint step is logged: rank 0 logs a step before it reports
    its checkpoint, and a kill between the ranks' report and the controller registering it (a poll later)
    could cost one more interval."""
    checkpoint = _registered_checkpoint(experiment_dir)
    if checkpoint < every:  # also: MLflow's database is not opened before the driver has created it
        return None
    logged = max((m.step for m in _metric_history(tracking)[1]), default=0)
    return checkpoint if checkpoint < logged < checkpoint + every else None


def _node_state(head: RayHead, node_id: str) -> str:
    """ALIVE or DEAD as the cluster lists the node ("" while the state API answers with a warning, not JSON)."""
    try:
        return next((n["state"] for n in _ray_list(head, "nodes") if n["node_id"] == node_id), "")
    except (AssertionError, ValueError):
        return ""


def _job_failure(head: RayHead, job_id: str, what: str) -> str:
    info = _jobs_api(head, job_id)
    return f"job {job_id} is {info['status']} ({what}):\n{_jobs_api(head, f'{job_id}/logs')['logs'][-6000:]}"


def _wait_job(head: RayHead, job_id: str, cond, what: str, *, timeout: float) -> None:
    """Poll `cond` while the job runs; fail with the job's logs if it ends or the deadline passes first."""
    deadline = time.monotonic() + timeout
    while not cond():
        if _jobs_api(head, job_id)["status"] in jobs.TERMINAL or time.monotonic() > deadline:
            pytest.fail(_job_failure(head, job_id, f"waiting for {what}"))
        time.sleep(0.2)


def _job_end(head: RayHead, job_id: str, *, timeout: float) -> str:
    """The job's final status; fails with its logs if it has not ended by the deadline."""
    deadline = time.monotonic() + timeout
    while (status := _jobs_api(head, job_id)["status"]) not in jobs.TERMINAL:
        if time.monotonic() > deadline:
            pytest.fail(_job_failure(head, job_id, "waiting for it to end"))
        time.sleep(1)
    return status


@pytest.mark.integration
@pytest.mark.slow
def test_worker_node_lost_resumes_from_checkpoint_in_the_same_run(
    ray_head: RayHead, second_node: RayNode, tmp_path: Path
) -> None:
    """Issue 7: mid-training, the second node's raylet is killed (its Train worker dies with the node). With
    FailureConfig(max_failures >= 1) the job waits for capacity; once a node joins again Ray Train restarts the
    worker group from the latest checkpoint, in the same MLflow run: the job reaches the final step, redoes only
    what the first group ran after that checkpoint (less than two intervals), and every step is logged (repeats
    only there)."""
    # Steps must take long enough to strike inside an interval: the paper's DCGAN width at 32 px, batch 64
    # (~0.2-0.5 s a step on one core of this kind), not the tiny nets of the other tests.
    steps, every, log = 40, 8, 2
    model = ("model.ngf=64", "model.ndf=64", "model.nz=100", "data.batch_size=64")
    store = _prep_digits(tmp_path)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_name, job_id = "node-lost", f"node-lost-{secrets.token_hex(4)}"
    experiment_dir = store / "ray" / run_name  # Ray Train's storage for the run (train.py: the store's ray/)
    nodes_before = set(_nodes(ray_head))
    raylet = second_node.raylet_pid()
    sub = _submit_training(ray_head, f"loop.steps={steps}", f"loop.checkpoint_every={every}", f"loop.log_every={log}",
                           f"loop.sample_every={steps}", *model, store=store, tracking=tracking, job_id=job_id,
                           run_name=run_name, cwd=tmp_path, follow=False)
    assert sub.returncode == 0, sub.stdout[-4000:] + sub.stderr[-2000:]
    replacement = None
    try:
        _wait_job(ray_head, job_id, lambda: _strike_point(experiment_dir, tracking, every=every) is not None,
                  "a checkpoint to strike after", timeout=600)
        checkpoint = _registered_checkpoint(experiment_dir)
        os.kill(raylet, signal.SIGKILL)  # its `ray start --block` then takes the node's other processes down

        # The cluster sees the node die, and the job waits for capacity rather than failing.
        _wait_job(ray_head, job_id, lambda: _node_state(ray_head, second_node.node_id) == "DEAD",
                  "the cluster to mark the killed node dead", timeout=300)
        assert _jobs_api(ray_head, job_id)["status"] == "RUNNING"
        replacement = _join_node(ray_head, known=nodes_before)
        assert _job_end(ray_head, job_id, timeout=900) == "SUCCEEDED", _job_failure(ray_head, job_id, "at its end")
    finally:
        with contextlib.suppress(OSError):  # a job left running would hold the CPUs the next test needs
            if _jobs_api(ray_head, job_id)["status"] not in jobs.TERMINAL:
                _jobs_api(ray_head, f"{job_id}/stop", method="POST")
        if replacement is not None:
            replacement.stop()

    # It restarted, from the checkpoint registered before the kill (or a later one), on the new node too.
    logs = _jobs_api(ray_head, f"{job_id}/logs")["logs"]
    resumed = {int(s) for s in re.findall(rf"\[ganpipe\] resuming {run_name} from step (\d+)", logs)}
    assert len(resumed) == 1, logs[-6000:]  # a set: Ray Train's print patch may show a worker's line twice
    start = resumed.pop()
    assert start >= checkpoint and start % every == 0, (start, checkpoint)
    workers = _train_workers(ray_head, job_id)
    assert len(workers) >= 4, workers  # the first group of 2 and the restarted one
    assert {second_node.node_id, replacement.node_id} <= {a["node_id"] for a in workers}
    assert _registered_checkpoint(experiment_dir) == steps
    assert "registered models:/dcgan-digits/1" in logs, logs[-3000:]

    # One MLflow run, this job's, finished; every step logged once, except the steps the first group ran past
    # `start` before it died: those are logged twice. The node's workers outlive its raylet by a few steps, and a
    # checkpoint both ranks reported in that time is lost if the controller had not polled it yet (see
    # _strike_point), so the redone stretch may run past the next checkpoint step, though never two intervals.
    import mlflow

    runs, history = _metric_history(tracking)
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["ganpipe.ray_job_id"] == job_id and run.info.status == "FINISHED"
    counts = Counter(m.step for m in history)
    assert sorted(counts) == list(range(log, steps + 1, log)), sorted(counts)
    repeated = {s: n for s, n in counts.items() if n > 1}
    order = [m.step for m in history]
    restart = next((i for i in range(1, len(order)) if order[i] <= order[i - 1]), None)
    reach = start if restart is None else order[restart - 1]  # the last step the first group logged
    assert set(repeated) == set(range(start + log, reach + 1, log)), (repeated, start, reach)
    assert set(repeated.values()) <= {2} and reach < start + 2 * every, (repeated, start, reach)
    version = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking).get_model_version("dcgan-digits", "1")
    assert version.run_id == run.info.run_id


def test_jobs_and_training_workers_forward_the_same_settings_region_included(monkeypatch):
    from pipelines.spec.defaults import FORWARDED_ENV
    from pipelines.training.ray_train import worker_env

    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    assert jobs.FORWARDED_ENV is FORWARDED_ENV  # one definition for submitted jobs and Ray Train workers
    env = worker_env()
    assert env["AWS_REGION"] == "eu-west-3" and env["AWS_DEFAULT_REGION"] == "eu-west-3"


# ---- issue 20: a pipeline submitted with its working dir, on 2 nodes of one machine; readable job logs --------

NOISE = ("Found credentials in environment variables", "PreemptionWatcher", "Checkpoint successfully created",
         "tensorboard --logdir", "View detailed results here", "*** SIGTERM received", "Traceback")


def _noise(log: str) -> list[str]:
    """The lines of `log` that hold any of NOISE. Not Ray Train's PlacementGroupCleaner's: on a machine where
    other Ray clusters run too (other test sessions), its state-API address lookup finds several and fails
    with a traceback; a cluster's own machine has one."""
    return [line for line in log.splitlines()
            if any(n in line for n in NOISE) and "(PlacementGroupCleaner" not in line]


def _working_dir(root: Path) -> Path:
    """What a user's `--working-dir .` holds: the project's code, a folder of photos, a pipeline file."""
    from PIL import Image

    work = root / "work"
    for package in ("pipelines", "data_prep", "gan_models"):
        shutil.copytree(ROOT / package, work / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", work)
    (work / "photos").mkdir()
    for i in range(12):  # tiny distinct RGB images, no class folders (so no evaluator is trained)
        Image.frombytes("RGB", (20, 20), bytes((i * 37 + j) % 256 for j in range(1200))).save(work / f"photos/p{i}.png")
    return work


def _photo_pipeline(root: Path) -> str:
    """prep of ./photos, training with one Ray Train worker per node, a sample grid: on the Ray engine."""
    import yaml

    return yaml.safe_dump({
        "name": "photos", "engine": "ray", "store": str(root / "store"),
        "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "stages": {
            "prep": {"kind": "prep", "config": {"source": "photos", "holdout": 0, "shard_size": 100}},
            "train": {"kind": "train", "config": {
                "family": "dcgan", "dataset": "${stages.prep.dataset}", "workers": 2,
                "overrides": {"loop.steps": 2, "loop.log_every": 1, "loop.checkpoint_every": 2,
                              "loop.sample_every": 0, "model.ngf": 8, "model.ndf": 8, "model.nz": 8,
                              "data.batch_size": 4}}},
            "sample": {"kind": "sample", "config": {"model": "${stages.train.model}", "n": 4, "out": "grid.png"}},
        },
    })


@pytest.mark.integration
@pytest.mark.slow
def test_a_pipeline_submitted_twice_from_its_working_dir_on_two_nodes_reuses_every_stage(
    ray_head: RayHead, second_node: RayNode, tmp_path: Path
) -> None:
    """Issue 20, items 3, 5, 10: `ganpipe submit --working-dir DIR -- run photos.yaml` on 2 nodes of one machine
    (the second with its own --temp-dir): the training stage's workers run one per node, every log line shows
    once and none of Ray's noise; submitted again, every stage is cached although Ray unpacked the folder anew,
    and the manifest names the source relative to the working dir."""
    work = _working_dir(tmp_path)
    (work / "photos.yaml").write_text(_photo_pipeline(tmp_path))
    addr = ("--address", ray_head.address)
    first = _ganpipe(ray_head, "submit", *addr, "--working-dir", str(work), "--submission-id", "photos-1",
                     "--follow", "--", "run", "photos.yaml", cwd=tmp_path, timeout=900)
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-5000:]
    assert "pipeline photos: 3 done, 0 cached" in log, log[-5000:]
    assert {a["node_id"] for a in _train_workers(ray_head, "photos-1")} == set(_nodes(ray_head))  # both nodes
    lines = Counter(line for line in log.splitlines() if "(RayTrainWorker" in line or "(TrainController" in line)
    assert lines and not {line: n for line, n in lines.items() if n > 1 and "Moving model" not in line
                          and "Wrapping provided" not in line}, lines  # G and D each: twice per worker by right
    assert not _noise(log), _noise(log)

    second = _ganpipe(ray_head, "submit", *addr, "--working-dir", str(work), "--submission-id", "photos-2",
                      "--follow", "--", "run", "photos.yaml", cwd=tmp_path, timeout=900)
    assert second.returncode == 0, second.stdout[-5000:] + second.stderr[-2000:]
    assert "pipeline photos: 0 done, 3 cached" in second.stdout, second.stdout[-5000:]

    from data_prep.reader import read_manifest

    manifest = read_manifest(str(tmp_path / "store/datasets/photos"))
    assert manifest.prep["source"] == "photos" and manifest.version == 1
    import mlflow

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlf = mlflow.MlflowClient(tracking_uri=db, registry_uri=db)  # not the process-wide registry another test set
    assert [str(v.version) for v in mlf.search_model_versions("name = 'dcgan-photos'")] == ["1"]


@pytest.mark.integration
@pytest.mark.slow
def test_a_stopped_training_job_ends_its_run_killed_without_a_stack_dump(ray_head: RayHead, tmp_path: Path) -> None:
    """`ganpipe jobs stop` of a training job on Ray Train: the MLflow run is KILLED (not FAILED), and the job's
    log ends with one line, no native stack dump and no traceback."""
    store = _prep_digits(tmp_path)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job_id = f"stopped-{secrets.token_hex(4)}"
    sub = _submit_training(ray_head, "loop.steps=100000", "loop.log_every=50", "loop.checkpoint_every=100000",
                           "loop.sample_every=0", *TINY_DCGAN, store=store, tracking=tracking, job_id=job_id,
                           run_name="stopped", cwd=tmp_path, follow=False, workers=1)
    assert sub.returncode == 0, sub.stdout[-4000:] + sub.stderr[-2000:]

    def training() -> bool:
        return "Started training worker group" in _jobs_api(ray_head, f"{job_id}/logs")["logs"]

    _wait_job(ray_head, job_id, training, "the worker group to start", timeout=300)
    stop = _ganpipe(ray_head, "jobs", "stop", job_id, "--address", ray_head.address, cwd=tmp_path)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert _job_end(ray_head, job_id, timeout=120) == "STOPPED"
    logs = _jobs_api(ray_head, f"{job_id}/logs")["logs"]
    assert not _noise(logs), _noise(logs)
    assert "stopped by signal SIGTERM" in logs, logs[-3000:]
    runs, _ = _metric_history(tracking)
    assert [r.info.status for r in runs] == ["KILLED"], logs[-3000:]
