"""The tar member names of each dataset kind's samples (`KEY.NAME` in a shard) and what each one holds.

Since manifest schema 2 the names follow the WebDataset convention, so plain `webdataset` and Ray Data read a
ganpipe dataset as they read any other: an `images` sample is `KEY.png` (or `KEY.jpg`) and `KEY.cls`, and
`wds.WebDataset(url).decode("pil").to_tuple("png", "cls")` yields (image, label). A `paired` sample needs two
images, which cannot both be `png`: they stay `a.png` and `b.png` (and `mask.png`), which WebDataset still
decodes by their last extension. Schema 1 datasets named the single image `image.png`; `image_names` lists
both, so readers keep reading them. The manifest's `fields` (schema 2) says what each member holds.
"""

from __future__ import annotations

IMAGE_EXTENSIONS = ("png", "jpg")  # what prep writes (transforms.IMAGE_FORMATS)
LEGACY_IMAGE_STEM = "image"  # schema 1: `KEY.image.png`


def image_member(extension: str, stem: str | None = None) -> str:
    """The member name of an image: `png` for a kind's one image, `a.png` for a named one (`stem` "a")."""
    return extension if stem is None else f"{stem}.{extension}"


def image_names(stem: str | None = None) -> tuple[str, ...]:
    """The names an image member may have: `png`, `jpg`, then schema 1's `image.png`, `image.jpg` (stem None);
    or `{stem}.png`, `{stem}.jpg`."""
    if stem is None:
        return (*IMAGE_EXTENSIONS, *(image_member(e, LEGACY_IMAGE_STEM) for e in IMAGE_EXTENSIONS))
    return tuple(image_member(e, stem) for e in IMAGE_EXTENSIONS)


def _image(extension: str, channels: int, what: str = "image") -> str:
    shape = "HxW (grey)" if channels == 1 else "HxWx3 (RGB)"
    return f"{what}: image/{'png' if extension == 'png' else 'jpeg'}, decodes to uint8 {shape}"


def kind_fields(kind: str, *, extension: str, channels: int, labelled: bool, mask: bool = False) -> dict[str, str]:
    """Member name -> what it holds and how it decodes, for the manifest's `fields`; `cls` only when labelled."""
    if kind == "paired":
        fields = {
            image_member(extension, "a"): _image(extension, channels, "input image (a)"),
            image_member(extension, "b"): _image(extension, channels, "target image (b)"),
        }
        if mask:
            fields["mask.png"] = "inpainting mask: image/png, decodes to uint8 HxW, 255 where a is masked"
    else:
        fields = {image_member(extension): _image(extension, channels)}
    if kind == "attributes":
        fields["attrs.json"] = "JSON list of 0/1, one per name in extra.attributes"
    if kind == "captioned":
        fields["captions.json"] = "JSON list of caption strings"
        fields["emb.npy"] = "numpy .npy float16 (captions, dim): row i embeds caption i (extra.text_encoder)"
    if labelled:
        fields["cls"] = "int label as ASCII digits: index into class_names"
    return fields
