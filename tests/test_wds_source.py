"""Bring your own WebDataset: `ganpipe prep` from existing shards (local, brace patterns, s3://), and the
shards ganpipe writes read by plain `webdataset` with the conventional names (data_prep/sources_wds.py,
data_prep/members.py); datasets in the old member layout (manifest schema 1) still read and train."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep import PrepConfig, SourceOptions, open_store, prep_dataset
from data_prep.batches import dataset_batches, load_split_arrays
from data_prep.reader import load_split, read_manifest
from data_prep.sources import BadSample
from data_prep.sources_wds import WebDatasetSource
from gan_models import dcgan, get_family
from pipelines.cli.main import main
from pipelines.engine.loop import fit
from pipelines.spec.config import LoopConfig

RNG = np.random.default_rng(0)


def _jpg(side: int = 12) -> bytes:
    out = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(out, format="JPEG")
    return out.getvalue()


def _tar(path: Path, samples: list[dict[str, bytes]]) -> Path:
    """A WebDataset shard: each sample's members `{__key__}.{ext}` in order, written as any team's tool would."""
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            for ext, payload in sample.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{sample['__key__'].decode()}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


def _labelled_shards(folder: Path) -> str:
    """Two shards of 6 samples (jpg + cls); shard 0 holds a corrupt jpg and a `.pyd` member that must never be
    unpickled, shard 1 a sample without its cls and one whose cls is no number. Returns the brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    bomb = b"cos\nsystem\n(S'touch pwned'\ntR."  # a pickle that would run a command
    for shard in range(2):
        samples = [{"__key__": f"s{shard}{i:02d}".encode(), "jpg": _jpg(), "cls": str(i % 2).encode()}
                   for i in range(6)]  # fmt: skip
        if shard == 0:
            samples[1]["jpg"] = b"\xff\xd8\xff not really a jpeg"
            samples[2]["pyd"] = bomb
        else:
            del samples[3]["cls"]
            samples[4]["cls"] = b"dog"
        _tar(folder / f"shards-{shard:06d}.tar", samples)
    return str(folder / "shards-{000000..000001}.tar")


def test_prep_from_local_shards_quarantines_and_reads_with_plain_webdataset(tmp_path: Path) -> None:
    spec = _labelled_shards(tmp_path / "wds")
    store = str(tmp_path / "store")
    cfg = PrepConfig(source=spec, store=store, image_size=8, holdout=2, shard_size=4, max_bad_frac=0.3,
                     inputs=SourceOptions(image_field="jpg", label_field="cls"))  # fmt: skip
    result = prep_dataset(cfg, progress=False)
    m = result.manifest
    assert m.name == "shards" and m.counts == {"train": 7, "test": 2} and m.class_names == ["0", "1"]
    assert m.quarantine == {"bad_label": 1, "missing_field": 1, "truncated": 1}  # a JPEG header, then nothing
    reasons = {q.origin.rsplit("#", 1)[1]: q.reason for q in result.quarantined}
    assert reasons == {"s001": "truncated", "s103": "missing_field", "s104": "bad_label"}
    assert m.schema_version == 2 and set(m.fields) == {"png", "cls"} and m.fields["png"].startswith("image: image/png")
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    assert prep_dataset(cfg, progress=False).reused  # same shards, same options

    import webdataset as wds

    shards = sorted(str(p) for p in (tmp_path / "store" / "datasets" / "shards" / "shards").glob("train-*.tar"))
    pairs = list(wds.WebDataset(shards, shardshuffle=False).decode("pil").to_tuple("png", "cls"))
    assert len(pairs) == 7 and all(img.size == (8, 8) and label in (0, 1) for img, label in pairs)
    images, labels = load_split(result.dataset_url, split="train")
    assert images.shape == (7, 3, 8, 8) and sorted(labels.tolist()) == sorted(label for _, label in pairs)

    other = PrepConfig(source=spec, store=store, image_size=8, holdout=2, shard_size=4, max_bad_frac=0.3,
                       inputs=SourceOptions(image_field="jpg", label_field="none"))  # fmt: skip
    unlabelled = prep_dataset(other, progress=False)  # another field choice is another dataset version
    assert not unlabelled.reused and unlabelled.manifest.class_names is None and "cls" not in unlabelled.manifest.fields


