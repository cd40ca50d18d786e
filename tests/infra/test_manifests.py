"""Deployment files: they parse, carry the fields their tools require, and agree with each other and the code.

No Kubernetes or cloud account here, so this checks what can be checked offline: the cluster launcher
config against Ray's own JSON schema and its MLflow command (PostgreSQL only, never SQLite on NFS), the
KubeRay manifests against the RayCluster / RayJob fields KubeRay needs (driver retries included), every
cluster example of a training or tuning job (README.md, infra/, the jobs' docstrings, the RayJob
entrypoints) against the jobs' real argument parsers and configs with absolute shared paths, the MLflow
address every Ray pod uses against the MLflow service that serves it, and one torch version for the
Makefile and the image.
"""

from __future__ import annotations

import ast
import json
import re
import runpy
import shlex
import subprocess
import sys
import time
import tomllib
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


def test_ray_cluster_yaml_mlflow_server_keeps_runs_in_postgresql_not_sqlite_on_nfs(tmp_path):
    """Runs the head's MLflow command with a stand-in `mlflow`: it refuses anything but a PostgreSQL
    store and passes that store on; SQLite (file locks over NFS) appears nowhere in the cluster config."""
    config = yaml.safe_load((REPO_ROOT / "ray_cluster.yaml").read_text())
    commands = [c for key in config if key.endswith("_commands") for c in config[key]]
    assert not any("sqlite" in c.lower() for c in commands)
    (server,) = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    (env_file,) = [remote for remote in config["file_mounts"] if remote.endswith("mlflow.env")]
    assert env_file.startswith("~/") and f". {env_file}" in server

    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    bin_dir.mkdir(), home.mkdir()
    (bin_dir / "mlflow").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/mlflow-args\n')
    (bin_dir / "mlflow").chmod(0o755)
    env = {"HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    script = server.replace("/tmp/", f"{tmp_path}/")  # the pid and log files

    def start(store_uri: str) -> subprocess.CompletedProcess:
        (home / env_file.removeprefix("~/")).write_text(f"MLFLOW_BACKEND_STORE_URI={store_uri}\n")
        return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)

    refused = start("sqlite:////mnt/shared/mlflow/mlflow.db")
    assert refused.returncode != 0 and "postgresql://" in refused.stderr
    assert not (tmp_path / "mlflow-args").exists()
    assert start("postgresql://mlflow:secret@db.internal:5432/mlflow").returncode == 0
    for _ in range(100):  # the server is started in the background
        if (tmp_path / "mlflow-args").is_file() and (tmp_path / "mlflow-args").read_text():
            break
        time.sleep(0.05)
    args = (tmp_path / "mlflow-args").read_text().split()
    assert args[args.index("--backend-store-uri") + 1] == "postgresql://mlflow:secret@db.internal:5432/mlflow"
    assert args[args.index("--artifacts-destination") + 1].startswith(f"{SHARED}/mlflow/")


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


# Every field of KubeRay's RayJobSpec (ray-operator/apis/ray/v1/rayjob_types.go, json tags): a misspelt
# key (`backOffLimit`) would be dropped by the API server without a word.
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML",
    "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
    "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend", "schedule",
}  # fmt: skip


@pytest.mark.parametrize(
    ("path", "job"),
    [(p, d) for p, d in ray_resources() if d["kind"] == "RayJob"],
    ids=lambda x: getattr(x, "name", ""),
)
def test_rayjob_runs_the_image_code_and_retries_the_driver_only_where_a_retry_resumes(path, job):
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC_FIELDS
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == IMAGE_ROOT and isinstance(runtime_env["env_vars"], dict)
    assert runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] == mlflow_service_uri()
    # A retry is a new cluster running the entrypoint again (spec.backoffLimit, KubeRay >= 1.2), never a
    # resubmission to the same cluster by the submitter.
    assert spec["submitterConfig"]["backoffLimit"] == 0
    _, script, *args = shlex.split(spec["entrypoint"])
    if "/train_" in script:
        # Safe to retry: a fixed run name (and storage path) resumes the last checkpoint and MLflow run.
        assert spec["backoffLimit"] >= 1 and "--name" in args
    else:
        # Safe to retry: the search's name (from its config) and a fixed storage path restore the Tune
        # experiment, so finished trials are not run again.
        assert spec["backoffLimit"] >= 1 and any(a.startswith("experiment.run.storage_path=/") for a in args)


# -- every cluster example of a training or tuning job ------------------------------------------------

