"""`ganpipe bench-data`: data throughput on this machine — prep (in-process, 1 and 2 Ray workers) against a bare
decode -> resize -> PNG encode -> tar loop, reading shards into batches from local disk and from SeaweedFS, and
training's reader with 0..N decode workers (processes or threads) per size, from which feed_table.py computes
the cores per GPU each family needs.

Inputs are JPEGs made from scikit-image's bundled photos (seeded random crops), in a temp folder; nothing is
downloaded. Ray start-up is outside the timings (a warm-up prep starts the workers first). Every read is timed
with and without shard verification (data_prep/integrity.py), interleaved, so its cost is measured in one run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


def make_jpegs(folder: Path, *, n: int, side: int = 256, seed: int = 0) -> list[Path]:
    """`n` side x side JPEGs (quality 90): random square crops of the photos, resized."""
    import skimage.data

    photos = [np.asarray(getattr(skimage.data, name)(), dtype=np.uint8) for name in PHOTOS]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        photo = photos[i % len(photos)]
        height, width = photo.shape[:2]
        crop = int(rng.integers(min(height, width) // 3, min(height, width) + 1))
        top, left = int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))
        patch = Image.fromarray(photo[top : top + crop, left : left + crop])
        patch = patch.resize((side, side), Image.Resampling.LANCZOS)
        path = folder / f"{i:06d}.jpg"
        patch.save(path, quality=90)
        paths.append(path)
    return paths


def bare_loop(paths: list[Path], *, size: int, out: Path) -> float:
    """images/s of the least work prep must do: PIL decode -> resize -> PNG encode -> tar write, one process."""
    t0 = time.perf_counter()
    with tarfile.open(out, "w") as tar:
        for path in paths:
            with Image.open(path) as image:
                fitted = image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            fitted.save(buffer, format="PNG", compress_level=6)
            info = tarfile.TarInfo(f"{path.stem}.image.png")
            info.size = buffer.tell()
            buffer.seek(0)
            tar.addfile(info, buffer)
    return len(paths) / (time.perf_counter() - t0)


def prep_rate(folder: Path, *, store: str, size: int, workers: int, shard_size: int) -> float:
    """images/s of `ganpipe prep` over the folder (listing, fingerprint, duplicate pass, stages, manifest)."""
    from data_prep.prep import PrepConfig, prep_images

    cfg = PrepConfig(source=str(folder), store=store, image_size=size, holdout=0, shard_size=shard_size,
                     workers=workers, max_bad_frac=None, overwrite=True)  # fmt: skip
    t0 = time.perf_counter()
    result = prep_images(cfg, progress=False)
    rate = sum(result.manifest.counts.values()) / (time.perf_counter() - t0)
    return rate


def read_rate(dataset_url: str, *, batch: int, verify: bool = True) -> float:
    """images/s decoded and batched by dataset_batches over one epoch; verify=False skips shard verification
    (data_prep/integrity.py), which only this benchmark can do, to measure what it costs."""
    from data_prep.batches import dataset_batches
    from data_prep.integrity import unverified_reads_for_benchmark

    with contextlib.nullcontext() if verify else unverified_reads_for_benchmark():
        t0, n = time.perf_counter(), 0
        for b in dataset_batches(dataset_url, batch_size=batch, repeat=False, drop_last=False, shuffle_buffer=256):
            n += len(b["image"])
        return n / (time.perf_counter() - t0)


def read_rates(dataset_url: str, *, batch: int, passes: int) -> dict[str, list[float]]:
    """Epochs with and without verification, interleaved (alternating which goes first, so neither gets the
    warmer cache or the quieter moment of a shared machine); and the same for the shards' members alone (read and
    parsed, verified or not, nothing decoded), where the difference is verification's work with far less noise."""
    runs: dict[str, list[float]] = {name: [] for name in ("verified", "unverified", "files_v", "files_u")}
    for i in range(passes):
        for verify in (True, False) if i % 2 else (False, True):
            runs["verified" if verify else "unverified"].append(read_rate(dataset_url, batch=batch, verify=verify))
            runs["files_v" if verify else "files_u"].append(files_rate(dataset_url, verify=verify))
    return runs


