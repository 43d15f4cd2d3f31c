"""Training stands on verified data: a shard that differs from its manifest (a flipped byte, truncated, deleted,
an injected or path-like member) stops every read with one line naming the dataset and the shard, before any of
its samples is yielded; through `ganpipe train` it exits non-zero with that line and registers nothing."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import pickle
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from ray.train import WorkerGroupError

from data_prep import PrepConfig, SourceOptions, integrity, iter_samples, prep_images, read_manifest
from data_prep.batches import dataset_batches
from data_prep.integrity import SampleDecodeError, ShardIntegrityError, unverified_reads_for_benchmark
from data_prep.reader import ReadStats
from pipelines.cli.main import main
from pipelines.evaluation.evaluator import ensure_evaluator
from pipelines.ops.bench_data import read_rates
from pipelines.training.ray_train import integrity_error_of

ROOT = Path(__file__).resolve().parent.parent
FIRST = "shards/train-000000.tar"  # read first when shuffle=False


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits, 160 train samples in 4 shards of 40 and 40 test samples, prepared once; tests tamper with copies."""
    store = tmp_path_factory.mktemp("prepared") / "store"
    prep_images(PrepConfig(source="digits", store=str(store), shard_size=40, holdout=40,
                           inputs=SourceOptions(limit=200)), progress=False)  # fmt: skip
    return store


@pytest.fixture
def store(prepared: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(prepared, copy)
    return copy


def _dataset(store: Path) -> Path:
    return store / "datasets" / "digits"


def _members(shard: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(shard) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]


def _inject(shard: Path, names: list[str]) -> None:
    """Append members (a copy of the shard's first image) under `names`, as an attacker or a bad sync would."""
    payload = _members(shard)[0][1]
    with tarfile.open(shard, "a") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def _agree(store: Path, shard: str) -> None:
    """Rewrite the manifest so its sha256 and size match the shard as it is now: only the index can tell."""
    dataset = _dataset(store)
    data = (dataset / shard).read_bytes()
    manifest = read_manifest(str(dataset))
    shards = [dataclasses.replace(s, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data)) if s.path == shard
              else s for s in manifest.shards]  # fmt: skip
    (dataset / "manifest.json").write_text(dataclasses.replace(manifest, shards=shards).to_json())


def _read_until_refused(store: Path) -> tuple[ShardIntegrityError, int]:
    """The error of reading the train split in manifest order, and how many samples came before it."""
    read = 0
    with pytest.raises(ShardIntegrityError) as info:
        for _ in iter_samples(str(_dataset(store)), shuffle=False):
            read += 1
    return info.value, read


def _one_line_naming(error: ShardIntegrityError, store: Path, shard: str, *found: str) -> None:
    text = str(error)
    assert "\n" not in text and text.startswith(f"dataset digits, shard {shard}: expected "), text
    assert all(f in error.found for f in found), text
    assert text.endswith(f"; run: ganpipe datasets verify digits --store {store}"), text


