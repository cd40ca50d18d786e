"""A 2-worker training run on the local (loopback) Ray opens no socket off loopback.

The listening sockets of every process this test started (its Ray: GCS, raylet, the Train controller and
workers, Ray Data tasks) are scanned while the run trains; the DDP rendezvous (torch's ``TCPStore`` on
rank 0, which binds every interface when torch creates it) and gloo's pairs are among them
(``pipelines/training/rendezvous.py``). Sockets are read with psutil (Ray vendors it).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import ray  # noqa: F401  (makes Ray's vendored psutil importable)

import psutil  # isort: skip

from pipelines.common.config import load_config
from pipelines.common.ray_session import is_loopback
from pipelines.training.config import Experiment
from pipelines.training.run import run_training

TEST_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "ttvsr_test.yaml"

pytestmark = pytest.mark.slow


def _descendants() -> dict[int, str]:
    """pid -> name (Ray's process titles, e.g. ``ray::RayTrainWorker``) of this process and its children."""
    found = {}
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            found[process.pid] = process.name() + " " + " ".join(process.cmdline()[:1])
        except psutil.Error:
            continue
    return found


def _listening(pids: dict[int, str]) -> set[tuple[str, int, str]]:
    """(ip, port, process) of the listening TCP sockets of ``pids``."""
    return {
        (c.laddr.ip, c.laddr.port, pids[c.pid])
        for c in psutil.net_connections("tcp")
        if c.pid in pids and c.status == psutil.CONN_LISTEN
    }


def test_two_worker_training_on_a_local_cluster_listens_on_loopback_only(
    tiny_prepared_dataset, tmp_path, ray_local
):
    cfg = load_config(
        Experiment,
        TEST_CONFIG,
        [
            f"data.path={tiny_prepared_dataset}",
            f"run.storage_path={tmp_path / 'runs'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "run.name=sockets",
            "scaling.num_workers=2",
            "scaling.cpus_per_worker=1",
            "train.total_iters=4",
            "train.val_every=4",
            "train.checkpoint_every=4",
        ],
    )
    seen: set[tuple[str, int, str]] = set()
    done = threading.Event()

    def scan() -> None:
        while not done.wait(0.2):
            seen.update(_listening(_descendants()))

    scanner = threading.Thread(target=scan, daemon=True)
    scanner.start()
    try:
        summary = run_training(cfg, register=False)
    finally:
        done.set()
        scanner.join()
    assert summary.iteration == 4
    workers = {s for s in seen if "TrainWorker" in s[2]}
    assert len({port for _, port, _ in workers}) >= 2, seen  # the scan did see the workers' sockets
    assert sorted(s for s in seen if not is_loopback(s[0])) == []
