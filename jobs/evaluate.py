"""Evaluate a network on prepared clips against bicubic upsampling (per clip and mean PSNR/SSIM).

The scoring runs as one Ray task, on a GPU when the cluster has one (--device auto); the per-clip table
is printed, and logged with the mean metrics to a new MLflow run (experiment ray-vsr-evaluation, linked
to the training run of a registered version) as per_clip.csv and per_clip.md.

Examples:
  python jobs/evaluate.py --model models:/ttvsr@champion --data data/sample
  python jobs/evaluate.py --model runs/ttvsr_sample/checkpoint_00001000 --data data/sample --output eval/
  python jobs/evaluate.py --model models:/ttvsr@champion --data data/vid4 --channel y \\
      --mlflow-uri http://head:5000
  python jobs/evaluate.py --official TTVSR_REDS.pth --arch ttvsr --data /mnt/shared/data/reds4 --channel rgb

On a cluster (ray job submit), give absolute paths on storage every node mounts (/mnt/shared/...):
the task may run on another node than the driver. Relative paths are made absolute on the driver.
"""

import sys

from pipelines.evaluation.job import main as run_main


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
