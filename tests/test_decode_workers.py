"""Decode workers (data_prep/batch_workers.py): the same batches with 0, 1 or 2 of them, fresh and resumed, for the
kinds whose batches draw random numbers (paired crop/flip) or read two streams at once (unpaired), and from S3;
shards verified by the workers, never the parent; no thread, process or shard file outlives a stream or a
training run that ends early or raises; the config and device choices around them. Shard and sample errors
raised in a worker: tests/test_shard_integrity.py; captioned and attributes batches: tests/test_data_kinds.py."""

from __future__ import annotations

import contextlib
import itertools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep import PairedOptions, PrepConfig, SourceOptions, dataset_batches, prep_dataset, prep_images, shard_work
from data_prep.batches import pins_memory
from data_prep.prefetch import POOL_KINDS, Prefetcher, default_decode_workers
from gan_models import dcgan
from pipelines.cli.main import main
from pipelines.engine.loop import Report
from pipelines.ops.bench_data import decode_rows, gil_row
from pipelines.ops.feed_table import cores_per_gpu, decode_row, format_feed_table
from pipelines.spec.config import DataConfig, TrainSpec, apply_overrides
from pipelines.spec.options.data import DECODE_POOLS
from pipelines.training.worker import Job, reader_options, run_rank

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tiny datasets of three kinds, prepared once: digits (images, 4 train shards), inpainting pairs of
    skimage photos (paired, with masks), two folders of random 8 px images (unpaired, 7 and 5 samples)."""
    root = tmp_path_factory.mktemp("decode")
    store = str(root / "store")
    images = prep_images(PrepConfig(source="digits", store=store, shard_size=20, holdout=0,
                                    inputs=SourceOptions(limit=80)), progress=False)  # fmt: skip
    paired = prep_dataset(PrepConfig(source="skimage-photos", kind="paired", store=store, image_size=16, holdout=0,
                                     shard_size=4, paired=PairedOptions(derive="inpaint"),
                                     inputs=SourceOptions(crops=10)), progress=False)  # fmt: skip
    rng = np.random.default_rng(1)
    for folder, n in (("trainA", 7), ("trainB", 5)):
        (root / "h2z" / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "h2z" / folder / f"{i}.png")
    unpaired = prep_dataset(PrepConfig(source=str(root / "h2z"), kind="unpaired", store=store, image_size=8,
                                       shard_size=3), progress=False)  # fmt: skip
    return {"images": images.dataset_url, "paired": paired.dataset_url, "unpaired": unpaired.dataset_url}


def _batches(url: str, *, workers: int, seed: int, n: int, pool: str = "process",
             **kw) -> list[dict[str, torch.Tensor]]:  # fmt: skip
    stream = dataset_batches(url, batch_size=6, seed=seed, shuffle_buffer=8, decode_workers=workers,
                             decode_pool=pool, **kw)  # fmt: skip
    with contextlib.closing(stream):
        return list(itertools.islice(stream, n))


def _equal(x: list[dict[str, torch.Tensor]], y: list[dict[str, torch.Tensor]]) -> bool:
    return len(x) == len(y) and all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
                                    for a, b in zip(x, y, strict=True))  # fmt: skip


def _helpers() -> tuple[list[str], list[multiprocessing.Process]]:
    names = [t.name for t in threading.enumerate() if t.name.startswith(("ganpipe-batches", "ganpipe-decode"))]
    return names, multiprocessing.active_children()


@pytest.mark.parametrize(("kind", "kw"), [("images", {}), ("paired", {"crop_size": 12, "flip": True}),
                                          ("unpaired", {})])  # fmt: skip
def test_same_batches_with_0_1_2_decode_workers_fresh_and_resumed(datasets: dict[str, str], kind: str,
                                                                   kw: dict) -> None:  # fmt: skip
    """13-15 batches cross epoch boundaries (80, 10 and 7 samples a pass); a resumed run reads with
    seed + start step (pipelines/training/worker.py), so that stream is checked the same way."""
    for seed in (3, 3 + 5):
        inline = _batches(datasets[kind], workers=0, seed=seed, n=15, **kw)
        assert len(inline) == 15
        for workers, pool in ((1, "process"), (2, "process"), (2, "thread")):
            assert _equal(_batches(datasets[kind], workers=workers, seed=seed, n=15, pool=pool, **kw), inline), \
                (kind, seed, workers, pool)
    assert not _equal(_batches(datasets[kind], workers=0, seed=3, n=15, **kw), inline)  # the resumed stream differs
    assert _helpers() == ([], [])


def test_stream_closed_early_or_dropped_leaves_no_thread_or_process(
    datasets: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stream = dataset_batches(datasets["images"], batch_size=4, decode_workers=2)
    next(stream)
    names, children = _helpers()
    assert names and len(children) == 2  # the reading thread and both decode processes are running
    assert len(list(tmp_path.glob("ganpipe-shards-*/*.tar"))) >= 1  # verified shards, read by the workers
    stream.close()
    assert _helpers() == ([], []) and not list(tmp_path.iterdir())  # the shard folder went with them
    stream = dataset_batches(datasets["images"], batch_size=4, decode_workers=2)
    next(stream)
    del stream  # dropped without close: the generator's finally stops them all the same
    assert _helpers() == ([], [])


def test_shards_are_read_and_verified_by_the_workers_not_the_parent(
    datasets: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent only plans: every shard of the two epochs read here is verified in a decode process."""
    log, verify = tmp_path / "pids", shard_work.read_verified

    def logged(*args, **kw):
        with log.open("a") as out:
            out.write(f"{os.getpid()}\n")
        return verify(*args, **kw)

    monkeypatch.setattr(shard_work, "read_verified", logged)  # before the pool forks: the workers have it too
    assert len(_batches(datasets["images"], workers=2, seed=1, n=15)) == 15  # 90 samples: into the second epoch
    pids = log.read_text().split()
    assert len(pids) >= 5 and str(os.getpid()) not in pids and len(set(pids)) <= 2


