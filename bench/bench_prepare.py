"""Preparation at dataset scale: REDS-like 720p frames, 1 and 2 Ray CPUs, the driver's share, the physical limit.

A REDS-like source is generated on the fly (``train_sharp/<clip>/<frame>.png``, 1280x720, 100 frames a
clip, a photograph from scikit-image moving by sub-pixel shifts). Then, each in a fresh process so the
driver's figures are its own:

- the physical reference: decode + degrade (BI x4) + compress of the same frames in one process, one
  thread, no Ray, no writing: what one CPU can do;
- the job (``prepare_dataset``) with a local Ray of 1 and of 2 CPUs (after a warm-up run that starts the
  workers): frames/s, the driver's CPU seconds (its own process) and peak memory, and the per-frame
  task time of each stage (decode / degrade / compress / write);
- the job at 2 CPUs on twice the frames: the driver's memory should not grow with the dataset.

    .venv/bin/python bench/bench_prepare.py [--frames 600] [--cache data/bench_reds]

Targets (issue "Preparation and ingestion at dataset scale"): 2 CPUs >= 1.6x 1 CPU; driver CPU < 15% of
wall time; driver memory flat as the dataset doubles; the job's rate per CPU within 1.5x of the reference.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FRAMES_PER_CLIP = 100
HEIGHT, WIDTH = 720, 1280


def render_reds_like(root: Path, num_frames: int) -> Path:
    """``root/train_sharp/<clip>/<frame>.png`` (REDS's layout), rendered once and kept."""
    from PIL import Image
    from skimage import data
    from skimage.transform import resize

    clip_root = root / "train_sharp"
    photo = resize(data.astronaut(), (HEIGHT + 64, WIDTH + 64), order=3, anti_aliasing=True)
    photo = (photo * 255).astype(np.float32)
    for clip in range((num_frames + FRAMES_PER_CLIP - 1) // FRAMES_PER_CLIP):
        folder = clip_root / f"{clip + 100:03d}"  # not a REDS4 id: every clip is a training clip
        for i in range(min(FRAMES_PER_CLIP, num_frames - clip * FRAMES_PER_CLIP)):
            path = folder / f"{i:08d}.png"
            if path.is_file():
                continue
            folder.mkdir(parents=True, exist_ok=True)
            dy, dx = (0.37 * i + clip) % 60, (0.61 * i + 3 * clip) % 60
            y, x = int(dy), int(dx)
            frame = photo[y : y + HEIGHT, x : x + WIDTH]
            Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)).save(path, compress_level=1)
    return root


