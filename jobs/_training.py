"""The options of ``jobs/train_ttvsr.py`` and ``jobs/train_vsrt.py`` (which differ by the model family they
train, :func:`main`'s ``arch``) and ``jobs/demo.py``: ``--config`` (default: the family's released recipe,
``configs/<arch>.yaml``), ``--set`` and the flags below, each overriding one field of the experiment."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pipelines.common.cli import Option, command_parser, config_overrides, option, run_job

OPTIONS = [
    option(
        "--num-workers", key="scaling.num_workers", type=int, help="Ray Train workers (scaling.num_workers)"
    ),
    option(
        "--gpus", type=int, help="train on N GPUs: N workers with one GPU each (scaling.use_gpu, num_workers)"
    ),
    option(
        "--address", key="run.address", help="Ray cluster address (run.address); default: start a local Ray"
    ),
    option(
        "--mlflow-uri",
        key="tracking.uri",
        help="MLflow tracking URI (tracking.uri); default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db",
    ),
    option("--name", key="run.name", help="run name (run.name); running a name again resumes that run"),
    option(
        "--storage-path",
        key="run.storage_path",
        help="where checkpoints go (run.storage_path); shared storage for multi-node",
    ),
    option(
        "--verify-data",
        key="data.verify",
        action="store_true",
        default=None,
        help="check every shard's sha256 before training (data.verify; in parallel Ray tasks); by default "
        "only the manifest, shard presence and sizes are checked",
    ),
    option(
        "--champion",
        key="tracking.force_champion",
        action="store_true",
        default=None,
        help="make the trained model champion whatever its score (tracking.force_champion); by default it "
        "must beat bicubic and the current champion on its validation clips",
    ),
]

if TYPE_CHECKING:
    from pipelines.training.config import Experiment


def parser(description: str | None, extra: Sequence[Option] = ()) -> argparse.ArgumentParser:
    """``--config`` / ``--set`` / ``--verbose``, :data:`OPTIONS` and a job's ``extra`` options."""
    return command_parser(description, [*OPTIONS, *extra])


def experiment(arch: str, args: argparse.Namespace) -> Experiment:
    """``--config`` (default ``configs/<arch>.yaml``) with ``--set`` overrides, then the flags on top.

    ``--gpus N`` is ``scaling.use_gpu=true`` and ``scaling.num_workers=N``.
    """
    from pipelines.common.errors import ConfigError
    from pipelines.training.config import load_experiment

    gpus = []
    if args.gpus is not None:
        if args.gpus < 1:
            raise ConfigError(f"--gpus must be at least 1, got {args.gpus}")
        if args.num_workers not in (None, args.gpus):
            raise ConfigError(
                f"--gpus {args.gpus} runs one worker per GPU; it contradicts --num-workers {args.num_workers}"
            )
        gpus = ["scaling.use_gpu=true", f"scaling.num_workers={args.gpus}"]
    return load_experiment(args.config, [*config_overrides(args, OPTIONS), *gpus], arch=arch)


def main(arch: str, argv: list[str] | None = None, description: str | None = None) -> int:
    """Command-line entry of ``jobs/train_<arch>.py``: parse, load the experiment, train, print the summary."""
    from pipelines.training.run import run_training

    args = parser(description).parse_args(argv)
    return run_job(lambda: print(run_training(experiment(arch, args)).describe()))
