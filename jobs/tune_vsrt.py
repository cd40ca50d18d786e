"""Search VSR-Transformer with Ray Tune: patch size, frame count (drawn with the data's frame count) and
learning rate, or inference settings of a trained model (an evaluation sweep).

The same search machinery as jobs/tune_ttvsr.py (pipelines/tuning/run.py): every trial a Ray Train run
under the search's MLflow parent run, ASHA on validation PSNR, the same command resumes an interrupted
search, the best network registered as best-<search name>. See docs/tuning.md.

Examples:
  python jobs/tune_vsrt.py --config configs/search/vsrt_patch_frames_lr_sample.yaml       # laptop, sample data
  ray job submit --working-dir . -- python jobs/tune_vsrt.py --config configs/search/vsrt_patch_frames_lr.yaml \\
      --set experiment.data.path=/mnt/shared/data/reds_bi --set experiment.run.storage_path=/mnt/shared/runs \\
      --max-cluster-resources GPU=16,CPU=256 --mlflow-uri http://<mlflow-host>:5000

On a cluster pass absolute paths on shared storage: a submitted job runs in a copy of the working dir.
"""

import sys

from jobs._tuning import main as tune_main


def main(argv: list[str] | None = None) -> int:
    return tune_main("vsrt", argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
