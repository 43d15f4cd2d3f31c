"""Prep on the layouts users have, with the problems real folders hold: odd-width A|B pairs, CycleGAN domains
with sub-folders (and a symlink loop), EXIF-rotated photos, COCO annotations of unlisted images, empty class
folders, truncated versus corrupt files and null Parquet image cells. Fixtures are generated here, tiny."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_prep import CaptionOptions, PrepConfig, SourceOptions, format_summary, load_split, load_split_arrays
from data_prep.kinds import prep_dataset
from data_prep.sources import RawSample, list_images
from data_prep.validate import QuarantineEntry, ValidImage, validate
from pipelines.cli.main import main
from pipelines.inference.translate import read_image

RNG = np.random.default_rng(15)


def _rgb(height: int, width: int) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _save(path: Path, pixels: np.ndarray, **params) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **params)
    return pixels


def _encoded(pixels: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


def _prep(tmp_path: Path, source: str, kind: str, **kw) -> object:
    kw.setdefault("max_bad_frac", None)  # the fixtures hold bad inputs on purpose
    return prep_dataset(PrepConfig(source=source, kind=kind, store=str(tmp_path / "store"), **kw), progress=False)


def _reasons(result) -> dict[str, str]:
    return {q.origin: q.reason for q in result.quarantined}


# ---------------------------------------------------------------- paired, unpaired


def test_odd_width_aligned_pair_is_a_size_mismatch(tmp_path: Path) -> None:
    root = tmp_path / "facades"
    for i in range(2):
        _save(root / "train" / f"{i}.png", _rgb(16, 32))
    _save(root / "train" / "odd.png", _rgb(16, 33))  # would split 16 | 17
    result = _prep(tmp_path, str(root), "paired", image_size=16, holdout=0)
    assert _reasons(result) == {"train/odd.png": "size_mismatch"}
    assert "33x16" in result.quarantined[0].detail and "even width" in result.quarantined[0].detail
    assert result.manifest.counts["train"] == 2 and result.manifest.quarantine == {"size_mismatch": 1}


def test_cyclegan_domain_takes_sub_folders_once_despite_links(tmp_path: Path, capsys) -> None:
    root = tmp_path / "horse2zebra"
    truth = {}
    for rel in ("0.png", "1.png", "grazing/2.png", "grazing/far/3.png", "running/4.png"):
        truth[f"trainA/{rel}"] = _save(root / "trainA" / rel, _rgb(8, 8))
    for rel in ("0.png", "1.png"):
        truth[f"trainB/{rel}"] = _save(root / "trainB" / rel, _rgb(8, 8))
    (root / "trainA" / "grazing" / "far" / "loop").symlink_to("../..", target_is_directory=True)  # -> trainA
    (root / "trainA" / "again").symlink_to("grazing", target_is_directory=True)  # a second way into grazing/
    assert [p.as_posix() for p in list_images(root / "trainA")] == [
        "0.png", "1.png", "grazing/2.png", "grazing/far/3.png", "running/4.png"]  # fmt: skip

    store = str(tmp_path / "store")
    argv = ["prep", "--format", "unpaired", str(root), "--store", store, "--image-size", "8", "--holdout", "0",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"{root / 'trainA'}: 3 of 5 images come from sub-folders (grazing/, running/)" in out
    assert "quarantined: none" in out and out.count("come from sub-folders") == 1  # trainB has none
    result = _prep(tmp_path, str(root), "unpaired", image_size=8, holdout=0)
    assert result.reused and result.manifest.extra["domains"]["domain_a"]["counts"]["train"] == 5
    assert result.manifest.class_names is None and len(result.notices) == 1
    arrays = load_split_arrays(result.dataset_url, split="train")
    keys = sorted(arrays["key_a"])
    assert keys == ["train/0_png", "train/1_png", "train/grazing/2_png", "train/grazing/far/3_png",
                    "train/running/4_png"]  # fmt: skip
    for key, image in zip(arrays["key_a"], arrays["a"], strict=True):
        rel = key.split("/", 1)[1].replace("_png", ".png")
        assert np.array_equal(image, truth[f"trainA/{rel}"].transpose(2, 0, 1))


# ---------------------------------------------------------------- EXIF orientation


@pytest.mark.parametrize(("orientation", "turns"), [(6, -1), (8, 1)])  # 6: turn clockwise, 8: counter-clockwise
def test_exif_orientation_is_applied_in_prep_and_translate(tmp_path: Path, orientation: int, turns: int) -> None:
    stored = np.zeros((16, 32, 3), np.uint8)  # 32 wide, 16 high as stored: a phone photo held sideways
    stored[:, :16] = (250, 30, 30)
    stored[:8, 16:] = (30, 250, 30)
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    photo = tmp_path / "phone" / "photo.jpg"
    _save(photo, stored, exif=exif.tobytes(), quality=95)
    with Image.open(photo) as image:  # the stored pixels as PIL decodes them, then turned by hand
        upright = np.rot90(np.asarray(image.convert("RGB")), turns)
    assert upright.shape == (32, 16, 3)

    valid = validate(RawSample(key="p", data=photo.read_bytes(), label=None, origin="p"), channels=3)
    assert isinstance(valid, ValidImage) and np.array_equal(valid.pixels, upright)
    assert valid.notes == ("exif_transposed",)

    result = _prep(tmp_path, str(photo.parent), "images", image_size=16, holdout=0)
    images, _ = load_split(result.dataset_url, split="train")
    assert np.array_equal(images[0], upright[8:24].transpose(2, 0, 1))  # the fitted square: the centre rows
    assert result.manifest.notes == {"exif_transposed": 1} and "exif_transposed 1" in format_summary(result)

    assert np.array_equal(read_image(photo, image_size=16, channels=3), upright[8:24].transpose(2, 0, 1))


# ---------------------------------------------------------------- attributes, captioned


def test_empty_class_folder_is_a_warning_in_the_summary(tmp_path: Path) -> None:
    root = tmp_path / "rafd"
    for cls in ("angry", "happy"):
        for i in range(2):
            _save(root / cls / f"{i}.png", _rgb(8, 8))
    (root / "neutral").mkdir()
    (root / "sad").mkdir()
    (root / "sad" / "notes.txt").write_text("no pictures here")
    for attempt in range(2):  # the warning is given again when the dataset is found unchanged
        result = _prep(tmp_path, str(root), "attributes", image_size=8, holdout=0)
        assert result.reused == bool(attempt) and result.manifest.extra["attributes"] == ["angry", "happy"]
        warnings = [line for line in format_summary(result).splitlines() if line.startswith("warning:")]
        assert warnings == [f"warning: {root}: 2 class folder(s) hold no images, so they are no class: neutral/, sad/"]


def _coco(tmp_path: Path) -> Path:
    for i in range(2):
        _save(tmp_path / "images" / f"{i}.png", _rgb(8, 8))
    coco = {
        "images": [{"id": i, "file_name": f"{i}.png"} for i in range(2)],
        "annotations": [{"image_id": i, "caption": f"picture {i}"} for i in (0, 1)]
        + [{"image_id": 99, "caption": "a picture nobody listed"}, {"image_id": 99, "caption": "again"}],
    }
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(coco))
    return path


def _parquet(tmp_path: Path) -> Path:
    records = [
        {"key": "s0", "jpg": {"bytes": _encoded(_rgb(8, 8), "PNG"), "path": None}, "caption": "first"},
        {"key": "s1", "jpg": None, "caption": "a null image cell"},
        {"key": "s2", "jpg": {"bytes": None, "path": None}, "caption": "a struct with nothing in it"},
    ]
    path = tmp_path / "part-00000.parquet"
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_coco, {"#99": "missing_file"}),
        (_parquet, {"part-00000.parquet[1]": "empty", "part-00000.parquet[2]": "empty"}),
    ],
)
def test_captioned_sources_name_every_left_out_row(tmp_path: Path, make, expected: dict[str, str]) -> None:
    source = make(tmp_path)
    options = SourceOptions(images=str(tmp_path / "images")) if source.suffix == ".json" else SourceOptions()
    result = _prep(tmp_path, str(source), "captioned", image_size=8, holdout=0, inputs=options,
                   captioned=CaptionOptions(embed_batch=4))  # fmt: skip
    assert _reasons(result) == expected
    assert sum(result.manifest.counts.values()) == (2 if source.suffix == ".json" else 1)
    if source.suffix == ".json":
        assert "2 annotation(s) for image id 99" in result.quarantined[0].detail


# ---------------------------------------------------------------- truncated versus corrupt


def _png_with_scrambled_pixels(pixels: np.ndarray) -> bytes:
    """A PNG of full length, every chunk (CRC included) well formed, whose IDAT holds no valid zlib stream."""
    data = bytearray(_encoded(pixels, "PNG"))
    at = data.find(b"IDAT")
    (length,) = struct.unpack(">I", data[at - 4 : at])
    data[at + 6 : at + 4 + length] = bytes((b * 7 + 13) % 256 for b in data[at + 6 : at + 4 + length])
    data[at + 4 + length : at + 8 + length] = struct.pack(">I", zlib.crc32(bytes(data[at : at + 4 + length])))
    return bytes(data)


def _jpeg_with_scrambled_scan(pixels: np.ndarray) -> bytes:
    """A JPEG of full length (end marker kept) whose entropy-coded scan is a run of frame markers: libjpeg
    stops with an error (plain noise in a scan is often only a warning, decoded as grey blocks)."""
    data = bytearray(_encoded(pixels, "JPEG"))
    start = data.find(b"\xff\xda") + 20
    size = len(data) - 2 - start
    data[start:-2] = b"\xff\xc0" * (size // 2) + b"\x00" * (size % 2)
    return bytes(data)


def test_truncated_and_corrupt_files_are_told_apart(tmp_path: Path) -> None:
    pixels = _rgb(24, 24)
    png, jpeg = _encoded(pixels, "PNG"), _encoded(pixels, "JPEG")
    bad_header = bytearray(png)
    bad_header[16:24] = b"\xff" * 8  # IHDR width and height: the file is whole, its header nonsense
    files = {
        "cut.png": png[: len(png) // 2],
        "cut_in_header.png": png[:30],
        "cut.jpg": jpeg[: len(jpeg) // 2],
        "scrambled.png": _png_with_scrambled_pixels(pixels),
        "scrambled.jpg": _jpeg_with_scrambled_scan(pixels),
        "bad_header.png": bytes(bad_header),
    }
    assert len(files["scrambled.png"]) == len(png) and len(files["scrambled.jpg"]) == len(jpeg)
    folder = tmp_path / "photos"
    _save(folder / "good.png", pixels)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    result = _prep(tmp_path, str(folder), "images", image_size=8, holdout=0)
    assert _reasons(result) == {
        "cut.png": "truncated", "cut_in_header.png": "truncated", "cut.jpg": "truncated",
        "scrambled.png": "corrupt", "scrambled.jpg": "corrupt", "bad_header.png": "corrupt",
    }  # fmt: skip
    assert result.manifest.quarantine == {"corrupt": 3, "truncated": 3} and result.manifest.counts["train"] == 1
    details = {q.origin: q.detail for q in result.quarantined}
    assert "broken data stream" in details["scrambled.png"] and "truncated" in details["cut.png"]
    assert "ends inside its header" in details["cut_in_header.png"]
    entry = validate(RawSample(key="x", data=files["scrambled.png"], label=None, origin="x"), channels=3)
    assert isinstance(entry, QuarantineEntry) and entry.reason == "corrupt"
