"""`ganpipe run --dry-run` writes nothing (no MLflow experiment or database, no store folder, no bucket) and
reports, one line each, what the run would need and cannot reach: a source folder, a bucket, a tracking server."""

from __future__ import annotations

import shutil
from pathlib import Path

import boto3
import mlflow
import pytest
import yaml
from botocore.exceptions import ClientError

from pipelines.ops.seaweedfs import free_ports
from pipelines.spec.defaults import DEFAULT_EXPERIMENT

ROOT = Path(__file__).resolve().parent.parent


def _pipeline(tmp: Path, *, store: str, tracking: str, source: str = "digits") -> Path:
    data = {
        "name": "dry", "engine": "local", "store": store, "tracking_uri": tracking,
        "stages": {
            "prep": {"kind": "prep", "config": {"source": source, "limit": 40}},
            "train": {"kind": "train", "config": {"family": "dcgan", "dataset": "${stages.prep.dataset}",
                                                  "workers": 0, "overrides": {"loop.steps": 2}}},
        },
    }
    path = tmp / "dry.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _dry_run(path: Path, *, cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
             env: dict[str, str] | None = None) -> tuple[int, str]:
    """`ganpipe run PATH --dry-run` in this process (as the CLI runs it), from `cwd`: exit status, stdout."""
    from pipelines.cli.main import main

    monkeypatch.chdir(cwd)
    for name in ("MLFLOW_TRACKING_URI", "GANPIPE_STORE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    code = main(["run", str(path), "--dry-run"])
    return code, capsys.readouterr().out


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_dry_run_writes_nothing_and_names_a_missing_source(tmp_path: Path, monkeypatch, capsys) -> None:
    db = tmp_path / "mlflow.db"
    path = _pipeline(tmp_path, store=str(tmp_path / "store"), tracking=f"sqlite:///{db}", source="./my-photos")
    before = _files(tmp_path)
    code, out = _dry_run(path, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2, out
    missing = [line for line in out.splitlines() if line.startswith("unreachable: ")]
    assert missing == [f"unreachable: stage prep: source ./my-photos does not exist (looked for "
                       f"{tmp_path / 'my-photos'})"], out
    assert _files(tmp_path) == before  # no database, no store folder, no .ganpipe/

    # An existing tracking database without the pipeline experiment: the plan reads it, and creates nothing.
    (tmp_path / "my-photos" / "a").mkdir(parents=True)
    shutil.copy(ROOT / "pipelines/examples/course.yaml", tmp_path / "my-photos" / "a" / "not-an-image.yaml")
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").create_experiment("someone-else")
    before = _files(tmp_path)
    code, out = _dry_run(path, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0 and "unreachable" not in out and "prep" in out, out
    assert _files(tmp_path) == before
    assert mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").get_experiment_by_name(DEFAULT_EXPERIMENT) is None


@pytest.mark.integration
def test_dry_run_of_the_s3_example_reports_the_missing_bucket_and_creates_none(s3_server, tmp_path: Path, monkeypatch,
                                                                              capsys) -> None:
    """The issue's case: pipelines/examples/s3_folder.yaml as shipped (s3://my-bucket, ./my-photos), tracking
    into a server that is not running. Every one of the three is reported; no bucket, experiment or file made."""
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name=s3_server.region)
    example = ROOT / "pipelines/examples/s3_folder.yaml"
    bucket = yaml.safe_load(example.read_text())["store"].removeprefix("s3://").split("/")[0]
    server = f"http://127.0.0.1:{free_ports(1)[0]}"
    before = _files(tmp_path)
    code, out = _dry_run(example, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys,
                         env={"MLFLOW_TRACKING_URI": server})
    assert code == 2, out
    lines = [line for line in out.splitlines() if line.startswith("unreachable: ")]
    assert len(lines) == 3, out
    assert lines[0] == (f"unreachable: bucket {bucket} does not exist at S3 endpoint {s3_server.endpoint}: create "
                        f"it, or fix the store URL s3://{bucket}/ganpipe"), lines
    assert lines[1].startswith(f"unreachable: tracking server {server} does not answer"), lines
    assert lines[2].startswith("unreachable: stage prep: source ./my-photos does not exist"), lines
    with pytest.raises(ClientError):  # still no such bucket
        s3.head_bucket(Bucket=bucket)
    assert _files(tmp_path) == before

    # The same store once its bucket exists: nothing to report about it.
    s3.create_bucket(Bucket=bucket)
    try:
        path = _pipeline(tmp_path, store=f"s3://{bucket}/ganpipe", tracking=f"sqlite:///{tmp_path / 'm.db'}")
        code, out = _dry_run(path, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
        assert code == 0 and "unreachable" not in out, out
        assert not (tmp_path / "m.db").exists()
    finally:
        s3.delete_bucket(Bucket=bucket)
