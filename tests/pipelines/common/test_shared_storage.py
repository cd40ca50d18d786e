"""A path some node of the cluster does not see is refused in seconds, before anything trains.

A simulated two-node cluster on loopback whose nodes do NOT share a filesystem: the Ray head starts as
usual, the worker node in its own mount namespace with an empty tmpfs over ``private/``, so a file the
driver writes there is missing on the worker node exactly as a node-local ``runs/`` folder is missing on
the other machines of a real cluster; ``shared/`` stays one folder for both, as an NFS mount would be.
The head has no CPUs, as in infra/kuberay/, so training workers and data tasks run on the worker node.
Both nodes start through the project's loopback-aware Ray CLI (``python -m pipelines.common.ray_session
start``, like infra/local_cluster.sh) with their own ports and temp folders, and are stopped by their own
pids (never ``ray stop``, which stops every Ray on the machine); the tmpfs goes with the worker's
namespace. Drivers run as separate processes joining that cluster, as a submitted job's driver does.

Needs root and ``unshare`` (util-linux) to make the worker's mount namespace: skipped without them,
failed under CI=true (CI runs as root).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from pipelines.common.shared_storage import MARKER_PREFIX, check_visible_from_nodes

pytestmark = pytest.mark.slow

PYTHON = sys.executable
START_TIMEOUT_S = 300  # generous: a loaded 2-core machine starts Ray slowly

# A driver joining the cluster ($RAY_ADDRESS) that runs the check once per case given as JSON
# ({"writes": {name: folder}, "reads": {name: file}}) and prints one JSON line per case: the nodes that
# proved the paths, or the user error, and how long the check took.
CHECK = """
import json, sys, time
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from pipelines.common.errors import UserError
from pipelines.common.ray_session import init_ray
from pipelines.common.shared_storage import check_visible_from_nodes, place_marker

def check_here(marker):
    try:
        marker.check_here()
        return "visible"
    except UserError as error:
        return str(error)

def on_each_node(folder):
    # What a training worker does in its setup, on each node, against the marker the driver keeps.
    marker = place_marker("run.storage_path", folder)
    head = ray.get_runtime_context().get_node_id()
    task = ray.remote(num_cpus=0)(check_here)
    try:
        return {
            "head" if node["NodeID"] == head else "worker": ray.get(task.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(marker))
            for node in ray.nodes() if node["Alive"]
        }
    finally:
        marker.remove()

init_ray()
for case in json.loads(sys.argv[1]):
    start = time.monotonic()
    try:
        if "marker" in case:
            outcome = {"marker": on_each_node(case["marker"])}
        else:
            outcome = {"nodes": check_visible_from_nodes(case.get("writes", {}), case.get("reads", {}))}
    except UserError as error:
        outcome = {"error": str(error)}
    print(json.dumps(outcome | {"seconds": round(time.monotonic() - start, 2)}), flush=True)
"""

# The training job with the driver's start check taken out, as for a node that joins after it (an
# autoscaling cluster): the workers' own check in their setup must refuse the storage.
TRAIN_WITHOUT_START_CHECK = """
import sys
import pipelines.training.run as training_run
from jobs.train_ttvsr import main

training_run.check_paths_reach_nodes = lambda cfg: None
sys.exit(main(sys.argv[1:]))
"""

# Joining may fail while the head registers (the driver looks up every raylet on this machine, other
# tests' included, in the GCS): retried until the deadline.
WAIT_FOR_NODES = """
import sys, time, ray
from pipelines.common.ray_session import init_ray
deadline = time.monotonic() + float(sys.argv[1])
while not ray.is_initialized():
    try:
        init_ray()
    except (ConnectionError, RuntimeError) as error:
        if time.monotonic() > deadline:
            raise
        print("retrying:", error, file=sys.stderr)
        time.sleep(2)
while sum(node["Alive"] for node in ray.nodes()) < 2:
    if time.monotonic() > deadline:
        sys.exit("the worker node did not join")
    time.sleep(0.5)
