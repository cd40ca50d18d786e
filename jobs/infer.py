"""Super-resolve a video (x4) with a trained or released network.

    python jobs/infer.py in.mp4 out.mp4 --model models:/ttvsr@champion
    python jobs/infer.py in.mp4 out.mkv --model runs/ttvsr/final.pt --tile 64 --chunk 30
    python jobs/infer.py frames/ out_frames --official TTVSR_REDS.pth --arch ttvsr
    python jobs/infer.py videos/ out/ --model models:/ttvsr@champion --num-workers 4 --address auto

A folder of video files (or of frame folders) as input runs every sequence on a Ray cluster with
Ray Data (``pipelines.inference.batch.super_resolve_many``); anything else is one video, streamed window by
window (``pipelines.inference.video.super_resolve_video``).
"""

import sys
from pathlib import Path

from pipelines.common.cli import command_parser, config_overrides, option, run_job
from pipelines.inference.encode import CODECS, FILTERS
from pipelines.inference.pipeline import PRECISIONS
from vsr_models import ARCHITECTURES

VIDEO = "output video (docs/video.md)"  # a section of --help

OPTIONS = [
    option("input", type=Path, help="video file, folder of frames, or folder of videos"),
    option(
        "output",
        type=Path,
        help=".mkv/.avi (FFV1, lossless), .mp4/.mov (H.264) or a path without suffix (PNG frames); "
        "for a folder of videos: the output folder",
    ),
    option(
        "--model",
        exclusive="model",
        help="MLflow model URI (models:/ttvsr@champion) or checkpoint of this project",
    ),
    option(
        "--official", exclusive="model", metavar="CKPT", help="authors' released checkpoint (needs --arch)"
    ),
    option("--arch", choices=sorted(ARCHITECTURES), help="architecture of --official"),
    option("--mlflow-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, sqlite:///mlflow.db)"),
    # Shortcuts for the most used InferConfig fields; --set reaches all of them.
    option("--tile", key="tile", type=int, help="LR tile size for spatial tiling (default: whole frames)"),
    option("--chunk", key="chunk", type=int, help="frames per temporal window (default 30)"),
    option("--device", key="device", help="auto (default), cpu, cuda, cuda:1, ..."),
    option(
        "--precision",
        key="precision",
        choices=PRECISIONS,
        help="auto (default: bf16 where the hardware runs it natively, CUDA sm80+ or AMX / AVX512-BF16 CPUs; "
        "else fp32), fp32, bf16, fp16",
    ),
    option(
        "--codec",
        section=VIDEO,
        key="codec",
        help=f"{'|'.join(CODECS)} or an FFmpeg encoder (default: by suffix)",
    ),
    option(
        "--crf",
        section=VIDEO,
        key="crf",
        type=int,
        help="constant rate factor (h264 12, h265 14, vp9 15 by default)",
    ),
    option(
        "--preset",
        section=VIDEO,
        key="preset",
        help="encoder preset (x264 / x265: ultrafast .. veryslow; default medium)",
    ),
    option(
        "--pix-fmt",
        section=VIDEO,
        key="pix_fmt",
        help="output pixel format (default yuv420p, yuv420p10le for 10-bit input)",
    ),
    option(
        "--no-audio",
        section=VIDEO,
        key="no_audio",
        action="store_true",
        default=None,
        help="drop audio and subtitle streams",
    ),
    option("--start", section=VIDEO, key="start", help="start at seconds (12.5, 1:02.5) or a frame (300f)"),
    option("--end", section=VIDEO, key="end", help="stop before seconds or a frame (same forms as --start)"),
    option(
        "--outscale",
        section=VIDEO,
        key="outscale",
        type=float,
        help="output size / input size (default 4, the network's)",
    ),
    option(
        "--outscale-filter",
        section=VIDEO,
        key="outscale_filter",
        choices=FILTERS,
        help="filter resizing to --outscale (lanczos)",
    ),
    option(
        "--fps",
        section=VIDEO,
        key="fps",
        help="constant output frame rate, e.g. 30000/1001 (default: the input's timing)",
    ),
    option(
        "--overwrite",
        action="store_true",
        help="replace an existing output file, or the frames of an output folder ray-vsr wrote",
    ),
    option(
        "--allow-truncated",
        key="allow_truncated",
        action="store_true",
        default=None,
        help="super-resolve a video that is cut short (the summary says how many frames are missing)",
    ),
    option(
        "--scale-check",
        action="store_true",
        help="decode the output afterwards and check it has every frame at 4x the input size",
    ),
    option("--quiet", action="store_true", help="no progress lines"),
    option("--num-workers", type=int, default=1, help="actors for a folder of videos"),
    option("--gpus-per-worker", type=float, default=0, help="GPUs per actor for a folder of videos"),
    option("--address", help="Ray cluster address for a folder of videos (default: local)"),
    option("--suffix", default=".mp4", help="output suffix for a folder of videos ('' for PNG)"),
]


def main(argv: list[str] | None = None) -> int:
    """One video streamed, or a folder of videos on Ray Data; a line per video (and a table for a folder)."""
    from pipelines.common.config import load_config
    from pipelines.inference.config import InferConfig, InferenceConfig, model_ref
    from pipelines.inference.run import run_inference

    parser = command_parser(
        __doc__, OPTIONS, set_example="chunk_overlap=4", prog="jobs/infer.py", required=["model"]
    )
    args = parser.parse_args(argv)

    def body() -> None:
        model = model_ref(args.model, args.official, args.arch, args.mlflow_uri)
        cfg = InferenceConfig(
            input=args.input,
            output=args.output,
            model=model,
            video=load_config(InferConfig, args.config, config_overrides(args, OPTIONS)),
            progress=not args.quiet,
            overwrite=args.overwrite,
            scale_check=args.scale_check,
            num_workers=args.num_workers,
            gpus_per_worker=args.gpus_per_worker,
            address=args.address,
            suffix=args.suffix,
        )
        print(run_inference(cfg).describe())

    return run_job(body)


if __name__ == "__main__":
    sys.exit(main())
