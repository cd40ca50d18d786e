"""The released recipes live in YAML only: configs/<arch>.yaml is what a job trains without --config, and
it is exactly what the per-family experiment classes held as dataclass defaults before issue 20."""

from __future__ import annotations

from pipelines.training.config import (
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
