"""infra/: every manifest parses and has the fields KubeRay / the Ray cluster launcher require, runs ganpipe
commands the real CLI accepts, and the launch scripts start working services."""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from pipelines.ops import seaweedfs
from pipelines.spec.options import build_parser, subcommands

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
BIN = Path(sys.executable).parent


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((INFRA / name).read_text()) if d]


def _kinds(kind: str) -> list[tuple[str, dict]]:
    return [(p.name, d) for p in sorted(INFRA.glob("*.yaml")) for d in _docs(p.name) if d.get("kind") == kind]


def test_every_file_says_what_it_is_for_and_how_to_use_it() -> None:
    files = sorted(p for p in INFRA.iterdir() if p.is_file())
    assert {p.name for p in files} >= {"Dockerfile", "kuberay-cluster.yaml", "ray-cluster-aws.yaml",
                                       "mlflow-server.md", "mlflow-server.sh", "seaweedfs.sh"}
    for path in files:
        head = path.read_text().splitlines()[:12]
        if path.suffix == ".md":
            assert head[0].startswith("# ") and any("for" in line for line in head), path.name
            continue
        comments = [line for line in head if line.startswith("#") and not line.startswith("#!")]
        assert len(comments) >= 3, f"{path.name}: header comment missing"
        assert any(word in " ".join(comments) for word in ("Usage", "kubectl", "ray up", "docker build")), path.name


def test_every_yaml_parses() -> None:
    for path in sorted(INFRA.glob("*.yaml")):
        assert _docs(path.name), path.name


def _containers(template: dict) -> list[dict]:
    containers = template["spec"]["containers"]
    assert containers and all(c.get("name") and c.get("image") for c in containers)
    return containers


def test_raycluster_has_a_cpu_head_and_autoscaling_gpu_workers() -> None:
    clusters = _kinds("RayCluster")
    assert len(clusters) == 1
    _, rc = clusters[0]
    assert rc["apiVersion"] == "ray.io/v1" and rc["metadata"]["name"]
    spec = rc["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert head["rayStartParams"].get("num-cpus") == "0"  # strings: KubeRay passes them to `ray start`
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())
    for c in _containers(head["template"]):
        assert "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {})
        ports = {p["containerPort"] for p in c["ports"]}
        assert {6379, 8265} <= ports
    groups = spec["workerGroupSpecs"]
    gpu_groups = []
    for g in groups:
        assert g["groupName"] and isinstance(g["rayStartParams"], dict)
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        for c in _containers(g["template"]):
            if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {}):
                gpu_groups.append(g)
                assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert gpu_groups and all(g["maxReplicas"] > g["minReplicas"] for g in gpu_groups)
    # Credentials only by reference to a Secret, never as literal values in the manifest.
    for c in _containers(head["template"]) + [c for g in groups for c in _containers(g["template"])]:
        assert any("secretRef" in e for e in c.get("envFrom", []))
        assert not any("SECRET" in e.get("name", "") and "value" in e for e in c.get("env", []))
    for _, cm in _kinds("ConfigMap"):
        assert not any("SECRET" in k or "PASSWORD" in k for k in cm["data"])


def _entrypoint_words(entrypoint: str) -> list[str]:
    words = shlex.split(entrypoint)
    assert words[0] == "ganpipe", entrypoint
    return words[1:]


@pytest.mark.parametrize("name", sorted(p.name for p in INFRA.glob("kuberay-job-*.yaml")))
def test_rayjob_runs_a_real_ganpipe_command_on_the_cluster(name: str) -> None:
    (job,) = _docs(name)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), "exactly one of rayClusterSpec/clusterSelector"
    if "clusterSelector" in spec:
        (cluster,) = [rc["metadata"]["name"] for _, rc in _kinds("RayCluster")]
        assert spec["clusterSelector"] == {"ray.io/cluster": cluster}
    words = _entrypoint_words(spec["entrypoint"])
    commands = subcommands(build_parser())
    assert words[0] in commands, f"{name}: no `ganpipe {words[0]}`"
    build_parser().parse_args(words)  # the whole command line, flags and overrides included


def test_the_three_common_tasks_have_jobs() -> None:
    commands = {_entrypoint_words(d["spec"]["entrypoint"])[0] for _, d in _kinds("RayJob")}
    assert commands == {"prep", "train", "sweep"}


