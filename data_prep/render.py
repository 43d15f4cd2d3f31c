"""The built-in attribute and caption sets: MNIST digits re-drawn in colours and stroke widths, offline.

Each digit gets a seeded style (stroke colour red/green/blue, thick/regular/thin stroke, black or white
background) from which both its multi-hot attributes and its templated captions are made, so a model's
output can be checked against either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from data_prep.derive import sample_rng

ATTRIBUTES = ("red", "green", "blue", "thick", "thin", "inverted")
GROUPS = (("red", "green", "blue"), ("thick", "thin"))  # at most one of each group is on
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = (
    "a {width_}{colour} {name} on a {background} background",
    "the digit {digit} written in {colour} with {stroke} strokes on {background}",
    "{Colour} handwritten {name}, {stroke} strokes, {background} background",
    "a {background} square showing the number {name} drawn in {width_}{colour}",
    "{name} in {colour} ink on {background} paper",
    "a picture of a {colour} number {digit} with {stroke} lines over a {background} backdrop",
    "handwritten digit {name}, coloured {colour}, {stroke} pen, {background} background",
)


@dataclass(frozen=True, kw_only=True)
class Style:
    """How one digit is drawn."""

    colour: str
    width: str  # "thick" | "regular" | "thin"
    inverted: bool

    def attrs(self) -> tuple[int, ...]:
        """0/1 over ATTRIBUTES."""
        on = {self.colour, self.width} | ({"inverted"} if self.inverted else set())
        return tuple(int(name in on) for name in ATTRIBUTES)


def style_of(key: str, *, seed: int) -> Style:
    """The seeded style of the sample `key` (independent of run order)."""
    rng = sample_rng(seed=seed, key=f"style:{key}")
    colour = ("red", "green", "blue")[int(rng.integers(3))]
    width = ("thick", "regular", "thin")[int(rng.integers(3))]
    return Style(colour=colour, width=width, inverted=bool(rng.random() < 0.3))


def render(digit: np.ndarray, style: Style) -> np.ndarray:
    """A grey uint8 digit (H, W), white on black, drawn as uint8 RGB (H, W, 3) in `style`.

    Thick = 3x3 grey dilation, thin = 2x2 grey erosion (MNIST strokes are 2-3 px wide, so 3x3 erosion
    would erase some); inverted = the coloured stroke on a white background.
    """
    if style.width == "thick":
        digit = ndimage.grey_dilation(digit, size=(3, 3))
    elif style.width == "thin":
        digit = ndimage.grey_erosion(digit, size=(2, 2))
    ink = digit.astype(np.float32)[:, :, None] / 255.0
    colour = np.asarray(COLOURS[style.colour], np.float32)
    background = np.full(3, 255.0 if style.inverted else 0.0, np.float32)
    rgb = background * (1.0 - ink) + colour * ink
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def captions(label: int, style: Style, *, count: int, key: str, seed: int) -> tuple[str, ...]:
    """`count` distinct phrasings (templates in a seeded order) describing the digit and its style."""
    rng = sample_rng(seed=seed, key=f"captions:{key}")
    order = rng.permutation(len(TEMPLATES))[: min(count, len(TEMPLATES))]
    fields = {
        "colour": style.colour,
        "Colour": style.colour.capitalize(),
        "width_": "" if style.width == "regular" else f"{style.width} ",
        "stroke": "medium" if style.width == "regular" else style.width,
        "name": DIGIT_NAMES[label],
        "digit": str(label),
        "background": "white" if style.inverted else "black",
    }
    return tuple(TEMPLATES[i].format(**fields) for i in order)
