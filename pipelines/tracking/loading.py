"""The one way ganpipe loads a registered generator: resolve the reference, read the version's MLmodel, check
what the version holds, then load its torch.export archive with MLflow's pickle switch pinned off.

A version `ganpipe train` registers holds exactly one weights file, `data/model.pt2` (a torch.export archive,
see `log_generator` in pipelines/tracking/runs.py). MLflow's pytorch flavour would unpickle `data/model.pth` in full
whenever that file is present and `MLFLOW_ALLOW_PICKLE_DESERIALIZATION` is true, which is MLflow 3.17's default.
So nothing here trusts that switch's value: `describe` lists the version's `data/` folder before any flavour
loader runs and refuses anything but the archive, and `load_module` checks the downloaded copy again (the files
it loads are the files it checked), then sets the switch to false in this process before
`mlflow.pytorch.load_model`, under which MLflow also verifies that every record of the archive is plain text or
a tensor payload that torch's `weights_only` unpickler accepts.

Every failure is a `ModelError` (a ValueError): one line naming the model, exit status 2 through the CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep.reader import read_manifest
from gan_models import get_family
from pipelines.spec.config import TrainSpec
from pipelines.spec.datasets import data_info, dataset_url
from pipelines.tracking import runs as tracking
from pipelines.tracking.registry import CHAMPION, PARTNER_TAG, ModelRef

PICKLE_SWITCH = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
MODEL_DATA = "data"  # the pytorch flavour's model_data folder, as mlflow.pytorch.save_model writes it
PT2_FILE = "model.pt2"  # torch.export archive (serialization_format="pt2")
REF_FORMS = "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID or a run id"
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,256}")
_NAME = re.compile(r"[^/@\s][^@]*")  # a registered name: anything MLflow accepts, without '@'


class ModelError(ValueError):
    """A model that cannot be used (unknown or malformed reference, or not the torch.export archive): the
    CLI prints its one line and exits with status 2 (pipelines/cli/main.py `is_user_error`)."""


@dataclass(frozen=True)
class ModelCard:
    """What a version says about itself (MLmodel), read without loading any weights."""

    ref: ModelRef
    metadata: dict[str, Any]  # MLmodel metadata["ganpipe"]: config, data, direction
    signature: Any  # mlflow.models.ModelSignature

    @property
    def label(self) -> str:
        return self.ref.label

    @property
    def config(self) -> dict[str, Any]:
        return self.metadata.get("config") or {}

    def input_shape(self, index: int = 0) -> tuple[int, ...]:
        """The signature's input `index` without its batch dimension."""
        return tuple(int(d) for d in self.signature.inputs.inputs[index].shape[1:])


def resolve_ref(mlf: Any, model: str) -> ModelRef:
    """models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID[/PATH] or a bare run id; a run's registered
    version (the newest) when it has one. Malformed or unknown references are a ModelError."""
    with _missing_is_model_error(model):
        if model.startswith("models:/"):
            return _registered(mlf, model)
        run_id = model.removeprefix("runs:/").split("/", 1)[0]
        if not _RUN_ID.fullmatch(run_id):
            raise ModelError(f"model {model!r} is not a model reference: give {REF_FORMS}")
        mlf.get_run(run_id)
        registered = mlf.search_model_versions(f"run_id='{run_id}'")
        if registered:
            mv = max(registered, key=lambda v: int(v.version))
            return ModelRef(uri=f"models:/{mv.name}/{mv.version}", run_id=run_id, name=mv.name, version=str(mv.version))
        return ModelRef(uri=f"runs:/{run_id}/generator", run_id=run_id)


def _registered(mlf: Any, model: str) -> ModelRef:
    rest = model.removeprefix("models:/")
    name, at, alias = rest.partition("@")
    if at:
        if not _NAME.fullmatch(name) or not alias or "/" in alias:
            raise ModelError(f"model {model!r} is not a model reference: give {REF_FORMS}")
        mv = mlf.get_model_version_by_alias(name, alias)
    else:
        name, _, version = rest.rpartition("/")
        if not name:
            raise ModelError(f"model {model!r}: name a version or an alias, e.g. models:/{rest}@{CHAMPION} or "
                             f"models:/{rest}/1")
        if not version.isdigit() or not _NAME.fullmatch(name):
            raise ModelError(f"model {model!r} is not a model reference: give {REF_FORMS}")
        mv = mlf.get_model_version(name, version)
    return ModelRef(uri=f"models:/{mv.name}/{mv.version}", run_id=mv.run_id, name=mv.name, version=str(mv.version))


@contextlib.contextmanager
def _missing_is_model_error(model: str) -> Iterator[None]:
    """An unknown model, version, alias or run is the user's typo: one line, not a traceback."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise ModelError(f"model {model!r}: {exc.message.splitlines()[0]}; `ganpipe models ls` lists the "
                         "registered models") from None


def describe(model: str, *, tracking_uri: str = "") -> ModelCard:
    """Resolve `model` and read its MLmodel; refuses (ModelError) a version that holds anything but the
    torch.export archive, before any weights are read or any flavour loader runs."""
    import mlflow

    uri = _use(tracking_uri)
    ref = resolve_ref(tracking.client(uri), model)
    with _missing_is_model_error(model):
        info = mlflow.models.get_model_info(ref.uri)
        listed = [Path(f.path).name for f in mlflow.artifacts.list_artifacts(artifact_uri=f"{ref.uri}/{MODEL_DATA}")]
    _refuse_unless_pt2(ref, flavors=info.flavors, data_files=listed)
    if info.signature is None or not info.signature.inputs.is_tensor_spec():
        raise ModelError(f"{_what(ref)} has no tensor signature in its MLmodel; it was not logged by ganpipe")
    return ModelCard(ref=ref, metadata=(info.metadata or {}).get("ganpipe") or {}, signature=info.signature)


def training_config(card: ModelCard, *, tracking_uri: str = "") -> dict[str, Any]:
    """The training config that travels with the model (MLmodel metadata), else its run's config.json."""
    if card.config:
        return card.config
    with tempfile.TemporaryDirectory() as tmp:
        path = tracking.client(_use(tracking_uri)).download_artifacts(card.ref.run_id, "config.json", tmp)
        return json.loads(Path(path).read_text())


