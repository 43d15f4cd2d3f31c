"""Nothing loaded runs code: every command that loads a registered generator refuses a version whose stored
archive was replaced by a pickle (one line naming the version, exit status 2, the pickle's payload never runs),
whatever MLFLOW_ALLOW_PICKLE_DESERIALIZATION says; a pickled checkpoint is refused on resume the same way; bad
model references are one line too. Real sqlite MLflow store, real `ganpipe` processes."""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch

from pipelines.tracking.loading import PICKLE_SWITCH

PICKLED = "trust-pickled"  # data/model.pt2 replaced by model.pth + pickle_module_info.txt
CRAFTED = "trust-crafted"  # data/model.pt2 kept, with a pickle record added inside the archive
GOOD = "trust-good"


class Planted:
    """Unpickling it creates the marker file: the stand-in for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@dataclass(frozen=True)
class Store:
    root: Path
    tracking_uri: str
    marker: Path


def _stored_model_dir(mlf, name: str, version: str) -> Path:
    return Path(unquote(urlparse(mlf.get_model_version_download_uri(name, version)).path))


def _plant_pickle(model_dir: Path, marker: Path) -> None:
    """What mlflow.pytorch.save_model(serialization_format="pickle") writes: data/model.pth (torch.save of the
    module) and data/pickle_module_info.txt; its MLmodel's pytorch flavour is the same (model_data: data), so
    only the data/ folder changes."""
    data = model_dir / "data"
    (data / "model.pt2").unlink()
    torch.save(Planted(marker), data / "model.pth")
    (data / "pickle_module_info.txt").write_text("mlflow.pytorch.pickle_module")


def _add_pickle_record(model_dir: Path, marker: Path) -> None:
    archive = model_dir / "data" / "model.pt2"
    buf = io.BytesIO()
    torch.save(Planted(marker), buf)
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("model/data/constants/planted.pt", buf.getvalue())


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Three tiny DCGAN versions registered as `ganpipe train` registers them (no training: the weights do not
    matter here), two of them then tampered with in the artifact store."""
    from gan_models import get_family
    from pipelines.spec.config import apply_overrides
    from pipelines.spec.recipes import dcgan_paper
    from pipelines.tracking import runs as tracking
    from pipelines.training.train import register_generator

    root = tmp_path_factory.mktemp("trust")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    marker = root / "MARKER"
    spec = apply_overrides(dcgan_paper("digits"), [
        "model.ngf=4", "model.ndf=4", "model.nz=4", f"store={root / 'store'}", f"track.tracking_uri={uri}"])
    spec = dataclasses.replace(spec, run_name="trust")
    family = get_family(spec.family)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # MLflow's local artifacts go under ./.ganpipe: keep them in the temp folder
        run_id, _ = tracking.start_run(spec, tracking_uri=uri, dataset_name="digits", dataset_url="unused",
                                       manifest_digest="0" * 64)
        generator = family.build(spec.model)[family.generator]
        for name in (GOOD, PICKLED, CRAFTED):
            register_generator(spec, family=family, generator=generator, tracking_uri=uri, run_id=run_id,
                               name=name, manifest_digest="0" * 64)
    mlf = tracking.client(uri)
    _plant_pickle(_stored_model_dir(mlf, PICKLED, "1"), marker)
    _add_pickle_record(_stored_model_dir(mlf, CRAFTED, "1"), marker)
    return Store(root=root, tracking_uri=uri, marker=marker)


def _ganpipe(store: Store, *args: str) -> subprocess.CompletedProcess[str]:
    # The switch set to true, as MLflow 3.17 defaults it: the refusal must not depend on the environment.
    env = {**os.environ, PICKLE_SWITCH: "true"}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args, "--tracking-uri", store.tracking_uri],
                          capture_output=True, text=True, cwd=store.root, env=env, timeout=300)


def _extra(store: Store, command: str) -> list[str]:
    """Each command's other required arguments, writing under the store's folder."""
    return {
        "sample": ["--out", str(store.root / f"{command}.png")],
        "eval": ["--n", "4"],
        "translate": ["--input", str(store.root), "--out", str(store.root / "translated")],
        "generate": ["--prompt", "a red seven", "--out", str(store.root / f"{command}.png")],
    }[command]


