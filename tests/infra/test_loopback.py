"""infra/local_cluster.sh listens on loopback only: every socket of its head, worker and MLflow server.

Uses the session's local cluster (tests/conftest.py), runs a job on both nodes through `ray job submit` so that workers,
the job supervisor and a job driver exist too, then lists the listening sockets of every process in
the sessions the script started (each component is a session leader: its pid is the session id).
Sockets are read with psutil (Ray vendors it: importable once ``ray`` is imported).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
from pathlib import Path

import pytest
import ray  # noqa: F401  (makes Ray's vendored psutil importable)
from conftest import LOCAL_CLUSTER_CPUS, REPO_ROOT

import psutil  # isort: skip

pytestmark = pytest.mark.slow

SCRIPT = REPO_ROOT / "infra" / "local_cluster.sh"
RAY = REPO_ROOT / ".venv" / "bin" / "ray"
COMPONENTS = ("head", "worker", "mlflow")

# One task pinned to each node: both raylets start workers, and the driver is a plain ray.init(),
# which only finds the loopback GCS because the job inherits the launcher's loopback setting.
JOB = """
import ray
ray.init()
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
assert len(nodes) == 2, nodes
strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy
where = ray.get([
    ray.remote(lambda: ray.get_runtime_context().get_node_id()).options(
        scheduling_strategy=strategy(node, soft=False)).remote()
    for node in nodes
])
assert sorted(where) == sorted(nodes), where
print("ran on both nodes")
"""


def on_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1 or an IPv4-mapped 127.x address."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def session_processes(session_ids: set[int]) -> dict[int, str]:
    """pid -> name of every process whose session is one of ``session_ids``."""
    found = {}
    for process in psutil.process_iter(["name"]):
        try:
            if os.getsid(process.pid) in session_ids:
                found[process.pid] = process.info["name"]
        except (ProcessLookupError, PermissionError):
            continue
    return found


def listening_sockets(pids: dict[int, str]) -> list[tuple[str, int, str]]:
    """(ip, port, process name) of the listening TCP and unconnected UDP sockets of ``pids``."""
    sockets = set()
    for c in psutil.net_connections("inet"):
        listening = c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr)
        if c.pid in pids and listening:
            sockets.add((c.laddr.ip, c.laddr.port, pids[c.pid]))
    return sorted(sockets)


@pytest.fixture(scope="module")
def cluster(local_cluster):
    return local_cluster


def test_every_socket_of_the_local_cluster_is_on_loopback(cluster, tmp_path):
    env = os.environ | {key: cluster[key] for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    job = subprocess.run(
        [RAY, "job", "submit", "--", str(REPO_ROOT / ".venv" / "bin" / "python"), "-c", JOB],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert job.returncode == 0 and "ran on both nodes" in job.stdout, job.stdout[-3000:] + job.stderr[-2000:]

    state = Path(cluster["STATE_DIR"])
    sessions = {int((state / f"{name}.pid").read_text()) for name in COMPONENTS}
    sockets = listening_sockets(session_processes(sessions))

    names = [name for _, _, name in sockets]
    # Not vacuous: the GCS, both raylets, the dashboard (job submission) and the MLflow server listen.
    assert "gcs_server" in names and names.count("raylet") >= 4, sockets  # node + object manager each
    gcs_port = int(cluster["RAY_GCS_ADDRESS"].rsplit(":", 1)[1])
    dashboard_port = int(cluster["RAY_ADDRESS"].rsplit(":", 1)[1])
    mlflow_port = int(cluster["MLFLOW_TRACKING_URI"].rsplit(":", 1)[1])
    assert {gcs_port, dashboard_port, mlflow_port} <= {port for _, port, _ in sockets}, sockets
    exposed = [s for s in sockets if not on_loopback(s[0])]
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_ray_cli_through_the_launcher_reaches_the_loopback_cluster(cluster):
    env = os.environ | {key: cluster[key] for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    status = subprocess.run(
        [REPO_ROOT / ".venv" / "bin" / "python", "-m", "pipelines.common.ray_session", "status"]
        + ["--address", cluster["RAY_GCS_ADDRESS"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stdout[-2000:] + status.stderr[-2000:]
    assert f"{2 * LOCAL_CLUSTER_CPUS}.0 CPU" in status.stdout  # both nodes
