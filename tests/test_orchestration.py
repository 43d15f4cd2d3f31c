"""`ganpipe run`: validation before anything runs, caching by key, invalidation, failure isolation, resume
from a checkpoint, lineage in MLflow, and one run on the Ray engine. Tiny data (digits, --limit), a few
training steps, in-process training (workers 0)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from data_prep.reader import read_manifest
from pipelines.cli.main import main
from pipelines.orchestration.dag import PipelineError
from pipelines.orchestration.lineage import lineage
from pipelines.orchestration.runner import run_pipeline
from pipelines.orchestration.stage_kinds import load_pipeline as load
from pipelines.orchestration.stage_kinds import pipeline_from_dict as from_dict

ROOT = Path(__file__).resolve().parent.parent
TINY_TRAIN = {"loop.steps": 4, "loop.log_every": 2, "loop.checkpoint_every": 2, "loop.sample_every": 0,
              "model.ngf": 8, "model.ndf": 8, "model.nz": 8, "data.batch_size": 8}


def _pipeline(tmp: Path, *, steps: int = 4, engine: str = "local", name: str = "tiny") -> dict:
    return {
        "name": name, "engine": engine, "store": str(tmp / "store"), "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "stages": {
            "prep": {"kind": "prep", "config": {"source": "digits", "limit": 60, "shard_size": 100}},
            "train": {"kind": "train", "config": {
                "family": "dcgan", "dataset": "${stages.prep.dataset}", "workers": 0,
                "overrides": {**TINY_TRAIN, "loop.steps": steps}}},
            "eval": {"kind": "eval", "config": {"model": "${stages.train.model}", "n": 20, "kid_subsets": 2,
                                                "kid_subset_size": 10}},
        },
    }


def _run(data: dict, **kw):
    out = io.StringIO()
    outcome = run_pipeline(from_dict(data), out=out, live=False, **kw)
    return outcome, out.getvalue()


def _statuses(outcome) -> dict[str, str]:
    return {name: r.status for name, r in outcome.stages.items()}


def _client(data: dict) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=data["tracking_uri"], registry_uri=data["tracking_uri"])


# --- validation: nothing runs ---------------------------------------------------------------------------------

def _bad(tmp: Path, change) -> str:
    data = _pipeline(tmp)
    change(data["stages"])
    with pytest.raises(PipelineError) as err:
        from_dict(data)
    return str(err.value)


def test_cycles_and_dangling_references_are_rejected_naming_the_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def cycle(s):
        s["prep"]["needs"] = ["eval"]

    assert _bad(tmp_path, cycle) == "stage 'prep': its needs form a cycle prep -> eval -> train -> prep"

    def missing_stage(s):
        s["train"]["config"]["dataset"] = "${stages.prepp.dataset}"

    msg = _bad(tmp_path, missing_stage)
    assert msg.startswith("stage 'train': config.dataset refers to stage 'prepp', which does not exist"), msg

    def missing_output(s):
        s["eval"]["config"]["model"] = "${stages.prep.model}"

    msg = _bad(tmp_path, missing_output)
    assert "stage 'eval': config.model refers to prep.model" in msg and "dataset, digest, name" in msg, msg

    def missing_need(s):
        s["eval"]["needs"] = ["nowhere"]

    assert "stage 'eval': needs 'nowhere', which does not exist" in _bad(tmp_path, missing_need)

    def typo_option(s):
        s["prep"]["config"]["imagesize"] = 16

    msg = _bad(tmp_path, typo_option)
    assert "stage 'prep': config.imagesize is not an option" in msg and "image_size" in msg, msg

    def typo_override(s):
        s["train"]["config"]["overrides"]["loop.stepz"] = 3

    msg = _bad(tmp_path, typo_override)
    assert msg.startswith("stage 'train': config:") and "loop.stepz" in msg, msg

    def bad_type(s):
        s["eval"]["config"]["n"] = "many"

    assert "stage 'eval': config.n must be an integer" in _bad(tmp_path, bad_type)

    def unknown_family(s):
        s["train"]["config"]["family"] = "nosuchgan"

    msg = _bad(tmp_path, unknown_family)
    assert "stage 'train'" in msg and "nosuchgan" in msg and "dcgan" in msg, msg

    def set_by_pipeline(s):
        s["train"]["config"]["run_name"] = "mine"

    assert "stage 'train': config.run_name is set by the pipeline" in _bad(tmp_path, set_by_pipeline)

    # The CLI: one line, exit status 2, and no tracking store was created (nothing ran).
    data = _pipeline(tmp_path)
    cycle(data["stages"])
    (tmp_path / "cycle.yaml").write_text(yaml.safe_dump(data))
    assert main(["run", "cycle.yaml"]) == 2
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "store").exists()


def test_yaml_file_and_python_recipe_define_the_same_pipeline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _pipeline(tmp_path)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "recipe.py").write_text(
        "from pipelines.orchestration.dag import ref\n\n"
        f"def tiny():\n    data = {data!r}\n"
        "    data['stages']['train']['config']['dataset'] = ref('prep', 'dataset')\n"
        "    return data\n")
    a, b = load("p.yaml"), load("recipe.py:tiny")
    assert list(a.stages) == list(b.stages) == ["prep", "train", "eval"]
    assert a.stages == b.stages and a.stages["eval"].needs == ("train",)


def test_course_example_validates_and_plans():
    pipe = load(str(ROOT / "pipelines/examples/course.yaml"))
    assert {s.kind for s in pipe.stages.values()} >= {"prep", "train", "sweep", "eval", "promote", "sample"}
    assert load(str(ROOT / "pipelines/examples/s3_folder.yaml")).stages["prep"].config["source"]


# --- running: cache, invalidation, lineage -------------------------------------------------------------------

def test_three_stages_run_then_cache_then_rerun_what_changed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _pipeline(tmp_path)
    first, text = _run(data)
    assert _statuses(first) == {"prep": "done", "train": "done", "eval": "done"}, text
    dataset = first.stages["prep"].outputs
    assert dataset["digest"] == read_manifest(dataset["dataset"]).digest
    assert first.stages["eval"].outputs["model"] == first.stages["train"].outputs["model"] == "models:/dcgan-digits/1"

    t0 = time.monotonic()
    second, text = _run(data)
    took = time.monotonic() - t0
    assert _statuses(second) == {"prep": "cached", "train": "cached", "eval": "cached"}, text
    assert took < 15, took  # look-ups only; the first run trained and evaluated
    assert second.stages["train"].outputs == first.stages["train"].outputs

    # How the batches are decoded changes no batch (data_prep/prefetch.py), so it is no reason to retrain.
    data["stages"]["train"]["config"]["overrides"].update({"data.decode_workers": 0, "data.decode_pool": "thread"})
    neutral, text = _run(data)
    assert _statuses(neutral) == {"prep": "cached", "train": "cached", "eval": "cached"}, text

    data["stages"]["train"]["config"]["overrides"]["loop.steps"] = 6
    third, text = _run(data)
    assert _statuses(third) == {"prep": "cached", "train": "done", "eval": "done"}, text
    assert third.stages["train"].outputs["model"] == "models:/dcgan-digits/2"
    assert third.stages["train"].outputs["run_name"] != first.stages["train"].outputs["run_name"]

    forced, text = _run(data, force=["train"])  # the forced stage and what follows it; not what precedes it
    assert _statuses(forced) == {"prep": "cached", "train": "done", "eval": "done"}, text
    assert forced.stages["train"].outputs["run_name"] == third.stages["train"].outputs["run_name"] + "-2"

    # Lineage through the MLflow API: model version -> training run -> stage run -> pipeline run -> prep stage.
    mlf = _client(data)
    mv = mlf.get_model_version("dcgan-digits", "2")
    train_run = mlf.get_run(mv.run_id)
    assert train_run.data.tags["ganpipe.manifest_sha256"] == dataset["digest"]
    stage_run = mlf.get_run(train_run.data.tags["ganpipe.stage_run_id"])
    assert stage_run.data.tags["ganpipe.stage"] == "train" and stage_run.data.tags["ganpipe.cached"] == "false"
    assert stage_run.data.params["loop.steps"] == "6"
    parent = mlf.get_run(stage_run.data.tags["mlflow.parentRunId"])
    assert parent.info.run_id == third.run_id and parent.data.tags["ganpipe.kind"] == "pipeline"
    siblings = mlf.search_runs([parent.info.experiment_id],
                               filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    prep_run = next(r for r in siblings if r.data.tags["ganpipe.stage"] == "prep")
    assert prep_run.data.tags["ganpipe.cached"] == "true"
    assert json.loads(prep_run.data.tags["ganpipe.outputs"])["digest"] == dataset["digest"]
    inputs = json.loads(stage_run.data.tags["ganpipe.inputs"])
    assert set(inputs) == {"prep"} and json.loads(stage_run.data.tags["ganpipe.external"])["dataset_digest"] == \
        dataset["digest"]

    info = lineage(mlf, "models:/dcgan-digits/2")
    assert info["dataset_digest"] == dataset["digest"] and info["pipeline"]["run_id"] == third.run_id
    assert [u["stage"] for u in info["upstream"]] == ["prep"] and info["sweep"] is None


def test_runs_and_lineage_commands_print_the_dag(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = _pipeline(tmp_path)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data))
    uri = ["--tracking-uri", data["tracking_uri"]]
    assert main(["run", "tiny.yaml", "--only", "prep"]) == 0
    out = capsys.readouterr().out
    assert "prep  done" in out and "train" not in out.split("pipeline tiny:")[1], out
    assert main(["run", "tiny.yaml", "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "needs -" in plan.splitlines()[1] and "cached (stage run" in plan.splitlines()[1], plan
    assert "run (key " in plan.splitlines()[2] and "run (after train)" in plan.splitlines()[3], plan
    assert main(["run", "tiny.yaml"]) == 0
    run_out = capsys.readouterr().out
    run_id = run_out.split("details: ganpipe runs show ")[1].split(")")[0]
    assert main(["runs", "ls", *uri]) == 0
    listing = capsys.readouterr().out
    assert run_id in listing and "2 done, 1 cached" in listing and "1 done" in listing, listing
    assert main(["runs", "show", run_id, *uri]) == 0
    shown = capsys.readouterr().out
    lines = {line.replace("└", "").split()[0]: line for line in shown.splitlines()
             if line.replace("└", "").split()[:1] in (["prep"], ["train"], ["eval"])}
    assert "cached" in lines["prep"] and "done" in lines["train"] and "└ eval" in shown, shown
    assert main(["lineage", "models:/dcgan-digits@candidate", *uri]) == 0
    traced = capsys.readouterr().out
    digest = read_manifest(str(tmp_path / "store/datasets/digits")).digest
    assert f"manifest sha256 {digest} (made by stage prep)" in traced and f"pipeline   tiny run {run_id}" in traced


def test_a_failed_stage_stops_its_dependents_only_and_the_next_run_resumes_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _pipeline(tmp_path)
    external = tmp_path / "elsewhere"
    # train_ext trains on a dataset no stage makes, which does not exist yet; prep is an unrelated branch.
    data["stages"] = {
        "train_ext": {"kind": "train", "config": {"family": "dcgan", "dataset": str(external / "datasets/later"),
                                                  "workers": 0, "overrides": TINY_TRAIN}},
        "eval_ext": {"kind": "eval", "config": {"model": "${stages.train_ext.model}", "n": 20, "kid_subsets": 2,
                                                "kid_subset_size": 10}},
        "prep": data["stages"]["prep"],
    }
    first, text = _run(data)
    assert _statuses(first) == {"train_ext": "failed", "eval_ext": "skipped", "prep": "done"}, text
    assert "DatasetNotFound" in first.stages["train_ext"].error and "train_ext" in first.stages["eval_ext"].error
    mlf = _client(data)
    assert mlf.get_run(first.run_id).info.status == "FAILED"
    assert mlf.get_run(first.stages["eval_ext"].run_id).data.tags["ganpipe.status"] == "skipped"

    assert main(["prep", "digits", "--limit", "40", "--name", "later", "--store", str(external), "--no-progress"]) == 0
    second, text = _run(data)
    assert _statuses(second) == {"train_ext": "done", "eval_ext": "done", "prep": "cached"}, text
    assert mlf.get_run(second.run_id).info.status == "FINISHED"


def test_a_sweep_stage_runs_the_sweep_and_hands_its_best_config_to_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _pipeline(tmp_path)
    data["stages"]["sweep"] = {"kind": "sweep", "config": {
        "family": "dcgan", "dataset": "${stages.prep.dataset}", "workers": 0, "overrides": TINY_TRAIN,
        "space": {"model.lr_g": [1e-4, 2e-4]}, "trials": 2, "metric": "eval/fd", "mode": "min"}}
    data["stages"]["train"]["config"]["overrides"] = [TINY_TRAIN, "${stages.sweep.best}"]
    del data["stages"]["eval"]
    outcome, text = _run(data)
    assert _statuses(outcome) == {"prep": "done", "sweep": "done", "train": "done"}, text
    best = outcome.stages["sweep"].outputs["best"]
    assert set(best) == {"model.lr_g"} and best["model.lr_g"] in (1e-4, 2e-4)
    mlf = _client(data)
    parent = mlf.get_run(outcome.stages["sweep"].outputs["run_id"])
    children = mlf.search_runs([parent.info.experiment_id],
                               filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2
    trained = mlf.get_run(outcome.stages["train"].outputs["run_id"])
    assert float(trained.data.params["model.lr_g"]) == best["model.lr_g"]


def test_a_killed_training_stage_resumes_from_its_checkpoint(tmp_path):
    data = _pipeline(tmp_path, steps=4)
    del data["stages"]["eval"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "p.yaml"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    try:  # kill at the first checkpoint; exporting and registering the model afterwards takes seconds
        while not list((tmp_path / "store/runs").glob("*/checkpoints/latest")):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    (ckpt,) = (tmp_path / "store/runs").glob("*/checkpoints/latest")
    saved = int(ckpt.read_text().strip().removeprefix("step_"))

    mlf = _client(data)
    killed_train = mlf.search_runs([mlf.get_experiment_by_name("dcgan-digits").experiment_id])
    assert len(killed_train) == 1 and killed_train[0].info.status == "RUNNING"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        second, text = _run(data)
    finally:
        os.chdir(cwd)
    assert _statuses(second) == {"prep": "cached", "train": "done"}, text
    outs = second.stages["train"].outputs
    assert outs["run_id"] == killed_train[0].info.run_id and outs["run_name"] == ckpt.parent.parent.name
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(mlf.download_artifacts(second.stages["train"].run_id, "stage.log", tmp)).read_text()
    resumed = [int(line.rsplit(" ", 1)[1]) for line in log.splitlines() if "[ganpipe] resuming" in line]
    assert resumed and resumed[0] >= saved >= 2, log


@pytest.mark.slow
def test_ray_engine_runs_stages_as_ray_tasks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _pipeline(tmp_path, engine="ray", name="onray")
    del data["stages"]["eval"]
    data["stages"]["prep_b"] = {"kind": "prep", "config": {"source": "digits", "limit": 30, "name": "digits-b"},
                                "resources": {"cpus": 1}}
    try:
        outcome, text = _run(data)
    finally:
        import ray

        ray.shutdown()
    assert _statuses(outcome) == {"prep": "done", "train": "done", "prep_b": "done"}, text
    mlf = _client(data)
    for name in ("prep", "train", "prep_b"):
        tags = mlf.get_run(outcome.stages[name].run_id).data.tags
        assert int(tags["ganpipe.worker_pid"]) != os.getpid(), name  # ran in a Ray worker process
        assert json.loads(tags["ganpipe.resources"]) == {"cpus": 1.0, "gpus": 0.0}
    assert mlf.get_model_version("dcgan-digits", "1").run_id == outcome.stages["train"].outputs["run_id"]


# --- issue 20: a pipeline whose working directory moves (a job's working_dir, unpacked anew by Ray) ------------


def write_photos(folder: Path, *, count: int = 12) -> None:
    """Tiny distinct RGB PNGs (no class folders: no evaluator to train)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"p{i:02d}.png")


