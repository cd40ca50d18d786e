"""Super-resolve a video (x4) with a trained or released network.

    python jobs/infer.py in.mp4 out.mp4 --model models:/ttvsr@champion
    python jobs/infer.py in.mp4 out.mkv --model runs/ttvsr/final.pt --tile 64 --chunk 30
    python jobs/infer.py frames/ out_frames --official TTVSR_REDS.pth --arch ttvsr
    python jobs/infer.py videos/ out/ --model models:/ttvsr@champion --num-workers 4 --address auto

A folder of video files (or of frame folders) as input runs every sequence on a Ray cluster with
Ray Data (``pipelines.infer.super_resolve_many``); anything else is one video, streamed window by
window (``pipelines.infer.super_resolve_video``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.config import add_config_args, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobs/infer.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    parser.add_argument("--arch", choices=("ttvsr", "vsrt"), help="architecture of --official")
    parser.add_argument(
        "--mlflow-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, sqlite:///mlflow.db)"
    )
    # Shortcuts for the most used InferConfig fields; --set reaches all of them.
    parser.add_argument("--tile", type=int, help="LR tile size for spatial tiling (default: whole frames)")
    parser.add_argument("--chunk", type=int, help="frames per temporal window (default 30)")
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
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
    return add_config_args(parser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.official and not args.arch:
        print("error: --official needs --arch ttvsr|vsrt", file=sys.stderr)
        return 2
    from pipelines import infer
    from pipelines.video_io import is_frame_folder

    shortcuts = {"tile": args.tile, "chunk": args.chunk, "device": args.device}
    overrides = args.overrides + [f"{key}={value}" for key, value in shortcuts.items() if value is not None]
    model = args.model or args.official
    try:
        config = load_config(infer.InferConfig, args.config, overrides)
        if args.input.is_dir() and not is_frame_folder(args.input):
            if args.address:
                import ray

                ray.init(address=args.address)
            summaries = infer.super_resolve_many(
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
                infer.super_resolve_video(
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
                infer.check_output(summary)
            print(infer.describe(summary))
    except (OSError, ValueError, infer.InferError) as error:  # ConfigError, VideoError: ValueErrors
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
