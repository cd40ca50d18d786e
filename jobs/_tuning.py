"""The options of ``jobs/tune_ttvsr.py`` and ``jobs/tune_vsrt.py``, which differ by the model family they
search (:func:`main`'s ``arch``): a search YAML (``--config``, required) and the flags below."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pipelines.common.cli import command_parser, config_overrides, flag_overrides, option, run_job

OPTIONS = [
    option("--num-samples", key="num_samples", type=int, help="trials to draw (num_samples)"),
    option(
        "--evaluate",
        key="evaluate",
        metavar="MODEL",
        help="evaluate MODEL (models:/ttvsr@champion, a checkpoint) in every trial instead of training",
    ),
    option(
        "--champion",
        key="promote_champion",
        action="store_true",
        default=None,
        help="move the champion alias to the best trial if it beats the champion (promote_champion)",
    ),
    option(
        "--max-cluster-resources",
        metavar="NAME=N,...",
        help="the most the autoscaler can add up to, e.g. GPU=8,CPU=96: sizes how many trials run at once",
    ),
    option(
        "--cluster-config",
        metavar="FILE",
        help="read that maximum from a ray_cluster.yaml or KubeRay RayCluster / RayJob manifest",
    ),
    option(
        "--address",
        key="experiment.run.address",
        help="Ray cluster address (experiment.run.address); default: a local Ray",
    ),
    option(
        "--verify-data",
        key="experiment.data.verify",
        action="store_true",
        default=None,
        help="check every shard's sha256 once before the first trial (experiment.data.verify)",
    ),
    option(
        "--mlflow-uri",
        key="experiment.tracking.uri",
        help="MLflow tracking URI (experiment.tracking.uri); default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db",
    ),
]

if TYPE_CHECKING:
    from pipelines.tuning.config import SearchConfig


def parser(description: str | None = None) -> argparse.ArgumentParser:
    """``--config`` / ``--set`` / ``--verbose`` and :data:`OPTIONS`."""
    return command_parser(description, OPTIONS, set_example="experiment.optim.lr=1e-4")


def search_config(arch: str, args: argparse.Namespace) -> SearchConfig:
    """``--config`` with ``--set`` overrides, then the flags on top, for the model family ``arch``."""
    from pipelines.common.config import load_config
    from pipelines.tuning.config import SearchConfig
    from pipelines.tuning.resources import cluster_maximum

    maximum = cluster_maximum(args.cluster_config, args.max_cluster_resources)
    given = flag_overrides({"max_cluster_resources": maximum, "arch": arch})
    return load_config(SearchConfig, args.config, [*config_overrides(args, OPTIONS), *given])


def main(arch: str, argv: list[str] | None = None, description: str | None = None) -> int:
    """Command-line entry of ``jobs/tune_<arch>.py``: parse, load the search, run it, print the results."""
    from pipelines.tuning.run import run_search

    command = parser(description)
    args = command.parse_args(argv)
    if args.config is None:
        command.error(f"--config is required (e.g. configs/search/{arch}_*_sample.yaml)")
    return run_job(lambda: print(run_search(search_config(arch, args)).describe()))
