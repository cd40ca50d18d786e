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

from pipelines.inference.job import main as run_main


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
