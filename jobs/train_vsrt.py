"""Train VSR-Transformer (Cao et al., 2021) on Ray Train with the released recipe.

Examples:
  python jobs/train_vsrt.py --config configs/vsrt_sample.yaml             # laptop, built-in sample data
  python jobs/train_vsrt.py --config configs/vsrt_reds4.yaml --gpus 8      # the released REDS recipe
  ray job submit --working-dir . -- python jobs/train_vsrt.py --config configs/vsrt_vimeo.yaml \\
      --gpus 8 --set data.path=/mnt/shared/data/vimeo --storage-path /mnt/shared/runs \\
      --mlflow-uri http://<mlflow-host>:5000

Without --config it trains configs/vsrt.yaml, the released recipe. Running the same --name again resumes
that run from its last checkpoint, in the same MLflow run.
On a cluster pass absolute paths on shared storage: a submitted job runs in a copy of the working dir.
"""

import sys

from jobs._training import main as train_main


def main(argv: list[str] | None = None) -> int:
    return train_main("vsrt", argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
