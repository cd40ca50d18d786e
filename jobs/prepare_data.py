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

from pipelines.common.cli import command_parser, config_overrides, flag_overrides, option, run_job
from pipelines.data.prepare.config import SAMPLE_OUTPUT, SAMPLE_SOURCE
from pipelines.data.sources import LAYOUTS

OPTIONS = [
    option(
        "--source",
        key="source",
        exclusive="source",
        help="dataset folder or video file (layout detected, see --layout)",
    ),
    option(
        "--dataset",
        exclusive="source",
        choices=[SAMPLE_SOURCE],
        help="render and prepare the bundled sample dataset",
    ),
    option("--layout", key="layout", choices=LAYOUTS, help="source layout (default: auto)"),
    option(
        "--output",
        key="output",
        help=f"prepared dataset folder: a path (NFS on a cluster) or a URI such as s3://bucket/reds_bi "
        f"(sample dataset: {SAMPLE_OUTPUT})",
    ),
    option("--degradation", key="degradation", choices=["BI", "BD"], help="LR degradation (default: BI)"),
    option("--scale", key="scale", type=int, help="downscaling factor (default: 4)"),
    option(
        "--strict", key="strict", action="store_true", default=None, help="stop at the first unreadable input"
    ),
    option(
        "--overwrite",
        key="overwrite",
        action="store_true",
        default=None,
        help="replace a dataset in --output prepared from another source or with other settings",
    ),
    option(
        "--any-scale",
        key="any_scale",
        action="store_true",
        default=None,
        help="allow a --scale other than x4 (both networks are x4): data for a network of your own",
    ),
    option("--address", key="address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)"),
    option(
        "--num-cpus", key="num_cpus", type=int, help="CPUs of the local Ray started when no cluster is given"
    ),
]


def main(argv: list[str] | None = None) -> int:
    """Parse, prepare, print the summary table; a user mistake exits 2 with one message, no traceback."""
    from pipelines.common.config import load_config
    from pipelines.data.prepare.config import PrepareConfig
    from pipelines.data.prepare.run import run_prepare

    parser = command_parser(__doc__, OPTIONS, set_example="clip_length=50")
    args = parser.parse_args(argv)

    def body() -> None:
        overrides = config_overrides(args, OPTIONS)
        if args.dataset:
            overrides += flag_overrides({"source": SAMPLE_SOURCE})
        cfg = load_config(PrepareConfig, args.config, overrides)
        print(run_prepare(cfg).describe())

    return run_job(body)


if __name__ == "__main__":
    sys.exit(main())
