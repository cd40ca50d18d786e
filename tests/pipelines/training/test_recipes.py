"""The released recipes live in YAML only: configs/<arch>.yaml is what a job trains without --config, and
it is exactly what the per-family experiment classes held as dataclass defaults before issue 20."""

from __future__ import annotations

import pytest

from pipelines.common.errors import ConfigError
from pipelines.training.config import (
    RECIPES,
    DataSection,
    Experiment,
    LossSection,
    OptimSection,
    RunSection,
    ScheduleSection,
    TrackingSection,
    TrainSection,
    load_experiment,
)


def test_the_ttvsr_recipe_file_is_the_old_ttvsr_defaults():
    assert load_experiment(None, arch="ttvsr") == Experiment(arch="ttvsr")


def test_the_vsrt_recipe_file_is_the_old_vsrt_defaults():
    old = Experiment(  # VSRTExperiment's field defaults before issue 20
        arch="vsrt",
        data=DataSection(num_frames=5, batch_size=4),
        optim=OptimSection(fix_spynet_iters=5000),
        schedule=ScheduleSection(periods=[300_000] * 4, restart_weights=[1.0, 0.5, 0.5, 0.5]),
        loss=LossSection(reduction="sum"),
        train=TrainSection(total_iters=1_200_000),
        run=RunSection(name="vsrt"),
        tracking=TrackingSection(registered_model="vsrt"),
    )
    assert load_experiment(None, arch="vsrt") == old


def test_a_config_file_changes_its_familys_recipe_where_it_says(tmp_path):
    partial = tmp_path / "vimeo.yaml"
    partial.write_text("arch: vsrt\ndata:\n  path: /mnt/shared/data/vimeo\n")
    cfg = load_experiment(partial)
    assert cfg.data.path == "/mnt/shared/data/vimeo"
    recipe = load_experiment(None, arch="vsrt")
    assert (cfg.data.num_frames, cfg.data.batch_size, cfg.loss, cfg.schedule) == (
        recipe.data.num_frames,
        recipe.data.batch_size,
        recipe.loss,
        recipe.schedule,
    )


def test_the_jobs_family_wins_over_the_files_and_one_is_needed(tmp_path):
    with pytest.raises(
        ConfigError, match=r"unknown config key 'model.num_frames'.*\(in .*vsrt_sample.yaml\)"
    ):
        load_experiment(RECIPES / "vsrt_sample.yaml", arch="ttvsr")
    no_family = tmp_path / "no_family.yaml"
    no_family.write_text("data:\n  path: /data\n")
    with pytest.raises(ConfigError, match="arch: no network family"):
        load_experiment(no_family)
