"""Where a dataset lives and what a run or a registered model takes from its manifest."""

from __future__ import annotations

from typing import Any

from data_prep.storage import open_store
from pipelines.spec.defaults import default_store


def dataset_url(dataset: str, store: str | None = None) -> str:
    """A dataset name in `store` (datasets/NAME) or a full dataset URL, as every command resolves it."""
    if "://" in dataset or dataset.startswith(("/", ".")):
        return dataset.rstrip("/")
    return f"{open_store(store or default_store()).url.rstrip('/')}/datasets/{dataset}"


def data_defined(manifest: Any) -> dict[str, Any]:
    """Model fields the dataset fixes, whatever a recipe says: image geometry; the attribute count, label mode
    and exclusive groups of an `attributes` set; the text encoder and embedding size of a `captioned` set."""
    out: dict[str, Any] = {"image_size": manifest.image_size, "channels": manifest.channels}
    extra = manifest.extra
    if manifest.kind == "attributes":
        names = list(extra["attributes"])
        out["c_dim"] = len(names)
        out["label_mode"] = "exclusive" if extra.get("exclusive") else "multi"
        # StarGAN's groups are attribute indices: "0,1,2;5,6".
        out["exclusive_groups"] = ";".join(",".join(str(names.index(n)) for n in g) for g in extra.get("groups", []))
    if manifest.kind == "captioned":
        out["text_encoder"] = extra["text_encoder"]["name"]
        out["emb_dim"] = int(extra["text_encoder"]["dim"])
    return out


def data_info(manifest: Any) -> dict[str, Any]:
    """What a registered generator needs to know about its training data to be used without the dataset: the
    manifest's name, kind, digest, classes and kind-specific extras (attribute names and groups, the text
    encoder's name, dimension and fingerprint)."""
    return {"name": manifest.name, "kind": manifest.kind, "digest": manifest.digest,
            "class_names": list(manifest.class_names or []), **manifest.extra}
