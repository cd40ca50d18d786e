"""Prepare a video super-resolution dataset: decode, degrade (BI / BD), write Parquet shards + manifest.

Examples:
  python jobs/prepare_data.py --dataset sample                       # render + prepare data/sample
  python jobs/prepare_data.py --source /data/REDS --output data/reds_bi   # REDS4 held out as val
  python jobs/prepare_data.py --source /data/Vid4/GT --output data/vid4_bd --degradation BD \\
      --set splits.default=val
  python jobs/prepare_data.py --source ~/videos --output data/mine --set clip_length=50 --strict
  ray job submit --working-dir . -- python jobs/prepare_data.py --source /mnt/shared/raw/REDS \\
      --output /mnt/shared/data/reds_bi      # on a cluster: absolute paths on shared storage

Re-running with the same --output resumes: finished shards are checked and kept. The format is
described in docs/data_format.md.
"""

import sys

from pipelines.data.prepare.job import main as run_main


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
