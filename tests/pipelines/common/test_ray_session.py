"""init_ray: a new local Ray listens on loopback only, and joining a (loopback) cluster by address works.

The Ray runs in a fresh Python process: this test session may already be connected to a Ray of its
own. Sockets are read with psutil (Ray vendors it: importable once ``ray`` is imported).
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import os
import subprocess
import sys

import pytest
import ray
import ray.scripts.scripts
from conftest import REPO_ROOT
from ray._private import services

from pipelines.common.ray_session import _KEEP_LOOPBACK_ENV, _loopback_node_address, is_loopback


def on_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1 or an IPv4-mapped 127.x address (independent of the code under test)."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


# Prints, as JSON on its last line, what listens in the process tree of a Ray started by init_ray()
# (after a task and an actor ran), and the same for a second driver that joined it by address.
LISTENERS = """
import json, os, socket, sys
import ray, psutil

def listeners(root):
    pids = {root.pid} | {p.pid for p in root.children(recursive=True)}
    found = []
    for c in psutil.net_connections("inet"):
        listening = c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr)
        if c.pid in pids and listening:
            try:
                name = psutil.Process(c.pid).name()
            except psutil.Error:
                name = "?"
            found.append([c.laddr.ip, c.laddr.port, name])
    return found
"""

START = (
    LISTENERS
    + """
from pipelines.common.ray_session import init_ray
init_ray(num_cpus=1)

@ray.remote
class Counter:
    def __init__(self):
        self.n = 0
    def add(self):
        self.n += 1
        return self.n

counter = Counter.remote()
assert ray.get(ray.remote(lambda: 41).remote()) + ray.get(counter.add.remote()) == 42
node_id = ray.get_runtime_context().get_node_id()
gcs = ray.get_runtime_context().gcs_address
joined = __import__("subprocess").run(
    [sys.executable, "-c", sys.argv[1], gcs], capture_output=True, text=True, timeout=120
)
assert joined.returncode == 0, joined.stderr[-3000:]
print(json.dumps({
    "node_ip": ray.util.get_node_ip_address(),
    "gcs": gcs,
    "node_id": node_id,
    "sockets": listeners(psutil.Process()),
    "joined": json.loads(joined.stdout.strip().splitlines()[-1]),
}))
"""
)

JOIN = (
    LISTENERS
    + """
from pipelines.common.ray_session import init_ray
init_ray(sys.argv[1])
node_id = ray.get(ray.remote(lambda: ray.get_runtime_context().get_node_id()).remote())
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address, "node_id": node_id,
                  "sockets": listeners(psutil.Process())}))
"""
)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("::ffff:10.0.0.5", False),
        ("head-node", False),
    ],
)
def test_is_loopback(host, expected):
    assert is_loopback(host) is expected


def test_loopback_fix_keeps_loopback_hosts_only_and_is_undone_on_exit(monkeypatch):
    monkeypatch.delenv(_KEEP_LOOPBACK_ENV, raising=False)
    original = services.resolve_ip_for_localhost

    with _loopback_node_address():
        assert services.resolve_ip_for_localhost("127.0.0.1") == "127.0.0.1"
        assert services.resolve_ip_for_localhost("localhost") == "127.0.0.1"
        assert services.resolve_ip_for_localhost("10.1.2.3") == "10.1.2.3"  # Ray's own function
        assert services.canonicalize_bootstrap_address("127.0.0.1:6379") == "127.0.0.1:6379"
        assert os.environ[_KEEP_LOOPBACK_ENV] == "0"  # for the Ray processes started meanwhile

    assert services.resolve_ip_for_localhost is original
    assert _KEEP_LOOPBACK_ENV not in os.environ


def test_ray_still_resolves_loopback_where_the_fix_expects_it():
    """The fix replaces a module attribute; a Ray that imports the function by name would bypass it
    (the socket tests below would then fail: this says why)."""
    from ray._private import worker

    assert "services.resolve_ip_for_localhost(_node_ip_address)" in inspect.getsource(worker.init)
    start = ray.scripts.scripts.start.callback
    assert "services.resolve_ip_for_localhost(node_ip_address)" in inspect.getsource(start)
    assert "resolve_ip_for_localhost(host)" in inspect.getsource(services.canonicalize_bootstrap_address)
    assert "ENABLE_RAY_CLUSTER = env_bool(" in inspect.getsource(ray._private.ray_constants)
    assert _KEEP_LOOPBACK_ENV == ray._private.ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR


@pytest.mark.slow
def test_new_local_ray_listens_on_loopback_only_and_a_driver_joins_it_by_address():
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env.pop(_KEEP_LOOPBACK_ENV, None)  # the fix must come from init_ray, not from this environment
    result = subprocess.run(
        [sys.executable, "-c", START, JOIN],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["node_ip"] == "127.0.0.1"
    assert report["gcs"].startswith("127.0.0.1:")
    names = {name for _, _, name in report["sockets"]}
    # Not vacuous: the GCS, the raylet (node and object manager), the driver and the actor's worker.
    assert {"gcs_server", "raylet", "ray::Counter"} <= names, names
    exposed = [s for s in report["sockets"] if not on_loopback(s[0])]
    assert not exposed, f"listening beyond loopback: {exposed}"

    joined = report["joined"]
    assert joined["gcs"] == report["gcs"] and joined["node_id"] == report["node_id"]
    assert joined["sockets"], "the joined driver's own core worker server"
    exposed = [s for s in joined["sockets"] if not on_loopback(s[0])]
    assert not exposed, f"joined driver listening beyond loopback: {exposed}"


@pytest.mark.slow
def test_the_test_suites_shared_ray_is_on_loopback_too(ray_local):
    import psutil  # Ray's vendored copy

    ray_processes = {}
    for process in psutil.Process().children(recursive=True):
        try:
            name = process.name()
        except psutil.Error:  # exited meanwhile
            continue
        if name in ("gcs_server", "raylet") or name.startswith("ray::"):
            ray_processes[process.pid] = name
    sockets = [
        (c.laddr.ip, c.laddr.port, ray_processes[c.pid])
        for c in psutil.net_connections("inet")
        if c.pid in ray_processes and c.status == psutil.CONN_LISTEN
    ]

    assert ray_local.util.get_node_ip_address() == "127.0.0.1"
    assert "gcs_server" in {name for _, _, name in sockets}, sockets
    assert not [s for s in sockets if not on_loopback(s[0])], sockets
