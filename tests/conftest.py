"""Shared fixtures: a real local Ray cluster, a real MLflow SQLite store, and data-file requirements."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")

# jobs/ are scripts, not a package: make them importable for tests that call their main().
sys.path.insert(0, str(REPO_ROOT))


def require_file(path: str | Path, install_hint: str) -> Path:
    """Return ``path`` if it exists; otherwise skip with how to get it, or fail under CI=true."""
    path = Path(path)
    if path.exists():
        return path
    message = f"{path} is missing: {install_hint}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: .ci/run must install it)")
    pytest.skip(message)


def opencv_video(name: str) -> Path:
    """A real video shipped by Debian's opencv-doc package (e.g. 'tree.avi', 'Megamind_bugy.avi')."""
    return require_file(OPENCV_DATA / name, "apt-get install -y opencv-doc")


@contextlib.contextmanager
def tiny_tmpfs(where: Path, reason: str) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted at ``where`` (a disk that fills on demand), unmounted after; skips with
    ``reason`` unless root, fails under CI=true (CI runs as root)."""
    import subprocess

    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI runs as root: a tmpfs is needed to fill a disk")
        pytest.skip(f"needs root to mount a 1 MiB tmpfs ({reason})")
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


# A fresh local cluster (address="local": never one a developer started with `ray start`), with four
# logical CPUs on a 2-core machine so Ray Train workers and Ray Data tasks do not starve each other.
RAY_INIT = {
    "address": "local",
    "num_cpus": 4,
    "include_dashboard": False,
    "log_to_driver": False,
    "configure_logging": False,
}


def ensure_ray():
    """Start the shared local Ray cluster unless one is running; tests that need their own (multi-node)
    cluster call ``ray.shutdown()`` first, and the next test that needs Ray starts a fresh one."""
    import ray

    from pipelines.common.ray_session import LOOPBACK, _loopback_node_address

    if not ray.is_initialized():
        with _loopback_node_address():  # listening on 127.0.0.1 only, as init_ray's local Ray does
            ray.init(**RAY_INIT, _node_ip_address=LOOPBACK)
    return ray


@pytest.fixture
def ray_local():
    """A real single-node Ray cluster, started once and reused by every test that asks for it."""
    return ensure_ray()


@pytest.fixture(scope="session")
def tiny_prepared_dataset(tmp_path_factory) -> Path:
    """Two training clips and one validation clip of 8 frames, 256x256 HR / 64x64 LR, prepared (BI x4)
    by the real pipeline; shared by the training, tuning and job tests."""
    from pipelines.data.prepare import PrepareConfig, prepare_dataset
    from pipelines.data.sample import render_sample_dataset

    ensure_ray()
    root = tmp_path_factory.mktemp("tiny")
    source = render_sample_dataset(root / "src", num_train_clips=2, num_val_clips=1, num_frames=8)
    prepare_dataset(PrepareConfig(source=str(source), output=str(root / "prepared")))
    return root / "prepared"


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """A real MLflow SQLite tracking store (and local artifact root) in a temporary folder."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def parse_exports(text: str) -> dict[str, str]:
    """``export KEY=VALUE`` lines -> ``{KEY: VALUE}``."""
    return dict(
        line.removeprefix("export ").split("=", 1) for line in text.splitlines() if line.startswith("export ")
    )


LOCAL_CLUSTER_CPUS = 2  # per node


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory):
    """infra/local_cluster.sh: a Ray head and a worker node on loopback plus an MLflow server (free ports,
    own state dir), shared by the job-submission and loopback tests; stopped at the end whatever happened.
    Yields the environment it prints (RAY_ADDRESS, MLFLOW_TRACKING_URI, auth) and its STATE_DIR."""
    import subprocess

    script = REPO_ROOT / "infra" / "local_cluster.sh"
    state = tmp_path_factory.mktemp("local_cluster")
    try:
        started = subprocess.run(
            [script, "start", "--state-dir", state, "--num-cpus", str(LOCAL_CLUSTER_CPUS)],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert started.returncode == 0, f"local_cluster.sh start failed:\n{started.stderr}"
        yield parse_exports(started.stdout) | {"STATE_DIR": str(state)}
    finally:
        subprocess.run([script, "stop", "--state-dir", state], capture_output=True, timeout=120)


def pytest_sessionfinish(session, exitstatus):
    """Stop this process's Ray while the interpreter is whole: left to the interpreter's exit, the
    teardown of Ray's core worker can crash the process (a segfault after every test passed)."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
