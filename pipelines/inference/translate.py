"""`ganpipe translate`: batch inference of a registered image-to-image generator (Pix2Pix, CycleGAN) over a
folder or a file, writing one PNG per input with the input's stem; for a StarGAN model, `--set NAME=0|1,...`
changes attributes (pipelines.inference.conditional.translate_attributes).

Each input is decoded, converted to the model's channels (grey or RGB) and fitted to its square size as
`ganpipe prep` fits images (shorter side resized, centre crop); the output is the model's image at that size.
Files that are not images or are corrupt are reported with the reason and skipped; the exit status is 1
when any was skipped. `--direction` picks the direction of a CycleGAN pair: the registered version named
asks for its partner of the other direction (model-version tag `ganpipe.partner`) when they differ.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.spec.defaults import TRANSLATE_BATCH as DEFAULT_BATCH
from pipelines.tracking.loading import load_translator


@dataclass
class TranslateOutcome:
    model: str  # NAME/VERSION that translated
    direction: str
    image_size: int
    channels: int
    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (input, reason)




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

    from pipelines.engine.loop import generate
    from pipelines.tracking.runs import to_uint8_hwc

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





