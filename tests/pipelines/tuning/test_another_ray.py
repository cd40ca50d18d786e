"""A search beside another Ray instance on the same machine (docs/tuning.md#another-ray-on-the-same-machine).

Ray Train's placement-group cleaner (what frees a trial's CPUs when ASHA stops it) asks the State API of
"the" local Ray from inside a Ray worker; with two Ray instances on the machine it used to find both, fail
("Found multiple active Ray instances") and leave the stopped trial's resources reserved. Here: a second
Ray (``python -m pipelines.common.ray_session start --head --block`` on loopback, stopped by its pid, never
``ray stop``, which would stop every Ray on the machine) runs while a job's own Ray (``init_ray``) asks,
from a worker, the State API the way the cleaner does (``is_actor_alive``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.slow

PROBE = """
import pathlib, sys, time

import ray
from pipelines.common.ray_session import init_ray

init_ray(num_cpus=1)
print("started", flush=True)
while not pathlib.Path(sys.argv[1]).exists():  # the other Ray starts now: the latest one on the machine
    time.sleep(0.5)


@ray.remote(num_cpus=0)
class Controller:  # stands for Ray Train's controller actor
    def ready(self):
        return True


@ray.remote(num_cpus=0)
def cleaner_check(actor_id):
    # what ray.train.v2's PlacementGroupCleaner calls, in a worker like the cleaner's actor
    from ray.train.v2._internal.state.util import is_actor_alive

    return is_actor_alive(actor_id=actor_id, timeout=60)


controller = Controller.remote()
ray.get(controller.ready.remote())
print("alive:", ray.get(cleaner_check.remote(controller._actor_id.hex())), flush=True)
ray.kill(controller)
print("after kill:", ray.get(cleaner_check.remote(controller._actor_id.hex())), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def second_ray(tmp_path: Path):
    """Another Ray head on this machine, on loopback, while in the block."""
    port = _free_port()
    log = open(tmp_path / "second_ray.log", "w")  # noqa: SIM115 - closed below
    head = subprocess.Popen(
        [
            sys.executable, "-m", "pipelines.common.ray_session", "start", "--head", "--block",
            "--port", str(port), "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
            "--include-dashboard", "false", "--disable-usage-stats",
        ],
        cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not _listening(port):
            assert head.poll() is None and time.monotonic() < deadline, (
                tmp_path / "second_ray.log"
            ).read_text()
            time.sleep(1)
        yield port
    finally:
        # --block: the head process stops its Ray processes when signalled; its own group only
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        log.close()


def test_ray_train_helpers_find_their_own_clusters_state_api_beside_another_ray(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    go = tmp_path / "go"
    job = subprocess.Popen(
        [sys.executable, "-c", PROBE, str(go)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=env,
    )  # fmt: skip
    try:
        assert job.stdout.readline().startswith("Ray dashboard:")
        assert job.stdout.readline().strip() == "started"
        with second_ray(tmp_path):
            go.touch()
            out, err = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
    # Before: "Found multiple active Ray instances ... Connecting to latest cluster" (the other one),
    # where the job's controller is unknown: alive False, and the cleaner frees a running run's resources.
    assert "Found multiple active Ray instances" not in err, err[-2000:]
    assert job.returncode == 0, err[-2000:]
    assert "alive: True" in out and "after kill: False" in out, out