def _verify_lists(store: Path, shard: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The command the error names is runnable and reports the shard."""
    command = str(_read_until_refused(store)[0]).split("; run: ganpipe ", 1)[1]
    capsys.readouterr()
    assert main(shlex.split(command)) == 1
    assert f"MISMATCH {shard}" in capsys.readouterr().out


def test_verified_reads_yield_what_unverified_reads_did(prepared: Path) -> None:
    """The same samples in the same order (shuffled or not, on either of two ranks) as the streaming reader."""

    def read() -> list[tuple[str, bytes, int]]:
        out = []
        for kw in ({"shuffle": False}, {"seed": 3, "epoch": 1, "shuffle_buffer": 16, "rank": 1, "world_size": 2}):
            out += [(s["key"], s["image"].tobytes(), s["label"]) for s in iter_samples(str(_dataset(prepared)), **kw)]
        return out

    verified = read()
    with unverified_reads_for_benchmark():
        unverified = read()
    assert verified == unverified and len(verified) == 160 + 80


def test_small_pieces_and_a_shard_larger_than_memory(prepared: Path, store: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Over SPOOL_MAX (64 MiB; 10 KiB here) a shard is buffered in a local temp file: same samples, same checks.
    Read in 4 KiB pieces (1 MiB normally), each shard is hashed piece by piece in the helper thread, in order."""
    in_memory = [s["key"] for s in iter_samples(str(_dataset(prepared)), shuffle=False)]
    monkeypatch.setattr(integrity, "_CHUNK", 4096)
    assert [s["key"] for s in iter_samples(str(_dataset(prepared)), shuffle=False)] == in_memory
    monkeypatch.setattr(integrity, "SPOOL_MAX", 10 * 1024)
    assert [s["key"] for s in iter_samples(str(_dataset(prepared)), shuffle=False)] == in_memory
    shard = _dataset(store) / FIRST
    data = bytearray(shard.read_bytes())
    data[-2000] ^= 0x01
    shard.write_bytes(bytes(data))
    _one_line_naming(_read_until_refused(store)[0], store, FIRST, f"{len(data):,} bytes with sha256 ")


def test_flipped_byte_is_refused_before_any_sample_of_the_shard(store: Path, capsys) -> None:
    shard = _dataset(store) / FIRST
    data = bytearray(shard.read_bytes())
    data[1600] ^= 0x01
    shard.write_bytes(bytes(data))
    error, read = _read_until_refused(store)
    assert read == 0  # the shard is checked whole first: a run of 5 steps cannot train on its first samples
    _one_line_naming(error, store, FIRST, f"{len(data):,} bytes with sha256 ")
    assert error.expected.startswith(f"{len(data):,} bytes with sha256 ") and error.expected != error.found
    _verify_lists(store, FIRST, capsys)


def test_truncated_shard(store: Path, capsys) -> None:
    shard = _dataset(store) / "shards" / "train-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    error, read = _read_until_refused(store)
    assert read == 40  # train-000000 is intact and read whole; nothing of train-000001
    _one_line_naming(error, store, "shards/train-000001.tar", f"{len(data) // 2:,} bytes")
    _verify_lists(store, "shards/train-000001.tar", capsys)


def test_deleted_shard(store: Path, capsys) -> None:
    (_dataset(store) / FIRST).unlink()
    error, read = _read_until_refused(store)
    assert read == 0
    _one_line_naming(error, store, FIRST, "no such object in the store")
    _verify_lists(store, FIRST, capsys)


def test_injected_members_are_never_read(store: Path) -> None:
    """163 samples where the manifest says 160 was the bug: the injected samples must never reach a batch."""
    size = (_dataset(store) / FIRST).stat().st_size
    _inject(_dataset(store) / FIRST, ["digits-x1.png", "digits-x2.png", "digits-x3.png"])
    error, read = _read_until_refused(store)
    assert read == 0
    _one_line_naming(error, store, FIRST, f"more than {size:,} bytes")  # read no further than the manifest says
    stats = ReadStats()  # the tolerant reader drops the shard whole
    batches = list(dataset_batches(str(_dataset(store)), batch_size=16, repeat=False, drop_last=False, stats=stats))
    assert sum(len(b["image"]) for b in batches) == 120 and stats.bad_shards == 1 and FIRST in stats.last_error
    _agree(store, FIRST)  # even with a manifest that agrees, the index does not list them
    error, read = _read_until_refused(store)
    assert read == 0 and error.found == "member 'digits-x1.png'"
    _one_line_naming(error, store, FIRST, "member 'digits-x1.png'")
    assert "only the 40 samples index.parquet lists" in error.expected


def test_path_like_member_is_named(store: Path) -> None:
    _inject(_dataset(store) / FIRST, ["../evil.png"])
    error, _ = _read_until_refused(store)
    _one_line_naming(error, store, FIRST, "more than ")
    _agree(store, FIRST)
    error, read = _read_until_refused(store)
    assert read == 0
    _one_line_naming(error, store, FIRST, "member '../evil.png'")


def test_missing_or_garbled_index_is_named(store: Path) -> None:
    index = _dataset(store) / "index.parquet"
    index.write_bytes(index.read_bytes()[:100])
    _one_line_naming(_read_until_refused(store)[0], store, "index.parquet", "an unreadable file")
    index.unlink()
    _one_line_naming(_read_until_refused(store)[0], store, "index.parquet", "no such object")


def test_the_error_crosses_ray_intact(store: Path) -> None:
    """Ray Train pickles a failed worker's exception to the driver; the driver raises that one line."""
    (_dataset(store) / FIRST).unlink()
    error = pickle.loads(pickle.dumps(_read_until_refused(store)[0]))
    assert isinstance(error, ShardIntegrityError) and error.found == "no such object in the store"
    failed = WorkerGroupError("rank 1 failed", {0: RuntimeError("collective aborted"), 1: error})
    assert integrity_error_of(failed) is error
    assert integrity_error_of(WorkerGroupError("x", {0: RuntimeError("y")})) is None


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GANPIPE_"))}
    return {**env, "PYTHONPATH": str(ROOT), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


@pytest.fixture
def flipped_everywhere(store: Path) -> Iterator[Path]:
    """The store with the evaluator cached while the data was intact, then a byte flipped in every train shard
    (so whichever the shuffled order reads first is corrupt)."""
    dataset = _dataset(store)
    manifest = read_manifest(str(dataset))
    ensure_evaluator(store_url=str(store), dataset_url=str(dataset), manifest=manifest, epochs=1)
    for shard in manifest.split_shards("train"):
        data = bytearray((dataset / shard.path).read_bytes())
        data[1600] ^= 0x01
        (dataset / shard.path).write_bytes(bytes(data))
    yield store


def test_train_on_a_flipped_byte_exits_with_one_line_and_registers_nothing(flipped_everywhere: Path,
                                                                           tmp_path: Path) -> None:  # fmt: skip
    store = flipped_everywhere
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)  # not the process's global registry
    client.search_experiments()  # creates the tables here: MLflow logs that creation, and stderr is the error's
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--recipe", "dcgan", "--dataset", "digits",
           "--workers", "0", "--store", str(store), "--tracking-uri", uri, "--no-progress", "loop.steps=2",
           "loop.eval_every=0", "loop.threads=1", "model.ngf=8", "model.ndf=8", "model.nz=16",
           "data.batch_size=16"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("ganpipe train: error: dataset digits, shard shards/train-0000"), lines[0]
    assert "expected" in lines[0] and lines[0].endswith(f"run: ganpipe datasets verify digits --store {store}")
    assert client.search_registered_models() == []
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FAILED"]  # the run started, read its first shard, and stopped


def test_bench_data_times_reads_with_and_without_verification(prepared: Path) -> None:
    runs = read_rates(str(_dataset(prepared)), batch=16, passes=2)
    assert sorted(runs) == ["files_u", "files_v", "unverified", "verified"]
    assert all(len(r) == 2 and all(x > 0 for x in r) for r in runs.values())


def test_errors_in_decode_workers_are_the_same_one_line(store: Path) -> None:
    """Shards are verified and samples decoded in worker processes: a flipped byte, and a sample whose shard
    matches the manifest but does not decode, stop the stream with the line the training thread would raise
    without decode workers, after the same batches; a tolerant read skips the same sample."""

    def error(workers: int) -> Exception:
        stream = dataset_batches(str(_dataset(store)), batch_size=16, repeat=False, seed=1, shuffle_buffer=8,
                                 decode_workers=workers)  # fmt: skip
        before.append(0)
        with pytest.raises((ShardIntegrityError, SampleDecodeError)) as info:
            for _ in stream:
                before[-1] += 1
        return info.value

    before: list[int] = []  # batches handed on before the error, per call

    shard = _dataset(store) / FIRST
    original = shard.read_bytes()
    members = _members(shard)
    with tarfile.open(shard, "w") as tar:  # the first image: PNG signature, then zeros
        for i, (member, payload) in enumerate(members):
            bad = i == next(j for j, (m, _) in enumerate(members) if m.name.endswith(".png"))
            tar.addfile(member, io.BytesIO(payload[:16] + b"\0" * (len(payload) - 16) if bad else payload))
    _agree(store, FIRST)
    inline, pooled = error(0), error(2)
    unplaced = functools.partial(re.sub, r"0x[0-9a-f]+", "0x")  # PIL names its BytesIO by address
    assert isinstance(pooled, SampleDecodeError) and unplaced(str(pooled)) == unplaced(str(inline))
    assert "\n" not in str(pooled)
    assert str(pooled).startswith(f"dataset digits, shard {FIRST}: sample digits-")
    stats = ReadStats()
    batches = list(dataset_batches(str(_dataset(store)), batch_size=16, repeat=False, drop_last=False, stats=stats,
                                   decode_workers=2))  # fmt: skip
    assert sum(len(b["image"]) for b in batches) == 159 and stats.skipped == 1
    data = bytearray(original)
    data[1600] ^= 0x01
    shard.write_bytes(bytes(data))
    inline, pooled = error(0), error(2)
    assert isinstance(pooled, ShardIntegrityError) and str(pooled) == str(inline)
    # At the same place in the stream: seed 1 reads train-000003 first, and 32 of its 40 samples leave the
    # shuffle buffer (8) before train-000000 is read and refused.
    assert before[-1] == before[-2] == 2 and before[-3] == before[-4]
    _one_line_naming(pooled, store, FIRST, "bytes with sha256 ")
