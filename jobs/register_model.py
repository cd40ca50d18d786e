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

import sys

from pipelines.common.cli import command_parser, option, run_job

OPTIONS = [
    option("checkpoint", help="training checkpoint folder (or a save_checkpoint file)"),
    option("--name", required=True, help="registered model name, e.g. ttvsr"),
    option("--alias", help="point this alias (e.g. champion) at the new version"),
    option("--experiment", default="ray-vsr", help="MLflow experiment of the run (default ray-vsr)"),
    option(
        "--mlflow-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, then sqlite:///mlflow.db)"
    ),
]


def main(argv: list[str] | None = None) -> int:
    from pipelines.tracking import register_checkpoint

    args = command_parser(__doc__, OPTIONS, config=False, set_example=None).parse_args(argv)

    def body() -> None:
        registered = register_checkpoint(
            args.checkpoint, args.name, args.mlflow_uri, experiment=args.experiment, alias=args.alias
        )
        print(registered.describe())

    return run_job(body)


if __name__ == "__main__":
    sys.exit(main())
