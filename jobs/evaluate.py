"""Evaluate a trained network on prepared clips against bicubic upsampling (per clip and mean PSNR/SSIM).

Examples:
  python jobs/evaluate.py --model models:/ttvsr@champion --data data/sample
  python jobs/evaluate.py --model runs/ttvsr_sample/checkpoint_00001000 --data data/sample
  python jobs/evaluate.py --model models:/ttvsr@champion --data data/vid4 --channel y \\
      --mlflow-uri http://head:5000
"""

import sys

from pipelines.evaluate import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], description=__doc__))