@pytest.mark.parametrize("pool", POOL_KINDS)
def test_decode_workers_read_s3_shards_themselves(s3_server, bucket_url: str, pool: str) -> None:
    """Each worker reads and verifies shards through its own S3 client (a forked boto3 client is not theirs to
    share); rank 1 of 2 gets the same batches as without workers."""
    url = prep_images(PrepConfig(source="digits", store=bucket_url, shard_size=20, holdout=0,
                                 inputs=SourceOptions(limit=80)), progress=False).dataset_url  # fmt: skip
    assert url.startswith("s3://")
    inline = _batches(url, workers=0, seed=4, n=5, rank=1, world_size=2)
    assert len(inline) == 5 and _equal(_batches(url, workers=2, seed=4, n=5, pool=pool, rank=1, world_size=2), inline)
    assert _helpers() == ([], [])


def test_prefetcher_hands_on_an_error_in_order_and_stops() -> None:
    def items():
        yield from range(3)
        raise ValueError("item 3 is bad")

    ahead = Prefetcher(items, depth=2)
    assert [next(ahead) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="^item 3 is bad$"):
        next(ahead)
    with pytest.raises(StopIteration):
        next(ahead)


def _job(url: str, **data) -> Job:
    model = dcgan.Config(image_size=32, channels=1, nz=8, ngf=4, ndf=4)
    spec = TrainSpec(family="dcgan", model=model, data=DataConfig(dataset=url, batch_size=8, shuffle_buffer=8, **data))
    spec = apply_overrides(spec, ["loop.steps=4", "loop.log_every=1", "loop.sample_every=0", "loop.threads=1",
                                  "loop.checkpoint_every=100"])  # fmt: skip
    return Job(spec=spec, dataset_url=url)


def test_training_that_ends_or_raises_leaves_no_decode_worker(datasets: dict[str, str]) -> None:
    seen: list[int] = []

    def report(r: Report) -> None:
        seen.append(len(multiprocessing.active_children()))
        if r.step == 2 and raising:
            raise RuntimeError("the run stops here")

    job = _job(datasets["images"], decode_workers=2)
    raising = False
    assert run_rank(job, rank=0, world_size=1, device=torch.device("cpu"), report=report) == 4
    assert seen[0] == 2 and _helpers() == ([], [])  # two decode processes while it ran, none after
    raising = True
    with pytest.raises(RuntimeError, match="the run stops here"):
        run_rank(job, rank=0, world_size=1, device=torch.device("cpu"), report=report)
    assert _helpers() == ([], [])


