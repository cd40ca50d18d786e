"""Every job turns a user error into one line on stderr that names the input and the fix, and exit status 2.

Each case runs the real command (``python jobs/<job>.py ...``) in a subprocess, as a user would, with a
corrupt shard (bytes flipped in a copy of a real prepared dataset), a config typo, a missing path, a bad
checkpoint or an unreadable input under ``--strict``, and checks that stderr is exactly one
``error: ...`` line with no traceback (for jobs that must start Ray first, Ray's own INFO / WARNING log
records may precede it: see :func:`assert_one_line_user_error`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT
from PIL import Image

import vsr_models

JOB_TIMEOUT_S = 300

# What the messages suggest, per kind of mistake (compared case-insensitively).
RE_PREPARE = ("prepare",)  # "Re-run prepare with the same --output ... or delete ... and prepare again"
KEY_FIXES = ("did you mean", "allowed keys")
CHECKPOINT_FIXES = ("--official", "models:/", "save_checkpoint")  # what --model accepts instead


# -- running a job -----------------------------------------------------------------------------------------


@pytest.fixture
def job_env(tmp_path) -> dict[str, str]:
    """The environment of the job subprocesses: an MLflow store of this test's own, no Ray cluster to join."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return env


def run(job: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, f"jobs/{job}", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )
    print(f"{job} {' '.join(args)}: exit {result.returncode} in {time.perf_counter() - started:.1f} s")
    return result


# One record of Ray's own logging (`2026-01-01 12:00:00,123<TAB>INFO worker.py:2029 -- Started a local Ray ...`).
RAY_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(INFO|WARNING) \S+:\d+ -- ")


def assert_one_line_user_error(
    result: subprocess.CompletedProcess,
    names: list[str],
    fixes: tuple[str, ...],
    ray_started: bool = False,
) -> str:
    """Exit 2, stderr exactly one ``error:`` line without traceback, naming every input and one fix.

    ``ray_started``: the job starts Ray before it can find this error (jobs/prepare_data.py starts Ray
    before it lists the source: video sources are probed in Ray tasks), and ``ray.init`` logs "Started a
    local Ray instance" to stderr; only such INFO / WARNING records of Ray's are allowed before the line.
    """
    shown = f"exit {result.returncode}\n--- stderr ---\n{result.stderr[-6000:]}"
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stderr, shown
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), shown
    if ray_started:
        assert all(RAY_LOG_RECORD.match(line) for line in lines[:-1]), shown
    else:
        assert len(lines) == 1, shown
    message = lines[-1]
    for name in names:
        # The input itself, not a longer name that contains it (`blocks` is not `num_extract_blocks`).
        assert re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", message), f"{name!r} not named in {message!r}"
    assert any(fix in message.lower() for fix in fixes), f"none of {fixes} (the fix) in {message!r}"
    return message


# -- inputs ------------------------------------------------------------------------------------------------


@pytest.fixture
def corrupt_dataset(tiny_prepared_dataset, tmp_path) -> tuple[Path, Path]:
    """A copy of the prepared dataset with 16 bytes flipped in the middle of one shard (same size)."""
    dataset = tmp_path / "prepared"
    shutil.copytree(tiny_prepared_dataset, dataset)
    shard = dataset / json.loads((dataset / "manifest.json").read_text())["shards"][0]["path"]
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    shard.write_bytes(bytes(data))
    return dataset, shard.resolve()


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    """A real checkpoint of a tiny TTVSR (so the model is never what a dataset case fails on)."""
    model = vsr_models.build_model("ttvsr", mid_channels=8, num_extract_blocks=1, num_propagation_blocks=1)
    return vsr_models.save_checkpoint(model, tmp_path / "tiny.pt")