# Where cluster commands are written down: docs, the jobs' docstrings, manifests and config comments.
EXAMPLE_FILES = [
    REPO_ROOT / "README.md",
    INFRA / "README.md",
    INFRA / "local_cluster.sh",
    REPO_ROOT / "ray_cluster.yaml",
    *KUBERAY,
    *sorted((REPO_ROOT / "jobs").glob("*.py")),
]
_SUBMITTED = re.compile(r"ray job submit\b.*?\s--\s+(python jobs/(?:train|tune)_\w+\.py\b.*)$")
# What the local cluster's examples expand to (infra/local_cluster.sh prints MLFLOW_TRACKING_URI).
SHELL_VARIABLES = {"$PWD": "/home/me/ray-vsr", "$MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}


def _logical_lines(text: str, first_line: int = 1) -> list[tuple[int, str]]:
    """``(line number, line)`` for ``text``'s lines with backslash continuations joined (numbered by
    their first line) and comment markers (#) dropped."""
    lines, pending, start = [], "", first_line
    for number, raw in enumerate(text.splitlines(), first_line):
        line = raw.strip().lstrip("#").strip()
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
        else:
            lines.append((start, pending + line))
            pending = ""
    return lines + [(start, pending)] if pending else lines


def cluster_examples() -> list[tuple[str, str]]:
    """``(where, command)`` for each ``ray job submit ... -- python jobs/{train,tune}_*.py`` written in
    ``EXAMPLE_FILES`` and each RayJob entrypoint; ``command`` starts at ``python``."""
    examples = []
    for path in EXAMPLE_FILES:
        text, first_line = path.read_text(), 1
        if path.suffix == ".py":  # the job's docstring (its --help)
            module = ast.parse(text)
            text, first_line = ast.get_docstring(module) or "", module.body[0].lineno
        for number, line in _logical_lines(text, first_line):
            if match := _SUBMITTED.search(line):
                examples.append((f"{path.relative_to(REPO_ROOT)}:{number}", match.group(1)))
    for path, resource in ray_resources():
        if resource["kind"] == "RayJob":
            examples.append((f"{path.relative_to(REPO_ROOT)}:entrypoint", resource["spec"]["entrypoint"]))
    return examples


def test_cluster_examples_are_found_in_every_file_that_has_some():
    found = {where.split(":")[0] for where, _ in cluster_examples()}
    expected = {
        "README.md", "infra/README.md", "infra/local_cluster.sh", "ray_cluster.yaml",
        "infra/kuberay/raycluster.yaml", "infra/kuberay/rayjob-train.yaml", "infra/kuberay/rayjob-tune.yaml",
        "jobs/train_ttvsr.py", "jobs/train_vsrt.py", "jobs/tune_ttvsr.py",
    }  # fmt: skip
    assert expected <= found  # the parser did not silently miss an example


def is_absolute_location(path: str) -> bool:
    return path.startswith("/") or "://" in path  # s3://bucket/runs is absolute too


@pytest.mark.parametrize(("where", "command"), cluster_examples(), ids=[w for w, _ in cluster_examples()])
def test_cluster_example_runs_the_real_job_with_absolute_shared_paths(where, command, monkeypatch):
    """Runs the example's job script up to where it would start training or tuning: the flags parse,
    the config loads, and the data path, storage path and MLflow URI are what a cluster needs. A submitted
    job runs in a copy of the working dir, so a relative data.path or storage path would point into it."""
    import pipelines.training.run
    import pipelines.tuning.config
    import pipelines.tuning.run

    for variable, value in SHELL_VARIABLES.items():
        command = command.replace(variable, value)
    captured = []

    class Captured:
        def describe(self) -> str:
            return "not run"

    def capture(cfg, *args, **kwargs):
        captured.append(cfg)
        return Captured()

    monkeypatch.setattr(pipelines.training.run, "run_training", capture)
    monkeypatch.setattr(pipelines.tuning.run, "run_search", capture)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the example must name its server itself
    monkeypatch.chdir(REPO_ROOT)  # the job's working dir is (a copy of) this checkout
    python, script, *args = shlex.split(command, comments=True)
    monkeypatch.setattr(sys, "argv", [script, *args])
    assert python == "python"
    with pytest.raises(SystemExit) as exited:  # the job script ends with sys.exit(main(...))
        runpy.run_path(script, run_name="__main__")

    assert exited.value.code == 0
    (cfg,) = captured  # config typos or bad values would have exited with code 2 instead
    if isinstance(cfg, pipelines.tuning.config.SearchConfig):
        arch = Path(script).stem.removeprefix("tune_")
        cfg = pipelines.tuning.config.base_experiment(cfg)  # also checks searched keys
        assert cfg.arch == arch
    assert is_absolute_location(cfg.data.path), f"{where}: data.path {cfg.data.path} is relative"
    assert is_absolute_location(cfg.run.storage_path), (
        f"{where}: storage path {cfg.run.storage_path} is relative"
    )
    assert (cfg.tracking.uri or "").startswith(("http://", "https://")), f"{where}: no MLflow server URI"
    if SHELL_VARIABLES["$PWD"] not in command:  # a real cluster, not local_cluster.sh on one machine
        assert cfg.data.path.startswith(f"{SHARED}/") and cfg.run.storage_path.startswith(f"{SHARED}/")
    if where.startswith("infra/kuberay/"):
        assert cfg.tracking.uri == mlflow_service_uri()


# -- the image --------------------------------------------------------------------------------------


def test_dockerfile_builds_on_rays_gpu_image_of_the_installed_version_and_keeps_code_where_jobs_expect():
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={ray.__version__}" in dockerfile
    assert "FROM rayproject/ray:${RAY_VERSION}-py311-gpu" in dockerfile
    assert f"WORKDIR {IMAGE_ROOT}" in dockerfile
    for folder in ("vsr_models", "pipelines", "jobs", "configs"):
        assert f"COPY --chown=ray:users {folder} {folder}" in dockerfile


def test_one_torch_version_for_the_makefile_and_the_image_within_pyprojects_range():
    from packaging.requirements import Requirement

    makefile = (REPO_ROOT / "Makefile").read_text()
    dockerfile = (INFRA / "Dockerfile").read_text()
    (make_version,) = re.findall(r"^TORCH_VERSION \?= (\S+)$", makefile, re.M)
    (image_version,) = re.findall(r"^ARG TORCH_VERSION=(\S+)$", dockerfile, re.M)
    assert image_version == make_version
    assert '"torch==$(TORCH_VERSION)"' in makefile  # what `make venv` installs without a torch
    assert '"torch==${TORCH_VERSION}"' in dockerfile  # the image's CUDA wheel of the same release ...
    assert "ray==%s\\ntorch==%s" in dockerfile  # ... which the constraints keep while installing the rest
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch,) = [r for r in map(Requirement, dependencies) if r.name == "torch"]
    assert torch.specifier.contains(make_version)


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
