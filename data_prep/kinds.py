"""`prep_dataset`: pick the source(s), encoder and manifest extras of a PrepConfig's kind, then write_dataset.

How a source spec is read per kind (the `ganpipe prep --help` text says the same to users):
  images      mnist5k | digits | skimage-photos | a folder (class sub-folders become labels) | WebDataset shards
              (a .tar path, brace pattern or s3://...tar; sources_wds.py)
  paired      a folder with train/ val/ test/ of A|B images (aligned) or with A/ and B/ paired by name;
              with --derive: any images source (folder, skimage-photos, mnist5k, digits, WebDataset shards)
  unpaired    a folder with trainA/ trainB/ [testA/ testB/] (each folder's images at any depth, unlabelled), or
              two sources (source and source_b)
  attributes  mnist5k (coloured digits) | CelebA's list_attr_celeba.txt (or its folder) | a .csv/.tsv/
              .parquet attribute table | a folder of exclusive class folders (RaFD)
  captioned   mnist5k (templated captions) | a folder with images/ + text/ (CUB, Oxford-102) | a COCO
              captions .json | a .parquet with image and caption columns | WebDataset shards (image + caption)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from data_prep.encoders import CaptionedEncoder, Encoder, attributes_encoder, images_encoder, paired_encoder
from data_prep.prep import PrepConfig, PrepResult, prep_identity, prep_images, run_options, write_dataset
from data_prep.sources import BUILTINS, Source, SourceError, limited
from data_prep.sources_attrs import (
    CELEBA_ATTRS,
    CELEBA_CROP,
    CelebASource,
    ExclusiveFolderSource,
    Mnist5kAttrsSource,
    TableSource,
)
from data_prep.sources_captions import (
    CocoSource,
    Mnist5kCaptionsSource,
    ParquetCaptionSource,
    TextFolderSource,
)
from data_prep.sources_paired import ABFolderSource, aligned_source, domain_sources, is_ab_layout, is_aligned_layout
from data_prep.sources_wds import WebDatasetSource, check_field_options, is_webdataset_spec, open_images_source
from data_prep.storage import open_store
from data_prep.text_encoders import load_text_encoder
from data_prep.transforms import TransformConfig

DERIVE_HINT = "add --derive edges|colorize|superres|inpaint to make pairs from single photos"


def _path(spec: str) -> Path:
    path = Path(spec[len("file://") :] if spec.startswith("file://") else spec).expanduser().absolute()
    if not path.exists():
        raise SourceError(f"source {path} does not exist (built-ins: {', '.join(BUILTINS)})")
    return path


def _transform(cfg: PrepConfig, source: Source, channels: int) -> TransformConfig:
    return TransformConfig(
        image_size=cfg.image_size, channels=channels, image_format=cfg.image_format, margin=source.margin
    )


def _prep_dict(cfg: PrepConfig, spec: str, channels: int, margin: float, section: dict[str, Any]) -> dict[str, Any]:
    return prep_identity(cfg, spec=spec, channels=channels, margin=margin, section=section)

def _write(cfg: PrepConfig, *, progress: bool, name: str, channels: int, prep: dict[str, Any],
           extra: dict[str, Any], **parts: Any) -> PrepResult:  # fmt: skip
    return write_dataset(
        kind=cfg.kind,
        name=cfg.name or name,
        store=open_store(cfg.store, s3_endpoint=cfg.s3_endpoint),
        prep=prep,
        image_size=cfg.image_size,
        channels=channels,
        holdout=cfg.holdout,
        shard_size=cfg.shard_size,
        seed=cfg.seed,
        extra=extra,
        progress=progress,
        **run_options(cfg),
        **parts,
    )


def _paired(cfg: PrepConfig, *, progress: bool) -> PrepResult:
    opts = cfg.paired
    if opts.derive:
        found = open_images_source(cfg.source, inputs=cfg.inputs, seed=cfg.seed, s3_endpoint=cfg.s3_endpoint)
        source: Source = limited(found, cfg.inputs.limit)
        mode, name = opts.derive, f"{source.name}-{opts.derive}"
    elif cfg.source in BUILTINS:
        raise SourceError(f"built-in {cfg.source} has no pairs: {DERIVE_HINT}")
    else:
        root = _path(cfg.source)
        if is_ab_layout(root):
            source, mode = limited(ABFolderSource(str(root)), cfg.inputs.limit), "ab"
        elif is_aligned_layout(root):
            source, mode = limited(aligned_source(str(root)), cfg.inputs.limit), "aligned"
        else:
            layouts = "train/ val/ test/ (aligned A|B) nor A/ and B/ folders"
            raise SourceError(f"{root} has neither {layouts}: {DERIVE_HINT}")
        name = source.name
    channels = cfg.channels or source.default_channels
    if opts.derive == "colorize" and channels != 3:
        raise ValueError("--derive colorize needs colour output: add --channels 3 (and use a colour source)")
    encoder = paired_encoder(
        _transform(cfg, source, channels),
        mode=mode,
        direction=opts.direction,
        min_size=cfg.min_size,
        max_aspect=cfg.max_aspect,
        superres_factor=opts.superres_factor,
        canny_sigma=opts.canny_sigma,
        seed=cfg.seed,
    )
    prep = _prep_dict(cfg, source.spec, channels, source.margin, dataclasses.asdict(opts))
    extra = {"pairs": {"mode": mode, "direction": opts.direction, "mask": opts.derive == "inpaint"}}
    return _write(cfg, progress=progress, name=name, channels=channels, prep=prep, extra=extra,
                  source=source, encoder=encoder)  # fmt: skip


def _unpaired(cfg: PrepConfig, *, progress: bool) -> PrepResult:
    found = domain_sources(cfg.source, cfg.inputs.source_b, crops=cfg.inputs.crops, seed=cfg.seed)
    sources = {domain: limited(src, cfg.inputs.limit) for domain, src in found.items()}
    channels = cfg.channels or (1 if all(s.default_channels == 1 for s in sources.values()) else 3)
    domains: dict[str, tuple[Source, Encoder]] = {
        domain: (src, images_encoder(_transform(cfg, src, channels), min_size=cfg.min_size,
                                     max_aspect=cfg.max_aspect))
        for domain, src in sources.items()
    }
    a, b = sources["domain_a"], sources["domain_b"]
    name = f"{a.name}-{b.name}" if cfg.inputs.source_b else _path(cfg.source).name
    section = {"source_b": b.spec, "margins": {d: s.margin for d, s in sources.items()}}
    prep = _prep_dict(cfg, a.spec, channels, a.margin, section)
    return _write(cfg, progress=progress, name=name, channels=channels, prep=prep, extra={}, domains=domains)


def attribute_source(cfg: PrepConfig) -> Source:
    """The attributes source a spec names (see the module docstring), limited to cfg.inputs.limit inputs."""
    return limited(_attribute_source(cfg), cfg.inputs.limit)


def _attribute_source(cfg: PrepConfig) -> Source:
    attrs = cfg.attributes.attrs
    if cfg.source == "mnist5k":
        source: Source = Mnist5kAttrsSource(seed=cfg.seed)
    elif cfg.source in BUILTINS:
        raise SourceError(f"built-in {cfg.source} has no attributes: use mnist5k, a table, CelebA or class folders")
    else:
        path = _path(cfg.source)
        if path.name == CELEBA_ATTRS or any((path / d / CELEBA_ATTRS).is_file() for d in (".", "Anno")):
            source = CelebASource(str(path), images=cfg.inputs.images, attrs=attrs)
        elif path.is_file():
            source = TableSource(str(path), images=cfg.inputs.images, file_column=cfg.inputs.file_column, attrs=attrs)
        else:
            source = ExclusiveFolderSource(path)
            if attrs is not None:
                raise ValueError(f"--attrs does not apply to {path}: its class folders are the attributes")
    if attrs is not None and list(attrs) != source.attribute_names:  # type: ignore[attr-defined]
        raise ValueError(f"--attrs {','.join(attrs)} does not apply to {cfg.source}")
    return source


def _attributes(cfg: PrepConfig, *, progress: bool) -> PrepResult:
    source = attribute_source(cfg)
    names: list[str] = source.attribute_names  # type: ignore[attr-defined]
    crop = cfg.attributes.center_crop
    is_celeba = isinstance(getattr(source, "source", source), CelebASource)
    crop = (CELEBA_CROP if is_celeba else 0) if crop is None else crop
    channels = cfg.channels or source.default_channels
    encoder = attributes_encoder(_transform(cfg, source, channels), n_attrs=len(names), crop=crop or None,
                                 min_size=cfg.min_size, max_aspect=cfg.max_aspect)  # fmt: skip
    section = {"attrs": names, "center_crop": crop}
    prep = _prep_dict(cfg, source.spec, channels, source.margin, section)
    extra = {
        "attributes": names,
        "groups": [list(g) for g in source.groups],  # type: ignore[attr-defined]
        "exclusive": bool(source.exclusive),  # type: ignore[attr-defined]
    }
    name = f"{source.name}-attributes" if cfg.source in BUILTINS else source.name
    return _write(cfg, progress=progress, name=name, channels=channels, prep=prep, extra=extra,
                  source=source, encoder=encoder)  # fmt: skip


def caption_source(cfg: PrepConfig) -> Source:
    """The captioned source a spec names (see the module docstring), limited to cfg.inputs.limit inputs."""
    return limited(_caption_source(cfg), cfg.inputs.limit)


def _caption_source(cfg: PrepConfig) -> Source:
    check_field_options(cfg.source, inputs=cfg.inputs, captions=True)
    if is_webdataset_spec(cfg.source):
        return WebDatasetSource(cfg.source, inputs=cfg.inputs, captions=True, s3_endpoint=cfg.s3_endpoint)
    if cfg.source == "mnist5k":
        return Mnist5kCaptionsSource(seed=cfg.seed, count=cfg.captioned.captions_per_image)
    if cfg.source in BUILTINS:
        raise SourceError(f"built-in {cfg.source} has no captions: use mnist5k, a text/ layout, COCO JSON or Parquet")
    path = _path(cfg.source)
    if path.is_dir():
        return TextFolderSource(path)
    if path.suffix.lower() == ".json":
        return CocoSource(str(path), images=cfg.inputs.images)
    if path.suffix.lower() == ".parquet":
        return ParquetCaptionSource(str(path), images=cfg.inputs.images, image_column=cfg.inputs.image_column,
                                    caption_column=cfg.inputs.caption_column)  # fmt: skip
    raise SourceError(f"{path}: captioned sources are a folder with images/ + text/, a COCO .json or a .parquet")


def _captioned(cfg: PrepConfig, *, progress: bool) -> PrepResult:
    source = caption_source(cfg)
    text = load_text_encoder(cfg.captioned.text_encoder)
    channels = cfg.channels or source.default_channels
    encoder = CaptionedEncoder(_transform(cfg, source, channels), text_encoder=text,
                               batch_size=cfg.captioned.embed_batch, min_size=cfg.min_size,
                               max_aspect=cfg.max_aspect)  # fmt: skip
    section = {**dataclasses.asdict(cfg.captioned), "encoder": text.describe()}
    prep = _prep_dict(cfg, source.spec, channels, source.margin, section)
    name = f"{source.name}-captioned" if cfg.source in BUILTINS else source.name
    return _write(cfg, progress=progress, name=name, channels=channels, prep=prep,
                  extra={"text_encoder": text.describe()}, source=source, encoder=encoder)  # fmt: skip


def prep_dataset(cfg: PrepConfig, *, progress: bool = True) -> PrepResult:
    """Prepare a dataset of `cfg.kind` (docs/ARCHITECTURE.md, data contracts) from `cfg.source` into `cfg.store`."""
    builders = {"paired": _paired, "unpaired": _unpaired, "attributes": _attributes, "captioned": _captioned}
    if cfg.kind in ("unpaired", "attributes") and (is_webdataset_spec(cfg.source) or any(
        (cfg.inputs.image_field, cfg.inputs.label_field, cfg.inputs.caption_field)
    )):
        raise ValueError(f"WebDataset shards and the --*-field options are for --format images, captioned and "
                         f"paired --derive, not {cfg.kind}")  # fmt: skip
    if cfg.kind == "images":
        return prep_images(cfg, progress=progress)
    return builders[cfg.kind](cfg, progress=progress)