@pytest.fixture
def bad_checkpoint(tmp_path) -> Path:
    """A file named model.pt holding random bytes."""
    path = tmp_path / "bad" / "model.pt"
    path.parent.mkdir()
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def write_frames(folder: Path, num_frames: int = 4, size: int = 32) -> list[Path]:
    """``folder/00000000.png ...``: random RGB frames."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(num_frames):
        paths.append(folder / f"{i:08d}.png")
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(paths[-1])
    return paths


# -- a corrupt shard ---------------------------------------------------------------------------------------


# The job's arguments; {data}: the corrupt copy, {tmp}: this test's folder, {checkpoint}: a real checkpoint.
CORRUPT_SHARD_ARGS = {
    "train_ttvsr.py": ["--config", "configs/ttvsr_test.yaml", "--set", "data.path={data}"]
    + ["--set", "run.storage_path={tmp}/runs"],
    # vsrt_sample fits the tiny dataset (8 frames >= model.num_frames 5, 64x64 LR = model.spatial_size).
    "train_vsrt.py": ["--config", "configs/vsrt_sample.yaml", "--set", "data.path={data}"]
    + ["--set", "run.storage_path={tmp}/runs"],
    # The search's base config (configs/ttvsr_sample.yaml) gets the data path through `experiment`.
    "tune_ttvsr.py": ["--config", "configs/tune_ttvsr_sample.yaml", "--set", "experiment.data.path={data}"]
    + ["--set", "experiment.run.storage_path={tmp}/runs"],
    "evaluate.py": ["--model", "{checkpoint}", "--data", "{data}"],
}


# train_vsrt.py shares train_ttvsr.py's flag and driver; each of these three starts Ray for the hashing.
@pytest.mark.parametrize(
    "job", ["train_ttvsr.py", "tune_ttvsr.py", "evaluate.py"], ids=lambda job: job.removesuffix(".py")
)
def test_job_corrupt_shard_is_one_line_exit_2_with_verify_data(
    job, corrupt_dataset, tiny_checkpoint, job_env, tmp_path
):
    """--verify-data: every shard's sha256, hashed in Ray tasks, before any MLflow work."""
    dataset, shard = corrupt_dataset
    fill = {"data": dataset, "tmp": tmp_path, "checkpoint": tiny_checkpoint}

    result = run(job, [a.format(**fill) for a in CORRUPT_SHARD_ARGS[job]] + ["--verify-data"], job_env)

    message = assert_one_line_user_error(result, [str(shard)], RE_PREPARE)
    assert "sha256" in message
    assert not (tmp_path / "mlflow.db").exists()  # the checksums are checked before any MLflow work


@pytest.mark.parametrize("job", list(CORRUPT_SHARD_ARGS), ids=lambda job: job.removesuffix(".py"))
def test_job_cut_short_shard_is_one_line_exit_2_at_start(
    job, corrupt_dataset, tiny_checkpoint, job_env, tmp_path
):
    """Without --verify-data the start check compares every shard's size with the manifest's (no hashing)."""
    dataset, shard = corrupt_dataset
    shard.write_bytes(shard.read_bytes()[:-100])
    fill = {"data": dataset, "tmp": tmp_path, "checkpoint": tiny_checkpoint}

    result = run(job, [a.format(**fill) for a in CORRUPT_SHARD_ARGS[job]], job_env)

    message = assert_one_line_user_error(result, [str(shard)], RE_PREPARE)
    assert "bytes but the manifest lists" in message
    assert not (tmp_path / "mlflow.db").exists()  # checked before any Ray or MLflow work


# -- a config typo -----------------------------------------------------------------------------------------

# job -> (its arguments, the YAML written to {yaml} or None, what the message must name); {tmp} holds a
# folder of frames (`frames`), {checkpoint} is a real checkpoint: the typo is the only mistake.
CONFIG_TYPOS = {
    "train_ttvsr.py": (
        ["--config", "configs/ttvsr_test.yaml", "--set", "train.totl_iters=5"],
        None,
        ["train.totl_iters", "configs/ttvsr_test.yaml"],
    ),
    "train_vsrt.py": (["--config", "{yaml}"], "train:\n  totl_iters: 5\n", ["train.totl_iters", "{yaml}"]),
    "tune_ttvsr.py": (
        ["--config", "configs/tune_ttvsr_sample.yaml", "--set", "experiment.train.totl_iters=5"],
        None,
        ["train.totl_iters"],
    ),
    "evaluate.py": (
        ["--model", "{checkpoint}", "--data", "{tmp}/prepared", "--set", "chanel=y"],
        None,
        ["chanel"],
    ),
    "prepare_data.py": (
        ["--config", "{yaml}", "--source", "{tmp}/frames", "--output", "{tmp}/prepared"],
        "clip_lenght: 50\n",
        ["clip_lenght", "{yaml}"],
    ),
    "infer.py": (
        ["{tmp}/frames", "{tmp}/out.mp4", "--model", "{checkpoint}", "--set", "tilee=3"],
        None,
        ["tilee"],
    ),
    "profile_model.py": (["--arch", "ttvsr", "--set", "blocks=3"], None, ["blocks"]),
    # The demo's default config; the typo stops it before it prepares or trains anything.
    "demo.py": (
        ["--set", "train.totl_iters=5", "--output", "{tmp}/demo"],
        None,
        ["train.totl_iters", "configs/ttvsr_sample.yaml"],
    ),
}


