"""Transitional names of :mod:`pipelines.training.config` for the modules not yet moved to it (issue 20).

``TTVSRExperiment`` / ``VSRTExperiment`` are :class:`~pipelines.training.config.Experiment` with ``arch``
preset; ``load_experiment(cls, path, overrides)`` loads ``cls.arch``'s. This module goes once nothing
imports it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.common.cli import flag_overrides, job_parser
from pipelines.common.config import load_config
from pipelines.common.errors import ConfigError
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


# --- the training jobs' options, until jobs/ declares them ---


def experiment_parser(description: str | None = None) -> argparse.ArgumentParser:
    """A job parser with ``--config``/``--set`` plus the flags every training job shares."""
    return add_experiment_args(job_parser(description))


def add_experiment_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags every training job shares (each overrides one config field)."""
    parser.add_argument("--num-workers", type=int, help="Ray Train workers (scaling.num_workers)")
    parser.add_argument(
        "--gpus", type=int, help="train on N GPUs: N workers with one GPU each (scaling.use_gpu, num_workers)"
    )
    parser.add_argument("--address", help="Ray cluster address (run.address); default: start a local Ray")
    parser.add_argument(
        "--mlflow-uri",
        help="MLflow tracking URI (tracking.uri); default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db",
    )
    parser.add_argument("--name", help="run name (run.name); running a name again resumes that run")
    parser.add_argument(
        "--storage-path", help="where checkpoints go (run.storage_path); shared storage for multi-node"
    )
    parser.add_argument(
        "--verify-data",
        action="store_true",
        default=None,
        help="check every shard's sha256 before training (data.verify; in parallel Ray tasks); by default "
        "only the manifest, shard presence and sizes are checked",
    )
    parser.add_argument(
        "--champion",
        action="store_true",
        default=None,
        help="make the trained model champion whatever its score (tracking.force_champion); by default it "
        "must beat bicubic and the current champion on its validation clips",
    )
    return parser


def experiment_from_args(cls: type[Experiment], args: argparse.Namespace) -> Experiment:
    """Load ``--config`` with ``--set`` overrides, then apply the shared flags on top."""
    overrides = list(args.overrides)
    if args.gpus is not None:
        if args.gpus < 1:
            raise ConfigError(f"--gpus must be at least 1, got {args.gpus}")
        if args.num_workers not in (None, args.gpus):
            raise ConfigError(
                f"--gpus {args.gpus} runs one worker per GPU; it contradicts --num-workers {args.num_workers}"
            )
        overrides += ["scaling.use_gpu=true", f"scaling.num_workers={args.gpus}"]
    flags = {
        "scaling.num_workers": args.num_workers,
        "run.address": args.address,
        "tracking.uri": args.mlflow_uri,
        "run.name": args.name,
        "run.storage_path": args.storage_path,
        "data.verify": args.verify_data,
        "tracking.force_champion": args.champion,
    }
    return load_experiment(cls, args.config, overrides + flag_overrides(flags))


__all__ = [
    "EXPERIMENTS",
    "add_experiment_args",
    "experiment_from_args",
    "experiment_parser",
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