def load_module(card: ModelCard, *, tracking_uri: str = "") -> Any:
    """The version's exported graph (eval mode, CPU). The downloaded copy is checked again before MLflow opens
    it, and MLflow runs with its pickle switch off (it then also checks the archive's records)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    _use(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        with _missing_is_model_error(card.ref.uri):
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=card.ref.uri, dst_path=tmp))
        data = local / MODEL_DATA
        files = sorted(p.name for p in data.iterdir()) if data.is_dir() else []
        flavors = mlflow.models.Model.load(str(local / "MLmodel")).flavors
        _refuse_unless_pt2(card.ref, flavors=flavors, data_files=files)
        pin_pickle_off()
        try:
            return mlflow.pytorch.load_model(str(local), map_location="cpu")
        except MlflowException as exc:
            # The first sentence says what is wrong; MLflow's advice after it (set the switch to true) is not ours.
            first = exc.message.strip().splitlines()[0].split(". ")[0] if exc.message.strip() else type(exc).__name__
            raise ModelError(f"refusing to load {_what(card.ref)}: {first}") from None


def load_generator(model: str, *, tracking_uri: str = "") -> tuple[Any, tuple[int, ...]]:
    """A registered generator and its latent shape (signature input 0 without the batch dimension)."""
    card = describe(model, tracking_uri=tracking_uri)
    return load_module(card, tracking_uri=tracking_uri), card.input_shape(0)


def pin_pickle_off() -> None:
    """Set MLflow's pickle switch to false in this process, whatever the environment said, and check that
    MLflow reads it so (its value is read at each load)."""
    from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION

    os.environ[PICKLE_SWITCH] = "false"
    if MLFLOW_ALLOW_PICKLE_DESERIALIZATION.get():
        raise RuntimeError(f"MLflow still allows unpickling models after {PICKLE_SWITCH}=false; not loading")


def _refuse_unless_pt2(ref: ModelRef, *, flavors: dict[str, Any], data_files: list[str]) -> None:
    """Only the pytorch flavour with `data/model.pt2` alone and no bundled code is accepted."""
    torch_flavor = flavors.get("pytorch")
    if torch_flavor is None:
        found = f"an MLmodel without the pytorch flavour (flavours: {', '.join(sorted(flavors)) or 'none'})"
    elif torch_flavor.get("code"):
        found = f"code to put on sys.path ({torch_flavor['code']}/)"
    elif torch_flavor.get("model_data") != MODEL_DATA:
        found = f"model data in {torch_flavor.get('model_data')!r} instead of {MODEL_DATA}/"
    elif sorted(data_files) != [PT2_FILE]:
        shown = " + ".join(f"{MODEL_DATA}/{f}" for f in sorted(data_files)) or f"an empty {MODEL_DATA}/"
        pickled = " (a pickled model)" if "model.pth" in data_files else ""
        found = f"{shown}{pickled}"
    else:
        return
    raise ModelError(f"refusing to load {_what(ref)}: it holds {found}, not the torch.export archive "
                     f"{MODEL_DATA}/{PT2_FILE} alone; ganpipe never unpickles a model: register it again with "
                     "`ganpipe train`")


def _what(ref: ModelRef) -> str:
    return f"model version {ref.label}" if ref.name else f"model {ref.uri}"


def _use(tracking_uri: str) -> str:
    """Point MLflow's global client at the store: models:/ URIs resolve through the global registry."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking.resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


# --- what the commands load: image-to-image translators, conditional generators' descriptions -------------


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
    uri = tracking.resolve_tracking_uri(tracking_uri)
    card = describe(model, tracking_uri=uri)
    ref = card.ref
    family = card.config.get("family", "")
    if not family or get_family(family).dataset_kind not in ("paired", "unpaired"):
        use = "`ganpipe generate --prompt`" if family == "text2img" else "`ganpipe sample`"
        raise ValueError(f"{ref.label} is a {family or 'unknown'} generator, not an image-to-image one (pix2pix, "
                         f"cyclegan, stargan): draw its images with {use}")
    own = card.metadata.get("direction") or card.config.get("model", {}).get("direction", "AtoB")
    if direction and direction != own:
        version = tracking.client(uri).get_model_version(ref.name, ref.version) if ref.name else None
        partner = version.tags.get(PARTNER_TAG) if version else None
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


@dataclass(frozen=True)
class ModelInfo:
    card: Any  # ModelCard: the resolved version and its MLmodel
    spec: Any  # the TrainSpec it was trained with
    data: dict[str, Any]  # train.data_info of its dataset (attribute names, text encoder, ...)

    @property
    def label(self) -> str:
        return self.card.label


def model_info(model: str, tracking_uri: str = "") -> ModelInfo:
    """The model's training config and data description from its MLmodel metadata; models logged without the
    data description read their dataset's manifest instead."""
    card = describe(model, tracking_uri=tracking_uri)  # refuses anything but the torch.export archive
    if not card.config:
        raise ValueError(f"{model} carries no ganpipe config in its MLmodel metadata; it was not logged by ganpipe")
    spec = TrainSpec.from_dict(card.config)
    data = card.metadata.get("data")
    if not data:
        data = data_info(read_manifest(dataset_url(spec.data.dataset, spec.store)))
    return ModelInfo(card=card, spec=spec, data=data)