def reference(source: Path, num_frames: int) -> dict:
    """Decode + degrade + compress in this process, one thread, no Ray: the physical rate per CPU."""
    import torch

    from pipelines.data.prepare.stages import compress_clip, degrade_clip
    from pipelines.data.sources import decode_frame_clip

    torch.set_num_threads(1)
    frames = sorted((source / "train_sharp").glob("*/*.png"))[:num_frames]
    timings = {"decode": 0.0, "degrade": 0.0, "compress": 0.0}
    for start in range(0, len(frames), FRAMES_PER_CLIP):
        t0 = time.perf_counter()
        clip = decode_frame_clip([str(p) for p in frames[start : start + FRAMES_PER_CLIP]])
        t1 = time.perf_counter()
        hr, lr = degrade_clip(clip, "BI", 4)
        t2 = time.perf_counter()
        compress_clip(hr, lr, 3)
        t3 = time.perf_counter()
        for stage, seconds in zip(timings, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            timings[stage] += seconds
    total = sum(timings.values())
    return {"frames": len(frames), "seconds": total, "stages": timings}


def job(source: Path, num_cpus: int) -> dict:
    """The preparation job on a local Ray of ``num_cpus`` CPUs: a warm-up (a clip per CPU), then the timed run."""
    import ray

    from pipelines.common.ray_session import init_ray
    from pipelines.data.prepare import PrepareConfig, prepare_dataset

    init_ray(num_cpus=num_cpus)
    try:
        with tempfile.TemporaryDirectory() as warm, tempfile.TemporaryDirectory() as timed:
            # Warm-up on a clip per CPU: every worker starts and imports torch before the timed run.
            warm_source = str(_subset(source, num_cpus * FRAMES_PER_CLIP))
            prepare_dataset(
                PrepareConfig(source=warm_source, output=warm, shard_size=1), progress=lambda *_: None
            )
            before = resource.getrusage(resource.RUSAGE_SELF)
            summary = prepare_dataset(
                PrepareConfig(source=str(source), output=timed, shard_size=1), progress=lambda *_: None
            )
            after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        ray.shutdown()
    return {
        "frames": summary.frames_processed,
        "seconds": summary.seconds,
        "driver_cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "driver_peak_rss_mib": after.ru_maxrss / 1024,
        "driver_received_kib": summary.driver_received_bytes / 1024,
        "stages": summary.stage_seconds,
        "nodes": len(summary.shards_by_node),
    }


def _in_subprocess(mode: str, source: Path, frames: int, cpus: int = 0) -> dict:
    command = [sys.executable, __file__, "--measure", mode, "--source", str(source), "--frames", str(frames)]
    out = subprocess.run(command + ["--cpus", str(cpus)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _subset(root: Path, frames: int) -> Path:
    """A source folder holding the first ``frames`` frames of ``root`` (symlinked clip folders)."""
    subset = root.parent / f"{root.name}_{frames}" / "train_sharp"
    subset.mkdir(parents=True, exist_ok=True)
    for clip in sorted((root / "train_sharp").iterdir())[: frames // FRAMES_PER_CLIP]:
        link = subset / clip.name
        if not link.exists():
            link.symlink_to(clip.resolve(), target_is_directory=True)
    return subset.parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--frames", type=int, default=600, help="frames of the base dataset (a multiple of 100)"
    )
    parser.add_argument("--cache", default="data/bench_reds", help="where the REDS-like frames are rendered")
    parser.add_argument("--measure", choices=["reference", "job"], help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--cpus", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure == "reference":
        print(json.dumps(reference(Path(args.source), args.frames)))
        return
    if args.measure == "job":
        print(json.dumps(job(Path(args.source), args.cpus)))
        return

    started = time.perf_counter()
    full = render_reds_like(Path(args.cache), 2 * args.frames)
    base = _subset(full, args.frames)
    print(
        f"REDS-like source: {2 * args.frames} frames of {WIDTH}x{HEIGHT} in {full} "
        f"(rendered or found in {time.perf_counter() - started:.0f} s)"
    )
    ref = _in_subprocess("reference", base, args.frames)
    runs = {cpus: _in_subprocess("job", base, args.frames, cpus) for cpus in (1, 2)}
    doubled = _in_subprocess("job", full, 2 * args.frames, 2)

    ref_rate = ref["frames"] / ref["seconds"]
    print(
        f"\nreference (one process, one thread, no Ray, no write): {ref_rate:.1f} frames/s; ms per frame: "
        + ", ".join(f"{k} {1000 * v / ref['frames']:.1f}" for k, v in ref["stages"].items())
    )
    header = (
        f"{'Ray CPUs':>8} {'frames':>6} {'wall s':>7} {'frames/s':>8} {'driver CPU %':>12} "
        f"{'driver peak MiB':>15} {'to driver KiB':>13}  ms per frame (task time)"
    )
    print(header)
    for cpus, run in [(1, runs[1]), (2, runs[2]), (2, doubled)]:
        per_frame = ", ".join(f"{k} {1000 * v / run['frames']:.1f}" for k, v in run["stages"].items())
        print(
            f"{cpus:>8} {run['frames']:>6} {run['seconds']:>7.1f} {run['frames'] / run['seconds']:>8.1f} "
            f"{100 * run['driver_cpu_s'] / run['seconds']:>12.1f} {run['driver_peak_rss_mib']:>15.0f} "
            f"{run['driver_received_kib']:>13.1f}  {per_frame}"
        )
    rate1, rate2 = (runs[c]["frames"] / runs[c]["seconds"] for c in (1, 2))
    print(f"\n2 CPUs / 1 CPU: {rate2 / rate1:.2f}x (target >= 1.6x)")
    print(f"reference / job at 1 CPU: {ref_rate / rate1:.2f}x (target <= 1.5x)")
    print(
        f"driver peak memory, {2 * args.frames} vs {args.frames} frames: "
        f"{doubled['driver_peak_rss_mib'] - runs[2]['driver_peak_rss_mib']:+.0f} MiB (target: flat)"
    )


if __name__ == "__main__":
    main()
