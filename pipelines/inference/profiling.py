"""``jobs/profile_model.py``: parameters and FLOPs per frame of a network (:mod:`vsr_models.profile`)."""

from __future__ import annotations

import argparse

from pipelines.common.cli import add_set_arg, run_job
from pipelines.common.config import parse_override
from pipelines.common.errors import ConfigError
from vsr_models import ARCHITECTURES
from vsr_models.profile import profile_report


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 180x320, got {text!r}") from None
    return h, w


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobs/profile_model.py",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), required=True)
    parser.add_argument("--size", type=_parse_size, default=(180, 320), help="LR frame HxW (default 180x320)")
    parser.add_argument("--frames", type=int, default=10, help="LR frames in the sequence (default 10)")
    add_set_arg(parser, example="num_propagation_blocks=30")  # model config fields
    parser.add_argument("--chunk-overlap", type=int, default=None, help="temporal window overlap (vsrt)")
    parser.add_argument(
        "--device", default="meta", help="meta (count only, default), cpu or cuda (also times the run)"
    )
    return parser


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    args = build_parser(description).parse_args(argv)

    def body() -> None:
        overrides = dict(parse_override(text) for text in args.overrides)
        try:
            report = profile_report(
                args.arch, args.size, args.frames, overrides, args.device, args.chunk_overlap
            )
        except (TypeError, ValueError) as error:  # the model config rejected an override
            raise ConfigError(f"--set: {error}") from None
        print(report)

    return run_job(body)
