"""Print the parameters and FLOPs per frame (FlopCounterMode) of a network.

Examples:
  python jobs/profile_model.py --arch ttvsr --size 180x320 --frames 10
  python jobs/profile_model.py --arch vsrt --size 180x320 --set depth=3 --chunk-overlap 0
  python jobs/profile_model.py --arch ttvsr --device cuda        # also times the run
"""

import argparse
import sys

from pipelines.common.cli import command_parser, option, run_job
from vsr_models import ARCHITECTURES


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 180x320, got {text!r}") from None
    return h, w


OPTIONS = [
    option("--arch", choices=sorted(ARCHITECTURES), required=True),
    option("--size", type=_parse_size, default=(180, 320), help="LR frame HxW (default 180x320)"),
    option("--frames", type=int, default=10, help="LR frames in the sequence (default 10)"),
    option("--chunk-overlap", type=int, default=None, help="temporal window overlap (vsrt)"),
    option("--device", default="meta", help="meta (count only, default), cpu or cuda (also times the run)"),
]


def main(argv: list[str] | None = None) -> int:
    from pipelines.common.config import parse_override
    from pipelines.inference.config import ProfileConfig
    from pipelines.inference.profiling import run_profile

    # --set: the family's model config fields
    parser = command_parser(
        __doc__, OPTIONS, config=False, set_example="num_propagation_blocks=30", prog="jobs/profile_model.py"
    )
    args = parser.parse_args(argv)

    def body() -> None:
        model = dict(parse_override(text) for text in args.overrides)
        cfg = ProfileConfig(args.arch, args.size, args.frames, model, args.chunk_overlap, args.device)
        print(run_profile(cfg).describe())

    return run_job(body)


if __name__ == "__main__":
    sys.exit(main())
