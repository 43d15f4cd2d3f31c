"""Progress you can watch (issue 17): rank 0's progress lines and bar, intervals at their own steps through MLflow,
the final evaluation logged once, and the `curves.png` artifact."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from pipelines.engine.progress import LINE_PREFIX, TrainProgress, progress_mode

ROOT = Path(__file__).resolve().parent.parent
# vanilla (an MLP) at 16 px: a step takes milliseconds, and the evaluator accepts the size.
TINY = ["loop.threads=1", "model.g_hidden=32,32", "model.d_units=16", "model.nz=8", "data.batch_size=16"]


class Clock:
    """A clock the test moves by hand, so the pace and the time left are exact."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_show_step_total_pace_time_left_losses_and_the_latest_evaluation():
    out, clock = io.StringIO(), Clock()
    progress = TrainProgress(total=40, log_every=10, out=out, clock=clock)
    for step in range(1, 41):
        progress.step(step)
        clock.now += 0.5  # 2 steps/s
        if step % 5 == 0:  # a report at a non-logging step (a checkpoint, say) prints nothing
            metrics = {"loss/D": 1.25, "loss/G": 0.5, "perf/img_per_s": 1234.0} if step % 10 == 0 else {}
            progress.report(step, {**metrics, **({"eval/fd": 3.5} if step == 15 else {})})
    lines = out.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ["10/40", "20/40", "30/40", "40/40"]
    assert lines[0] == f"{LINE_PREFIX} 10/40 (25%)  1,234 img/s  elapsed 0:00:05  ETA 0:00:15  loss/D 1.25  loss/G 0.5"
    assert lines[1].endswith("ETA 0:00:10  loss/D 1.25  loss/G 0.5  eval/fd 3.5")  # the eval of step 15 stays
    assert "ETA" not in lines[3] and "elapsed 0:00:20" in lines[3]


def test_a_bar_advances_every_step_and_carries_the_metrics():
    from tqdm import tqdm

    out = io.StringIO()
    progress = TrainProgress(total=20, log_every=10, start_step=5, out=out,
                             bar=lambda total, start: tqdm(total=total, initial=start, file=out, mininterval=0))
    for step in range(6, 21):
        progress.step(step)
        if step % 10 == 0:
            progress.report(step, {"loss/D": 0.75, "perf/img_per_s": 50.0, "eval/cls_score": 2.0})
    progress.close()
    drawn = out.getvalue()
    assert "5/20" in drawn and "13/20" in drawn and "20/20" in drawn
    assert "50 img/s  loss/D 0.75  eval/cls_score 2" in drawn
    assert LINE_PREFIX not in drawn  # a bar replaces the lines


def test_mode_is_a_bar_only_on_a_terminal_and_never_with_no_progress():
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as tty:
        assert progress_mode(enabled=True, out=tty, err=tty) == "bar"
        assert progress_mode(enabled=False, out=tty, err=tty) == "lines"
        assert progress_mode(enabled=True, out=io.StringIO(), err=tty) == "lines"
    os.close(master)


# ---------------------------------------------------------------- `ganpipe train --workers 0`, end to end


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """digits at 16 px with its evaluator cached (one epoch), for the training runs below."""
    from data_prep.prep import PrepConfig, prep_images
    from pipelines.evaluation.evaluator import ensure_evaluator

    url = str(tmp_path_factory.mktemp("store"))
    result = prep_images(PrepConfig(source="digits", store=url, image_size=16), progress=False)
    ensure_evaluator(store_url=url, dataset_url=result.dataset_url, manifest=result.manifest, epochs=1)
    return url


def _train_cmd(store: str, uri: str, run_name: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "train", "--family", "vanilla", "--dataset", "digits",
            "--workers", "0", "--store", store, "--tracking-uri", uri, "--run-name", run_name, *TINY, *overrides]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GANPIPE_"))}
    return {**env, "PYTHONPATH": str(ROOT), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def test_train_without_a_terminal_prints_lines_fires_each_interval_and_logs_curves(store, tmp_path):
    import mlflow
    from PIL import Image

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = _train_cmd(store, uri, "intervals", "loop.steps=30", "loop.log_every=10", "loop.sample_every=25",
                     "loop.checkpoint_every=25", "loop.eval_every=15")
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(LINE_PREFIX)]
    assert [line.split()[2] for line in lines] == ["10/30", "20/30", "30/30"], proc.stdout
    assert all(re.search(r" [\d,]+ img/s ", line) and "loss/D " in line for line in lines), lines
    assert "eval/fd " in lines[1] and "ETA " in lines[0]
    assert "\r" not in proc.stdout + proc.stderr  # no bar drawn into a log

    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("vanilla-digits").experiment_id],
                             filter_string="attributes.run_name = 'intervals'")[0]
    run_id = run.info.run_id
    # eval_every=15 divides 30: rank 0's evaluation at 30 is the final one, logged once (no second copy).
    for key in ("eval/fd", "eval/cls_score"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [15, 30], key
    assert [m.step for m in client.get_metric_history(run_id, "loss/D")] == [10, 20, 30]
    images = [a.path for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")]
    assert sorted(int(re.search(r"\+step\+(\d+)\+", p).group(1)) for p in images) == [25, 30]
    checkpoints = sorted(p.name for p in (Path(store) / "runs" / "intervals" / "checkpoints").glob("step_*"))
    assert checkpoints == ["step_00000025", "step_00000030"]

    png = client.download_artifacts(run_id, "curves.png", str(tmp_path))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as img:
        assert img.size == (1200, 360)
        img.load()  # decodes completely


def test_train_on_a_terminal_draws_an_advancing_bar(store, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = _train_cmd(store, uri, "on-a-tty", "loop.steps=30", "loop.log_every=10", "loop.sample_every=0",
                     "loop.eval_every=0")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a new pty is 0 columns wide
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + 600
    while time.monotonic() < deadline:
        if select.select([master], [], [], 1.0)[0]:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=60) == 0
    screen = b"".join(chunks).decode(errors="replace")
    drawn = [int(n) for n in re.findall(r"\| *(\d+)/30 \[", screen)]
    assert drawn and drawn == sorted(drawn) and {10, 20, 30} <= set(drawn), screen[-3000:]
    assert "img/s  loss/D " in screen and LINE_PREFIX not in screen
