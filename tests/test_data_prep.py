"""Prep end to end: built-ins and folders to shards + manifest, idempotence, quarantine, and reading back."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from data_prep import (
    DatasetNotFound,
    Manifest,
    PrepConfig,
    SourceError,
    format_summary,
    get_source,
    image_batches,
    iter_samples,
    load_split,
    open_store,
    prep_images,
    read_manifest,
)
from data_prep.manifest import read_quarantine
from data_prep.reader import decode_sample
from data_prep.shards import split_entries
from data_prep.sources import RawSample, SourceEntry
from data_prep.validate import ValidImage, validate


def _index(dataset_url: str) -> list[dict]:
    return pq.read_table(io.BytesIO(open_store(dataset_url).get_bytes("index.parquet"))).to_pylist()


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """digits prepared once into a local store (2 train shards of <= 1000, 1 test shard)."""
    store = tmp_path_factory.mktemp("digits") / "store"
    result = prep_images(PrepConfig(source="digits", store=str(store)), progress=False)
    return store, result.dataset_url


def test_digits_dataset_is_consistent(digits: tuple[Path, str]) -> None:
    _, url = digits
    manifest = read_manifest(url)
    assert (manifest.name, manifest.kind, manifest.version) == ("digits", "images", 1)
    assert (manifest.image_size, manifest.channels) == (32, 1)
    assert manifest.counts == {"train": 1438, "test": 359} and sum(manifest.counts.values()) == 1797
    assert manifest.class_names == [str(i) for i in range(10)]
    assert manifest.quarantine == {} and manifest.notes == {}
    store = open_store(url)
    for split, count in manifest.counts.items():
        assert sum(s.samples for s in manifest.split_shards(split)) == count
    for shard in manifest.shards:
        data = store.get_bytes(shard.path)
        assert shard.path.startswith(f"shards/{shard.split}-") and len(data) == shard.bytes
        assert hashlib.sha256(data).hexdigest() == shard.sha256
    rows = _index(url)
    assert len(rows) == 1797 and len({r["key"] for r in rows}) == 1797
    assert {r["shard"] for r in rows} == {s.path for s in manifest.shards}
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert Manifest.from_json(store.get_bytes("manifest.json")).digest == manifest.digest
    assert read_quarantine(store) == [] and store.exists("quarantine.parquet")


def test_rerun_is_reused_and_changes_nothing(digits: tuple[Path, str]) -> None:
    root, url = digits
    before = _snapshot(root)
    result = prep_images(PrepConfig(source="digits", store=str(root)), progress=False)
    assert result.reused and result.dataset_url == url
    assert _snapshot(root) == before
    summary = format_summary(result)
    assert "unchanged" in summary and result.manifest.digest in summary and url in summary


def test_changed_config_writes_version_2(tmp_path: Path) -> None:
    cfg = PrepConfig(source="digits", store=str(tmp_path), image_size=16, shard_size=500)
    first = prep_images(cfg, progress=False)
    assert [s.path for s in first.manifest.split_shards("train")] == [
        f"shards/train-{i:06d}.tar" for i in range(3)
    ]
    second = prep_images(PrepConfig(source="digits", store=str(tmp_path), image_size=16), progress=False)
    assert not second.reused and second.manifest.version == 2
    assert second.manifest.digest != first.manifest.digest
    listed = sorted(s.path for s in second.manifest.shards)
    assert open_store(second.dataset_url).list("shards/") == listed  # train-000001/2 of v1 are gone
    images, labels = load_split(second.dataset_url, split="test")
    assert images.shape == (359, 1, 16, 16) and labels.shape == (359,)


def test_mnist5k_holds_out_1000_balanced_digits(tmp_path: Path) -> None:
    result = prep_images(PrepConfig(source="mnist5k", store=str(tmp_path)), progress=False)
    assert result.dataset_url.endswith("/datasets/mnist5k")
    assert result.manifest.counts == {"train": 4000, "test": 1000}
    images, labels = load_split(result.dataset_url, split="test")
    assert images.shape == (1000, 1, 32, 32) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [100] * 10
    border = np.concatenate(
        [images[:, :, :2].ravel(), images[:, :, -2:].ravel(), images[:, :, :, :2].ravel()]
    )
    assert border.max() == 0 and images.max() == 255  # 28x28 digits padded 2 px each side


def _png(path: Path, image: Image.Image) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path.read_bytes()


def test_folder_with_bad_files_quarantines_exactly_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    src = tmp_path / "pets"
    good = {}
    for cls in ("cats", "dogs"):
        for i in range(3):
            good[f"{cls}/{i}.png"] = Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
    good["dogs/2.png"] = good["dogs/2.png"].convert("P")  # palette -> RGB is a note, not a quarantine
    good["cats/2.png"] = good["cats/2.png"].convert("L")
    for rel, image in good.items():
        _png(src / rel, image)
    valid_png = _png(tmp_path / "ok.png", Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)))
    cut = valid_png.find(b"IDAT") + 14
    (src / "cats/corrupt.png").write_bytes(valid_png[:cut] + b"garbage" * 20)  # header fine, data not
    (src / "dogs/empty.png").write_bytes(b"")
    (src / "cats/notes.jpg").write_text("this is not a picture\n")
    _png(src / "dogs/tiny.png", Image.new("RGB", (1, 1)))
    (src / "README.txt").write_text("ignored: not an image extension")

    result = prep_images(
        PrepConfig(source=str(src), store=str(tmp_path / "store"), image_size=16, max_bad_frac=None), progress=False
    )
    manifest = result.manifest
    assert manifest.name == "pets" and manifest.channels == 3 and manifest.class_names == ["cats", "dogs"]
    assert sum(manifest.counts.values()) == 6
    rows = _index(result.dataset_url)
    assert sorted(r["key"] for r in rows) == [f"{c}/{i}_png" for c in ("cats", "dogs") for i in range(3)]
    assert all(r["label"] == (0 if r["key"].startswith("cats/") else 1) for r in rows)
    expected = {
        "cats/corrupt.png": "truncated",
        "cats/notes.jpg": "not_image",
        "dogs/empty.png": "empty",
        "dogs/tiny.png": "too_small",
    }
    listed = read_quarantine(open_store(result.dataset_url))
    assert {e.origin: e.reason for e in listed} == expected
    assert all(e.detail and e.key for e in listed)
    assert {q.origin: q.reason for q in result.quarantined} == expected
    assert manifest.quarantine == {"empty": 1, "not_image": 1, "too_small": 1, "truncated": 1}
    assert manifest.notes == {"mode_converted": 2} == result.notes
    images = np.concatenate([load_split(result.dataset_url, split=s)[0] for s in ("train", "test")])
    assert images.shape == (6, 3, 16, 16)


def test_missing_source_folder_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "folder"
    with pytest.raises(SourceError, match=str(missing)):
        get_source(str(missing))
    with pytest.raises(SourceError, match=str(missing)):
        prep_images(PrepConfig(source=str(missing), store=str(tmp_path / "store")), progress=False)
    with pytest.raises(SourceError, match="unknown source 'mnist6k'"):
        get_source("mnist6k")


def test_missing_dataset_says_run_prep(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound, match=r"no dataset at file://.*/nothing.*ganpipe prep"):
        read_manifest(str(tmp_path / "nothing"))


def test_holdout_is_stratified_exact_and_seeded() -> None:
    entries = [SourceEntry(key=f"k{i}", label=i % 3 if i < 90 else 0, origin=str(i)) for i in range(100)]
    splits = split_entries(entries, holdout=0.2, seed=3)
    test_labels = np.bincount([e.label for e in splits["test"]])
    assert len(splits["test"]) == 20 and len(splits["train"]) == 80
    assert test_labels.tolist() == [8, 6, 6]  # 40/30/30 of 100 -> 8/6/6 of 20
    assert split_entries(entries, holdout=0.2, seed=3) == splits
    assert split_entries(entries, holdout=0.2, seed=4) != splits
    assert len(split_entries(entries, holdout=7, seed=0)["test"]) == 7


def test_ranks_partition_a_split_when_shards_are_fewer_than_ranks(digits: tuple[Path, str]) -> None:
    _, url = digits  # 2 train shards, 3 ranks -> every rank reads both and keeps i % 3 == rank
    train_keys = {r["key"] for r in _index(url) if r["split"] == "train"}
    per_rank = [[s["key"] for s in iter_samples(url, rank=r, world_size=3, epoch=1)] for r in range(3)]
    assert sum(len(k) for k in per_rank) == len(train_keys) == len(set().union(*per_rank))
    assert set().union(*per_rank) == train_keys


def test_image_batches_shapes_range_and_epochs(digits: tuple[Path, str]) -> None:
    _, url = digits
    stream = image_batches(url, batch_size=256, seed=1, shuffle_buffer=200)
    batches = [next(stream) for _ in range(7)]  # 1438 // 256 = 5 per epoch, so this crosses into epoch 1
    for batch in batches:
        assert batch["image"].shape == (256, 1, 32, 32) and batch["image"].dtype == torch.float32
        assert batch["label"].dtype == torch.int64 and 0 <= batch["label"].min() <= batch["label"].max() <= 9
        assert -1.0 <= batch["image"].min() < 0 < batch["image"].max() <= 1.0
    again = next(image_batches(url, batch_size=256, seed=1, shuffle_buffer=200))
    assert torch.equal(again["image"], batches[0]["image"])  # seeded
    assert not torch.equal(batches[5]["label"], batches[0]["label"])  # epoch 1 is reshuffled
    finite = list(image_batches(url, batch_size=500, repeat=False, drop_last=False))
    assert [len(b["label"]) for b in finite] == [500, 500, 438]


def test_decoder_refuses_pickles() -> None:
    with pytest.raises(ValueError, match="refusing to decode k.pth"):
        decode_sample({"__key__": "k", "pth": b"\x80\x04..."})
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        decode_sample({"__key__": "k", "emb.npy": buffer.getvalue()})
    ok = decode_sample({"__key__": "k", "cls": b"7", "meta.json": b'{"a": 1}', "v.npy": _npy(np.arange(3))})
    assert ok["cls"] == 7 and ok["meta.json"] == {"a": 1} and ok["v.npy"].tolist() == [0, 1, 2]


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.integration
def test_prep_to_s3_and_read_back_on_two_ranks(s3_server, bucket_url: str) -> None:
    result = prep_images(PrepConfig(source="digits", store=bucket_url, shard_size=500), progress=False)
    assert result.dataset_url == f"{bucket_url}/datasets/digits"
    assert len(result.manifest.split_shards("train")) == 3  # >= world_size: ranks take whole shards
    rows = _index(result.dataset_url)
    train_keys = {r["key"] for r in rows if r["split"] == "train"}
    ranks = [{s["key"] for s in iter_samples(result.dataset_url, rank=r, world_size=2)} for r in range(2)]
    assert not ranks[0] & ranks[1] and ranks[0] | ranks[1] == train_keys

    batch = next(image_batches(result.dataset_url, batch_size=64, rank=1, world_size=2))
    assert batch["image"].shape == (64, 1, 32, 32) and batch["label"].shape == (64,)
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0

    images, labels = load_split(result.dataset_url, split="test")
    assert images.shape == (359, 1, 32, 32) and images.dtype == np.uint8
    assert labels.tolist() == [r["label"] for r in rows if r["split"] == "test"]
    assert prep_images(PrepConfig(source="digits", store=bucket_url, shard_size=500), progress=False).reused


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("image", "fmt", "first_rgb"),
    [
        (Image.fromarray(np.full((9, 9), 65535, dtype=np.uint16)), "PNG", [255, 255, 255]),  # 16-bit
        (Image.new("RGBA", (9, 9), (255, 0, 0, 128)), "PNG", [128, 0, 0]),  # alpha over black
        (Image.new("CMYK", (9, 9), (0, 255, 255, 0)), "JPEG", [255, 0, 0]),
        (Image.new("P", (9, 9), 3), "GIF", None),
    ],
)
def test_mode_conversion_is_a_note(image: Image.Image, fmt: str, first_rgb: list[int] | None) -> None:
    raw = RawSample(key="k", data=_encoded(image, fmt), label=None, origin="x")
    for channels in (1, 3):
        valid = validate(raw, channels=channels)
        assert isinstance(valid, ValidImage) and valid.notes == ("mode_converted",)
        assert valid.pixels.dtype == np.uint8 and valid.pixels.shape == (
            (9, 9) if channels == 1 else (9, 9, 3)
        )
        if channels == 3 and first_rgb is not None:
            assert valid.pixels[0, 0].tolist() == first_rgb


def test_jpeg_option(tmp_path: Path) -> None:
    cfg = PrepConfig(source="digits", store=str(tmp_path), image_format="jpeg", channels=3, holdout=100)
    result = prep_images(cfg, progress=False)
    assert result.manifest.counts == {"train": 1697, "test": 100} and result.manifest.channels == 3
    store = open_store(result.dataset_url)
    with tarfile.open(fileobj=store.open_read(result.manifest.shards[0].path), mode="r|") as tar:
        first, second = tar.next().name, tar.next().name
    assert first.endswith(".cls") and second == first.replace(".cls", ".jpg")  # KEY.cls, KEY.jpg (members.py)
    assert result.manifest.fields["jpg"].startswith("image: image/jpeg") and "cls" in result.manifest.fields
    images, labels = load_split(result.dataset_url, split="test")
    assert images.shape == (100, 3, 32, 32) and (labels >= 0).all()
