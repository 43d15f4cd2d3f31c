"""Using the conditional generators: StarGAN attribute translation (`translate_attributes`, for `ganpipe
translate --set`) and `ganpipe generate` (GAN-CLS images from a text prompt, or a strip between two prompts).

A registered generator describes itself (MLmodel metadata["ganpipe"]): its training config and its data's
attribute names or text encoder. Prompts are encoded with the encoder the model was trained with; another
encoder is an error that names both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.tracking.loading import ModelInfo, load_module, model_info

if TYPE_CHECKING:  # torch loads only when a command runs, not for `ganpipe --help`
    import torch




def _load(info: ModelInfo, tracking_uri: str, family: str) -> Any:

    if info.spec.family != family:
        raise ValueError(f"{info.label} is a {info.spec.family} generator; this needs a {family} one")
    return load_module(info.card, tracking_uri=tracking_uri)


# --- StarGAN: attribute translation ------------------------------------------------------------------------


def parse_settings(text: str, attr_names: Sequence[str]) -> dict[str, int]:
    """"Blond_Hair=1,Male=0" -> {"Blond_Hair": 1, "Male": 0}; unknown names, values other than 0/1 and
    repeated names are ValueErrors that list the valid attributes."""
    valid = ", ".join(attr_names)
    out: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = (s.strip() for s in item.partition("="))
        if not sep or not name:
            raise ValueError(f"--set wants NAME=0|1 items separated by commas, got {item!r}; attributes: {valid}")
        if name not in attr_names:
            raise ValueError(f"unknown attribute {name!r} in --set; valid: {valid}")
        if value not in ("0", "1"):
            raise ValueError(f"{name}={value!r}: attribute values are 0 or 1")
        if name in out:
            raise ValueError(f"{name} is set twice in --set")
        out[name] = int(value)
    if not out:
        raise ValueError(f"--set names no attribute; valid: {valid}")
    return out


def read_inputs(inputs: Sequence[Path], *, size: int, channels: int) -> tuple[list[Path], torch.Tensor,
                                                                             list[tuple[Path, str]]]:
    """The inputs' images as float (N, C, size, size) in [-1, 1], read and fitted as `ganpipe translate` reads
    them (folders expanded, not recursively); files that are not images or are corrupt come back as
    (path, reason) instead."""
    import numpy as np
    import torch

    from pipelines.inference.translate import list_inputs, read_image

    files, images, skipped = [], [], []
    for path in (f for given in inputs for f in list_inputs(Path(given))):
        try:
            images.append(read_image(path, image_size=size, channels=channels))
        except ValueError as exc:
            skipped.append((path, str(exc)))
            continue
        files.append(path)
    if not files:
        raise ValueError(f"no readable image in {', '.join(map(str, inputs))}")
    return files, torch.from_numpy(np.stack(images)).float() / 127.5 - 1.0, skipped


@dataclass
class TranslateReport:
    inputs: list[Path]
    attr_names: list[str]
    source: list[dict[str, int]]  # each input's attributes (estimated by the evaluator, or as given)
    source_from: str  # "evaluator" | "given"
    target: list[dict[str, int]] = field(default_factory=list)  # with settings
    outputs: list[Path] = field(default_factory=list)  # one translated image per input, with settings
    grid: Path | None = None  # rows: input, then every single-attribute change
    grid_columns: list[str] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (input, reason): not images, or corrupt


def _as_dicts(labels: torch.Tensor, names: Sequence[str]) -> list[dict[str, int]]:
    return [{n: int(v) for n, v in zip(names, row.tolist(), strict=True)} for row in labels]


def source_attributes(info: ModelInfo, images: torch.Tensor, *, s3_endpoint: str | None = None) -> torch.Tensor:
    """The inputs' own attributes as the dataset's attribute evaluator sees them (trained and cached in the
    model's store on first use), exclusive groups made valid."""
    import torch

    from data_prep.reader import read_manifest
    from gan_models import stargan
    from pipelines.evaluation.conditional import AttrEvaluator, ensure_attr_evaluator
    from pipelines.spec.datasets import dataset_url

    url = dataset_url(info.spec.data.dataset, info.spec.store)
    try:
        manifest = read_manifest(url, s3_endpoint=s3_endpoint)
    except Exception as exc:
        raise ValueError(f"cannot estimate the inputs' attributes: the training set {url} is not readable ({exc}); "
                         "give the inputs' attributes explicitly (source=...)") from exc
    ev_url = ensure_attr_evaluator(store_url=info.spec.store, dataset_url=url, manifest=manifest,
                                   s3_endpoint=s3_endpoint)
    ev = AttrEvaluator.load(ev_url, s3_endpoint=s3_endpoint)
    decided = torch.from_numpy(ev.decide(ev.predict(images)["attr_probs"])).float()
    return stargan.make_groups_valid(decided, info.spec.model, generator=torch.Generator().manual_seed(0))


def translate_attributes(
    model_uri: str, inputs: Sequence[Path], out_dir: Path, settings: Mapping[str, int] | None = None, *,
    tracking_uri: str = "", source: Mapping[str, int] | None = None, grid: bool = True, scale: int = 2,
    s3_endpoint: str | None = None,
) -> TranslateReport:
    """Translate input images with a registered StarGAN generator.

    settings: attributes to set (parse_settings), the others kept as the input's: one `<stem>.png` per input in
              out_dir. source: the inputs' attributes (unnamed ones 0); default: the dataset's attribute
              evaluator estimates each input's. grid: also `attribute-grid.png`, one row per input: the input,
              then its translation by every single-attribute change (the paper's figure).
    """
    import torch

    from gan_models import make_grid, stargan
    from pipelines.engine.loop import generate
    from pipelines.evaluation.figures import save_png, upscale

    info = model_info(model_uri, tracking_uri)
    generator = _load(info, tracking_uri, "stargan")
    cfg = info.spec.model
    names = list(info.data["attributes"])
    files, x, skipped = read_inputs(inputs, size=cfg.image_size, channels=cfg.channels)
    if source is not None:
        given = parse_settings(",".join(f"{k}={v}" for k, v in source.items()), names) if source else {}
        c_org = stargan.set_attributes(torch.zeros(len(x), len(names)), {k: v for k, v in given.items() if v},
                                       attr_names=names, cfg=cfg)
    else:
        c_org = source_attributes(info, x, s3_endpoint=s3_endpoint)
    report = TranslateReport(inputs=files, attr_names=names, source=_as_dicts(c_org, names),
                             source_from="given" if source is not None else "evaluator", skipped=skipped)
    out_dir = Path(out_dir)
    if settings:
        target = stargan.set_attributes(c_org, settings, attr_names=names, cfg=cfg)
        report.target = _as_dicts(target, names)
        for path, image in zip(files, generate(generator, (x, target)), strict=True):
            report.outputs.append(save_png(upscale(image, scale), out_dir / f"{path.stem}.png"))
    if grid:
        columns = [x] + [generate(generator, (x, c)) for c in stargan.single_flips(c_org, cfg)]
        cells = torch.stack(columns, dim=1).flatten(0, 1)
        report.grid = save_png(upscale(make_grid(cells, nrow=len(columns)), scale), out_dir / "attribute-grid.png")
        report.grid_columns = ["input"] + [f"{'domain' if cfg.label_mode == 'exclusive' else 'flip'} {n}"
                                           for n in names]
    return report


# --- Text2Img: images from prompts -------------------------------------------------------------------------


def prompt_encoder(info: ModelInfo, text_encoder: str | None = None) -> Any:
    """The text encoder for the model's prompts: `text_encoder` ("minilm" or a model folder), by default the
    packaged MiniLM when the model was trained with it. Any other encoder than the model's is a ValueError
    naming both (gan_models.text2img.check_encoder, then the model folder's fingerprint)."""
    from data_prep.text_encoders import MINILM, MINILM_NAME, load_text_encoder
    from gan_models.text2img import check_encoder

    cfg = info.spec.model
    trained = (info.data.get("text_encoder") or {})
    if text_encoder is None:
        if cfg.text_encoder != MINILM_NAME:
            raise ValueError(f"{info.label} was trained with the text encoder {cfg.text_encoder!r}: give "
                             "--text-encoder PATH of that sentence-transformers model folder")
        text_encoder = MINILM
    encoder = load_text_encoder(text_encoder)
    try:
        check_encoder(cfg, encoder.name, emb_dim=encoder.dim)
    except ValueError as exc:
        raise ValueError(f"prompts encoded with {encoder.name!r} (--text-encoder {text_encoder}) do not fit "
                         f"{info.label}, trained with {cfg.text_encoder!r}: {exc}") from None
    if trained.get("fingerprint") and trained["fingerprint"] != encoder.fingerprint:
        raise ValueError(f"text encoder {encoder.name!r} differs from the one {info.label} was trained with: "
                         f"fingerprint {encoder.fingerprint[:12]} here, {trained['fingerprint'][:12]} in training")
    return encoder


def generate_from_prompts(
    model: str, *, prompt: str | None = None, interpolate: Sequence[str] | None = None, n: int | None = None,
    steps: int = 8, seed: int = 0, tracking_uri: str = "", text_encoder: str | None = None,
) -> torch.Tensor:
    """A grid (C, H, W) in [-1, 1]: `n` samples (default 16) of `prompt`; or, with `interpolate` (two prompts),
    `n` rows (default 4), each one z with the caption embedding moving from the first prompt to the second in
    `steps` columns (GAN-INT's t = (1 - β) t1 + β t2)."""
    import torch

    from gan_models import make_grid
    from pipelines.engine.loop import generate

    if (prompt is None) == (interpolate is None):
        raise ValueError("give either a prompt or two prompts to interpolate between")
    if interpolate is not None and len(interpolate) != 2:
        raise ValueError(f"--interpolate takes two prompts, got {len(interpolate)}")
    info = model_info(model, tracking_uri)
    generator = _load(info, tracking_uri, "text2img")
    encoder = prompt_encoder(info, text_encoder)
    cfg = info.spec.model
    g = torch.Generator().manual_seed(seed)
    if prompt is not None:
        n = 16 if n is None else n
        emb = torch.from_numpy(encoder.encode([prompt])).expand(n, -1)
        images = generate(generator, (torch.randn(n, cfg.nz, generator=g), emb))
        return make_grid(images, nrow=max(1, int(round(n**0.5))))
    n = 4 if n is None else n
    if steps < 2:
        raise ValueError(f"--steps must be at least 2, got {steps}")
    a, b = torch.from_numpy(encoder.encode(list(interpolate)))
    beta = torch.linspace(0, 1, steps)[:, None]
    path = (1 - beta) * a + beta * b  # (steps, D)
    z = torch.randn(n, cfg.nz, generator=g).repeat_interleave(steps, dim=0)
    images = generate(generator, (z, path.repeat(n, 1)))
    return make_grid(images, nrow=steps)



