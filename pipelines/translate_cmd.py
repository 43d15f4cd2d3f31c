"""`ganpipe translate`: batch inference of a registered image-to-image generator (Pix2Pix, CycleGAN) over a
folder or a file, writing one PNG per input with the input's stem; for a StarGAN model, `--set NAME=0|1,...`
changes attributes (pipelines.conditional_cmd.translate_attributes).

Each input is decoded, converted to the model's channels (grey or RGB) and fitted to its square size as
`ganpipe prep` fits images (shorter side resized, centre crop); the output is the model's image at that size.
Files that are not images or are corrupt are reported with the reason and skipped; the exit status is 1
when any was skipped. `--direction` picks the direction of a CycleGAN pair: the registered version named
asks for its partner of the other direction (model-version tag `ganpipe.partner`) when they differ.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_BATCH = 64


@dataclass
class TranslateOutcome:
    model: str  # NAME/VERSION that translated
    direction: str
    image_size: int
    channels: int
    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (input, reason)


@dataclass(frozen=True)
class LoadedModel:
    module: Any  # the exported graph
    label: str  # NAME/VERSION
    direction: str
    image_size: int
    channels: int
    family: str


def load_translator(model: str, *, direction: str | None = None, tracking_uri: str = "") -> LoadedModel:
    """The registered image-to-image generator for `direction` (default: the model's own), with its geometry."""
    from gan_models import get_family
    from pipelines.model_loading import describe, load_module
    from pipelines.tracking import client, resolve_tracking_uri
    from pipelines.train import PARTNER_TAG

    uri = resolve_tracking_uri(tracking_uri)
    card = describe(model, tracking_uri=uri)
    ref = card.ref
    family = card.config.get("family", "")
    if not family or get_family(family).dataset_kind not in ("paired", "unpaired"):
        use = "`ganpipe generate --prompt`" if family == "text2img" else "`ganpipe sample`"
        raise ValueError(f"{ref.label} is a {family or 'unknown'} generator, not an image-to-image one (pix2pix, "
                         f"cyclegan, stargan): draw its images with {use}")
    own = card.metadata.get("direction") or card.config.get("model", {}).get("direction", "AtoB")
    if direction and direction != own:
        partner = client(uri).get_model_version(ref.name, ref.version).tags.get(PARTNER_TAG) if ref.name else None
        if not partner:
            raise ValueError(f"{ref.label} translates {own} only and no model of the other direction is registered "
                             f"beside it ({family} learns {'both directions' if family == 'cyclegan' else 'one'})")
        card = describe(f"models:/{partner}", tracking_uri=uri)
        own = card.metadata.get("direction", direction)
    _, channels, height, width = card.signature.inputs.inputs[0].shape
    if height != width:
        raise ValueError(f"{card.label} takes {height}x{width} images; translate supports square models only")
    module = load_module(card, tracking_uri=uri)
    return LoadedModel(module=module, label=card.label, direction=own, image_size=int(height),
                       channels=int(channels), family=family)


def list_inputs(path: Path) -> list[Path]:
    """The file itself, or the folder's files (not recursive, hidden files left out), sorted by name."""
    if not path.exists():
        raise FileNotFoundError(f"--input {path} does not exist")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(f"--input {path} holds no files")
    return files


def read_image(path: Path, *, image_size: int, channels: int) -> Any:
    """uint8 (C, size, size), fitted as prep fits images; raises ValueError with a user-facing reason."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from data_prep.imagefile import open_image
    from data_prep.transforms import fit_image

    try:
        image = open_image(path)  # decoded now (a truncated file fails here, not mid-batch), EXIF orientation applied
        pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except UnidentifiedImageError:
        raise ValueError("not an image (no decoder recognises it)") from None
    except (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"corrupt or unreadable image ({exc})") from None
    if min(pixels.shape[:2]) < 1:
        raise ValueError("empty image")
    fitted = fit_image(pixels, image_size=image_size)
    return fitted[None] if fitted.ndim == 2 else fitted.transpose(2, 0, 1)


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def translate_files(
    *, model: str, input_path: str | Path, out: str | Path, direction: str | None = None, tracking_uri: str = "",
    batch: int = DEFAULT_BATCH, progress: bool = True, log: Callable[[str], Any] = print,
) -> TranslateOutcome:
    """Translate every input (see the module docstring); returns what was written and what was skipped, why."""
    import numpy as np
    import torch
    from PIL import Image
    from tqdm import tqdm

    from pipelines.loop import generate
    from pipelines.tracking import to_uint8_hwc

    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    input_path, out = Path(input_path), Path(out)
    files = list_inputs(input_path)
    if input_path.is_dir() and out.resolve() == input_path.resolve():
        raise ValueError("--out must differ from --input: outputs keep the input names and could overwrite them")
    loaded = load_translator(model, direction=direction, tracking_uri=tracking_uri)
    log(f"model     {loaded.label} ({loaded.family}, {loaded.direction}, "
        f"{loaded.image_size}x{loaded.image_size}x{loaded.channels})")
    outcome = TranslateOutcome(model=loaded.label, direction=loaded.direction, image_size=loaded.image_size,
                               channels=loaded.channels)
    first_by_stem: dict[str, Path] = {}
    todo = []
    for path in files:
        if path.stem in first_by_stem:
            outcome.skipped.append((path, f"same stem as {first_by_stem[path.stem].name}: both would write "
                                          f"{path.stem}.png"))
        else:
            first_by_stem[path.stem] = path
            todo.append(path)
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), desc="translating", unit="img", disable=None if progress else True, file=sys.stderr)
    for chunk in _chunks(todo, batch):
        good, images = [], []
        for path in chunk:
            try:
                images.append(read_image(path, image_size=loaded.image_size, channels=loaded.channels))
                good.append(path)
            except ValueError as exc:
                outcome.skipped.append((path, str(exc)))
        if images:
            x = torch.from_numpy(np.stack(images)).float() / 127.5 - 1.0
            for path, y in zip(good, generate(loaded.module, x), strict=True):
                target = out / f"{path.stem}.png"
                Image.fromarray(to_uint8_hwc(y)).save(target)
                outcome.written.append(target)
        bar.update(len(chunk))
    bar.close()
    return outcome


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "translate", help="run a registered image-to-image model (pix2pix, cyclegan, stargan) over a folder of images",
        description="Translate every image of --input (a folder, not recursive, or one file) with a registered "
                    "Pix2Pix, CycleGAN or StarGAN generator and write OUT/<input stem>.png at the model's image "
                    "size. Inputs are converted to the model's channels and fitted as `ganpipe prep` fits images "
                    "(shorter side resized, centre crop). Files that are not images or are corrupt are listed "
                    "with the reason and skipped; the exit status is then 1. StarGAN: --set names the attributes "
                    "to change (the others keep the input's own, estimated by the dataset's attribute evaluator), "
                    "and OUT/attribute-grid.png shows every single-attribute change of each input.",
        epilog="examples:\n  ganpipe translate --model models:/pix2pix-mnist5k-edges@champion --input edges/ "
               "--out digits/\n  ganpipe translate --model models:/cyclegan-digits-mnist5k@champion --input mnist/ "
               "--out as-digits/ --direction BtoA\n  ganpipe translate --model "
               "models:/stargan-mnist5k-attributes@candidate --input digits/ --out blue/ --set blue=1,thick=1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a run id")
    p.add_argument("--input", required=True, help="a folder of images (not recursive) or one image file")
    p.add_argument("--out", required=True, help="output folder (created); files keep the input stem, as .png")
    p.add_argument("--direction", choices=("AtoB", "BtoA"),
                   help="dataset a -> b or b -> a (default: the model's own; CycleGAN models have both)")
    p.add_argument("--set", metavar="NAME=0|1,...",
                   help="StarGAN: attributes to set (names from the model's dataset); without it only the grid")
    p.add_argument("--source", metavar="NAME=0|1,...",
                   help="StarGAN: the inputs' own attributes (unnamed ones 0), instead of the attribute evaluator's "
                        "estimate (which needs the model's dataset)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                   help=f"images per forward pass (default {DEFAULT_BATCH})")
    p.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default .ganpipe/mlflow.db)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_translate(args: argparse.Namespace) -> int:
    from pipelines.registry import missing_is_user_error

    with missing_is_user_error():
        if _family(args.model, args.tracking_uri) == "stargan":
            return _translate_attributes(args)
        if args.set or args.source:
            raise ValueError("--set and --source are for a StarGAN model's inputs; "
                             f"{args.model} is not a StarGAN model")
        outcome = translate_files(model=args.model, input_path=args.input, out=args.out, direction=args.direction,
                                  tracking_uri=args.tracking_uri, batch=args.batch, progress=not args.no_progress)
    for path, reason in outcome.skipped:
        print(f"ganpipe translate: skipped {path}: {reason}", file=sys.stderr)
    total = len(outcome.written) + len(outcome.skipped)
    print(f"translated {len(outcome.written)} of {total} files to {args.out} ({outcome.model}, {outcome.direction})"
          + (f"; {len(outcome.skipped)} skipped (listed above)" if outcome.skipped else ""))
    return 1 if outcome.skipped else 0


def _family(model: str, tracking_uri: str) -> str:
    from pipelines.model_loading import describe, training_config

    card = describe(model, tracking_uri=tracking_uri)  # refuses anything but the torch.export archive
    return training_config(card, tracking_uri=tracking_uri).get("family", "")


def _translate_attributes(args: argparse.Namespace) -> int:
    from pipelines.conditional_cmd import model_info, parse_settings, translate_attributes

    names = list(model_info(args.model, args.tracking_uri).data["attributes"])
    settings = parse_settings(args.set, names) if args.set else None
    source = parse_settings(args.source, names) if args.source else None
    report = translate_attributes(args.model, [Path(args.input)], Path(args.out), settings,
                                  tracking_uri=args.tracking_uri, source=source, scale=1)
    for path, reason in report.skipped:
        print(f"ganpipe translate: skipped {path}: {reason}", file=sys.stderr)
    if settings:
        print(f"translated {len(report.outputs)} files to {args.out} with {args.set} (inputs' other attributes: "
              f"{report.source_from})")
    print(f"wrote {report.grid} (rows: inputs; columns: {', '.join(report.grid_columns)})")
    return 1 if report.skipped else 0
