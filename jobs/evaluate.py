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

from pipelines.common.cli import command_parser, config_overrides, option, run_job
from pipelines.evaluation.config import DEFAULT_MODEL
from vsr_models import ARCHITECTURES

OPTIONS = [
    option(
        "--model",
        exclusive="model",
        key="model",
        help=f"models:/<name>@<alias>, runs:/<id>/<run name>, checkpoint folder or model.pt (default {DEFAULT_MODEL})",
    ),
    option(
        "--official",
        key="official",
        exclusive="model",
        metavar="PATH",
        help="authors' released checkpoint (needs --arch)",
    ),
    option("--arch", key="arch", choices=sorted(ARCHITECTURES), help="architecture of --official"),
    option("--data", key="data", help="prepared dataset folder: a path or a URI such as s3://bucket/reds_bi"),
    option(
        "--verify-data",
        key="verify_data",
        action="store_true",
        default=None,
        help="check every shard's sha256 first, in parallel Ray tasks (default: manifest and sizes only)",
    ),
    option("--split", key="split", help="split to score (default val)"),
    option("--channel", key="channel", choices=["rgb", "y"], help="score on RGB or the MATLAB Y channel"),
    option(
        "--device",
        key="device",
        help="auto (default: a GPU when the Ray cluster has one, else a CPU), cpu or cuda",
    ),
    option("--output", key="output", metavar="DIR", help="also write per_clip.csv and per_clip.md here"),
    option(
        "--mlflow-uri",
        key="tracking_uri",
        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, sqlite:///mlflow.db)",
    ),
    option(
        "--experiment", key="experiment", help="MLflow experiment of the run (default ray-vsr-evaluation)"
    ),
    option(
        "--no-mlflow",
        key="log_to_mlflow",
        action="store_false",
        default=None,
        help="log nothing to MLflow (print only)",
    ),
]


def main(argv: list[str] | None = None) -> int:
    """Print the per-clip table against bicubic, then (on stderr, so that stdout stays the table) the MLflow
    run and the files written."""
    from pipelines.common.config import load_config
    from pipelines.evaluation.config import EvaluationConfig
    from pipelines.evaluation.run import run_evaluation

    parser = command_parser(__doc__, OPTIONS, set_example="crop_border=4")
    args = parser.parse_args(argv)

    def body() -> None:
        cfg = load_config(EvaluationConfig, args.config, config_overrides(args, OPTIONS))
        summary = run_evaluation(cfg)
        print(summary.table(), flush=True)
        print(summary.describe(), file=sys.stderr)

    return run_job(body)


if __name__ == "__main__":
    sys.exit(main())
