"""The installed commands: ``[project.scripts]`` in pyproject.toml points each at a function here.

``ray-vsr-train-ttvsr ARGS`` is ``python jobs/train_ttvsr.py ARGS`` (the scripts stay, for
``ray job submit --working-dir . -- python jobs/...``, which runs them in a copy of the working folder):

=========================  ============================  =========================
command                    script                        stage
=========================  ============================  =========================
``ray-vsr-prepare``        ``jobs/prepare_data.py``      pipelines.data.prepare
``ray-vsr-train-ttvsr``    ``jobs/train_ttvsr.py``       pipelines.training
``ray-vsr-train-vsrt``     ``jobs/train_vsrt.py``        pipelines.training
``ray-vsr-tune-ttvsr``     ``jobs/tune_ttvsr.py``        pipelines.tuning
``ray-vsr-tune-vsrt``      ``jobs/tune_vsrt.py``         pipelines.tuning
``ray-vsr-evaluate``       ``jobs/evaluate.py``          pipelines.evaluation
``ray-vsr-infer``          ``jobs/infer.py``             pipelines.inference
``ray-vsr-profile``        ``jobs/profile_model.py``     pipelines.inference
``ray-vsr-register``       ``jobs/register_model.py``    pipelines.tracking
``ray-vsr-demo``           ``jobs/demo.py``              pipelines.demo
=========================  ============================  =========================

A command's ``--help`` is its script's docstring (examples included), read from the checkout the project
is installed from (``pip install -e .``) without running the script.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from pipelines.common.cli import run_job

REPO_ROOT = Path(__file__).resolve().parents[1]

COMMANDS = {
    "ray-vsr-prepare": "prepare_data",
    "ray-vsr-train-ttvsr": "train_ttvsr",
    "ray-vsr-train-vsrt": "train_vsrt",
    "ray-vsr-tune-ttvsr": "tune_ttvsr",
    "ray-vsr-tune-vsrt": "tune_vsrt",
    "ray-vsr-evaluate": "evaluate",
    "ray-vsr-infer": "infer",
    "ray-vsr-profile": "profile_model",
    "ray-vsr-register": "register_model",
    "ray-vsr-demo": "demo",
}
"""Installed command -> its script under ``jobs/`` (the same names as ``[project.scripts]``)."""


def job_help(script: str) -> str | None:
    """The docstring of ``jobs/<script>.py`` (its ``--help`` text), parsed, not run; None without a checkout."""
    path = REPO_ROOT / "jobs" / f"{script}.py"
    return ast.get_docstring(ast.parse(path.read_text()), clean=False) if path.is_file() else None


def _argv(argv: list[str] | None) -> list[str]:
    return sys.argv[1:] if argv is None else argv


def prepare(argv: list[str] | None = None) -> int:
    from pipelines.data.prepare.job import main

    return main(_argv(argv), description=job_help("prepare_data"))


def train_ttvsr(argv: list[str] | None = None) -> int:
    from pipelines.training.driver import main
    from pipelines.training.experiment import TTVSRExperiment

    return main(TTVSRExperiment, _argv(argv), description=job_help("train_ttvsr"))


def train_vsrt(argv: list[str] | None = None) -> int:
    from pipelines.training.driver import main
    from pipelines.training.experiment import VSRTExperiment

    return main(VSRTExperiment, _argv(argv), description=job_help("train_vsrt"))


def tune_ttvsr(argv: list[str] | None = None) -> int:
    from pipelines.training.experiment import TTVSRExperiment
    from pipelines.tuning.search import main

    return main(TTVSRExperiment, _argv(argv), description=job_help("tune_ttvsr"))


def tune_vsrt(argv: list[str] | None = None) -> int:
    from pipelines.training.experiment import VSRTExperiment
    from pipelines.tuning.search import main

    return main(VSRTExperiment, _argv(argv), description=job_help("tune_vsrt"))


def evaluate(argv: list[str] | None = None) -> int:
    from pipelines.evaluation.job import main

    return main(_argv(argv), description=job_help("evaluate"))


def infer(argv: list[str] | None = None) -> int:
    from pipelines.inference.job import main

    return main(_argv(argv), description=job_help("infer"))


def profile(argv: list[str] | None = None) -> int:
    from pipelines.inference.profiling import main

    return main(_argv(argv), description=job_help("profile_model"))


def register(argv: list[str] | None = None, description: str | None = None) -> int:
    """``jobs/register_model.py``: register a training checkpoint in the MLflow model registry."""
    from pipelines.tracking import register_checkpoint

    parser = argparse.ArgumentParser(
        description=description or job_help("register_model"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help="training checkpoint folder (or a save_checkpoint file)")
    parser.add_argument("--name", required=True, help="registered model name, e.g. ttvsr")
    parser.add_argument("--alias", help="point this alias (e.g. champion) at the new version")
    parser.add_argument(
        "--experiment", default="ray-vsr", help="MLflow experiment of the run (default ray-vsr)"
    )
    parser.add_argument(
        "--mlflow-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, then sqlite:///mlflow.db)"
    )
    args = parser.parse_args(_argv(argv))

    def body() -> None:
        registered = register_checkpoint(
            args.checkpoint, args.name, args.mlflow_uri, experiment=args.experiment, alias=args.alias
        )
        print(registered.describe())

    return run_job(body)


def demo(argv: list[str] | None = None, description: str | None = None) -> int:
    """``jobs/demo.py`` (``make demo``): the whole pipeline on the built-in sample data."""
    from pipelines.demo import run_demo
    from pipelines.training.experiment import TTVSRExperiment, experiment_from_args, experiment_parser

    parser = experiment_parser(description or job_help("demo"))
    parser.add_argument("--output", default="outputs/demo", help="where the demo videos go")
    parser.set_defaults(config=str(REPO_ROOT / "configs" / "ttvsr_sample.yaml"))
    args = parser.parse_args(_argv(argv))
    return run_job(lambda: print(run_demo(experiment_from_args(TTVSRExperiment, args), args.output)))
