"""jobs/prepare_data.py: help, a real end-to-end run in a subprocess, and one-line user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
JOB = REPO_ROOT / "jobs" / "prepare_data.py"


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(JOB), *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


def _tiny_clips(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for clip in ("calendar", "city"):
        (root / clip).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (18, 20, 3), dtype=np.uint8)).save(
                root / clip / f"{i:03d}.png"
            )
    return root


def test_help_lists_the_options():
    result = _run("--help", timeout=60)
    assert result.returncode == 0
    for option in (
        "--source",
        "--dataset",
        "--output",
        "--degradation",
        "--scale",
        "--strict",
        "--address",
        "--set",
    ):
        assert option in result.stdout


def test_end_to_end_on_a_tiny_folder_dataset(tmp_path):
    source = _tiny_clips(tmp_path / "vid")
    out = tmp_path / "prepared"
    result = _run(
        "--source", str(source), "--output", str(out), "--scale", "2", "--any-scale", "--num-cpus", "2",
        "--set", "shard_size=1", "--set", "splits.val_clips=[city]",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for label in ("clips", "frames", "bytes", "seconds", "frames/s (this run)", "quarantined inputs"):
        assert label in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["scale"] == 2 and manifest["degradation"] == "BI"
    assert manifest["splits"] == {"train": {"clips": 1, "frames": 3}, "val": {"clips": 1, "frames": 3}}
    assert manifest["clips"][0]["hr_size"] == [18, 20] and manifest["clips"][0]["lr_size"] == [9, 10]


def test_user_mistakes_exit_2_with_one_message(tmp_path):
    result = _run("--source", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out"), "--num-cpus", "1")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("nowhere: the source does not exist; check --source")
    result = _run(
        "--source", str(tmp_path), "--output", str(tmp_path / "out"), "--set", "shard_sise=3", timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown config key 'shard_sise'. Did you mean 'shard_size'?")
    assert "Traceback" not in result.stderr
    result = _run(
        "--source", str(tmp_path), "--output", str(tmp_path / "o"), "--degradation", "BD", "--scale", "2"
    )
    assert result.returncode == 2 and "BD' is defined for scale 4 only" in result.stderr
    result = _run("--source", str(tmp_path), "--output", str(tmp_path / "o"), "--scale", "5", timeout=60)
    assert (
        result.returncode == 2
        and "both networks upscale x4" in result.stderr
        and "--any-scale" in result.stderr
    )


def _many_clips(root: Path, count: int) -> Path:
    rng = np.random.default_rng(1)
    for c in range(count):
        (root / f"clip{c:02d}").mkdir(parents=True)
        base = rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)
        for i in range(8):
            Image.fromarray(np.roll(base, i, axis=1)).save(root / f"clip{c:02d}" / f"{i:03d}.png")
    return root


def _interrupt(args: list[str], out: Path, sig: int, after_records: int) -> None:
    """Start the job, send ``sig`` once ``after_records`` shards are recorded, wait for it to end."""
    import signal
    import time

    job = subprocess.Popen([sys.executable, str(JOB), *args], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while len(list(out.glob("shards/*/*.done.json"))) < after_records and job.poll() is None:
        assert time.monotonic() < deadline, "no shard was recorded in 2 minutes"
        time.sleep(0.02)
    job.send_signal(sig)
    try:
        job.wait(timeout=60)
    except subprocess.TimeoutExpired:
        job.kill()
        job.wait()
    if sig == signal.SIGINT:
        assert job.returncode != 0
    assert not (out / "manifest.json").is_file(), (
        "the job finished before the signal: nothing was interrupted"
    )


def test_a_driver_stopped_by_ctrl_c_then_killed_then_rerun_gives_the_same_dataset(tmp_path):
    """SIGINT, then SIGKILL of the driver mid-job; the same command then finishes with the shards of an
    uninterrupted run (same checksums), and no temporary or partial file is left."""
    import signal

    source = _many_clips(tmp_path / "src", 16)
    common = ["--source", str(source), "--num-cpus", "2", "--set", "shard_size=1"]
    reference, out = tmp_path / "reference", tmp_path / "interrupted"
    assert _run(*common, "--output", str(reference)).returncode == 0
    args = [*common, "--output", str(out)]
    _interrupt(args, out, signal.SIGINT, after_records=1)
    _interrupt(args, out, signal.SIGKILL, after_records=len(list(out.glob("shards/*/*.done.json"))) + 1)
    rerun = _run(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    def shards(folder: Path) -> dict:
        return {s["path"]: s["sha256"] for s in json.loads((folder / "manifest.json").read_text())["shards"]}

    assert shards(out) == shards(reference) and len(shards(out)) == 16
    assert not [p.name for p in out.rglob("*") if ".tmp-" in p.name]
