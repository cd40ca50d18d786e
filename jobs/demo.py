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

from jobs._training import experiment, parser
from pipelines.common.cli import option, run_job

SAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ttvsr_sample.yaml"
OPTIONS = [option("--output", default="outputs/demo", help="where the demo videos go")]


def main(argv: list[str] | None = None) -> int:
    from pipelines.demo import run_demo

    command = parser(__doc__, OPTIONS)
    command.set_defaults(config=str(SAMPLE_CONFIG))
    args = command.parse_args(argv)
    return run_job(lambda: print(run_demo(experiment("ttvsr", args), args.output)))


if __name__ == "__main__":
    sys.exit(main())