def test_decode_workers_config_default_and_pinning() -> None:
    spec = TrainSpec(family="dcgan", model=dcgan.Config())
    assert spec.data.decode_workers is None and spec.data.decode_pool == "process"
    assert reader_options(spec, device=torch.device("cpu"), cpus=4.0) == {
        "decode_workers": 3, "decode_pool": "process", "pin_memory": False}  # fmt: skip
    assert reader_options(spec, device=torch.device("cuda"), cpus=1.0)["decode_workers"] == 1  # at least one
    assert reader_options(spec, device=torch.device("cuda"), cpus=1.0)["pin_memory"] is True
    assert default_decode_workers() == max(1, len(__import__("os").sched_getaffinity(0)) - 1)
    # A GPU worker is given CPUs for 3 decode processes unless told otherwise (one could not feed DCGAN on an H200).
    assert spec.scale.worker_cpus == 1.0
    on_gpu = apply_overrides(spec, ["scale.use_gpu=true"])
    assert on_gpu.scale.worker_cpus == 4.0
    assert reader_options(on_gpu, device=torch.device("cuda"), cpus=on_gpu.scale.worker_cpus)["decode_workers"] == 3
    assert apply_overrides(on_gpu, ["scale.cpus_per_worker=2"]).scale.worker_cpus == 2.0
    with pytest.raises(ValueError, match="scale.cpus_per_worker must be above 0 or none; got 0.0"):
        apply_overrides(spec, ["scale.cpus_per_worker=0"])
    set_ = apply_overrides(spec, ["data.decode_workers=0", "data.decode_pool=thread"])
    assert reader_options(set_, device=torch.device("cpu"))["decode_workers"] == 0
    assert apply_overrides(set_, ["data.decode_workers=none"]).data.decode_workers is None
    for bad, message in (("data.decode_workers=-1", r"data.decode_workers must be in \[0, 256\]"),
                         ("data.decode_pool=fork", "data.decode_pool must be one of process, thread")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            apply_overrides(spec, [bad])
    # Page-locked memory needs a CUDA driver: asked for on a machine without one, batches stay ordinary.
    assert pins_memory(True) is torch.cuda.is_available() and pins_memory(False) is False


def test_pin_memory_without_cuda_gives_the_same_batches(datasets: dict[str, str]) -> None:
    pinned = _batches(datasets["images"], workers=1, seed=0, n=2, pin_memory=True)
    assert _equal(pinned, _batches(datasets["images"], workers=0, seed=0, n=2))
    assert all(t.is_pinned() is pins_memory(True) for b in pinned for t in b.values())


def test_bench_data_times_decode_workers_and_computes_the_feed_table(
    datasets: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = decode_rows(datasets["images"], size=32, batch=8, workers=[0, 1, 2], pools=["process", "thread"],
                       images=16, passes=1)  # fmt: skip
    assert [(r["pool"], r["workers"]) for r in rows] == [("process", 1), ("process", 2), ("thread", 1),
                                                         ("thread", 2), ("process", 0)]  # fmt: skip
    assert all(r["img_per_s"] > 0 and r["size"] == 32 and r["parent_cpu_us"] >= 0 for r in rows)
    assert [r["workers_cpu_us"] for r in rows if r["workers"] == 0] == [0.0]  # no workers, no worker CPU
    where = gil_row(datasets["images"], size=32, images=16, repeats=1)
    assert where["images"] == 16 and 0 < where["released_us"] < where["work_us"] and where["ipc_us"] > 0
    # The table from per-core rates: 2 workers at 2,000 img/s are 1,000 a core; DCGAN's 6,762 img/s need 7 of
    # them and the training process's core, 3x needs 21 + 1; a size nobody measured says so.
    measured = [decode_row(size=64, pool="process", workers=w, runs=[r], images=1, batch=1)
                for w, r in ((1, 1200.0), (2, 2000.0))]  # fmt: skip
    table = format_feed_table(measured, pool="process").splitlines()
    assert table[2] == "| DCGAN | 64 px, batch 64 | 1,000 (from 2 workers) | 6,762.0 | 20,286.0 | 8 | 22 |"
    assert "not measured at 128 px" in table[3] and cores_per_gpu(171.2, 50.0) == 5
    saved = tmp_path / "bench.json"
    saved.write_text(json.dumps(measured))
    assert main(["bench-data", "--from-json", str(saved), "--feed-table"]) == 0
    out = capsys.readouterr().out
    assert table[2] in out and "64 px: 1 workers 1.00, 2 workers 0.83" in out
    assert main(["bench-data", "--from-json", str(tmp_path / "missing.json")]) == 2
    assert DECODE_POOLS == POOL_KINDS  # the option's choices, kept apart so `ganpipe --help` imports no data_prep


def test_decode_workers_die_with_a_killed_training_process(datasets: dict[str, str]) -> None:
    """A rank killed outright (SIGKILL, out of memory) runs no finally: its decode processes must not wait forever."""
    script = ("import multiprocessing, os, signal, sys; from data_prep.batches import dataset_batches; "
              "s = dataset_batches(sys.argv[1], batch_size=4, decode_workers=2); next(s); "
              "print(*[p.pid for p in multiprocessing.active_children()], flush=True); "
              "os.kill(os.getpid(), signal.SIGKILL)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script, datasets["images"]], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{p}").exists() and "(Z)" not in _state(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if Path(f"/proc/{p}").exists() and "(Z)" not in _state(p)]


def _state(pid: int) -> str:
    """`PID (name) S ...` of /proc/PID/stat, reduced to its state letter in parentheses ('' once it is gone)."""
    try:
        return f"({Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]})"
    except (OSError, IndexError):
        return ""
