"""A careless or hostile training command ends in one line, before Ray starts where the config can tell,
and a diverged network stops the run without a checkpoint of NaN weights.

The run-level scenario is a real ``TorchTrainer.fit`` of the tiny TTVSR on the tiny prepared dataset.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest
import torch

from jobs._training import main
from pipelines.common.config import load_config
from pipelines.common.errors import ConfigError, TrainingDiverged
from pipelines.training.config import Experiment
from pipelines.training.run import run_training

REPO_ROOT = Path(__file__).resolve().parents[3]
TEST_CONFIG = REPO_ROOT / "configs" / "ttvsr_test.yaml"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=inf", "optim.lr must be a positive finite number, got inf"),
        ("optim.lr=.nan", "optim.lr must be a positive finite number, got nan"),
        ("optim.lr=0", "optim.lr must be a positive finite number, got 0.0"),
        ("optim.lr=-1e-4", "optim.lr must be a positive finite number, got -0.0001"),
        ("schedule.eta_min=nan", "schedule.eta_min must be a finite number, 0 or more, got nan"),
        ("optim.grad_clip_norm=inf", "optim.grad_clip_norm must be a positive finite number"),
        ("data.lr_patch=32", "data.lr_patch (32) must be at least 64"),  # TTVSR's smallest input
        ("run.name=..", "run.name must be printable ASCII and not '.' or '..'"),
        ("run.name=.", "run.name must be printable ASCII and not '.' or '..'"),
        ("run.name=caf\u00e9", "run.name must be printable ASCII"),
        ("run.name=" + "a" * 129, "run.name must be at most 128 characters, got 129"),
        ("run.name=../escape", "run.name must be a non-empty name without slashes"),
        ("scaling.num_workers=0", "scaling.num_workers must be at least 1"),
    ],
)
def test_bad_value_is_one_line_before_ray_starts(tmp_path, capsys, override, message):
    import ray

    ray.shutdown()  # so that "before Ray starts" is observable; the next test needing Ray starts it again
    argv = ["--config", str(TEST_CONFIG), "--storage-path", str(tmp_path / "runs"), "--set", override]
    assert main("ttvsr", [*argv, "--mlflow-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not ray.is_initialized()
    assert not (tmp_path / "runs").exists() and not (tmp_path / "m.db").exists()


@dataclasses.dataclass
class PoisonWeightsAt:
    """Set the weights after ``iteration`` to NaN, but SPyNet's (flows index the location maps): the next
    step's loss is NaN, as a diverged network's."""

    iteration: int

    def __call__(self, iteration, model, rank):
        if iteration == self.iteration:
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    if not name.startswith("spynet."):
                        parameter.fill_(float("nan"))


@pytest.mark.slow
def test_nan_loss_stops_the_run_naming_the_iteration_and_the_last_good_checkpoint(
    tiny_prepared_dataset, tmp_path, ray_local
):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the callback travels to the workers
    cfg = load_config(
        Experiment,
        TEST_CONFIG,
        [
            f"data.path={tiny_prepared_dataset}",
            f"run.storage_path={tmp_path / 'runs'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "run.name=diverges",
            "run.max_failures=0",
            "train.log_every=3",  # read back at 3 (finite) and 6; the checkpoint at 4 checks the window too
            "train.val_every=6",
            "train.checkpoint_every=2",
        ],
    )
    with pytest.raises(Exception) as failed:
        run_training(cfg, step_callback=PoisonWeightsAt(3), register=False)
    from pipelines.common.errors import find_user_error

    error = find_user_error(failed.value)
    assert isinstance(error, TrainingDiverged), failed.value
    message = str(error)
    assert "\n" not in message and "the loss was nan by iteration 4" in message
    assert f"the last good checkpoint is {tmp_path / 'runs' / 'diverges' / 'checkpoint_00000002'}" in message
    folders = sorted(p.name for p in (tmp_path / "runs" / "diverges").glob("checkpoint_0*"))
    assert folders == ["checkpoint_00000002"]  # the NaN weights of iteration 4 were never saved


def test_run_name_cannot_leave_the_storage_path():
    for name in ("..", ".", "a/../../b", "a\\b"):
        with pytest.raises(ConfigError):
            load_config(Experiment, TEST_CONFIG, [f"run.name={name}"])


def test_second_training_of_a_running_name_is_refused_and_a_crashed_one_leaves_no_lock(tmp_path, capsys):
    import signal
    import subprocess

    from pipelines.training.lock import LOCK_FILE, run_lock

    storage = tmp_path / "runs"
    holder = subprocess.Popen(  # a training of run "busy" in another process (the lock is all it needs)
        [
            sys.executable,
            "-c",
            "import sys, time; from pipelines.training.lock import run_lock\n"
            f"with run_lock({str(storage)!r}, 'busy'):\n    print('locked', flush=True); time.sleep(600)",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = ["--config", str(TEST_CONFIG), "--storage-path", str(storage), "--name", "busy"]
        assert main("ttvsr", [*argv, "--mlflow-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"run busy is already being trained (pid {holder.pid} on " in err
        assert "another name" in err and not (tmp_path / "m.db").exists()  # no MLflow run was touched
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: no cleanup runs
        holder.wait()
    assert (storage / "busy" / LOCK_FILE).exists()
    with run_lock(str(storage), "busy"):  # the kernel dropped the dead process's lock
        pass


@pytest.mark.slow
def test_sigterm_ends_training_as_ctrl_c_and_the_resumed_run_logs_each_step_once(
    tiny_prepared_dataset, tmp_path, ray_local
):
    import signal
    import subprocess
    import time

    from pipelines.tracking import find_run, mlflow_client
    from pipelines.training.state import latest_checkpoint_progress

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [
        sys.executable, str(REPO_ROOT / "jobs" / "train_ttvsr.py"), "--config", str(TEST_CONFIG),
        "--storage-path", str(tmp_path / "runs"), "--name", "stopped", "--mlflow-uri", uri,
        "--set", f"data.path={tiny_prepared_dataset}", "--set", "train.val_every=1000",
        "--set", "train.log_every=1", "--set", "train.checkpoint_every=2",
    ]  # fmt: skip
    job = subprocess.Popen(
        [*command, "--set", "train.total_iters=1000"],
        env=os.environ | {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address},
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def logged_steps() -> list[int]:
        run_id = find_run(uri, "ray-vsr-test", "stopped") if (tmp_path / "mlflow.db").exists() else None
        history = mlflow_client(uri).get_metric_history(run_id, "loss") if run_id else []
        return [m.step for m in history]

    def resumes_from() -> int:
        """The iteration Ray Train would resume the run from: its checkpoint once the snapshot lists it (a
        checkpoint folder exists a moment before Ray Train records it)."""
        try:
            return latest_checkpoint_progress(tmp_path / "runs" / "stopped", 1)[0]
        except Exception:  # the snapshot being written, or a checkpoint folder not complete yet
            return 0

    try:
        deadline = time.monotonic() + 300
        # stop it between two checkpoints, with steps logged after the last one
        while resumes_from() < 2 or max(logged_steps(), default=0) < 3:
            assert job.poll() is None and time.monotonic() < deadline, job.stderr.read()
            time.sleep(0.2)
        job.send_signal(signal.SIGTERM)  # as `ray job stop` or `kill` does
        _, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 130, stderr
    assert "interrupted: re-run the same command to resume" in stderr
    for crash in ("SIGABRT", "Aborted", "core dumped", "*** ", "terminate called"):
        assert crash not in stderr
    run_id = find_run(uri, "ray-vsr-test", "stopped")
    assert mlflow_client(uri).get_run(run_id).info.status == "KILLED"

    stopped_at = max(logged_steps())
    resumed = subprocess.run(
        [*command, "--set", f"train.total_iters={stopped_at + 2}"],
        env=os.environ | {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    steps = logged_steps()
    assert sorted(steps) == list(range(1, stopped_at + 3))  # every step once, the re-done ones too


@pytest.mark.slow
def test_full_disk_at_a_checkpoint_is_one_line_naming_the_path(tiny_prepared_dataset, tmp_path, ray_local):
    import subprocess

    from pipelines.common.errors import DataError, find_user_error
    from pipelines.training.state import check_checkpoints, checkpoint_folders
    from vsr_models import IncompatibleCheckpointError

    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs as root: a tmpfs is needed to fill a disk")
        pytest.skip("needs root to mount a 1 MiB tmpfs (the checkpoint of the tiny network is ~6 MB)")
    storage = tmp_path / "full"
    storage.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(storage)], check=True)
    try:
        cfg = load_config(
            Experiment,
            TEST_CONFIG,
            [
                f"data.path={tiny_prepared_dataset}",
                f"run.storage_path={storage}",
                f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                "run.name=full",
                "run.max_failures=0",
                "train.total_iters=2",
                "train.val_every=2",
            ],
        )
        with pytest.raises(Exception) as failed:
            run_training(cfg, register=False)
        error = find_user_error(failed.value)
        assert isinstance(error, DataError), failed.value
        message = str(error)
        assert "\n" not in message and message.startswith("no space left on the device while writing")
        assert str(storage / "full") in message and "checkpoint of iteration 2" in message
        # Ray Train copies a checkpoint into its folder in place: the cut-short one (model.pt, ~6 MB, cannot
        # fit) is refused in one line before any worker would resume from it
        (cut,) = checkpoint_folders(storage / "full")
        with pytest.raises((DataError, IncompatibleCheckpointError)) as damaged:  # both user errors
            check_checkpoints(storage / "full")
        assert "\n" not in str(damaged.value) and cut.name in str(damaged.value)
    finally:
        subprocess.run(["umount", "-l", str(storage)], check=False)
