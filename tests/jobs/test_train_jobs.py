"""The training, evaluation and demo commands: --help, config errors and a missing dataset fail clearly
(before any Ray or MLflow work), and the shared flags land in the right config fields."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobs._training import experiment, main, parser
from pipelines.common.config import ConfigError
from pipelines.training.config import load_experiment

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (
            "train_ttvsr.py",
            [
                "--config",
                "--set",
                "--num-workers",
                "--gpus",
                "--address",
                "--mlflow-uri",
                "--name",
                "--storage-path",
                "TTVSR",
            ],
        ),
        ("train_vsrt.py", ["--config", "--set", "--gpus", "--storage-path", "VSR-Transformer"]),
        ("evaluate.py", ["--model", "--data", "--channel", "--mlflow-uri", "bicubic"]),
        ("demo.py", ["--config", "--output", "ttvsr_sample.yaml"]),
    ],
)
def test_help_describes_the_options(job, expected):
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "jobs" / job), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    for word in expected:
        assert word in done.stdout


def run_main(arch, capsys, *argv: str) -> str:
    """``jobs/train_*.py`` in process; returns stderr of the expected exit with status 2 (one line)."""
    assert main(arch, list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_unknown_config_key_names_the_key_and_the_allowed_keys(tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("optim:\n  learning_rate: 1.0e-4\n")
    err = run_main("ttvsr", capsys, "--config", str(config))
    assert "optim.learning_rate" in err and str(config) in err
    assert "lr, betas, weight_decay, spynet_lr_mult, fix_spynet_iters, grad_clip_norm" in err


def test_mistyped_model_key_lists_the_networks_hyperparameters(capsys):
    err = run_main("ttvsr", capsys, "--set", "model.mid_channel=8")
    assert "model.mid_channel" in err and "mid_channels" in err and "token_scales" in err


def test_wrong_type_names_the_field_and_the_expected_type(capsys):
    err = run_main("ttvsr", capsys, "--set", "train.total_iters=lots")
    assert "train.total_iters" in err and "int" in err and "lots" in err


def test_vsrt_crops_must_match_its_fixed_patch_and_sequence(capsys):
    err = run_main("vsrt", capsys, "--set", "data.lr_patch=32")
    assert "data.lr_patch (32) must equal model.spatial_size (64)" in err


def test_missing_dataset_names_the_prepare_command(tmp_path, capsys):
    missing = tmp_path / "nothing_here"
    err = run_main(
        "ttvsr", capsys, "--set", f"data.path={missing}", "--mlflow-uri", f"sqlite:///{tmp_path}/m.db"
    )
    assert f"no prepared dataset at {missing}" in err
    assert f"python jobs/prepare_data.py --dataset sample --output {missing}" in err
    assert not (tmp_path / "m.db").exists()  # failed before touching MLflow


def parse(arch, *argv: str):
    return experiment(arch, parser(None).parse_args(list(argv)))


def test_shared_flags_override_the_config_file():
    cfg = parse(
        "ttvsr",
        "--config", str(REPO_ROOT / "configs" / "ttvsr_reds4.yaml"),
        "--gpus", "2", "--name", "001", "--storage-path", "/mnt/runs", "--address", "auto",
        "--mlflow-uri", "http://head:5000", "--set", "optim.lr=1e-4",
    )  # fmt: skip
    assert (cfg.scaling.use_gpu, cfg.scaling.num_workers) == (True, 2)
    assert cfg.run.name == "001"  # a name that looks like a number stays a string
    assert (cfg.run.storage_path, cfg.run.address, cfg.tracking.uri) == (
        "/mnt/runs",
        "auto",
        "http://head:5000",
    )
    assert cfg.optim.lr == 1e-4 and cfg.model.num_propagation_blocks == 60 and cfg.data.num_frames == 50


def test_champion_flag_forces_the_alias_and_is_off_by_default():
    assert parse("ttvsr", "--champion").tracking.force_champion is True
    assert parse("ttvsr").tracking.force_champion is False


def test_overriding_one_field_of_a_section_keeps_the_recipes_other_defaults():
    vsrt = parse("vsrt", "--set", "data.path=/mnt/shared/data/vimeo")  # no --config
    assert (vsrt.data.path, vsrt.data.num_frames, vsrt.data.batch_size) == ("/mnt/shared/data/vimeo", 5, 4)
    assert parse("vsrt", "--set", "train.log_every=7").train.total_iters == 1_200_000


def test_gpus_and_a_different_worker_count_contradict():
    with pytest.raises(ConfigError, match="--gpus 2 runs one worker per GPU"):
        parse("ttvsr", "--gpus", "2", "--num-workers", "3")


def test_defaults_are_the_released_recipes():
    ttvsr, vsrt = (
        load_experiment(None, arch="ttvsr"),
        load_experiment(None, arch="vsrt"),
    )  # configs/<arch>.yaml
    assert (ttvsr.loss.reduction, ttvsr.loss.eps, ttvsr.optim.betas) == ("mean", 1e-12, (0.9, 0.99))
    assert (ttvsr.schedule.periods, ttvsr.schedule.eta_min, ttvsr.optim.fix_spynet_iters) == (
        [400_000],
        1e-7,
        5000,
    )
    assert (ttvsr.data.num_frames, ttvsr.data.lr_patch, ttvsr.optim.spynet_lr_mult) == (50, 64, 0.125)
    assert (vsrt.loss.reduction, vsrt.data.num_frames, vsrt.data.batch_size) == ("sum", 5, 4)
    assert vsrt.schedule.periods == [300_000] * 4 and vsrt.schedule.restart_weights == [1.0, 0.5, 0.5, 0.5]
    assert (vsrt.tracking.registered_model, ttvsr.tracking.registered_model) == ("vsrt", "ttvsr")
    assert (vsrt.run.name, ttvsr.run.name, vsrt.train.total_iters, ttvsr.train.total_iters) == (
        "vsrt",
        "ttvsr",
        1_200_000,
        400_000,
    )
    assert (vsrt.model.num_frames, vsrt.model.spatial_size, ttvsr.model.num_propagation_blocks) == (5, 64, 60)


def test_zero_workers_is_refused_before_anything_runs(tmp_path, capsys):
    err = run_main(
        "ttvsr", capsys, "--num-workers", "0", "--mlflow-uri", f"sqlite:///{tmp_path}/m.db",
        "--storage-path", str(tmp_path / "runs"),
    )  # fmt: skip
    assert "scaling.num_workers must be at least 1, got 0" in err
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "runs").exists()
