"""``jobs/infer.py``: one video streamed window by window, or a folder of videos on Ray Data."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.common.cli import check_arch, flag_overrides, job_parser, run_job
from pipelines.common.config import load_config
from pipelines.common.errors import ConfigError
from pipelines.common.ray_session import init_ray
from pipelines.data.video_io import is_frame_folder
from pipelines.inference.batch import format_table, super_resolve_many
from pipelines.inference.encode import CODECS, FILTERS
from pipelines.inference.loading import load_model
from pipelines.inference.pipeline import PRECISIONS
from pipelines.inference.video import InferConfig, check_output, check_tile, describe, super_resolve_video


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The command line of ``jobs/infer.py``."""
    parser = job_parser(description, prog="jobs/infer.py", set_example="chunk_overlap=4")
    parser.add_argument("input", type=Path, help="video file, folder of frames, or folder of videos")
    parser.add_argument(
        "output",
        type=Path,
        help=".mkv/.avi (FFV1, lossless), .mp4/.mov (H.264) or a path without suffix (PNG frames); "
        "for a folder of videos: the output folder",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model", help="MLflow model URI (models:/ttvsr@champion) or checkpoint of this project"
    )
    source.add_argument("--official", metavar="CKPT", help="authors' released checkpoint (needs --arch)")
    # Checked in the job (check_arch): an unknown name is one line listing the registry's families.
    parser.add_argument("--arch", help="architecture of --official (ttvsr, vsrt)")
    parser.add_argument(
        "--mlflow-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, sqlite:///mlflow.db)"
    )
    # Shortcuts for the most used InferConfig fields; --set reaches all of them.
    parser.add_argument("--tile", type=int, help="LR tile size for spatial tiling (default: whole frames)")
    parser.add_argument("--chunk", type=int, help="frames per temporal window (default 30)")
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="auto (default: bf16 where the hardware runs it natively, CUDA sm80+ or AMX / AVX512-BF16 CPUs; "
        "else fp32), fp32, bf16, fp16",
    )
    video = parser.add_argument_group("output video (docs/video.md)")
    video.add_argument("--codec", help=f"{'|'.join(CODECS)} or an FFmpeg encoder (default: by suffix)")
    video.add_argument("--crf", type=int, help="constant rate factor (h264 12, h265 14, vp9 15 by default)")
    video.add_argument("--preset", help="encoder preset (x264 / x265: ultrafast .. veryslow; default medium)")
    video.add_argument(
        "--pix-fmt", help="output pixel format (default yuv420p, yuv420p10le for 10-bit input)"
    )
    video.add_argument(
        "--no-audio", action="store_true", default=None, help="drop audio and subtitle streams"
    )
    video.add_argument("--start", help="start at seconds (12.5, 1:02.5) or a frame (300f)")
    video.add_argument("--end", help="stop before seconds or a frame (same forms as --start)")
    video.add_argument("--outscale", type=float, help="output size / input size (default 4, the network's)")
    video.add_argument("--outscale-filter", choices=FILTERS, help="filter resizing to --outscale (lanczos)")
    video.add_argument(
        "--fps", help="constant output frame rate, e.g. 30000/1001 (default: the input's timing)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output file, or the frames of an output folder ray-vsr wrote",
    )
    parser.add_argument(
        "--allow-truncated",
        action="store_true",
        default=None,
        help="super-resolve a video that is cut short (the summary says how many frames are missing)",
    )
    parser.add_argument(
        "--scale-check",
        action="store_true",
        help="decode the output afterwards and check it has every frame at 4x the input size",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--num-workers", type=int, default=1, help="actors for a folder of videos")
    parser.add_argument(
        "--gpus-per-worker", type=float, default=0, help="GPUs per actor for a folder of videos"
    )
    parser.add_argument("--address", help="Ray cluster address for a folder of videos (default: local)")
    parser.add_argument("--suffix", default=".mp4", help="output suffix for a folder of videos ('' for PNG)")
    return parser


def check_before_workers(args: argparse.Namespace, config: InferConfig, model: str) -> None:
    """What the actors of a folder of videos would each fail on, refused in one line before Ray starts:
    the pool's size and, when ``--tile`` is given, the tile against the network (loaded here on the CPU)."""
    if args.num_workers < 1:
        raise ConfigError(
            f"--num-workers must be at least 1 (actors for a folder of videos), got {args.num_workers}"
        )
    if not args.gpus_per_worker >= 0:
        raise ConfigError(f"--gpus-per-worker must be 0 or more, got {args.gpus_per_worker}")
    if config.tile is not None:
        check_tile(load_model(model, arch=args.arch, tracking_uri=args.mlflow_uri), config.tile)


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    """Command-line entry of ``jobs/infer.py``: one video streamed, or a folder of videos on Ray Data."""
    args = build_parser(description).parse_args(argv)

    def body() -> None:
        check_arch(args.arch)
        if args.official and not args.arch:
            raise ConfigError("--official needs --arch ttvsr|vsrt")
        shortcuts = {
            "tile": args.tile,
            "chunk": args.chunk,
            "device": args.device,
            "allow_truncated": args.allow_truncated,
            "precision": args.precision,
            "codec": args.codec,
            "crf": args.crf,
            "preset": args.preset,
            "pix_fmt": args.pix_fmt,
            "no_audio": args.no_audio,
            "start": args.start,
            "end": args.end,
            "outscale": args.outscale,
            "outscale_filter": args.outscale_filter,
            "fps": args.fps,
        }
        config = load_config(InferConfig, args.config, [*args.overrides, *flag_overrides(shortcuts)])
        model = args.model or args.official
        if args.input.is_dir() and not is_frame_folder(args.input):
            check_before_workers(args, config, model)
            init_ray(args.address)
            summaries = super_resolve_many(
                args.input,
                args.output,
                model,
                args.num_workers,
                config=config,
                suffix=args.suffix,
                num_gpus_per_worker=args.gpus_per_worker,
                overwrite=args.overwrite,
                arch=args.arch,
                tracking_uri=args.mlflow_uri,
            )
        else:
            summaries = [
                super_resolve_video(
                    model,
                    args.input,
                    args.output,
                    **vars(config),
                    progress=not args.quiet,
                    overwrite=args.overwrite,
                    arch=args.arch,
                    tracking_uri=args.mlflow_uri,
                )
            ]
        for summary in summaries:
            if args.scale_check:
                check_output(summary)
            print(describe(summary))
        if args.input.is_dir() and not is_frame_folder(args.input):
            print(format_table(summaries))

    return run_job(body)
