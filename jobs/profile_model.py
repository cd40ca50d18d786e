"""Print the parameters and FLOPs per frame (FlopCounterMode) of a network.

Examples:
  python jobs/profile_model.py --arch ttvsr --size 180x320 --frames 10
  python jobs/profile_model.py --arch vsrt --size 180x320 --set depth=3 --chunk-overlap 0
  python jobs/profile_model.py --arch ttvsr --device cuda        # also times the run
"""

import sys

from pipelines.inference.profiling import main as run_main


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
