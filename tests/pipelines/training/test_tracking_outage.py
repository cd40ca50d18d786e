"""A tracking server that dies mid-run: a real ``mlflow server`` on 127.0.0.1 killed during a real training
run (Ray Train, tiny TTVSR) and started again on the same port once training has stepped on without it.

Before the background queue (pipelines/tracking/background.py) rank 0's first ``log_batch`` after the
kill blocked for minutes in MLflow's retries, so no iteration advanced while the server was away: the
watcher below gives up waiting, restarts the server, and the outage assertion fails (or the test's
timeout does).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipelines.common.config import load_config
from pipelines.data.manifest import open_dataset
from pipelines.tracking import RunTracker, mlflow_client
from pipelines.tracking.background import TrackingUnavailableError
from pipelines.tracking.server import KillServerAt, MlflowServer
from pipelines.training.config import Experiment
from pipelines.training.run import register_result, run_training

REPO_ROOT = Path(__file__).resolve().parents[3]
TEST_CONFIG = REPO_ROOT / "configs" / "ttvsr_test.yaml"
KILL_AT = 3  # the iteration after which the server dies
STEPS_WHILE_DOWN = 4  # iterations that must pass before it is started again
TOTAL_ITERS = 12

pytestmark = pytest.mark.slow


def read_timeline(path: Path) -> list[tuple[str, float]]:
    if not path.exists():
        return []
    return [(event, float(t)) for event, t in (line.split() for line in path.read_text().splitlines())]


@pytest.fixture(scope="module")
def outage_run(tiny_prepared_dataset, tmp_path_factory):
    """A 12-iteration run whose server dies after iteration 3 and returns once 4 more iterations passed."""
    workdir = tmp_path_factory.mktemp("outage")
    server = MlflowServer(workdir)
    server.start()
    timeline = workdir / "timeline.txt"
    cfg = load_config(
        Experiment,
        TEST_CONFIG,
        [
            f"data.path={tiny_prepared_dataset}",
            f"run.storage_path={workdir / 'runs'}",
            f"tracking.uri={server.uri}",
            "run.name=outage",
            f"train.total_iters={TOTAL_ITERS}",
            "train.val_every=4",
            "train.checkpoint_every=4",
            "run.max_failures=0",  # an outage must not cost a restart
            "tracking.system_metrics_interval=1",
        ],
    )
    events: dict[str, float] = {}

    def restart_when_training_moved_on() -> None:
        # Waits for the kill, then for STEPS_WHILE_DOWN iterations (at most 90 s: blocked code makes none).
        deadline = time.monotonic() + 600
        while server.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        server.process.wait()
        waited = time.monotonic() + 90
        while time.monotonic() < waited:
            if (
                sum(1 for i, _ in read_timeline(timeline) if i.isdigit() and int(i) > KILL_AT)
                >= STEPS_WHILE_DOWN
            ):
                break
            time.sleep(0.1)
        events["restarting"] = time.time()
        server.start()

    watcher = threading.Thread(target=restart_when_training_moved_on, daemon=True)
    watcher.start()
    try:
        summary = run_training(cfg, step_callback=KillServerAt(KILL_AT, server.process.pid, str(timeline)))
        watcher.join(180)
        yield cfg, server, summary, read_timeline(timeline), events
    finally:
        server.kill()


@pytest.mark.timeout(600)  # blocked logging (the defect) fails here rather than after the suite's 900 s
def test_training_steps_on_while_the_tracking_server_is_down_and_loses_no_metric(outage_run):
    cfg, server, summary, timeline, events = outage_run
    killed = dict(timeline)["killed"]
    during = [int(i) for i, t in timeline if i.isdigit() and killed <= t < events["restarting"]]
    assert len(during) >= STEPS_WHILE_DOWN, f"iterations while the server was down: {during}"
    assert summary.iteration == TOTAL_ITERS

    tracker = RunTracker.attach(server.uri, summary.mlflow_run_id)
    run = mlflow_client(server.uri).get_run(summary.mlflow_run_id)
    assert run.info.status == "FINISHED"
    # log_every 1: every step, including those logged while the server was away, is there exactly once
    assert [step for step, _ in tracker.metric_history("loss")] == list(range(1, TOTAL_ITERS + 1))
    # (registration logs the registered step's validation once more, as the LoggedModel's own)
    assert sorted({step for step, _ in tracker.metric_history("val/psnr")}) == [4, 8, 12]
    assert any(key.startswith("system/node0/") for key in run.data.metrics)
    assert summary.registered is not None and summary.registered.version == "1"
    assert run.data.tags["registered_iteration"] == str(summary.best_iteration)


@pytest.mark.timeout(300)
def test_registration_with_the_server_away_ends_with_the_checkpoint_and_the_command_that_registers_it(
    outage_run,
):
    import ray.train

    cfg, server, summary, _, _ = outage_run
    checkpoint = ray.train.Checkpoint.from_directory(summary.checkpoint_path)
    tracker = RunTracker.attach(server.uri, summary.mlflow_run_id)
    server.kill()
    with pytest.raises(TrackingUnavailableError) as refused:
        register_result(cfg, tracker, checkpoint, open_dataset(cfg.data.path), patience_s=3)
    message = str(refused.value)
    assert "\n" not in message and summary.checkpoint_path in message
    assert Path(summary.checkpoint_path, "model.pt").is_file()  # the run folder is intact
    command = message.split("register it with: ", 1)[1].split()
    assert command[:3] == ["python", "jobs/register_model.py", summary.checkpoint_path]

    server.start()
    # the command as printed, run from the repository root as a user would
    done = subprocess.run([sys.executable, *command[1:]], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"registered models:/{cfg.tracking.registered_model}/2" in done.stdout


def test_a_training_that_fails_while_the_server_is_away_ends_with_its_own_error(capsys):
    """The driver's failure path marks the run FAILED with one short attempt: no server listens on the
    port, and the job's error is still the training's one line, with a warning about the run's status."""
    from pipelines.common.errors import DataError
    from pipelines.training.run import end_unfinished_run

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    tracker = RunTracker.attach(closed, "0" * 32)
    for status in ("FAILED", "KILLED"):
        with pytest.raises(DataError, match="^data.path /nowhere: no manifest.json"):
            try:  # what _run_training does around trainer.fit()
                raise DataError("data.path /nowhere: no manifest.json")
            except DataError:
                end_unfinished_run(tracker, status)
                raise
        warning = capsys.readouterr().err
        assert f"MLflow run {'0' * 32} could not be marked {status}: the tracking server {closed}" in warning
    assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") is None  # fail-fast settings are restored
