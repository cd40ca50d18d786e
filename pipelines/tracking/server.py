"""A local ``mlflow server`` on 127.0.0.1: started as a subprocess, ready once ``/health`` answers.

For a single machine that wants the tracking server's behaviour (HTTP, served artifacts) without a
deployment, and for what exercises a tracking outage (``tests/pipelines/training/test_tracking_outage.py``,
``bench/bench_tracking_outage.py``): the server runs in a process group of its own, so :meth:`kill`
takes its workers with it, and :meth:`start` can bring it back on the same port with the same store
(``docs/cluster.md#tracking-server``).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite backend and served artifacts, all under ``folder``.

    The port is a free one chosen at construction and kept across restarts; ``uri`` is the tracking URI.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> float:
        """Start it and wait until ``/health`` answers; returns the seconds that took.

        Raises ``RuntimeError`` with the end of ``server.log`` if the server exits, ``TimeoutError`` if it
        does not answer within ``timeout`` seconds (it is killed then).
        """
        started = time.monotonic()
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                "--port", str(self.port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                "--artifacts-destination", str(self.folder / "mlartifacts"),
            ],
            stdout=open(self.folder / "server.log", "ab"),  # noqa: SIM115 (the child owns it)
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a group of its own: killed with its workers
        )  # fmt: skip
        while time.monotonic() < started + timeout:
            if self.process.poll() is not None:
                raise RuntimeError((self.folder / "server.log").read_text()[-2000:])
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except OSError:
                time.sleep(0.2)
        self.kill()
        raise TimeoutError(f"mlflow server on {self.uri} did not answer /health in {timeout:.0f} s")

    def kill(self) -> None:
        """SIGKILL its process group (no-op when not running)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@dataclasses.dataclass
class KillServerAt:
    """A training step callback that makes an outage: on rank 0, SIGKILL the process group
    ``server_group`` after ``iteration``, and append each iteration's time to ``timeline``
    (``<iteration> <time>`` lines, and ``killed <time>``)."""

    iteration: int
    server_group: int
    timeline: str

    def __call__(self, iteration: int, model: object, rank: int) -> None:
        if rank != 0:
            return
        with open(self.timeline, "a") as file:
            file.write(f"{iteration} {time.time()}\n")
            if iteration == self.iteration:
                os.killpg(self.server_group, signal.SIGKILL)
                file.write(f"killed {time.time()}\n")
