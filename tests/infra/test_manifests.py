"""Deployment files: they parse, carry the fields their tools require, and agree with each other and the code.

No Kubernetes or cloud account here, so this checks what can be checked offline: the cluster launcher
config against Ray's own JSON schema, the KubeRay manifests against the RayCluster / RayJob fields
KubeRay needs, job entrypoints against the jobs' real argument parsers and configs, and the MLflow
address every Ray pod uses against the MLflow service that serves it.
"""

from __future__ import annotations

import json
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from conftest import REPO_ROOT

INFRA = REPO_ROOT / "infra"
KUBERAY = sorted((INFRA / "kuberay").glob("*.yaml"))
IMAGE_ROOT = "/home/ray/ray-vsr"  # where infra/Dockerfile puts the code
SHARED = "/mnt/shared"


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def ray_resources() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in KUBERAY for doc in documents(path) if doc["apiVersion"] == "ray.io/v1"]


def mlflow_service_uri() -> str:
    """The in-cluster address of the MLflow Service of infra/mlflow/k8s.yaml."""
    (service,) = [
        d
        for d in documents(INFRA / "mlflow" / "k8s.yaml")
        if d["kind"] == "Service" and d["metadata"]["name"] == "mlflow"
    ]
    meta = service["metadata"]
    return (
        f"http://{meta['name']}.{meta['namespace']}.svc.cluster.local:{service['spec']['ports'][0]['port']}"
    )


# -- Ray cluster launcher ---------------------------------------------------------------------------


def launcher_schema() -> dict:
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_ray_cluster_yaml_validates_against_rays_launcher_schema():
    config = yaml.safe_load((REPO_ROOT / "ray_cluster.yaml").read_text())
    jsonschema.validate(config, launcher_schema())
    # The schema is strict, so a misspelt key would have failed.
    with pytest.raises(jsonschema.ValidationError, match="run_option"):
        jsonschema.validate(config | {"docker": config["docker"] | {"run_option": []}}, launcher_schema())


def test_ray_cluster_yaml_shares_storage_shm_and_mlflow_with_gpu_workers():
    config = yaml.safe_load((REPO_ROOT / "ray_cluster.yaml").read_text())
    run_options = config["docker"]["run_options"]
    assert any(option.startswith("--shm-size=") for option in run_options)
    assert any(option.endswith(f":{SHARED}") for option in run_options)
    assert any("mount -t nfs4" in command for command in config["initialization_commands"])
    gpu_types = [
        t for t in config["available_node_types"].values() if t["node_config"]["InstanceType"].startswith("g")
    ]
    assert gpu_types and all(t["max_workers"] > t["min_workers"] for t in gpu_types)
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        start = next(c for c in commands if "ray start" in c)
        assert "export MLFLOW_TRACKING_URI=http://" in start
    assert any("mlflow server" in c and f"{SHARED}/mlflow" in c for c in config["head_start_ray_commands"])


# -- KubeRay ----------------------------------------------------------------------------------------


def cluster_spec(resource: dict) -> dict:
    return resource["spec"] if resource["kind"] == "RayCluster" else resource["spec"]["rayClusterSpec"]


def pod_templates(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in spec["workerGroupSpecs"]
    ]


def test_kuberay_manifests_define_a_cluster_and_training_and_tuning_jobs():
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for _, doc in ray_resources())
    assert [kind for kind, _ in kinds] == ["RayCluster", "RayJob", "RayJob"]
    entrypoints = [doc["spec"]["entrypoint"] for _, doc in ray_resources() if doc["kind"] == "RayJob"]
    assert any("train_ttvsr.py" in e for e in entrypoints) and any("tune_ttvsr.py" in e for e in entrypoints)


@pytest.mark.parametrize(("path", "resource"), ray_resources(), ids=lambda x: getattr(x, "name", ""))
def test_ray_cluster_spec_has_required_fields_gpus_shared_volume_shm_and_mlflow(path, resource):
    spec = cluster_spec(resource)
    assert spec["rayVersion"] == ray.__version__  # the image's Ray must match the operator's view
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    gpu_groups = 0
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        gpu_groups += "nvidia.com/gpu" in limits
    assert gpu_groups >= 1
    for params in [spec["headGroupSpec"]["rayStartParams"]] + [
        g["rayStartParams"] for g in spec["workerGroupSpecs"]
    ]:
        assert all(isinstance(value, str) for value in params.values()), "rayStartParams is map[string]string"

    images = set()
    for pod in pod_templates(spec):
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            images.add(container["image"])
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert volumes[mounts[SHARED]]["persistentVolumeClaim"]["claimName"] == "ray-vsr-shared"
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["MLFLOW_TRACKING_URI"] == mlflow_service_uri()
            requests, limits = container["resources"]["requests"], container["resources"]["limits"]
            assert requests.get("nvidia.com/gpu") == limits.get(
                "nvidia.com/gpu"
            )  # Kubernetes requires equality
    assert len(images) == 1


