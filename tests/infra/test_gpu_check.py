"""The GPU check's pieces that run without a GPU: its command line, the CPU path of its training-step
check, the utilisation summary, and the image's CUDA library check refusing a CPU build of torch.
(The GPU figures themselves come only from a GPU: ``bash bench/gpu_check.sh``.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "bench"))  # the scripts import each other from there

import gpu_measure  # noqa: E402

TINY = [
    "model.mid_channels=4",
    "model.num_extract_blocks=1",
    "model.num_propagation_blocks=1",
    "data.num_frames=4",
    "optim.fix_spynet_iters=1",
    "train.total_iters=2",
]


def test_gpu_check_parses_its_command_line_and_without_a_gpu_exits_2_saying_so():
    help_text = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert help_text.returncode == 0 and "--cpu-smoke" in help_text.stdout
    if shutil.which("nvidia-smi") is not None:
        pytest.skip("this machine has nvidia-smi: the no-GPU exit is not what it does here")
    run = subprocess.run(
        [sys.executable, "bench/gpu_check.py"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert run.returncode == 2
    assert "nvidia-smi not found" in run.stderr


def test_cpu_path_of_the_step_check_runs_the_training_step_and_finds_no_host_sync():
    result = gpu_measure.step_check(TINY, use_gpu=False)
    assert result["ok"] and result["host_syncs"] == {}
    assert (result["frames"], result["batch"], result["lr_patch"]) == (4, 1, 64)
    assert gpu_measure.step_check_lines(result) == [
        "one training step on the CPU (4 frames of 64x64, batch 1): host-sync-like operations: none"
    ]


def test_utilisation_is_summarised_from_the_first_busy_sample():
    # 3 idle samples while Ray and the data start, then training with one dip
    summary = gpu_measure.utilisation_summary([0, 0, 0, 90, 100, 30, 95])
    assert summary == {
        "utilisation_median": 92.5,
        "utilisation_mean": 78.75,
        "utilisation_under_50_share": 0.25,
        "utilisation_samples": 4,
    }
    assert gpu_measure.utilisation_summary([0, 0]) == {}


@pytest.mark.skipif(bool(torch.version.cuda), reason="this torch is a CUDA build: the check would pass")
def test_image_build_check_refuses_a_torch_without_cuda_naming_the_index_to_use():
    run = subprocess.run(
        [sys.executable, "infra/check_image.py"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert run.returncode == 1
    assert run.stderr.strip() == (
        f"check_image: torch {torch.__version__} is not a CUDA build: install the wheel of the CUDA "
        "index (the Dockerfile's TORCH_INDEX_URL)"
    )
    dockerfile = (REPO_ROOT / "infra" / "Dockerfile").read_text()
    assert "COPY --chown=ray:users infra/check_image.py infra/check_image.py" in dockerfile
    assert "&& python infra/check_image.py" in dockerfile
