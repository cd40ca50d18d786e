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

from pipelines.commands import register


def main(argv: list[str]) -> int:
    return register(argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