"""


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: CI runs as root with util-linux)")
    pytest.skip(reason)


def _require_mount_namespaces(folder: Path) -> None:
    """Skip (fail under CI) unless this process may give a child its own tmpfs over ``folder``."""
    if os.geteuid() != 0:
        _skip_or_fail("needs root to start a node in its own mount namespace")
    if shutil.which("unshare") is None:
        _skip_or_fail("needs unshare: apt-get install -y util-linux")
    tried = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if tried.returncode != 0:
        _skip_or_fail(f"cannot mount a tmpfs in a new mount namespace here: {tried.stderr.strip()}")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the node's `ray start --block` (it stops its Ray processes), then kill what is left of its
    session (its process group: it was started in a new session)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


@dataclass(frozen=True)
class SplitCluster:
    env: dict[str, str]  # joins the cluster: RAY_ADDRESS and the auth token
    private: Path  # the worker node sees an empty tmpfs here
    shared: Path  # both nodes see the same folder

    def check(self, cases: list[dict]) -> list[dict]:
        """Each case's outcome (see CHECK), from one driver process that joined the cluster."""
        done = subprocess.run(
            [PYTHON, "-c", CHECK, json.dumps(cases)], env=self.env, cwd=REPO_ROOT, capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def split_cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("split_cluster")
    private, shared = root / "private", root / "shared"
    private.mkdir()
    shared.mkdir()
    _require_mount_namespaces(private)
    # Ray's socket paths live under its temp folder and are limited to ~107 bytes: keep it short.
    ray_temp = Path(tempfile.mkdtemp(prefix="rayvsr-", dir="/tmp"))
    token = root / "auth_token"
    token.write_text(os.urandom(32).hex())
    token.chmod(0o600)
    gcs, client, head_agent, worker_agent = _free_ports(4)
    env = os.environ | {
        "PATH": f"{Path(PYTHON).parent}:{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",  # explicit, as infra/local_cluster.sh does, so every node and driver agree
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }
    ray_cli = [
        PYTHON,
        "-m",
        "pipelines.common.ray_session",
        "start",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
    ]
    common = ["--disable-usage-stats", "--min-worker-port", "0", "--max-worker-port", "0"]
    nodes: list[subprocess.Popen] = []

    def launch(name: str, command: list[str]) -> None:
        log = open(root / f"{name}.log", "wb")  # noqa: SIM115  (the node writes it until it stops)
        nodes.append(
            subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        )  # fmt: skip

    try:
        launch(
            "head",
            ray_cli + common + ["--head", "--num-cpus", "0", "--port", str(gcs), "--include-dashboard", "false"]
            + ["--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(head_agent)]
            + ["--temp-dir", str(ray_temp / "head")],
        )  # fmt: skip
        _wait_for_port(gcs, nodes[0], root / "head.log")
        # The worker node: its own mount namespace, an empty tmpfs over private/, then `ray start`.
        launch(
            "worker",
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount -t tmpfs tmpfs "$0" && exec "$@"', str(private)]
            + ray_cli + common + ["--address", f"127.0.0.1:{gcs}", "--num-cpus", "2"]
            + ["--dashboard-agent-listen-port", str(worker_agent)]
            + ["--temp-dir", str(ray_temp / "worker")],
        )  # fmt: skip
        env["RAY_ADDRESS"] = f"127.0.0.1:{gcs}"
        joined = subprocess.run(
            [PYTHON, "-c", WAIT_FOR_NODES, str(START_TIMEOUT_S)], env=env, cwd=REPO_ROOT,
            capture_output=True, text=True, timeout=START_TIMEOUT_S + 60,
        )  # fmt: skip
        assert joined.returncode == 0, joined.stderr[-2000:] + (root / "worker.log").read_text()[-2000:]
        yield SplitCluster(env, private, shared)
    finally:
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(ray_temp, ignore_errors=True)


def _wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def _one_error_line(done: subprocess.CompletedProcess, driver_only: bool = True) -> str:
    """The job's one ``error:`` line (exit status 2); with ``driver_only``, and no traceback at all (a
    worker's failure is also logged by Ray's Train controller, with the worker's traceback)."""
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, done.stderr[-3000:]
    assert not driver_only or "Traceback" not in done.stderr, done.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def outcomes(split_cluster) -> dict[str, dict]:
    """The check on the split cluster for: a storage folder and a dataset file under private/ (only the
    head sees them), and both under shared/. One driver runs the three (a driver costs seconds)."""
    private, shared = split_cluster.private, split_cluster.shared
    (private / "data").mkdir()
    (private / "data" / "manifest.json").write_text("{}")
    (shared / "manifest.json").write_text('{"clips": []}')
    cases = {
        "private storage": {"writes": {"run.storage_path": str(private / "runs")}},
        "private data": {
            "writes": {"run.storage_path": str(shared / "runs")},
            "reads": {"data.path": str(private / "data" / "manifest.json")},
        },
        "shared": {
            "writes": {"run.storage_path": str(shared / "runs")},
            "reads": {"data.path": str(shared / "manifest.json")},
        },
        "private marker": {"marker": str(private / "runs")},
        "shared marker": {"marker": str(shared / "runs")},
    }
    found = split_cluster.check(list(cases.values()))
    assert len(found) == len(cases), found
    return dict(zip(cases, found, strict=True))


def test_a_storage_folder_the_worker_node_does_not_see_is_refused_naming_it_and_the_fix(
    split_cluster, outcomes
):
    storage = split_cluster.private / "runs"
    error = outcomes["private storage"]["error"]
    assert "\n" not in error
    assert f"run.storage_path {storage} is not visible from 1 of 2 Ray nodes" in error
    assert "marker the driver wrote there is missing" in error
    assert "NFS" in error and "s3://" in error  # the fix
    assert not any(p.name.startswith(MARKER_PREFIX) for p in storage.iterdir())  # the marker is removed


def test_a_dataset_file_the_worker_node_does_not_see_is_refused(split_cluster, outcomes):
    manifest = split_cluster.private / "data" / "manifest.json"
    error = outcomes["private data"]["error"]
    assert f"data.path {manifest} is not visible from 1 of 2 Ray nodes" in error and "is missing" in error


def test_shared_folders_and_files_are_proven_on_both_nodes(split_cluster, outcomes):
    assert outcomes["shared"] == {"nodes": 2, "seconds": outcomes["shared"]["seconds"]}  # both answered
    assert not any(p.name.startswith(MARKER_PREFIX) for p in (split_cluster.shared / "runs").iterdir())


def test_a_worker_on_a_node_that_does_not_see_the_storage_refuses_it_in_its_setup(split_cluster, outcomes):
    found = outcomes["private marker"]["marker"]
    assert found["head"] == "visible", found
    storage = split_cluster.private / "runs"
    assert f"run.storage_path {storage} is not visible from the Ray node 127.0.0.1" in found["worker"]
    assert "this worker runs on: the marker the driver wrote there is missing" in found["worker"]
    assert outcomes["shared marker"]["marker"] == {"head": "visible", "worker": "visible"}
    assert not any(p.name.startswith(MARKER_PREFIX) for p in storage.iterdir())


def _train(split_cluster, script: list[str], data, storage, mlflow_db, name) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, *script, "--config", "configs/ttvsr_test.yaml", "--set", f"data.path={data}"]
        + ["--set", "run.max_failures=0"]  # a retry would meet the same refusal
        + ["--storage-path", str(storage), "--mlflow-uri", f"sqlite:///{mlflow_db}", "--name", name],
        env=split_cluster.env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=420,
    )