def test_cluster_launcher_config_matches_rays_schema() -> None:
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    (cfg,) = _docs("ray-cluster-aws.yaml")
    jsonschema.validate(cfg, schema)  # the installed Ray's own schema for `ray up`
    assert cfg["cluster_name"] and cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu_types = [n for n, t in types.items() if t["node_config"]["InstanceType"].startswith(("g", "p"))]
    assert gpu_types and all(types[n]["max_workers"] > types[n].get("min_workers", 0) for n in gpu_types)
    assert cfg["max_workers"] >= max(types[n]["max_workers"] for n in gpu_types)
    mounted = {remote for remote, local in cfg["file_mounts"].items() if local == "."}
    assert any(f"pip install -e {m}" in " ".join(cfg["setup_commands"]) for m in mounted)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts)
    assert "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])


def test_ray_version_is_pinned_alike_everywhere() -> None:
    dockerfile = (INFRA / "Dockerfile").read_text()
    (docker_pin,) = [line.split("=", 1)[1] for line in dockerfile.splitlines() if line.startswith("ARG RAY_VERSION=")]
    (_, rc), = _kinds("RayCluster")
    (cfg,) = _docs("ray-cluster-aws.yaml")
    launcher_pins = {c.split("==")[1].split('"')[0] for c in cfg["setup_commands"] if "ray[" in c}
    assert {docker_pin, rc["spec"]["rayVersion"]} | launcher_pins == {docker_pin}


def test_dockerfile_installs_the_packages_pyproject_ships() -> None:
    dockerfile = (INFRA / "Dockerfile").read_text()
    base = next(line for line in dockerfile.splitlines() if line.startswith("ARG BASE_IMAGE="))
    assert "cuda" in base and "pytorch" in base
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")}
    assert {"gan_models", "data_prep", "pipelines", "pyproject.toml"} <= copied
    assert "USER ray" in dockerfile


def test_scripts_are_valid_bash() -> None:
    for script in INFRA.glob("*.sh"):
        assert os.access(script, os.X_OK), script.name
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_mlflow_script_refuses_a_password_in_the_database_uri(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow:hunter2@db:5432/mlflow",
           "MLFLOW_ARTIFACTS_DESTINATION": "s3://b/a", "MLFLOW_FLASK_SERVER_SECRET_KEY": "k" * 32}
    proc = subprocess.run([str(INFRA / "mlflow-server.sh")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "pgpass" in proc.stderr and "hunter2" not in proc.stderr


def _stop_group(proc: subprocess.Popen, timeout: float = 15) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=timeout)
            break
        except subprocess.TimeoutExpired:
            continue


@pytest.mark.integration
def test_mlflow_script_serves_basic_auth_with_the_admin_password(tmp_path: Path) -> None:
    port = seaweedfs.free_ports(1)[0]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path}/mlflow.db",
           "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"), "MLFLOW_PORT": str(port),
           "MLFLOW_WORKERS": "1", "MLFLOW_AUTH_ADMIN_PASSWORD": "first-Admin-pass-1",
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "0123456789abcdef" * 4,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = tmp_path / "mlflow.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(INFRA / "mlflow-server.sh")], stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=tmp_path, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"

    def get(auth: str | None) -> int:
        import base64

        headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=3) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                status = get(None)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(1)
        assert status == 401
        assert get("admin:wrong-password") == 401
        assert get("admin:first-Admin-pass-1") == 200
    finally:
        _stop_group(proc)


@pytest.mark.integration
def test_seaweedfs_script_serves_s3_with_generated_keys_and_a_bucket(tmp_path: Path) -> None:
    ports = seaweedfs.allocate_ports()
    identity = tmp_path / "identity.json"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "SEAWEEDFS_DATA": str(tmp_path / "data"),
           "SEAWEEDFS_IDENTITY": str(identity), "SEAWEEDFS_S3_PORT": str(ports["s3"]),
           "SEAWEEDFS_BUCKET": "team-data", "SEAWEEDFS_VOLUME_SIZE_MB": "64"}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        env.pop(key, None)
    extra = [f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
             f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
             f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
             f"-s3.port.grpc={ports['s3_grpc']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
             "-volume.preStopSeconds=0"]
    log = tmp_path / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(INFRA / "seaweedfs.sh"), *extra], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "created bucket team-data" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        assert stat.S_IMODE(identity.stat().st_mode) == 0o600
        cred = json.loads(identity.read_text())["identities"][0]["credentials"][0]
        assert cred["secretKey"] not in log.read_text()
        server = seaweedfs.S3Server(endpoint=f"http://127.0.0.1:{ports['s3']}", access_key=cred["accessKey"],
                                    secret_key=cred["secretKey"], region="us-east-1", data_dir=tmp_path, log=log)
        client = seaweedfs.s3_client(server)
        client.put_object(Bucket="team-data", Key="k", Body=b"v")
        assert client.get_object(Bucket="team-data", Key="k")["Body"].read() == b"v"
    finally:
        _stop_group(proc)
        seaweedfs.remove_sockets(ports)
