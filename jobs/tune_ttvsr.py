"""Search TTVSR with Ray Tune: token scales and sizes, learning rates (training searches), or the key-frame
interval of a trained model (an evaluation sweep: every trial evaluates, none trains).

Every trial is a Ray Train run (or one evaluation, a Ray task) of the base config with drawn values, logged
to MLflow as its own run under the search's parent run, which gets the results table and plots; the best
trained network is registered with the alias best-<search name>. Running the same command again resumes an
interrupted search. The searches of the paper's ablations and what they cost: docs/tuning.md.

Examples:
  python jobs/tune_ttvsr.py --config configs/search/ttvsr_token_scales_sample.yaml        # laptop, sample data
  python jobs/tune_ttvsr.py --config configs/search/ttvsr_frame_interval_sample.yaml \\
      --evaluate models:/ttvsr_sample@champion
  python jobs/tune_ttvsr.py --config configs/tune_ttvsr_sample.yaml --num-samples 2 \\
      --set experiment.train.total_iters=100 --set 'search.optim.lr={loguniform: [1e-4, 1e-3]}'
  ray job submit --working-dir . -- python jobs/tune_ttvsr.py --config configs/search/ttvsr_token_scales.yaml \\
      --set experiment.data.path=/mnt/shared/data/reds_bi --set experiment.run.storage_path=/mnt/shared/runs \\
      --cluster-config infra/kuberay/raycluster.yaml --mlflow-uri http://<mlflow-host>:5000

On a cluster pass absolute paths on shared storage: a submitted job runs in a copy of the working dir.
"""

import sys

from jobs._tuning import main as tune_main


def main(argv: list[str] | None = None) -> int:
    return tune_main("ttvsr", argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
