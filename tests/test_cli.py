"""The `ganpipe` command as a user meets it: help, config listing, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from pipelines.cli.main import main
from pipelines.spec.defaults import DEMO_FAMILIES
from pipelines.spec.options import build_parser


def _ganpipe(*args: str, cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("prep", "train", "sample", "ui", "demo", "bench", "config"):
        assert command in out


@pytest.mark.parametrize("family", DEMO_FAMILIES)
def test_demo_accepts_every_demo_family_and_each_has_a_demo_recipe(family: str):
    from pipelines.spec.recipes import RECIPES

    assert build_parser().parse_args(["demo", "--family", family]).family == family
    assert build_parser().parse_args(["demo", "--family", family, "--seed", "2"]).seed == 2
    assert build_parser().parse_args(["demo", "--family", family]).seed is None  # the recipe's own seed
    demos = [name for name in RECIPES if name.startswith(f"{family}-") and name.endswith("-demo")]
    assert len(demos) == 1 and RECIPES[demos[0]]().family == family


def test_the_demo_names_the_ganpipe_a_user_can_type_from_where_they_are(tmp_path, monkeypatch):
    from pipelines.demos.dcgan import ganpipe_command
    venv_bin = tmp_path / "proj" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    script = venv_bin / "ganpipe"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(script)])
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.chdir(tmp_path / "proj")
    assert ganpipe_command() == ".venv/bin/ganpipe"  # `make demo`: the venv's script, not on PATH
    monkeypatch.chdir(tmp_path)
    assert ganpipe_command() == "proj/.venv/bin/ganpipe"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert ganpipe_command() == str(script.resolve())
    monkeypatch.setenv("PATH", str(venv_bin))
    assert ganpipe_command() == "ganpipe"  # an installed ganpipe: the bare name works anywhere


def test_config_prints_resolved_keys(capsys):
    assert main(["config", "--recipe", "dcgan", "loop.steps=123", "model.ngf=16"]) == 0
    out = capsys.readouterr().out
    assert "loop.steps" in out and "123" in out and "model.ngf" in out


def test_unknown_override_is_one_line_naming_valid_keys(tmp_path):
    proc = _ganpipe("config", "--recipe", "dcgan", "loop.stepz=5", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "loop.stepz" in lines[0] and "steps" in lines[0]


def test_missing_source_folder_is_one_clear_line(tmp_path):
    proc = _ganpipe("prep", str(tmp_path / "nope"), "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0], proc.stderr


def test_unreachable_s3_endpoint_is_one_clear_line(tmp_path):
    env_args = ("--store", "s3://some-bucket/x", "--s3-endpoint", "http://127.0.0.1:9")
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "prep", "digits", "--no-progress", *env_args],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": "AKTEST", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
             "AWS_DEFAULT_REGION": "us-east-1", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "127.0.0.1:9" in lines[0], proc.stderr
    assert "s3cr3t-value" not in proc.stderr


def test_training_on_a_missing_dataset_says_to_prep(tmp_path):
    proc = _ganpipe("train", "--recipe", "dcgan", "--dataset", "never-prepared", "--workers", "0", cwd=tmp_path)
    assert proc.returncode == 2
    assert "ganpipe prep" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_ui_serves_the_tracking_store_on_loopback(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "ui", "--port", str(port), "--tracking-uri", uri],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                    pytest.fail(f"MLflow UI did not answer on 127.0.0.1:{port}:\n{out[-3000:]}")
                time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_ui_of_a_tracking_server_that_does_not_answer_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    proc = _ganpipe("ui", "--tracking-uri", url, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and url in lines[0] and "does not answer" in lines[0], proc.stderr
    assert not (tmp_path / ".ganpipe").exists()


def test_store_default_is_GANPIPE_STORE_in_help_configs_and_pipeline_files(monkeypatch, capsys):
    from pipelines.orchestration.stage_kinds import pipeline_from_dict

    monkeypatch.setenv("GANPIPE_STORE", "s3://team-bucket/shared")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "(default: s3://team-bucket/shared, from $GANPIPE_STORE)" in " ".join(capsys.readouterr().out.split())
    assert main(["config", "--recipe", "dcgan"]) == 0
    assert ["store", "'s3://team-bucket/shared'"] in [line.split() for line in capsys.readouterr().out.splitlines()]
    stages = {"prep": {"kind": "prep", "config": {"source": "digits"}}}
    assert pipeline_from_dict({"name": "p", "stages": stages}).store == "s3://team-bucket/shared"
    assert pipeline_from_dict({"name": "p", "store": "/data/s", "stages": stages}).store == "/data/s"  # the file's
    assert main(["config", "--recipe", "dcgan", "--store", "/elsewhere"]) == 0  # --store wins
    assert ["store", "'/elsewhere'"] in [line.split() for line in capsys.readouterr().out.splitlines()]


def test_bench_overrides_may_follow_the_multi_value_flags(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--family", "dcgan", "--image-size", "32", "--batch", "4", "ngf=8", "ndf=8",
                 "--channels", "1", "--steps", "1", "--repeats", "1", "--warmup", "1", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["image_size"] == 32 and row["batch"] == 4 and row["img_per_s_median"] > 0
    assert row["config"]["ngf"] == 8 and row["config"]["ndf"] == 8
