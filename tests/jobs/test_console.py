"""What a training job prints: the project's lines (the dashboard, the schedule, progress, validation, the
summary), with Ray's, Ray Data's and MLflow's own messages in the libraries' log file
(pipelines/common/console.py). A real run of jobs/train_ttvsr.py in a subprocess, with its own local Ray."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
RAY_PREFIX = re.compile(r"^\((?:RayTrainWorker|[\w.]+) pid=\d+(?:, ip=[\d.]+)?\)\s*")
# What the project itself prints (pipelines/training/run.py, loop.py, pipelines/common/ray_session.py)
PROJECT_LINE = re.compile(
    r"^(global batch: |Ray dashboard: |schedule: |iter \d+|run \w+: \d+ iterations|best validation |"
    r"MLflow run |registered models:/|resumed from )"
)

pytestmark = pytest.mark.slow


def test_a_training_run_prints_the_projects_lines_and_logs_the_libraries(tiny_prepared_dataset, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "jobs" / "train_ttvsr.py"),
            "--config", str(REPO_ROOT / "configs" / "ttvsr_test.yaml"),
            "--set", f"data.path={tiny_prepared_dataset}",
            "--storage-path", str(tmp_path / "runs"),
            "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
        ],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [
        RAY_PREFIX.sub("", ANSI.sub("", line)).strip() for line in (done.stdout + done.stderr).splitlines()
    ]
    lines = [line for line in lines if line]
    others = [line for line in lines if not PROJECT_LINE.match(line)]
    assert len(others) <= 2, "\n".join(others)  # before: 212 of 228 lines (tqdm installed), 16 the project's
    assert sum(line.startswith("iter ") for line in lines) >= 6  # every iteration's progress line
    dashboard = next(line for line in lines if line.startswith("Ray dashboard: http://127.0.0.1:"))
    library_log = Path(dashboard.split("own messages: ", 1)[1].split(" (--verbose", 1)[0])
    text = library_log.read_text()
    assert "Successfully registered model 'ttvsr_test'" in text  # MLflow's print, not on the console
    assert "TrainController" in text  # Ray Train's controller's messages
