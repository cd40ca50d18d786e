"""jobs/profile_model.py: the profiling command line over vsr_models.profile."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jobs.profile_model import main
from vsr_models import build_model
from vsr_models.profile import count_parameters, flops_per_frame

REPO_ROOT = Path(__file__).resolve().parents[3]
TTVSR_TINY = {"mid_channels": 8, "num_extract_blocks": 1, "num_propagation_blocks": 1}


def test_cli_prints_parameters_and_flops_of_a_tiny_config(capsys):
    overrides = [f"--set={k}={v}" for k, v in TTVSR_TINY.items()]
    main(["--arch", "ttvsr", "--size", "64x64", "--frames", "4", *overrides])
    out = capsys.readouterr().out
    with torch.device("meta"):
        model = build_model("ttvsr", **TTVSR_TINY, reuse_mirror_flows=False)
    assert f"parameters: {count_parameters(model):,}" in out
    flops = float(re.search(r"FLOPs per frame: [\d.]+ T \(([\d.e+]+);", out)[1])
    assert flops == pytest.approx(flops_per_frame(model, (64, 64), frames=4), rel=1e-3)
    assert f"MACs per frame: {flops / 2e12:.4f} T" in out
    assert "'num_propagation_blocks': 1" in out


def test_cli_rejects_bad_sizes_and_unknown_config_keys(capsys):
    with pytest.raises(SystemExit):
        main(["--arch", "ttvsr", "--size", "180by320"])
    assert "size must be HxW" in capsys.readouterr().err
    assert main(["--arch", "vsrt", "--set", "blocks=3"]) == 2
    err = capsys.readouterr().err
    assert re.search("unknown vsrt config key.*blocks", err) and "Traceback" not in err


def test_job_help_runs_as_a_script():
    result = subprocess.run(
        [sys.executable, "jobs/profile_model.py", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--arch" in result.stdout and "--size" in result.stdout and "--set" in result.stdout
