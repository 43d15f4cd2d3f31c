"""Sample encoders: RawSample -> the files of one WebDataset sample, or a QuarantineEntry.

One encoder per dataset kind (docs/ARCHITECTURE.md, data contracts); a new kind adds a source and an
encoder here, and prep, shards, manifest and index handle it unchanged. An encoder is a function of one sample,
or an object with `batch_size` and `encode_batch` when work is cheaper in batches (caption embedding).
Quarantine reasons added here: "missing_pair", "size_mismatch", "bad_attrs", "no_captions".
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from data_prep import derive
from data_prep.members import image_member
from data_prep.options import DERIVATIONS
from data_prep.sources import RawSample
from data_prep.transforms import TransformConfig, encode_image, fit_image, transform
from data_prep.validate import QuarantineEntry, ValidImage, validate


@dataclass(frozen=True, kw_only=True)
class EncodedSample:
    """files: tar member suffix -> payload, e.g. {"png": ..., "cls": b"3"} (members.py); sha256 of the main payload;
    index_extra: kind-specific index.parquet columns."""

    key: str
    origin: str
    files: dict[str, bytes]
    label: int | None
    sha256: str
    notes: tuple[str, ...] = ()
    index_extra: dict[str, Any] = field(default_factory=dict)


SampleEncoder = Callable[[RawSample], "EncodedSample | QuarantineEntry"]


class BatchEncoder(Protocol):
    """An encoder that handles `batch_size` samples per call, returning one result per sample in order."""

    batch_size: int

    def encode_batch(self, raws: Sequence[RawSample]) -> list[EncodedSample | QuarantineEntry]: ...


Encoder = SampleEncoder | BatchEncoder


def encode_many(encoder: Encoder, raws: Sequence[RawSample]) -> list[EncodedSample | QuarantineEntry]:
    """Encode `raws` with either kind of encoder."""
    if hasattr(encoder, "encode_batch"):
        return encoder.encode_batch(raws) if raws else []
    return [encoder(raw) for raw in raws]  # type: ignore[operator]


def _quarantine(raw: RawSample, reason: str, detail: str) -> QuarantineEntry:
    return QuarantineEntry(key=raw.key, origin=raw.origin, reason=reason, detail=detail)


def _fitted(pixels: np.ndarray, cfg: TransformConfig) -> np.ndarray:
    return fit_image(pixels, image_size=cfg.image_size, margin=cfg.margin)


def _encode(pixels: np.ndarray, cfg: TransformConfig) -> bytes:
    return encode_image(pixels, image_format=cfg.image_format, jpeg_quality=cfg.jpeg_quality)


def _with_label(files: dict[str, bytes], label: int | None) -> dict[str, bytes]:
    if label is not None:
        files["cls"] = str(int(label)).encode("ascii")
    return files


def _sha256(*payloads: bytes) -> str:
    digest = hashlib.sha256()
    for payload in payloads:
        digest.update(hashlib.sha256(payload).digest())
    return digest.hexdigest()


def images_encoder(cfg: TransformConfig, *, min_size: int = 8, max_aspect: float | None = None) -> SampleEncoder:
    """The `images` kind: `png` (or `jpg`) plus `cls` (ascii int) when labelled."""

    def encode(raw: RawSample) -> EncodedSample | QuarantineEntry:
        valid = validate(raw, channels=cfg.channels, min_size=min_size, max_aspect=max_aspect)
        if isinstance(valid, QuarantineEntry):
            return valid
        try:
            payload = transform(valid.pixels, cfg)
        except Exception as exn:  # one odd image must not stop the run
            detail = f"transform failed: {type(exn).__name__}: {exn}"
            return QuarantineEntry(key=raw.key, origin=raw.origin, reason="unreadable", detail=detail)
        files = {image_member(cfg.extension): payload}
        if raw.label is not None:
            files["cls"] = str(int(raw.label)).encode("ascii")
        digest = hashlib.sha256(payload).hexdigest()
        return EncodedSample(
            key=raw.key, origin=raw.origin, files=files, label=raw.label, sha256=digest, notes=valid.notes
        )

    return encode


def paired_encoder(
    cfg: TransformConfig,
    *,
    mode: str,
    direction: str = "AtoB",
    min_size: int = 8,
    max_aspect: float | None = None,
    superres_factor: int = 4,
    canny_sigma: float = 1.0,
    seed: int = 0,
) -> SampleEncoder:
    """The `paired` kind: `a.{ext}` (input), `b.{ext}` (target), `mask.png` for "inpaint", `cls` if labelled.

    mode: "aligned" (raw.data is A|B side by side, split at width/2 as pix2pix does; an odd width is a
    "size_mismatch"), "ab" (raw.data is A,
    raw.pair is B; their sizes must match), or a derivation in options.DERIVATIONS applied to the photo
    in raw.data (which becomes B). direction "BtoA" swaps a and b.
    """

    if mode not in ("aligned", "ab", *DERIVATIONS):
        raise ValueError(f"mode must be aligned, ab or one of {DERIVATIONS}, got {mode!r}")

    def encode(raw: RawSample) -> EncodedSample | QuarantineEntry:
        valid = validate(raw, channels=cfg.channels, min_size=min_size, max_aspect=max_aspect)
        if isinstance(valid, QuarantineEntry):
            return valid
        notes, mask = valid.notes, None
        if mode == "aligned":
            height, width = valid.pixels.shape[:2]
            half = width // 2
            if width % 2:  # halves of different widths: A and B cannot be aligned pixel for pixel
                detail = f"{width}x{height}: an A|B image needs an even width (two halves of equal size)"
                return _quarantine(raw, "size_mismatch", detail)
            if half < min_size:
                return _quarantine(raw, "too_small", f"{width}x{height}: each half is below min_size {min_size}")
            a, b = _fitted(valid.pixels[:, :half], cfg), _fitted(valid.pixels[:, half:], cfg)
        elif mode == "ab":
            if raw.pair is None:
                return _quarantine(raw, "missing_pair", "no B image")
            other = validate(RawSample(key=raw.key, data=raw.pair, label=None, origin=raw.origin),
                             channels=cfg.channels, min_size=min_size, max_aspect=max_aspect)  # fmt: skip
            if isinstance(other, QuarantineEntry):
                return _quarantine(raw, other.reason, f"B image: {other.detail}")
            if other.pixels.shape[:2] != valid.pixels.shape[:2]:
                size_a, size_b = valid.pixels.shape[1::-1], other.pixels.shape[1::-1]
                detail = f"A is {size_a[0]}x{size_a[1]}, B is {size_b[0]}x{size_b[1]}"
                return _quarantine(raw, "size_mismatch", detail)
            a, b = _fitted(valid.pixels, cfg), _fitted(other.pixels, cfg)
            notes = tuple(sorted(set(notes + other.notes)))
        else:
            b = _fitted(valid.pixels, cfg)
            try:
                if mode == "edges":
                    a = derive.edges(b, sigma=canny_sigma)
                elif mode == "colorize":
                    a = derive.colorize(b)
                elif mode == "superres":
                    a = derive.superres(b, factor=superres_factor)
                else:  # "inpaint"
                    a, mask = derive.inpaint(b, rng=derive.sample_rng(seed=seed, key=raw.key))
            except Exception as exn:  # one odd image must not stop the run (kinds.py checks the options first)
                return _quarantine(raw, "unreadable", f"{mode} failed: {type(exn).__name__}: {exn}")
        if direction == "BtoA":
            a, b = b, a
        payload_a, payload_b = _encode(a, cfg), _encode(b, cfg)
        files = {image_member(cfg.extension, "a"): payload_a, image_member(cfg.extension, "b"): payload_b}
        if mask is not None:
            files["mask.png"] = encode_image(mask, image_format="png")  # a mask must stay lossless
        return EncodedSample(
            key=raw.key,
            origin=raw.origin,
            files=_with_label(files, raw.label),
            label=raw.label,
            sha256=_sha256(payload_a, payload_b),
            notes=notes,
        )

    return encode


def center_crop(pixels: np.ndarray, side: int) -> np.ndarray:
    """The centred `side` x `side` square (the whole shorter side when the image is smaller), like
    torchvision's CenterCrop on CelebA's 178x218 aligned faces in the official StarGAN."""
    height, width = pixels.shape[:2]
    side_h, side_w = min(side, height), min(side, width)
    top, left = (height - side_h) // 2, (width - side_w) // 2
    return pixels[top : top + side_h, left : left + side_w]


def attributes_encoder(
    cfg: TransformConfig, *, n_attrs: int, crop: int | None = None, min_size: int = 8,
    max_aspect: float | None = None,
) -> SampleEncoder:
    """The `attributes` kind: `png` (or `jpg`), `attrs.json` (0/1 list over the manifest's attribute names),
    `cls` when labelled; `crop` cuts a centred square before fitting."""

    def encode(raw: RawSample) -> EncodedSample | QuarantineEntry:
        attrs = raw.attrs
        if attrs is None or len(attrs) != n_attrs or any(v not in (0, 1) for v in attrs):
            return _quarantine(raw, "bad_attrs", f"expected {n_attrs} values of 0/1, got {attrs}")
        valid = validate(raw, channels=cfg.channels, min_size=min_size, max_aspect=max_aspect)
        if isinstance(valid, QuarantineEntry):
            return valid
        pixels = center_crop(valid.pixels, crop) if crop else valid.pixels
        payload = _encode(_fitted(pixels, cfg), cfg)
        attrs_json = json.dumps([int(v) for v in attrs]).encode()
        files = {image_member(cfg.extension): payload, "attrs.json": attrs_json}
        return EncodedSample(
            key=raw.key,
            origin=raw.origin,
            files=_with_label(files, raw.label),
            label=raw.label,
            sha256=_sha256(payload, attrs_json),
            notes=valid.notes,
            index_extra={"attrs": [int(v) for v in attrs]},
        )

    return encode


class CaptionedEncoder:
    """The `captioned` kind: `png` (or `jpg`), `captions.json` (list of str), `emb.npy` (float16, one row per
    caption), `cls` when labelled. Captions of `batch_size` samples are embedded in one encoder call."""

    def __init__(
        self, cfg: TransformConfig, *, text_encoder: Any, batch_size: int = 64, min_size: int = 8,
        max_aspect: float | None = None,
    ) -> None:
        self.cfg, self.text_encoder, self.batch_size, self.min_size = cfg, text_encoder, batch_size, min_size
        self.max_aspect = max_aspect

    def encode_batch(self, raws: Sequence[RawSample]) -> list[EncodedSample | QuarantineEntry]:
        results: list[EncodedSample | QuarantineEntry | None] = [None] * len(raws)
        ready: list[tuple[int, ValidImage, list[str]]] = []
        for i, raw in enumerate(raws):
            captions = [" ".join(c.split()) for c in (raw.captions or ()) if isinstance(c, str)]
            captions = [c for c in captions if c]
            if not captions:
                got = repr(list(raw.captions or ()))[:120]
                results[i] = _quarantine(raw, "no_captions", f"no non-empty caption (got {got})")
                continue
            valid = validate(raw, channels=self.cfg.channels, min_size=self.min_size, max_aspect=self.max_aspect)
            if isinstance(valid, QuarantineEntry):
                results[i] = valid
                continue
            ready.append((i, valid, captions))
        texts = [c for _, _, captions in ready for c in captions]
        embeddings = self.text_encoder.encode(texts) if texts else np.zeros((0, 0), np.float32)
        row = 0
        for i, valid, captions in ready:
            raw = raws[i]
            emb = np.ascontiguousarray(embeddings[row : row + len(captions)], dtype=np.float16)
            row += len(captions)
            payload = _encode(_fitted(valid.pixels, self.cfg), self.cfg)
            captions_json = json.dumps(captions, ensure_ascii=False).encode("utf-8")
            buffer = io.BytesIO()
            np.save(buffer, emb, allow_pickle=False)
            files = {image_member(self.cfg.extension): payload, "captions.json": captions_json,
                     "emb.npy": buffer.getvalue()}  # fmt: skip
            results[i] = EncodedSample(
                key=raw.key,
                origin=raw.origin,
                files=_with_label(files, raw.label),
                label=raw.label,
                sha256=_sha256(payload, captions_json),
                notes=valid.notes,
                index_extra={"captions": captions},
            )
        return [r for r in results if r is not None]
