"""End to end on a real two-node cluster: `ray job submit` trains TTVSR, MLflow's server registers it.

infra/local_cluster.sh starts a Ray head and a worker node on loopback plus an MLflow tracking server
(free ports, own state dir); the training job is uploaded with --working-dir exactly as on a real
cluster, logs through HTTP to the server and registers the final model, which is then loaded back
from the registry. The cluster is stopped in teardown whatever happened.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, parse_exports

from pipelines.tracking import mlflow_client

pytestmark = pytest.mark.slow

SCRIPT = REPO_ROOT / "infra" / "local_cluster.sh"
RAY = REPO_ROOT / ".venv" / "bin" / "ray"
# Never upload the environment, data, checkpoints or caches (`ray job submit` allows 100 MiB).
EXCLUDES = [".git", ".venv", "data", "runs", "mlruns", "mlartifacts", "*.db", ".cache", "**/__pycache__"]


@pytest.fixture(scope="module")
def cluster(local_cluster):
    """The environment (RAY_ADDRESS, MLFLOW_TRACKING_URI, auth) of the running local cluster."""
    return local_cluster


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory):
    """Starts preparing the bundled sample dataset outside the repo (the job reads it by absolute path).

    Returns a function that waits for it; the cluster starts meanwhile.
    """
    root = tmp_path_factory.mktemp("sample")
    preparing = subprocess.Popen(
        [sys.executable, "jobs/prepare_data.py", "--dataset", "sample", "--output", root / "data"]
        + ["--set", f"sample_cache={root / 'src'}"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def wait() -> Path:
        output, _ = preparing.communicate(timeout=180)
        assert preparing.returncode == 0, output[-3000:]
        return root / "data"

    yield wait
    preparing.kill()
    preparing.wait()


def test_submitted_training_job_logs_and_registers_on_mlflow_server(sample_data, cluster, tmp_path):

    from pipelines.inference.loading import ModelRef, load_model

    mlflow_uri = cluster["MLFLOW_TRACKING_URI"]
    env = os.environ | {key: cluster[key] for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    iterations = [
        "--set",
        "train.total_iters=4",
        "--set",
        "train.val_every=4",
        "--set",
        "train.checkpoint_every=4",
    ]
    job = subprocess.run(
        [
            RAY,
            "job",
            "submit",
            "--working-dir",
            ".",
            "--runtime-env-json",
            json.dumps({"excludes": EXCLUDES}),
            "--",
        ]
        + ["python", "jobs/train_ttvsr.py", "--config", "configs/ttvsr_test.yaml", "--mlflow-uri", mlflow_uri]
        + ["--set", f"data.path={sample_data()}", *iterations]
        + ["--storage-path", str(tmp_path / "runs"), "--name", "submitted"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    assert "succeeded" in job.stdout + job.stderr

    client = mlflow_client(mlflow_uri)
    experiment = client.get_experiment_by_name("ray-vsr-test")
    (run,) = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'submitted'")
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 4  # log_every 1
    champion = client.get_model_version_by_alias("ttvsr_test", "champion")
    assert champion.run_id == run.info.run_id
    assert float(champion.tags["val_psnr"]) == pytest.approx(run.data.metrics["val/psnr"])

    # The registered network loads back through the server and super-resolves x4.
    model = load_model(ModelRef("models:/ttvsr_test@champion", tracking_uri=mlflow_uri))
    with torch.no_grad():
        assert model(torch.rand(1, 2, 3, 64, 64)).shape == (1, 2, 3, 256, 256)


def test_status_idempotent_start_and_stop(cluster):
    # Stops the session's shared cluster: the last test to use it (tests/infra runs before tests/jobs).
    state = ["--state-dir", cluster["STATE_DIR"]]
    status = subprocess.run([SCRIPT, "status", *state], capture_output=True, text=True, timeout=30)
    again = subprocess.run([SCRIPT, "start", *state], capture_output=True, text=True, timeout=30)

    assert status.returncode == 0
    assert "head: running" in status.stderr and "worker: running" in status.stderr
    assert again.returncode == 0 and "already running" in again.stderr
    assert parse_exports(again.stdout)["RAY_ADDRESS"] == cluster["RAY_ADDRESS"]
    assert cluster["RAY_ADDRESS"].startswith("http://127.0.0.1:")
    assert cluster["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")

    pids = [
        int((Path(cluster["STATE_DIR"]) / f"{name}.pid").read_text()) for name in ("head", "worker", "mlflow")
    ]
    subprocess.run([SCRIPT, "stop", *state], check=True, capture_output=True, timeout=120)
    stopped = subprocess.run([SCRIPT, "status", *state], capture_output=True, text=True, timeout=30)
    assert stopped.returncode == 3 and "head: stopped" in stopped.stderr
    for pid in pids:  # each component ran in its own process group; none of it survives
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