def _assert_one_line_exit_2(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for text in expected:
        assert text in lines[0]
    return lines[0]


@pytest.mark.parametrize("command", ["sample", "eval", "translate", "generate"])
def test_every_loading_command_refuses_a_pickled_version_and_never_unpickles_it(store: Store, command: str):
    done = _ganpipe(store, command, "--model", f"models:/{PICKLED}@candidate", *_extra(store, command))
    # The refusal comes before any family check (this is a DCGAN, not an image-to-image or text model).
    line = _assert_one_line_exit_2(done, f"model version {PICKLED}/1", "data/model.pth + data/pickle_module_info.txt")
    assert "pickled" in line
    assert not store.marker.exists()


def test_pipeline_stages_refuse_a_pickled_version(store: Store, tmp_path: Path):
    pipeline = tmp_path / "trust.yaml"
    pipeline.write_text(f"""\
name: trust
engine: local
store: {tmp_path / "store"}
tracking_uri: {store.tracking_uri}
stages:
  draw:
    kind: sample
    config: {{model: "models:/{PICKLED}@candidate", out: {tmp_path / "s.png"}}}
  score:
    kind: eval
    config: {{model: "models:/{PICKLED}@candidate", n: 4}}
""")
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", str(pipeline)], capture_output=True,
                          text=True, cwd=tmp_path, env={**os.environ, PICKLE_SWITCH: "true"}, timeout=300)
    assert done.returncode != 0
    for stage in ("draw", "score"):
        assert any(line.split()[:2] == [stage, "failed"] and f"refusing to load model version {PICKLED}/1" in line
                   for line in done.stdout.splitlines()), done.stdout
    assert not store.marker.exists()


def test_a_pickle_record_inside_the_pt2_archive_is_refused_with_the_switch_pinned_off(store: Store):
    # data/ holds model.pt2 alone, so only MLflow's archive check (on when the switch is off) finds the record.
    done = _ganpipe(store, "sample", "--model", f"models:/{CRAFTED}/1", "--out", str(store.root / "c.png"))
    _assert_one_line_exit_2(done, f"model version {CRAFTED}/1", "planted.pt")
    assert not store.marker.exists()


def test_a_good_version_loads_and_samples(store: Store):
    out = store.root / "good.png"
    done = _ganpipe(store, "sample", "--model", f"models:/{GOOD}@candidate", "--n", "4", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 0


def test_the_loader_pins_the_switch_off_whatever_the_environment(store: Store, monkeypatch):
    from pipelines.tracking.loading import describe, load_module

    monkeypatch.setenv(PICKLE_SWITCH, "true")
    card = describe(f"models:/{GOOD}/1", tracking_uri=store.tracking_uri)
    generator = load_module(card, tracking_uri=store.tracking_uri)
    assert os.environ[PICKLE_SWITCH] == "false"
    assert card.input_shape(0) == (4, 1, 1)
    assert generator(torch.randn(2, 4, 1, 1)).shape == (2, 1, 32, 32)


@pytest.mark.parametrize("command", ["sample", "eval", "translate", "generate"])
@pytest.mark.parametrize(("model", "expected"), [
    ("models:/nosuch@candidate", "Registered Model with name=nosuch not found"),
    ("xx::garbage", "is not a model reference"),
])
def test_bad_model_references_are_one_line_exit_2(store: Store, capsys, command: str, model: str, expected: str):
    from pipelines.cli.main import main

    code = main([command, "--model", model, *_extra(store, command), "--tracking-uri", store.tracking_uri])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert repr(model) in err[0] and expected in err[0] and err[0].startswith(f"ganpipe {command}: error: ")


@pytest.mark.parametrize(("model", "expected"), [
    ("models:/nosuch", "name a version or an alias"),
    (f"models:/{GOOD}/x", "is not a model reference"),
    ("runs:/", "is not a model reference"),
    (f"models:/{GOOD}/7", "not found"),
])
def test_malformed_or_unknown_references_are_model_errors(store: Store, model: str, expected: str):
    from pipelines.tracking.loading import ModelError, resolve_ref
    from pipelines.tracking.runs import client

    with pytest.raises(ModelError, match=expected):
        resolve_ref(client(store.tracking_uri), model)


def test_a_pickled_checkpoint_is_refused_on_resume_in_one_line_naming_the_file(store: Store, tmp_path: Path):
    from pipelines.engine.checkpoint import STATE_FILE, rng_file

    marker = tmp_path / "MARKER"
    prepped = subprocess.run([sys.executable, "-m", "pipelines.cli", "prep", "--format", "paired", "mnist5k",
                              "--derive", "edges", "--limit", "16", "--store", str(tmp_path / "store"),
                              "--no-progress"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert prepped.returncode == 0, prepped.stderr
    step = tmp_path / "store" / "runs" / "planted" / "checkpoints" / "step_00000010"
    step.mkdir(parents=True)
    torch.save({"step": 10, "nets": Planted(marker)}, step / STATE_FILE)
    torch.save({"torch": torch.get_rng_state()}, step / rng_file(0))
    (step.parent / "latest").write_text(step.name)

    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "train", "--recipe", "pix2pix-edges-demo", "--store",
         str(tmp_path / "store"), "--run-name", "planted", "--tracking-uri", store.tracking_uri,  # an existing db
         "scale.workers=0", "loop.steps=12", "model.ngf=4", "model.ndf=4"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    _assert_one_line_exit_2(done, f"runs/planted/checkpoints/{step.name}/{STATE_FILE}", "io.open")
    assert not marker.exists()
    assert (step / STATE_FILE).exists()  # refused, not deleted