def photo_pipeline(*, store: Path, tracking_uri: str, engine: str = "local", workers: int = 0) -> dict:
    """prep of ./photos (relative: the working directory's), train, sample: what `--working-dir .` submits."""
    return {
        "name": "photos", "engine": engine, "store": str(store), "tracking_uri": tracking_uri,
        "stages": {
            "prep": {"kind": "prep", "config": {"source": "photos", "holdout": 0, "shard_size": 100}},
            "train": {"kind": "train", "config": {"family": "dcgan", "dataset": "${stages.prep.dataset}",
                                                  "workers": workers, "overrides": TINY_TRAIN}},
            "sample": {"kind": "sample", "config": {"model": "${stages.train.model}", "n": 4, "out": "grid.png"}},
        },
    }


def test_a_moved_working_directory_reuses_every_stage_and_samples_go_to_mlflow(tmp_path, monkeypatch):
    data = photo_pipeline(store=tmp_path / "store", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    first_dir, second_dir = tmp_path / "unpacked-1", tmp_path / "elsewhere" / "unpacked-2"
    write_photos(first_dir / "photos")
    second_dir.mkdir(parents=True)
    for src in sorted((first_dir / "photos").iterdir()):  # the same bytes, new modification times
        (second_dir / "photos").mkdir(exist_ok=True)
        (second_dir / "photos" / src.name).write_bytes(src.read_bytes())
        os.utime(second_dir / "photos" / src.name, (1_000_000_000, 1_000_000_000))

    monkeypatch.chdir(first_dir)
    first, text = _run(data)
    assert _statuses(first) == {"prep": "done", "train": "done", "sample": "done"}, text
    manifest = read_manifest(first.stages["prep"].outputs["dataset"])
    assert manifest.prep["source"] == "photos"  # not where this copy of the working directory happens to be
    artifact = first.stages["sample"].outputs["artifact"]
    mlf = _client(data)
    local = mlflow.artifacts.download_artifacts(artifact, tracking_uri=data["tracking_uri"], dst_path=str(tmp_path))
    assert Path(local).read_bytes().startswith(b"\x89PNG")

    monkeypatch.chdir(second_dir)
    (first_dir / "grid.png").unlink()  # gone with the first job's working directory: the artifact remains
    second, text = _run(data)
    assert _statuses(second) == {"prep": "cached", "train": "cached", "sample": "cached"}, text
    assert [str(v.version) for v in mlf.search_model_versions("name = 'dcgan-photos'")] == ["1"]
    assert read_manifest(second.stages["prep"].outputs["dataset"]).version == manifest.version == 1

    from PIL import Image

    Image.new("RGB", (20, 20), (200, 10, 10)).save(second_dir / "photos" / "p00.png")
    third, text = _run(data, only=["prep"])  # changed content is a new input
    assert _statuses(third)["prep"] == "done", text