def files_rate(dataset_url: str, *, verify: bool) -> float:
    """images/s of reading and parsing the train split's shards into members, without decoding a sample."""
    from data_prep.integrity import unverified_reads_for_benchmark
    from data_prep.reader import open_dataset, shard_files

    store, manifest = open_dataset(dataset_url)
    shards = manifest.split_shards("train")
    with contextlib.nullcontext() if verify else unverified_reads_for_benchmark():
        t0 = time.perf_counter()
        for _ in shard_files(store, manifest, shards):
            pass
        return sum(s.samples for s in shards) / (time.perf_counter() - t0)


def decode_rate(dataset_url: str, *, batch: int, workers: int, pool: str, images: int) -> tuple[float, float, float]:
    """Steady images/s of training's reader (verified shards, shuffle buffer 256) with `workers` decode workers
    of `pool`: the first batch (pool start, first shard verified) is left out, then `images` are timed. With it,
    the CPU µs per image of the parent (every thread but the decode threads) and of the decode workers."""
    import itertools

    from data_prep.batches import dataset_batches

    stream = dataset_batches(dataset_url, batch_size=batch, shuffle_buffer=256, decode_workers=workers,
                             decode_pool=pool)  # fmt: skip
    with contextlib.closing(stream):
        next(stream)
        cpu0, t0, n = _cpu_split(), time.perf_counter(), 0
        for b in itertools.islice(stream, max(1, images // batch)):
            n += len(b["image"])
        elapsed, cpu1 = time.perf_counter() - t0, _cpu_split()
        return n / elapsed, max(0.0, cpu1[0] - cpu0[0]) / n * 1e6, (cpu1[1] - cpu0[1]) / n * 1e6


def _cpu_split() -> tuple[float, float]:
    """CPU seconds so far of this process less its decode threads, and of its decode workers (the live child
    processes, or the threads named ganpipe-decode), from /proc (Linux; 0 elsewhere)."""
    import multiprocessing
    import threading

    def ticks(path: str) -> float:
        try:
            fields = Path(path).read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    threads = sum(ticks(f"/proc/self/task/{t.native_id}/stat") for t in threading.enumerate()
                  if t.name.startswith("ganpipe-decode"))  # fmt: skip
    children = sum(ticks(f"/proc/{p.pid}/stat") for p in multiprocessing.active_children())
    # The process's own count (all its threads), in the same clock ticks as its threads': never below theirs.
    return max(0.0, ticks("/proc/self/stat") - threads), threads + children


def decode_rows(dataset_url: str, *, size: int, batch: int, workers: list[int], pools: list[str], images: int,
                passes: int) -> list[dict[str, Any]]:  # fmt: skip
    """decode_rate for every (pool, workers), `passes` interleaved rounds (the order rotating each round, so no
    setting always gets the quieter moment of a shared machine); rows as feed_table.decode_row (best of rounds),
    with the parent's and the workers' CPU µs per image of the best round."""
    from pipelines.ops.feed_table import decode_row

    settings = [(pool, w) for pool in pools for w in workers if w > 0] + ([(pools[0], 0)] if 0 in workers else [])
    runs: dict[tuple[str, int], list[tuple[float, float, float]]] = {s: [] for s in settings}
    for i in range(passes):
        for setting in settings[i % len(settings):] + settings[: i % len(settings)]:
            runs[setting].append(decode_rate(dataset_url, batch=batch, workers=setting[1], pool=setting[0],
                                             images=images))  # fmt: skip
    rows = []
    for pool, w in settings:
        rates = [r[0] for r in runs[(pool, w)]]
        best = max(runs[(pool, w)])
        rows.append({**decode_row(size=size, pool=pool, workers=w, runs=rates, images=images, batch=batch),
                     "parent_cpu_us": best[1], "workers_cpu_us": best[2]})  # fmt: skip
    return rows


class _TimedDecoder:
    """PIL's decoder with the seconds spent in its `decode` (the C call that releases the GIL) added up."""

    def __init__(self, decoder: Any, spent: list[float]) -> None:
        self._decoder, self._spent = decoder, spent

    def decode(self, data: bytes) -> Any:
        t0 = time.perf_counter()
        try:
            return self._decoder.decode(data)
        finally:
            self._spent[0] += time.perf_counter() - t0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._decoder, name)


def gil_row(dataset_url: str, *, size: int, images: int, repeats: int = 5) -> dict[str, Any]:
    """Where a decode worker's time goes, per image (best of `repeats` passes, so a busy machine matters little):
    `work_us` all of decode_chunk, `released_us` inside PIL's decoder (GIL released), and `ipc_us` what a process
    pool adds on the parent's side, holding the GIL (pickling a chunk's member bytes, unpickling its samples).
    Threads are bound by Amdahl: N threads at most 1 / ((1 - f) + f / N) times one, f = released / work."""
    import itertools
    import pickle

    from PIL import Image

    from data_prep.batches import CHUNK, decode_chunk
    from data_prep.reader import open_dataset, raw_epoch

    store, manifest = open_dataset(dataset_url)
    raw = list(itertools.islice(raw_epoch(store, manifest, split="train", rank=0, world_size=1, seed=0, epoch=0,
                                          shuffle_buffer=0, shuffle=False), images))  # fmt: skip
    chunks = [raw[i : i + CHUNK] for i in range(0, len(raw), CHUNK)]
    original, spent = Image._getdecoder, [0.0]
    passes: list[tuple[float, float]] = []  # (all the work, the part in PIL's decoder) per pass
    ipcs: list[float] = []
    Image._getdecoder = lambda *a, **k: _TimedDecoder(original(*a, **k), spent)  # type: ignore[assignment]
    try:
        for _ in range(repeats):
            spent[0], t0 = 0.0, time.perf_counter()
            outs = [decode_chunk(chunk, manifest=manifest) for chunk in chunks]
            passes.append((time.perf_counter() - t0, spent[0]))
            t0 = time.perf_counter()
            for chunk, out in zip(chunks, outs, strict=True):
                pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL)
                pickle.loads(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))  # dumps: the worker's, an upper bound
            ipcs.append(time.perf_counter() - t0)
    finally:
        Image._getdecoder = original  # type: ignore[assignment]
    n = len(raw)
    work, released = min(passes)
    work_us, released_us, ipc_us = (x / n * 1e6 for x in (work, released, min(ipcs)))
    return {"what": f"decode {size}px, where the time goes", "kind": "gil", "size": size, "images": n,
            "img_per_s": n / work, "work_us": work_us, "released_us": released_us, "ipc_us": ipc_us,
            "released_share": released_us / work_us}  # fmt: skip