def test_training_refuses_a_node_local_storage_path_before_any_run_or_checkpoint(
    split_cluster, tiny_prepared_dataset, tmp_path
):
    # The real job on the two-node cluster: stops at the check, before MLflow or Ray Train start.
    storage = split_cluster.private / "train_runs"
    mlflow_db = tmp_path / "mlflow.db"
    done = _train(
        split_cluster, ["jobs/train_ttvsr.py"], tiny_prepared_dataset, storage, mlflow_db, "local_storage"
    )
    line = _one_error_line(done)
    assert f"run.storage_path {storage} is not visible from 1 of 2 Ray nodes" in line
    assert list(storage.iterdir()) == []  # no checkpoint, no run folder, no marker left
    assert not mlflow_db.exists()  # no MLflow run was started


def test_training_workers_refuse_storage_their_node_does_not_see_before_the_first_iteration(
    split_cluster, tiny_prepared_dataset, tmp_path
):
    storage = split_cluster.private / "late_node_runs"
    done = _train(
        split_cluster,
        ["-c", TRAIN_WITHOUT_START_CHECK],
        tiny_prepared_dataset,
        storage,
        tmp_path / "m.db",
        "late",
    )
    line = _one_error_line(done, driver_only=False)
    assert f"run.storage_path {storage} is not visible from the Ray node 127.0.0.1" in line
    assert "this worker runs on" in line
    assert "iter 1/" not in done.stdout + done.stderr  # refused in setup: not one iteration trained
    assert not list(storage.glob("**/checkpoint_*"))
    assert not any(p.name.startswith(MARKER_PREFIX) for p in storage.iterdir())


def test_a_single_node_cluster_and_object_store_uris_need_no_probe(ray_local, tmp_path):
    assert check_visible_from_nodes({"run.storage_path": str(tmp_path)}) == 0  # one node
    assert check_visible_from_nodes({"run.storage_path": "memory://bucket/runs"}) == 0
    assert list(tmp_path.iterdir()) == []  # nothing written when there is nothing to prove