def test_shared_claim_is_read_write_many_in_the_same_namespace():
    (claim,) = [
        d for d in documents(INFRA / "kuberay" / "storage.yaml") if d["kind"] == "PersistentVolumeClaim"
    ]
    assert claim["metadata"]["name"] == "ray-vsr-shared"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert {doc["metadata"]["namespace"] for _, doc in ray_resources()} == {claim["metadata"]["namespace"]}


@pytest.mark.parametrize(
    ("path", "job"),
    [(p, d) for p, d in ray_resources() if d["kind"] == "RayJob"],
    ids=lambda x: getattr(x, "name", ""),
)
def test_rayjob_entrypoint_is_accepted_by_the_real_job_and_config(path, job, monkeypatch):
    """Runs the entrypoint's job script up to the point where it would start training or tuning."""
    import pipelines.train
    import pipelines.tune
    from pipelines.experiment import TTVSRExperiment

    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == IMAGE_ROOT and isinstance(runtime_env["env_vars"], dict)

    captured = []

    class Captured:
        def describe(self) -> str:
            return "not run"

    def capture(cfg, *args, **kwargs):
        captured.append(cfg)
        return Captured()

    monkeypatch.setattr(pipelines.train, "run_training", capture)
    monkeypatch.setattr(pipelines.tune, "run_search", capture)
    monkeypatch.chdir(REPO_ROOT)  # the job's working_dir is the image's copy of this checkout
    python, script, *args = shlex.split(spec["entrypoint"])
    monkeypatch.setattr(sys, "argv", [script, *args])
    assert python == "python"
    with pytest.raises(SystemExit) as exited:  # the job script ends with sys.exit(main(...))
        runpy.run_path(script, run_name="__main__")

    assert exited.value.code == 0
    (cfg,) = captured  # config typos or bad values would have exited with code 2 instead
    if isinstance(cfg, pipelines.tune.SearchConfig):
        cfg = pipelines.tune.base_experiment(cfg, TTVSRExperiment)  # also checks every searched key
    assert cfg.run.storage_path.startswith(f"{SHARED}/") and cfg.data.path.startswith(f"{SHARED}/")


def test_dockerfile_builds_on_rays_gpu_image_of_the_installed_version_and_keeps_code_where_jobs_expect():
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={ray.__version__}" in dockerfile
    assert "FROM rayproject/ray:${RAY_VERSION}-py311-gpu" in dockerfile
    assert f"WORKDIR {IMAGE_ROOT}" in dockerfile
    for folder in ("vsr_models", "pipelines", "jobs", "configs"):
        assert f"COPY --chown=ray:users {folder} {folder}" in dockerfile


# -- MLflow server recipe ---------------------------------------------------------------------------


def test_mlflow_compose_runs_postgres_backend_and_s3_artifacts():
    compose = yaml.safe_load((INFRA / "mlflow" / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    command = services["mlflow"]["command"]
    assert any(c.startswith("--backend-store-uri=postgresql://") for c in command)
    assert "--artifacts-destination=s3://mlflow/artifacts" in command
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_mlflow_k8s_server_allows_the_host_name_ray_pods_use():
    (deployment,) = [d for d in documents(INFRA / "mlflow" / "k8s.yaml") if d["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    allowed = next(a for a in args if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    # MLflow 3 answers 403 to Host headers that are not listed (beyond localhost and private IPs).
    assert mlflow_service_uri().removeprefix("http://") in allowed
    assert any(a.startswith("--backend-store-uri=postgresql://") for a in args)


# -- local_cluster.sh -------------------------------------------------------------------------------


def test_local_cluster_script_usage_and_status_of_a_stopped_cluster(tmp_path):
    script = INFRA / "local_cluster.sh"
    subprocess.run(["bash", "-n", script], check=True)
    usage = subprocess.run([script, "--help"], capture_output=True, text=True)
    unknown = subprocess.run([script, "start", "--bogus"], capture_output=True, text=True)
    status = subprocess.run([script, "status", "--state-dir", tmp_path], capture_output=True, text=True)

    assert usage.returncode == 0 and "local_cluster.sh start" in usage.stderr
    assert unknown.returncode == 2 and "unknown option --bogus" in unknown.stderr
    assert status.returncode == 3 and "head: stopped" in status.stderr