@contextlib.contextmanager
def seaweedfs(root: Path) -> Iterator[str]:
    """A throw-away SeaweedFS (pipelines.ops.seaweedfs) on 127.0.0.1; sets the AWS_* and GANPIPE_S3_ENDPOINT
    variables while it runs and yields the endpoint URL."""
    from pipelines.ops import seaweedfs as weed

    key, secret = weed.new_credentials()
    identity = root / "s3.json"
    weed.write_identity(identity, access_key=key, secret_key=secret, name="bench")
    ports = weed.allocate_ports()
    server = weed.S3Server(endpoint=f"http://127.0.0.1:{ports['s3']}", access_key=key, secret_key=secret,
                           region="us-east-1", data_dir=root / "data", log=root / "weed.log")
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                            "GANPIPE_S3_ENDPOINT")}  # fmt: skip
    os.environ.update(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret, AWS_DEFAULT_REGION=server.region,
                      GANPIPE_S3_ENDPOINT=server.endpoint)  # fmt: skip
    proc = weed.start(data_dir=server.data_dir, identity=identity, ports=ports, log=server.log)
    try:
        weed.wait_ready(server, proc, timeout_s=90)
        yield server.endpoint
    finally:
        weed.stop(proc, ports)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def run_all(*, images: int, size: int, workers: list[int], shard_size: int, read_sizes: list[int], batch: int,
            s3: bool, repeats: int = 3, read_images: int = 3000, read_passes: int = 4,
            prep: bool = True, verify_reads: bool = True, decode_workers: list[int] = (),
            decode_pools: list[str] = ("process",), decode_sizes: list[int] = ()) -> list[dict[str, Any]]:  # fmt: skip
    """Every measurement, as rows {"what", "img_per_s", "load" (1/5/15-min load average at the time), ...}.
    Reads use their own `read_images` inputs: opening a dataset costs a fixed ~0.1 s (manifest, S3 client),
    which would dominate an epoch of a few hundred small images and say nothing about a training run.
    Each read is measured with and without shard verification, `read_passes` interleaved epochs each (the best
    reported; the cost of verification is the median over passes of 1 - verified/unverified), and the shards'
    members alone, verified and not (the difference over an epoch's time: verification's share); prep=False
    skips prep, verify_reads=False these reads. Decode rows (feed_table.py): each size of `decode_sizes` read from local
    disk with every count of `decode_workers` in every pool of `decode_pools`, `read_passes` interleaved rounds."""
    from data_prep.prep import PrepConfig, prep_images

    rows: list[dict[str, Any]] = []
    common = {"machine": f"{platform.machine()} {os.cpu_count()} cpus", "date": time.strftime("%Y-%m-%d %H:%M")}

    def row(what: str, rate: float, **extra: Any) -> None:
        rows.append({"what": what, "img_per_s": rate, "load": _load(), **common, **extra})
        print(f"  {what:<44} {rate:>9.1f} img/s   load {rows[-1]['load']}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="ganpipe-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if prep:
            run_prep(tmp, row, images=images, size=size, workers=workers, shard_size=shard_size, repeats=repeats)
        sides = sorted({*(read_sizes if verify_reads else ()), *(decode_sizes if decode_workers else ())})
        read_inputs = {side: make_jpegs(tmp / f"read{side}", n=read_images, side=side, seed=2) for side in sides}

        def read_cfg(side: int, store: str) -> PrepConfig:
            return PrepConfig(source=str(tmp / f"read{side}"), store=store, image_size=side, holdout=0,
                              shard_size=shard_size * 10, max_bad_frac=None)  # fmt: skip

        def reads(where: str, dataset_url: str, side: int) -> None:
            runs = read_rates(dataset_url, batch=batch, passes=read_passes)
            # The cost from each pass's adjacent pair of epochs: a load change between passes cancels out.
            paired = [v / u for v, u in zip(runs["verified"], runs["unverified"], strict=True)]
            # Verification's own seconds per image (members alone, verified - unverified), as a share of an epoch.
            extra = statistics.median(1 / v - 1 / u for v, u in zip(runs["files_v"], runs["files_u"], strict=True))
            epoch = statistics.median(1 / v for v in runs["verified"])
            common_read = {"images": len(read_inputs[side])}
            row(f"read {side}px {where}, batch {batch}", max(runs["verified"]), runs=runs["verified"],
                verify_cost=1 - statistics.median(paired), **common_read)  # fmt: skip
            row("  same, shard verification off (bench only)", max(runs["unverified"]), runs=runs["unverified"],
                **common_read)  # fmt: skip
            row("  members alone (read+parse), verified", max(runs["files_v"]), runs=runs["files_v"],
                verify_share=extra / epoch, **common_read)  # fmt: skip
            row("  members alone (read+parse), unverified", max(runs["files_u"]), runs=runs["files_u"],
                **common_read)  # fmt: skip

        local_urls = {side: prep_images(read_cfg(side, str(tmp / f"r{side}")), progress=False).dataset_url
                      for side in sorted(read_inputs)}  # fmt: skip
        for side in read_sizes if verify_reads else []:
            reads("local disk", local_urls[side], side)
        for side in decode_sizes if decode_workers else []:
            rows.append({**gil_row(local_urls[side], size=side, images=min(read_images, 640)), "load": _load(),
                         **common})  # fmt: skip
            print(f"  {rows[-1]['what']:<44} {rows[-1]['released_share']:.0%} GIL released", file=sys.stderr)
            for r in decode_rows(local_urls[side], size=side, batch=batch, workers=list(decode_workers),
                                 pools=list(decode_pools), images=read_images, passes=read_passes):  # fmt: skip
                rows.append({**r, "load": _load(), **common})
                print(f"  {r['what']:<44} {r['img_per_s']:>9.1f} img/s   CPU/img parent {r['parent_cpu_us']:.0f} us, "
                      f"workers {r['workers_cpu_us']:.0f} us   load {rows[-1]['load']}", file=sys.stderr,
                      flush=True)  # fmt: skip
        if s3 and verify_reads:
            with seaweedfs(tmp / "weed"):
                for side in read_sizes:
                    remote = prep_images(read_cfg(side, f"s3://bench-data/r{side}"), progress=False)
                    reads("SeaweedFS loopback", remote.dataset_url, side)
    return rows


def run_prep(tmp: Path, row: Callable[..., None], *, images: int, size: int, workers: list[int], shard_size: int,
             repeats: int) -> None:  # fmt: skip
    """The prep measurements: the bare loop, prep in-process and on Ray, interleaved rounds, medians."""
    from data_prep.stages import ensure_ray

    inputs = tmp / "jpegs"
    paths = make_jpegs(inputs, n=images)
    if workers:
        ensure_ray(max(workers))
        warm = tmp / "warm"
        make_jpegs(warm, n=max(workers) * 2, seed=1)
        prep_rate(warm, store=str(tmp / "warm-store"), size=32, workers=max(workers), shard_size=1)
    # Interleaved rounds, medians reported: on a shared machine the load moves between measurements.
    runs: dict[str, list[float]] = {}
    for _ in range(repeats):
        runs.setdefault("bare", []).append(bare_loop(paths, size=size, out=tmp / "bare.tar"))
        for w in [0, *workers]:
            rate = prep_rate(inputs, store=str(tmp / f"s{w}"), size=size, workers=w, shard_size=shard_size)
            runs.setdefault(f"w{w}", []).append(rate)
    bare = statistics.median(runs["bare"])
    row(f"bare loop {size}px (decode-resize-png-tar)", bare, images=images, runs=runs["bare"])
    for w in [0, *workers]:
        rate = statistics.median(runs[f"w{w}"])
        what = f"prep {size}px in-process (--workers 0)" if w == 0 else f"prep {size}px Ray --workers {w}"
        row(what, rate, images=images, ratio_to_bare=rate / bare, runs=runs[f"w{w}"])


def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per row; the note is prep's ratio to the bare loop, or what shard verification costs a read:
    `verify` from paired epochs, `share` from the members-alone timings (its seconds over an epoch's)."""
    lines = [f"{'measurement':<46} {'img/s':>9}  {'note':<30}  load (1/5/15 min)"]
    for r in rows:
        note = f"{r['ratio_to_bare']:.2f}x bare" if "ratio_to_bare" in r else ""
        if "verify_cost" in r:
            note = f"verify {r['verify_cost']:+.1%}"
        if "verify_share" in r:
            note = f"share {r['verify_share']:+.1%}"
        if r.get("kind") == "gil":
            note = f"{r['released_share']:.0%} released"
        if r.get("kind") == "decode" and r["workers"] > 1:
            one = [x for x in rows if x.get("kind") == "decode" and x["size"] == r["size"] and x["pool"] == r["pool"]
                   and x["workers"] == 1]  # fmt: skip
            note = f"{r['img_per_s'] / one[0]['img_per_s']:.2f}x of 1" if one else ""
        if r.get("kind") == "decode" and "parent_cpu_us" in r:
            note = f"{note} cpu {r['parent_cpu_us']:.0f}+{r['workers_cpu_us']:.0f}us".strip()
        lines.append(f"{r['what']:<46} {r['img_per_s']:>9.1f}  {note:<30}  {r.get('load', '?')}")
    return "\n".join(lines)


def write_json(rows: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2))
    return path
