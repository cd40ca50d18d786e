"""Register a training checkpoint in the MLflow model registry, in ray-vsr's own (code-free) format.

Examples:
  python jobs/register_model.py runs/ttvsr_reds4/checkpoint_00300000 --name ttvsr
  python jobs/register_model.py runs/ttvsr_reds4/checkpoint_00300000 --name ttvsr --alias champion \\
      --mlflow-uri http://head:5000

The folder is a training checkpoint (<storage_path>/<run name>/checkpoint_<iteration>, holding model.pt
and training_state.pt) or a file written by vsr_models.save_checkpoint. The model is logged to a new
MLflow run register-<name> and registered as a new version of <name>, tagged with the checkpoint's
validation metrics, iteration and training run. This is how a version registered by an earlier release
(a pickled mlflow.pytorch model, which ray-vsr refuses to load) is replaced: re-register the checkpoint it
came from (its version tags mlflow_run_id and iteration name the run and the iteration), with
--alias champion if it was the champion. Without --alias no alias moves.
"""

import argparse
import sys

from pipelines.common.cli import run_job
from pipelines.tracking import register_checkpoint


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
    args = parser.parse_args(argv)

    def body() -> None:
        registered = register_checkpoint(
            args.checkpoint, args.name, args.mlflow_uri, experiment=args.experiment, alias=args.alias
        )
        print(registered.describe())

    return run_job(body)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
