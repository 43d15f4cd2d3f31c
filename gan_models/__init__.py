"""GAN families as pure PyTorch (no Ray, MLflow or file I/O), and the explicit registry the pipelines use."""

from __future__ import annotations

from . import cyclegan, dcgan, pix2pix, stargan, text2img, vanilla
from .family import Family
from .latent import interpolate, lerp, make_grid, slerp, vector_arithmetic

# Add a family by hand: import its module above and give it a line here.
FAMILIES: dict[str, Family] = {
    "vanilla": vanilla.FAMILY,
    "dcgan": dcgan.FAMILY,
    "pix2pix": pix2pix.FAMILY,
    "cyclegan": cyclegan.FAMILY,
    "stargan": stargan.FAMILY,
    "text2img": text2img.FAMILY,
}


def get_family(name: str) -> Family:
    """The registered family called `name`; an unknown name is an error that lists the valid ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown GAN family {name!r}; valid: {', '.join(FAMILIES)}") from None


__all__ = [
    "FAMILIES",
    "Family",
    "get_family",
    "interpolate",
    "lerp",
    "make_grid",
    "slerp",
    "vector_arithmetic",
]
