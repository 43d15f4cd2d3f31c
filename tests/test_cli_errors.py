"""Bad input through the real `ganpipe` command: one stderr line naming the bad key or file, a non-zero exit
status, no traceback, nothing started; and `ganpipe ui` leaves no MLflow process behind when it is stopped.

Exit statuses: 2 for a user error; 1 for `datasets ls` when a manifest is broken (the intact datasets are still
listed, so a script notices without losing the listing); 141 (128 + SIGPIPE) when stdout's reader went away.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from data_prep.manifest import Manifest, ShardInfo


def _ganpipe(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def _manifest(name: str) -> Manifest:
    shard = ShardInfo(path="shards/train-000000.tar", split="train", bytes=10240, samples=4, sha256="0" * 64)
    return Manifest(name=name, kind="images", version=1, image_size=8, channels=1, counts={"train": 4},
                    shards=[shard], class_names=None, prep={"source": "test"}, source_fingerprint="f" * 64)


def _dataset(root: Path, name: str, text: str | bytes) -> Path:
    path = root / ".ganpipe" / "store" / "datasets" / name / "manifest.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _missing_keys(root: Path) -> None:
    data = _manifest("bad").to_dict()
    del data["kind"], data["counts"]
    _dataset(root, "bad", json.dumps(data))


def _invalid_json(root: Path) -> None:
    _dataset(root, "bad", '{"name": "bad", "kind": ')


def _one_broken_one_good(root: Path) -> None:
    _dataset(root, "good", _manifest("good").to_json())
    _invalid_json(root)


def _binary_pipeline(root: Path) -> None:
    (root / "pipe.yaml").write_bytes(bytes(range(256)) * 4)


def _nothing(root: Path) -> None:
    pass


BAD_MANIFEST = "datasets/bad/manifest.json"

# (id, setup, argv, exit status, words the one stderr line must contain)
CASES: list[tuple[str, Callable[[Path], None], list[str], int, list[str]]] = [
    ("nan-float", _nothing, ["config", "--recipe", "pix2pix", "model.lambda_l1=nan"], 2, ["model.lambda_l1", "nan"]),
    ("inf-float", _nothing, ["config", "--recipe", "pix2pix", "model.lambda_l1=inf"], 2, ["model.lambda_l1", "inf"]),
    ("neg-inf-loop", _nothing, ["config", "--recipe", "dcgan", "loop.lr_decay_from=-inf"], 2,
     ["loop.lr_decay_from"]),
    ("nan-train", _nothing, ["train", "--recipe", "pix2pix", "--workers", "0", "model.lambda_l1=NaN"], 2,
     ["model.lambda_l1"]),
    ("negative-steps", _nothing, ["train", "--recipe", "dcgan", "--workers", "0", "--steps", "-5"], 2,
     ["--steps", "-5", "positive"]),
    ("negative-steps-override", _nothing, ["config", "--recipe", "dcgan", "loop.steps=-5"], 2, ["loop.steps", "-5"]),
    ("negative-workers", _nothing, ["prep", "digits", "--workers", "-1"], 2, ["--workers", "-1"]),
    ("manifest-missing-keys", _missing_keys, ["datasets", "show", "bad"], 2, [BAD_MANIFEST, "kind", "counts"]),
    ("manifest-missing-keys-train", _missing_keys, ["train", "--recipe", "dcgan", "--dataset", "bad",
                                                     "--workers", "0"], 2, [BAD_MANIFEST, "kind"]),
    ("manifest-invalid-json", _invalid_json, ["datasets", "verify", "bad"], 2, [BAD_MANIFEST, "JSON"]),
    ("ls-one-broken", _one_broken_one_good, ["datasets", "ls"], 1, [BAD_MANIFEST, "JSON"]),
    ("run-binary-file", _binary_pipeline, ["run", "pipe.yaml", "--dry-run"], 2, ["pipe.yaml", "not a text file"]),
]


@pytest.mark.parametrize(("setup", "argv", "status", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path: Path, setup, argv: list[str], status: int,
                                                   words: list[str]):
    setup(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    proc = _ganpipe(*argv, cwd=tmp_path)
    assert proc.returncode == status, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    # Rejected before any work: no store, run database or checkpoint appeared, nothing was removed.
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_datasets_ls_lists_the_intact_dataset_beside_a_broken_one(tmp_path: Path):
    _one_broken_one_good(tmp_path)
    proc = _ganpipe("datasets", "ls", cwd=tmp_path)
    assert proc.returncode == 1
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.split()}
    assert "images" in rows["good"] and _manifest("good").digest[:12] in rows["good"]
    assert "broken manifest.json" in rows["bad"]


@pytest.mark.parametrize("lines", [0, 1])
def test_output_into_a_closed_pipe_is_no_traceback(tmp_path: Path, lines: int):
    # head -n 0 exits before ganpipe writes: the write meets a closed pipe every time.
    cmd = (f"{shlex.quote(sys.executable)} -m pipelines.cli config --recipe dcgan | head -n {lines}; "
           "exit ${PIPESTATUS[0]}")
    # Block-buffered stdout, as in a plain shell: with -n 1, head then gets the whole output in one write.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == ""
    assert proc.returncode == (128 + signal.SIGPIPE if lines == 0 else 0)
    assert proc.stdout.split() == ([] if lines == 0 else ["family", "'dcgan'"])


# ---- ganpipe ui ---------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a process, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[2])


def _alive(pid: int) -> bool:
    """Running, or stopped, but not a zombie (an orphan's zombie may wait for a reaper that never comes)."""
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def _descendants(pid: int) -> list[int]:
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    children = [child for child in pids if (st := _stat(child)) is not None and st[1] == pid]
    return children + [d for child in children for d in _descendants(child)]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_ui_stopped_with_sigterm_stops_the_whole_mlflow_server(tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "ui.log"  # a file, not a pipe: a server left behind would hold a pipe open
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "ui", "--port", str(port), "--tracking-uri",
                                 uri], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while True:  # up, with its uvicorn workers, and answering
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"MLflow UI did not answer on 127.0.0.1:{port}:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        server = _descendants(proc.pid)
        assert len(server) >= 3, server  # mlflow ui, uvicorn and its workers

        os.kill(proc.pid, signal.SIGTERM)  # ganpipe only, as a supervisor or `kill PID` would
        proc.wait(timeout=60)  # it gives the server 15 s to finish, then kills what is left
        assert [pid for pid in server if _alive(pid)] == [], log.read_text()[-3000:]
        assert proc.returncode == 128 + signal.SIGTERM
        assert not _listening(port)
    finally:
        for pid in [proc.pid, *server]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
