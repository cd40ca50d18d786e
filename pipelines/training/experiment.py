"""Transitional names of :mod:`pipelines.training.config` for the modules not yet moved to it (issue 20).

``TTVSRExperiment`` / ``VSRTExperiment`` are :class:`~pipelines.training.config.Experiment` with ``arch``
preset; ``load_experiment(cls, path, overrides)`` loads ``cls.arch``'s. This module goes once nothing
imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.common.config import load_config
from pipelines.training.config import (
    DataSection,
    Experiment,
    LossSection,
    OptimSection,
    RunSection,
    ScalingSection,
    ScheduleSection,
    TrackingSection,
    TrainSection,
    ValSection,
    fit_schedule,
    resolve_paths,
    scaled_periods,
)
from pipelines.training.config import load_experiment as load_arch_experiment
from vsr_models import get_family

TTVSRConfig = get_family("ttvsr").config_class
VSRTConfig = get_family("vsrt").config_class


@dataclass
class TTVSRExperiment(Experiment):
    arch: str = "ttvsr"
    model: TTVSRConfig = field(default_factory=TTVSRConfig)


@dataclass
class VSRTExperiment(Experiment):
    arch: str = "vsrt"
    model: VSRTConfig = field(default_factory=VSRTConfig)


EXPERIMENTS: dict[str, type[Experiment]] = {"ttvsr": TTVSRExperiment, "vsrt": VSRTExperiment}


def load_experiment(cls: type[Experiment], path: str | Path | None, overrides: Sequence[str]) -> Experiment:
    if path is None:
        return load_arch_experiment(None, overrides, arch=cls.arch)
    return fit_schedule(load_config(cls, path, list(overrides)), list(overrides))


__all__ = [
    "EXPERIMENTS",
    "DataSection",
    "Experiment",
    "LossSection",
    "OptimSection",
    "RunSection",
    "ScalingSection",
    "ScheduleSection",
    "TTVSRExperiment",
    "VSRTExperiment",
    "TrackingSection",
    "TrainSection",
    "ValSection",
    "fit_schedule",
    "load_experiment",
    "resolve_paths",
    "scaled_periods",
]
