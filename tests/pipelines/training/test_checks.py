"""What training refuses before any worker starts: untrusted checkpoints that would run code, and
everything the manifest and the config can tell will fail later (scale, crop sizes, workers, storage)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from pipelines.common.config import load_config
from pipelines.common.errors import ConfigError, DataError
from pipelines.data.manifest import open_dataset
from pipelines.training.config import Experiment
from pipelines.training.recipe import build_optimizer, lr_schedule
from pipelines.training.run import check_training_inputs, run_training
from pipelines.training.state import (
    TrainingState,
    check_checkpoints,
    restore_training_checkpoint,
    save_training_checkpoint,
)
from tests.conftest import REPO_ROOT
from vsr_models import build_model

TINY = {"mid_channels": 8, "num_extract_blocks": 1, "num_propagation_blocks": 1}
TEST_CONFIG = REPO_ROOT / "configs" / "ttvsr_test.yaml"


class RunsAShellCommand:
    """Unpickling this runs ``touch <marker>``: the doctored file a hostile writer of shared storage plants."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _checkpoint(folder):
    model = build_model("ttvsr", **TINY)
    optimizer = build_optimizer(model, Experiment(arch="ttvsr").optim)
    scheduler = lr_schedule(optimizer, Experiment(arch="ttvsr").schedule)
    save_training_checkpoint(folder, 0, model, optimizer, scheduler, TrainingState(iteration=2))
    return model, optimizer, scheduler


@pytest.mark.parametrize("doctored", ["rng_rank0.pt", "training_state.pt"])
def test_a_doctored_checkpoint_file_does_not_execute_and_is_a_clear_error(tmp_path, doctored):
    folder = tmp_path / "run" / "checkpoint_00000002"
    folder.mkdir(parents=True)
    model, optimizer, scheduler = _checkpoint(folder)
    marker = tmp_path / "pwned"
    torch.save({"state": RunsAShellCommand(marker)}, folder / doctored)

    with pytest.raises(DataError, match=f"{doctored}: not a loadable checkpoint file.*plain values only"):
        restore_training_checkpoint(folder, 0, model, optimizer, scheduler)
    with pytest.raises(DataError, match=doctored):
        check_checkpoints(tmp_path / "run")
    assert not marker.exists()


def test_resuming_a_run_with_a_doctored_checkpoint_stops_before_ray(
    tiny_prepared_dataset, tmp_path, mlflow_uri
):
    storage = tmp_path / "runs"
    folder = storage / "ttvsr_test" / "checkpoint_00000002"
    folder.mkdir(parents=True)
    _checkpoint(folder)
    marker = tmp_path / "pwned"
    torch.save(RunsAShellCommand(marker), folder / "rng_rank0.pt")
    cfg = load_config(
        Experiment, TEST_CONFIG, [f"data.path={tiny_prepared_dataset}", f"run.storage_path={storage}"]
    )
    with pytest.raises(DataError, match="rng_rank0.pt: not a loadable checkpoint file"):
        run_training(cfg)
    assert not marker.exists()


@pytest.mark.parametrize("removed", ["model.pt", "rng_rank0.pt"])
def test_a_checkpoint_missing_a_file_is_one_line_naming_it_and_the_fix(tmp_path, removed):
    older, newer = tmp_path / "run" / "checkpoint_00000002", tmp_path / "run" / "checkpoint_00000004"
    for folder in (older, newer):
        folder.mkdir(parents=True)
        _checkpoint(folder)
    (newer / removed).unlink()
    with pytest.raises(DataError) as refused:
        check_checkpoints(tmp_path / "run")
    message = str(refused.value)
    assert message == (
        f"checkpoint {newer} lacks {removed} (damaged or cut short): move that folder out of the run to "
        "resume from the checkpoint before it"
    )


def test_a_cut_short_checkpoint_list_of_ray_train_is_one_line(tmp_path):
    folder = tmp_path / "run" / "checkpoint_00000002"
    folder.mkdir(parents=True)
    _checkpoint(folder)
    snapshot = tmp_path / "run" / "checkpoint_manager_snapshot.json"
    snapshot.write_text(json.dumps({"checkpoint_results": [{"path": str(folder)}] * 3})[:40])
    with pytest.raises(DataError, match="list of the run's checkpoints is damaged .cut short.., so the run"):
        check_checkpoints(tmp_path / "run")


def _cfg(data, *overrides):
    return load_config(Experiment, TEST_CONFIG, [f"data.path={data}", *overrides])


def _copy_with_manifest(dataset, tmp_path, change):
    copy = tmp_path / "data"
    shutil.copytree(dataset, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_a_dataset_at_another_scale_is_refused_up_front(tiny_prepared_dataset, tmp_path):
    data = _copy_with_manifest(tiny_prepared_dataset, tmp_path, lambda m: m.update(scale=2))
    with pytest.raises(
        DataError, match="prepared at x2 but ttvsr upscales x4: prepare the data with --scale 4"
    ):
        check_training_inputs(_cfg(data), open_dataset(data))


def test_crops_larger_than_every_clip_and_more_workers_than_clips_are_refused(
    tiny_prepared_dataset, tmp_path
):
    manifest = open_dataset(tiny_prepared_dataset)
    storage = f"run.storage_path={tmp_path / 'runs'}"
    with pytest.raises(
        DataError, match="data.num_frames=9 frames of data.lr_patch=64.*the longest has 8 frames"
    ):
        check_training_inputs(_cfg(tiny_prepared_dataset, "data.num_frames=9", storage), manifest)
    with pytest.raises(DataError, match="data.lr_patch=128"):
        check_training_inputs(_cfg(tiny_prepared_dataset, "data.lr_patch=128", storage), manifest)
    with pytest.raises(DataError, match="2 training clips .* scaling.num_workers is 3"):
        check_training_inputs(_cfg(tiny_prepared_dataset, "scaling.num_workers=3", storage), manifest)
    check_training_inputs(_cfg(tiny_prepared_dataset, "scaling.num_workers=2", storage), manifest)


def test_a_storage_path_that_is_a_file_is_refused(tiny_prepared_dataset, tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    cfg = _cfg(tiny_prepared_dataset, f"run.storage_path={tmp_path / 'runs'}")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_training_inputs(cfg, open_dataset(tiny_prepared_dataset))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("scaling.num_workers=0", "scaling.num_workers must be at least 1"),
        ("scaling.cpus_per_worker=-1", "scaling.cpus_per_worker must be positive"),
        ("data.batch_size=0", "data.batch_size must be at least 1"),
        ("run.num_to_keep=0", "run.num_to_keep must be at least 1"),
    ],
)
def test_impossible_scaling_and_data_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Experiment, TEST_CONFIG, [override])
