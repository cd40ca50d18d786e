"""The whole pipeline in a few minutes on a laptop (``make demo``).

1. prepares the built-in sample dataset (real photographs in smooth motion, BI x4) into data/sample;
2. trains the small TTVSR of configs/ttvsr_sample.yaml on Ray Train (resumes if run before);
3. evaluates it on the sample's validation clips against bicubic (RGB PSNR / SSIM);
4. registers it in MLflow (alias champion if it is the best so far);
5. super-resolves a validation clip, written as an LR and an SR video;
and prints where to look. Every step skips work already done, so running it again is quick.

Examples:
  python jobs/demo.py
  python jobs/demo.py --set train.total_iters=600 --name ttvsr_sample_600
"""

import sys
from pathlib import Path

from pipelines.common.cli import run_job
from pipelines.training.experiment import TTVSRExperiment, experiment_from_args, experiment_parser

SAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ttvsr_sample.yaml"


def main(argv: list[str] | None = None) -> int:
    from pipelines.demo import run_demo

    parser = experiment_parser(__doc__)
    parser.add_argument("--output", default="outputs/demo", help="where the demo videos go")
    parser.set_defaults(config=str(SAMPLE_CONFIG))
    args = parser.parse_args(argv)
    return run_job(lambda: print(run_demo(experiment_from_args(TTVSRExperiment, args), args.output)))


if __name__ == "__main__":
    sys.exit(main())
