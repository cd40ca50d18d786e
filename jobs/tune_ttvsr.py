"""Search TTVSR training hyperparameters (learning rates, schedule, ...) with Ray Tune.

Every trial is a Ray Train run of the base training config with sampled values, logged to MLflow as its
own run under a parent run named after the search; the best trial's network is registered.

Examples:
  python jobs/tune_ttvsr.py --config configs/tune_ttvsr_sample.yaml                  # laptop, sample data
  python jobs/tune_ttvsr.py --config configs/tune_ttvsr_sample.yaml --num-samples 2 \\
      --set experiment.train.total_iters=100 --set 'search.optim.lr={loguniform: [1e-4, 1e-3]}'
  ray job submit --working-dir . -- python jobs/tune_ttvsr.py --config configs/tune_ttvsr_reds4.yaml \\
      --set experiment.data.path=/mnt/shared/data/reds_bi \\
      --set experiment.run.storage_path=/mnt/shared/runs --mlflow-uri http://<mlflow-host>:5000

On a cluster pass absolute paths on shared storage: a submitted job runs in a copy of the working dir.
"""

import sys

from pipelines.training.experiment import TTVSRExperiment
from pipelines.tuning.search import main

if __name__ == "__main__":
    sys.exit(main(TTVSRExperiment, sys.argv[1:], description=__doc__))
