"""Train VSR-Transformer (Cao et al., 2021) on Ray Train with the released recipe.

Examples:
  python jobs/train_vsrt.py --config configs/vsrt_sample.yaml             # laptop, built-in sample data
  python jobs/train_vsrt.py --config configs/vsrt_reds4.yaml --gpus 8      # the released REDS recipe
  ray job submit --working-dir . -- python jobs/train_vsrt.py --config configs/vsrt_vimeo.yaml \\
      --gpus 8 --storage-path /mnt/shared/runs --mlflow-uri http://head:5000

Running the same --name again resumes that run from its last checkpoint, in the same MLflow run.
"""

import sys

from pipelines.experiment import VSRTExperiment
from pipelines.train import main

if __name__ == "__main__":
    sys.exit(main(VSRTExperiment, sys.argv[1:], description=__doc__))
