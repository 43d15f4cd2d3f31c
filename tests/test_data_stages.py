"""Prep's stages: crash and resume, Ray == in-process byte for byte, the new quarantine reasons, --max-bad-frac,
`datasets ls|show|verify`, the reader's skip counter, and S3 reads that survive a dropped stream."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_prep import PrepConfig, SourceOptions, open_store, prep_dataset, prep_images, read_manifest
from data_prep.batches import dataset_batches
from data_prep.encoders import images_encoder
from data_prep.integrity import SampleDecodeError
from data_prep.manifest import read_quarantine
from data_prep.prep import TooManyBad, format_summary, write_dataset
from data_prep.reader import ReadStats
from data_prep.shards import split_entries
from data_prep.sources import FolderSource
from data_prep.transforms import TransformConfig
from pipelines.cli.main import main

RNG = np.random.default_rng(11)


def _pictures(root: Path, n: int, size: tuple[int, int] = (12, 12)) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(RNG.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _index_keys(dataset_url: str) -> list[str]:
    table = pq.read_table(io.BytesIO(open_store(dataset_url).get_bytes("index.parquet")))
    return table.column("key").to_pylist()


# ---------------------------------------------------------------- crash and resume


def test_crash_midway_then_rerun_writes_only_the_missing_shards(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _pictures(src, 12)
    encode = images_encoder(TransformConfig(image_size=8))
    victim = split_entries(FolderSource(src).entries(), holdout=0, seed=0)["train"][7].key  # in the third chunk

    def crashing(raw):  # a stage that dies on one input of the third chunk
        if raw.key == victim:
            raise RuntimeError("worker lost")
        return encode(raw)

    def run(encoder, store: Path):
        return write_dataset(source=FolderSource(src), encoder=encoder, kind="images", name="pics",
                             store=open_store(str(store)), prep={"size": 8}, image_size=8, channels=3, holdout=0,
                             shard_size=3, seed=0, progress=False)  # fmt: skip

    store = tmp_path / "store"
    with pytest.raises(RuntimeError, match="worker lost"):
        run(crashing, store)
    root = store / "datasets" / "pics"
    assert not (root / "manifest.json").exists()  # a half-written dataset does not exist
    written = {p.name: p.stat().st_mtime_ns for p in (root / "shards").iterdir()}
    assert sorted(written) == ["train-000000.tar", "train-000001.tar"]
    assert sorted(p.name for p in (root / "_progress").iterdir()) == [
        "all-train-000000.json", "all-train-000001.json", "plan.json"]  # fmt: skip

    result = run(encode, store)
    assert not result.reused and result.manifest.version == 1
    after = {p.name: p.stat().st_mtime_ns for p in (root / "shards").iterdir()}
    assert sorted(after) == [f"train-00000{i}.tar" for i in range(4)]
    assert all(after[name] == mtime for name, mtime in written.items())  # the finished shards were not rewritten
    keys = _index_keys(result.dataset_url)
    assert sorted(keys) == [f"{i:03d}_png" for i in range(12)]  # no sample missing, none twice
    assert not (root / "_progress").exists() or not any((root / "_progress").iterdir())
    clean = run(encode, tmp_path / "clean")  # the same dataset written in one go
    assert _files(root) == _files(tmp_path / "clean" / "datasets" / "pics")
    assert clean.manifest.digest == result.manifest.digest


# ---------------------------------------------------------------- Ray


def test_ray_tasks_write_the_same_bytes_and_shards_read_anywhere(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cfg = dict(source="digits", holdout=40, shard_size=40, image_size=16, inputs=SourceOptions(limit=200))
        in_process = prep_images(PrepConfig(store=str(tmp_path / "a"), **cfg), progress=False)
        on_ray = prep_images(PrepConfig(store=str(tmp_path / "b"), workers=2, **cfg), progress=False)
        files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
        assert len(in_process.manifest.shards) == 5 and files_a == files_b  # byte for byte, manifest included
        assert on_ray.manifest.digest == in_process.manifest.digest

        shards = sorted(str(p) for p in (tmp_path / "b" / "datasets" / "digits" / "shards").glob("*.tar"))
        rows = ray.data.read_webdataset(shards, decoder=None).take_all()
        assert sorted(r["__key__"] for r in rows) == sorted(_index_keys(on_ray.dataset_url))
        with Image.open(io.BytesIO(rows[0]["png"])) as image:
            assert image.size == (16, 16)
        # README's "Reading a dataset without ganpipe": Ray Data's own decoder, conventional member names
        decoded = ray.data.read_webdataset(shards[:1]).take(3)
        assert all(r["png"].shape == (16, 16) and r["cls"] in range(10) for r in decoded)
    finally:
        ray.shutdown()
    names = []
    for shard in shards:  # the standard library reads them too
        with tarfile.open(shard) as tar:
            names += tar.getnames()
    assert len(names) == 2 * 200 and all(n.endswith((".cls", ".png")) and n.count(".") == 1 for n in names)


# ---------------------------------------------------------------- validation


def test_new_quarantine_reasons_and_converted_count(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _pictures(src, 30, (16, 16))
    (src / "copy_of_001.png").write_bytes((src / "001.png").read_bytes())
    Image.fromarray(RNG.integers(0, 256, (8, 40, 3), dtype=np.uint8)).save(src / "wide.png")  # aspect 5
    Image.fromarray(RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(src / "tiny.png")
    (src / "notes.png").write_text("not a picture")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(src / "cmyk.jpg")
    Image.new("LA", (16, 16), (200, 255)).save(src / "la.png")
    Image.new("P", (16, 16), 5).save(src / "palette.png")
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(src / "deep.png")
    outside = tmp_path / "outside.png"
    Image.fromarray(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(outside)
    os.symlink(outside, src / "link.png")

    cfg = PrepConfig(source=str(src), store=str(tmp_path / "store"), image_size=8, holdout=0, max_bad_frac=0.2)
    result = prep_images(cfg, progress=False)
    reasons = {q.origin: q.reason for q in result.quarantined}
    assert reasons == {"copy_of_001.png": "duplicate", "wide.png": "extreme_aspect", "tiny.png": "too_small",
                       "notes.png": "not_image", "link.png": "unsafe_path"}  # fmt: skip
    detail = {q.origin: q.detail for q in result.quarantined}
    assert "001.png" in detail["copy_of_001.png"] and "outside" in detail["link.png"]
    assert result.manifest.counts == {"train": 34, "test": 0} and result.manifest.notes == {"mode_converted": 4}
    assert {q.origin: q.reason for q in read_quarantine(open_store(result.dataset_url))} == reasons
    summary = format_summary(result)
    assert "quarantined: 5 (" in summary and "duplicate 1" in summary and "converted: 4" in summary

    # file names from a table may not leave the images folder: '..' and absolute paths
    table = tmp_path / "src" / "attrs.csv"
    rows = ["file,smile", "000.png,1", "../outside.png,0", f"{outside},1", "002.png,0"]
    table.write_text("\n".join(rows) + "\n")
    attrs = prep_dataset(PrepConfig(source=str(table), kind="attributes", store=str(tmp_path / "s2"), image_size=8,
                                    holdout=0, max_bad_frac=None), progress=False)  # fmt: skip
    unsafe = {q.origin: q.reason for q in attrs.quarantined if q.reason == "unsafe_path"}
    assert unsafe == {"../outside.png": "unsafe_path", str(outside): "unsafe_path"}


def test_max_bad_frac_fails_with_the_report_then_a_rerun_reuses_the_shards(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _pictures(src, 10)
    (src / "broken.png").write_bytes(b"")
    store = tmp_path / "store"
    with pytest.raises(TooManyBad, match=r"1 of 11 inputs \(9\.1%\) were quarantined \(empty 1\), above "
                                         r"--max-bad-frac 0\.05"):  # fmt: skip
        prep_images(PrepConfig(source=str(src), store=str(store), image_size=8, shard_size=4), progress=False)
    root = store / "datasets" / "src"
    assert not (root / "manifest.json").exists()
    assert [(q.origin, q.reason) for q in read_quarantine(open_store(str(root)))] == [("broken.png", "empty")]
    shards = {p.name: p.stat().st_mtime_ns for p in (root / "shards").iterdir()}
    code = main(["prep", str(src), "--store", str(store), "--image-size", "8", "--shard-size", "4",
                 "--max-bad-frac", "0.1", "--no-progress"])  # fmt: skip
    assert code == 0 and read_manifest(str(root)).counts["train"] + read_manifest(str(root)).counts["test"] == 10
    assert {p.name: p.stat().st_mtime_ns for p in (root / "shards").iterdir()} == shards  # resumed, not redone
    assert main(["prep", str(src), "--store", str(store), "--image-size", "8", "--overwrite", "--no-progress"]) == 2


# ---------------------------------------------------------------- datasets commands


def test_datasets_ls_show_verify_and_tampering(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store")
    for argv in (["digits", "--limit", "60", "--shard-size", "20"],
                 ["--format", "unpaired", "digits", "mnist5k", "--limit", "20", "--name", "d2m"],
                 ["--format", "attributes", "mnist5k", "--limit", "20"]):  # fmt: skip
        assert main(["prep", *argv, "--store", store, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["datasets", "ls", "--store", store]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines()[1:-1]}
    assert sorted(lines) == ["d2m", "digits", "mnist5k-attributes"]
    assert lines["digits"][1:7] == ["images", "48", "0", "12", "32x32x1", "1"]
    assert lines["d2m"][1] == "unpaired" and lines["mnist5k-attributes"][1] == "attributes"

    grids = {}
    for name in ("digits", "d2m", "mnist5k-attributes"):
        out_png = tmp_path / f"{name}.png"
        assert main(["datasets", "show", name, "--store", store, "--n", "16", "--out", str(out_png)]) == 0
        grids[name] = Image.open(out_png).size
        text = capsys.readouterr().out
        assert f"sha256:{read_manifest(f'{store}/datasets/{name}').digest}" in text
    # 32 px tiles, 2 px gaps, shown at 2x: 8 per row; unpaired: a domain_a row of 8 over a domain_b row of 8
    assert grids == dict.fromkeys(("digits", "d2m", "mnist5k-attributes"), (2 * (8 * 34 + 2), 2 * (2 * 34 + 2)))
    assert any(a in text for a in ("red", "green", "blue"))  # attributes are named per sample

    assert main(["datasets", "verify", "digits", "--store", store]) == 0
    assert "OK" in capsys.readouterr().out
    shard = tmp_path / "store" / "datasets" / "digits" / "shards" / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF  # one flipped byte inside a member
    shard.write_bytes(bytes(data))
    assert main(["datasets", "verify", "digits", "--store", store]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH shards/train-000001.tar: sha256" in out and "train-000000" not in out


def test_datasets_ls_and_show_on_s3(s3_server, bucket_url: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert main(["prep", "digits", "--limit", "30", "--store", bucket_url, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["datasets", "ls", "--store", bucket_url, "--s3-endpoint", s3_server.endpoint]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["digits", "images", "24"]
    out_png = tmp_path / "grid.png"
    assert main(["datasets", "show", "digits", "--store", bucket_url, "--out", str(out_png)]) == 0
    assert Image.open(out_png).size[0] > 64
    assert main(["datasets", "verify", "digits", "--store", bucket_url]) == 0


# ---------------------------------------------------------------- reading


def test_reader_skips_and_counts_a_corrupt_sample(tmp_path: Path) -> None:
    result = prep_images(PrepConfig(source="digits", store=str(tmp_path), shard_size=50, holdout=0,
                                    inputs=SourceOptions(limit=100)), progress=False)  # fmt: skip
    shard = tmp_path / "datasets" / "digits" / "shards" / "train-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]
    with tarfile.open(shard, "w") as tar:
        for i, (member, payload) in enumerate(members):
            if i == 1:  # the first sample's image: PNG signature, then garbage
                payload = payload[:16] + b"\0" * (len(payload) - 16)
            tar.addfile(member, io.BytesIO(payload))
    # As if prep had written the bad member: the manifest agrees with the shard, so it passes verification
    # (a shard that differs from its manifest is refused whole: tests/test_shard_integrity.py).
    manifest = result.manifest
    data = shard.read_bytes()
    rehashed = [dataclasses.replace(s, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
                if s.path == "shards/train-000000.tar" else s for s in manifest.shards]  # fmt: skip
    agreeing = dataclasses.replace(manifest, shards=rehashed)
    open_store(result.dataset_url).put_bytes("manifest.json", agreeing.to_json().encode())
    with pytest.raises(SampleDecodeError, match=r"shard shards/train-000000.tar: sample digits-\S+ does not decode"):
        list(dataset_batches(result.dataset_url, batch_size=10, repeat=False))  # the default is to fail loudly
    stats = ReadStats()
    batches = list(dataset_batches(result.dataset_url, batch_size=10, repeat=False, drop_last=False, stats=stats))
    assert stats.skipped == 1 and stats.bad_shards == 0 and sum(len(b["image"]) for b in batches) == 99
    assert "digits-" in stats.last_error


def test_s3_read_survives_a_dropped_stream(s3_server, bucket_url: str) -> None:
    store = open_store(bucket_url)
    payload = RNG.integers(0, 256, 3 * 1024 * 1024, dtype=np.uint8).tobytes()
    store.put_bytes("big.bin", payload)
    reader = store.open_read("big.bin")
    head = reader.read(1024 * 1024)
    reader.raw._body.close()  # the connection goes away mid-object
    rest = reader.read()
    assert head + rest == payload and reader.raw.reopened == 1


def test_text_encoder_travels_as_its_spec() -> None:
    """Ray prep tasks get the caption encoder by spec and load the model once per worker process."""
    import pickle

    from data_prep.text_encoders import load_text_encoder

    encoder = load_text_encoder("minilm")
    data = pickle.dumps(encoder)
    assert len(data) < 1000 and pickle.loads(data) is encoder  # no weights inside; the process's cached model