def test_cli_field_options_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _labelled_shards(tmp_path / "wds")
    store = str(tmp_path / "store")
    base = ["prep", "--store", store, "--no-progress", "--image-size", "8", "--holdout", "2"]
    assert main([*base, spec, "--image-field", "png"]) == 2  # every sample lacks png: all quarantined
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no usable training samples" in err[0] and "missing_field" in err[0]
    assert main([*base, str(tmp_path / "wds" / "shards-{000000..000002}.tar")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shards-000002.tar does not exist" in err[0]
    assert main([*base, "digits", "--label-field", "cls"]) == 2
    assert "--label-field applies to WebDataset shards" in capsys.readouterr().err
    assert main([*base, spec, "--caption-field", "txt"]) == 2
    assert "--caption-field applies to --format captioned" in capsys.readouterr().err
    assert main([*base, spec, "--max-bad-frac", "0.3", "--name", "mine"]) == 0  # auto fields: jpg, cls
    out = capsys.readouterr().out
    assert "dataset mine v1 (images, 8x8x3) written" in out and "2 WebDataset shard(s), 12 samples" in out
    assert main(["datasets", "show", "mine", "--store", store, "--out", str(tmp_path / "grid.png")]) == 0
    out = capsys.readouterr().out
    assert "member KEY.png: image: image/png" in out and "member KEY.cls: int label" in out


@pytest.mark.integration
def test_prep_from_s3_shards(s3_server, bucket_url: str, tmp_path: Path) -> None:
    local = Path(_labelled_shards(tmp_path / "wds")).parent
    source = open_store(bucket_url)
    for shard in sorted(local.glob("*.tar")):
        source.put_file(f"in/{shard.name}", shard)
    cfg = PrepConfig(source=f"{bucket_url}/in/shards-{{000000..000001}}.tar", store=f"{bucket_url}/out",
                     image_size=8, holdout=2, max_bad_frac=0.3)  # fmt: skip
    result = prep_dataset(cfg, progress=False)
    assert result.manifest.counts == {"train": 7, "test": 2} and sum(result.manifest.quarantine.values()) == 3
    assert read_manifest(result.dataset_url).digest == result.manifest.digest
    assert next(dataset_batches(result.dataset_url, batch_size=4))["image"].shape == (4, 3, 8, 8)
    assert prep_dataset(cfg, progress=False).reused  # the s3:// shards fingerprint by content
    source = WebDatasetSource(cfg.source, s3_endpoint=s3_server.endpoint)
    entry = source.entries()[0]
    copy = pickle.loads(pickle.dumps(source))  # as a Ray prep task gets it: it copies the shard itself
    assert copy.read(entry).data == source.read(entry).data and copy._spool != source._spool
    missing = PrepConfig(source=f"{bucket_url}/in/shards-{{000000..000003}}.tar", store=str(tmp_path / "s"))
    with pytest.raises(Exception, match=r"shards-000002.tar and 1 more of 4 does not exist"):
        prep_dataset(missing, progress=False)


def test_captioned_from_jpg_and_txt(tmp_path: Path) -> None:
    folder = tmp_path / "wds"
    folder.mkdir()
    samples = [{"__key__": f"c{i}".encode(), "jpg": _jpg(), "txt": f"a bird number {i}\nanother caption {i}".encode()}
               for i in range(5)]  # fmt: skip
    del samples[2]["txt"]
    _tar(folder / "caps.tar", samples)
    cfg = PrepConfig(source=str(folder / "caps.tar"), kind="captioned", store=str(tmp_path / "store"), image_size=8,
                     holdout=0, max_bad_frac=None, inputs=SourceOptions(caption_field="txt"))  # fmt: skip
    result = prep_dataset(cfg, progress=False)
    m = result.manifest
    assert m.counts == {"train": 4, "test": 0} and m.quarantine == {"missing_field": 1} and m.class_names is None
    assert set(m.fields) == {"png", "captions.json", "emb.npy"}
    arrays = load_split_arrays(result.dataset_url, split="train")
    assert sorted(arrays["key"]) == ["c0", "c1", "c3", "c4"]
    i = list(arrays["key"]).index("c3")
    assert list(arrays["captions"][i]) == ["a bird number 3", "another caption 3"]

    import webdataset as wds

    shard = next((tmp_path / "store" / "datasets" / "caps" / "shards").glob("*.tar"))
    for png, captions, emb in wds.WebDataset(str(shard), shardshuffle=False).decode("pil").to_tuple(
        "png", "captions.json", "emb.npy"
    ):
        assert png.size == (8, 8) and len(captions) == 2 and emb.shape == (2, 384)


def _old_layout(dataset: Path) -> None:
    """Rewrite a prepared dataset as ganpipe wrote it before schema 2: `KEY.image.png`, no `fields`."""
    manifest = json.loads((dataset / "manifest.json").read_text())
    for shard in manifest["shards"]:
        path = dataset / shard["path"]
        with tarfile.open(path) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for member, data in members:
                key, ext = member.name.split(".", 1)
                member.name = f"{key}.image.{ext}" if ext in ("png", "jpg") else member.name
                tar.addfile(member, io.BytesIO(data))
        shard["bytes"], shard["sha256"] = path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()
    del manifest["fields"]
    manifest["schema_version"] = 1
    (dataset / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def test_old_layout_dataset_reads_and_trains(tmp_path: Path) -> None:
    store = tmp_path / "store"
    cfg = PrepConfig(source="digits", store=str(store), image_size=32, holdout=16, shard_size=24,
                     inputs=SourceOptions(limit=64))  # fmt: skip
    new = prep_dataset(cfg, progress=False)
    images_new, labels_new = load_split(new.dataset_url, split="test")
    dataset = store / "datasets" / "digits"
    _old_layout(dataset)
    with tarfile.open(next((dataset / "shards").glob("*.tar"))) as tar:
        assert any(n.endswith(".image.png") for n in tar.getnames())
    old = read_manifest(new.dataset_url)
    assert old.schema_version == 1 and old.fields == {} and "fields" not in old.to_dict()
    images_old, labels_old = load_split(new.dataset_url, split="test")
    assert np.array_equal(images_old, images_new) and np.array_equal(labels_old, labels_new)
    assert next(dataset_batches(new.dataset_url, batch_size=8))["image"].shape == (8, 1, 32, 32)

    fam = get_family("dcgan")  # the plain loop trains on it: the batches the old names give are real images
    tiny = dcgan.Config(image_size=32, channels=1, nz=8, ngf=4, ndf=4)
    nets = fam.build(tiny)
    batches = dataset_batches(new.dataset_url, batch_size=8)
    last = fit(family=fam, model_cfg=tiny, nets=nets, opts=fam.build_optimizers(tiny, nets), batches=batches,
               loop=LoopConfig(steps=3, log_every=1, checkpoint_every=3, sample_every=0), report=lambda _: None,
               make_checkpoint=lambda step: {"step": step})  # fmt: skip
    assert last == 3


def test_json_captions_and_damaged_shards(tmp_path: Path) -> None:
    captions = [b'"one caption"', b'["first", "second"]', b'{"caption": "laion style", "url": "x"}', b'{"n": 3}', b"{"]
    samples = [{"__key__": f"j{i}".encode(), "jpg": _jpg(), "json": text} for i, text in enumerate(captions)]
    _tar(tmp_path / "j-0.tar", samples)
    (tmp_path / "j-1.tar").write_bytes(b"this is no tar at all" * 40)
    source = WebDatasetSource(str(tmp_path / "j-{0..1}.tar"), inputs=SourceOptions(caption_field="json"),
                              captions=True)  # fmt: skip
    entries = source.entries()
    assert [e.key for e in entries] == ["j0", "j1", "j2", "j3", "j4", "bad_shard"]
    assert [source.read(e).captions for e in entries[:3]] == [("one caption",), ("first", "second"), ("laion style",)]
    for entry in entries[3:]:
        with pytest.raises(BadSample) as bad:
            source.read(entry)
        assert bad.value.reason == ("bad_shard" if entry.key == "bad_shard" else "bad_caption")