@pytest.mark.parametrize("job", list(CONFIG_TYPOS), ids=lambda job: job.removesuffix(".py"))
def test_job_config_typo_is_one_line_exit_2(job, tiny_checkpoint, job_env, tmp_path):
    args, yaml_text, names = CONFIG_TYPOS[job]
    config = tmp_path / "typo.yaml"
    if yaml_text is not None:
        config.write_text(yaml_text)
    write_frames(tmp_path / "frames")
    fill = {"yaml": config, "tmp": tmp_path, "checkpoint": tiny_checkpoint}

    result = run(job, [a.format(**fill) for a in args], job_env)

    assert_one_line_user_error(result, [n.format(**fill) for n in names], KEY_FIXES)
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "demo").exists()


# -- a missing path ----------------------------------------------------------------------------------------


def test_prepare_data_missing_source_is_one_line_exit_2(job_env, tmp_path):
    missing = tmp_path / "nowhere"
    result = run("prepare_data.py", ["--source", str(missing), "--output", str(tmp_path / "out")], job_env)
    assert_one_line_user_error(result, [str(missing)], ("check --source",))
    assert not (tmp_path / "out").exists()


def test_infer_missing_input_is_one_line_exit_2(tiny_checkpoint, job_env, tmp_path):
    missing = tmp_path / "missing.mp4"
    result = run(
        "infer.py", [str(missing), str(tmp_path / "out.mp4"), "--model", str(tiny_checkpoint)], job_env
    )
    assert_one_line_user_error(result, [str(missing)], ("pass a video file or a folder of frames",))
    assert not (tmp_path / "out.mp4").exists()


# -- a bad checkpoint --------------------------------------------------------------------------------------


def test_infer_bad_checkpoint_is_one_line_exit_2(bad_checkpoint, job_env, tmp_path):
    write_frames(tmp_path / "frames")
    result = run(
        "infer.py",
        [str(tmp_path / "frames"), str(tmp_path / "out.mp4"), "--model", str(bad_checkpoint)],
        job_env,
    )
    message = assert_one_line_user_error(result, [str(bad_checkpoint)], CHECKPOINT_FIXES)
    assert "weights_only" not in message  # never advise loading an untrusted file with pickle enabled
    assert not (tmp_path / "out.mp4").exists()


def test_evaluate_bad_checkpoint_is_one_line_exit_2(bad_checkpoint, tiny_prepared_dataset, job_env):
    # The shared dataset is only read (its checksums are verified, nothing is written).
    result = run(
        "evaluate.py", ["--model", str(bad_checkpoint), "--data", str(tiny_prepared_dataset)], job_env
    )
    message = assert_one_line_user_error(result, [str(bad_checkpoint)], CHECKPOINT_FIXES)
    assert "weights_only" not in message


# -- an unreadable input under --strict --------------------------------------------------------------------


# How much of one PNG is left: its first 20 bytes (PIL cannot read the size, so listing the source finds
# it) or its first half (the header is whole: decoding finds it, in a Ray Data task).
TRUNCATIONS = {"header": lambda size: 20, "pixels": lambda size: size // 2}


@pytest.mark.parametrize("truncated", sorted(TRUNCATIONS))
def test_prepare_data_strict_corrupt_input_is_one_line_exit_2(truncated, job_env, tmp_path):
    frames = write_frames(tmp_path / "src" / "clip_a") + write_frames(tmp_path / "src" / "clip_b")
    broken = frames[5]
    broken.write_bytes(broken.read_bytes()[: TRUNCATIONS[truncated](broken.stat().st_size)])
    args = ["--source", str(tmp_path / "src"), "--output", str(tmp_path / "out"), "--strict"]

    result = run("prepare_data.py", args, job_env)
    assert_one_line_user_error(result, [str(broken.resolve())], ("--strict",), ray_started=True)
    assert not (tmp_path / "out" / "manifest.json").exists()
