"""Training ingestion throughput per worker: 50-frame sequences of 64x64 LR crops (256x256 HR), x4,
against what one training step of the small CPU TTVSR (configs/ttvsr_sample.yaml's model) consumes.

Builds a sample dataset of 60-frame clips, prepares it, then times `make_train_batch_iterator` with
batch size 1 on one process (as one Ray Train worker would run it) in both modes: crops drawn in Ray
Data tasks from the sampling plan and collated by `iter_torch_batches` (what training uses), and whole
clips cropped in the worker (the reference). Then prints how many Ray Data pipeline starts a REDS run
of the recipe's length incurs with the defaults (the plan covers the run) and with the former design
(one pipeline execution per epoch of one crop per clip).

Bytes read per sample (issue 17.9): prepares 4 clips of 100 frames (REDS's clip length) twice, stored
as one row group per clip (the format-version-1 layout, which the reader read whole for every sample)
and as segments of 10 frames (version 2), and counts the bytes the crop stage takes from the file
(``pipelines/data/read_stats.py``: every read of the Parquet reader, footers included) over 10 epochs
of the sampling plan, for 1, 4 (the default) and 8 crops per read. Then scales the fraction of a clip read per sample
to a REDS clip (100 frames, 720x1280 HR + 180x320 LR) and to the storage throughput a 16-GPU run needs
at ``--gpu-samples-per-s`` (docs/data_format.md#what-training-reads-from-shared-storage).

    .venv/bin/python bench/bench_ingest.py [--samples 20] [--cpus 2] [--model-steps 2]
    .venv/bin/python bench/bench_ingest.py --bytes-only [--gpu-samples-per-s 1.5]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch

from pipelines.common.ray_session import init_ray
from pipelines.data import ingest
from pipelines.data.ingest import CropSpec, make_train_batch_iterator, plan_clips, train_dataset
from pipelines.data.manifest import open_dataset
from pipelines.data.prepare import PrepareConfig, prepare_dataset
from pipelines.data.read_stats import counting_filesystem
from pipelines.data.sample import render_sample_dataset

NUM_FRAMES, LR_PATCH, SCALE = 50, 64, 4
REDS_CLIP_FRAMES, REDS_HR, REDS_GPUS = 100, (720, 1280), 16
PER_READ = (1, 4, 8)  # crops drawn per clip read (data.samples_per_clip; the default is 4)


def bytes_per_sample(data_dir: Path, per_clip: int, epochs: int = 10) -> tuple[float, float]:
    """(bytes read per sample, clip bytes read per sample / a clip's stored bytes) of the crop stage."""
    dataset = open_dataset(data_dir)
    clips = plan_clips(dataset, "train")
    spec = CropSpec(NUM_FRAMES, LR_PATCH, seed=0, samples_per_clip=per_clip, epochs=epochs)
    filesystem, counter = counting_filesystem()
    ingest._FOOTERS.clear()  # a fresh process: every shard's footer is read once, and counted
    samples = 0
    for row in range(len(clips) * epochs):
        samples += len(ingest._crop_stage({"id": np.array([row])}, clips, filesystem, spec, SCALE)["clip_id"])
    clip_bytes = sum(s.bytes for s in dataset.shards("train")) / len(clips)
    return counter.bytes_read / samples, counter.bytes_read / samples / clip_bytes


def _drifting_clips(root: Path, clips: int, num_frames: int, size: tuple[int, int]) -> Path:
    """``root/train/<clip>/<frame>.png``: a smooth random texture drifting a pixel per frame (the sample
    renderer's photographs cannot move for 100 frames), plus one val clip."""
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w = size
    for index in range(clips + 1):
        folder = root / ("val" if index == clips else "train") / f"clip{index}"
        folder.mkdir(parents=True)
        coarse = rng.random((h // 8 + 1, (w + num_frames) // 8 + 1, 3))
        texture = (
            np.kron(coarse, np.ones((8, 8, 1)))[:h] * 0.8
            + rng.random((h, (w + num_frames) // 8 * 8 + 8, 3))[:, : coarse.shape[1] * 8] * 0.2
        )
        for t in range(num_frames):
            Image.fromarray((texture[:, t : t + w] * 255).astype(np.uint8)).save(folder / f"{t:08d}.png")
    return root


def report_bytes(tmp: Path, gpu_rate: float) -> None:
    """Bytes per sample, one row group per clip against segments of 10 frames, and the REDS figures."""
    source = _drifting_clips(tmp / "src100", clips=4, num_frames=REDS_CLIP_FRAMES, size=(256, 256))
    fractions = {}
    for segment_frames, label in (
        (REDS_CLIP_FRAMES, "one row group per clip (v1)"),
        (10, "segments of 10 (v2)"),
    ):
        out = tmp / f"prepared_seg{segment_frames}"
        prepare_dataset(PrepareConfig(source=str(source), output=str(out), segment_frames=segment_frames))
        raw = 256 * 256 * 3 * (1 + 1 / SCALE**2)  # HR + LR bytes of one frame of the sample
        ratio = sum(s.bytes for s in open_dataset(out).shards("train")) / (4 * REDS_CLIP_FRAMES * raw)
        for per_clip in PER_READ:
            measured, fraction = bytes_per_sample(out, per_clip)
            fractions[segment_frames, per_clip] = fraction
            print(
                f"bytes per sample, {label:<27}, {per_clip} crop(s) per read: {measured / 2**20:6.2f} MiB "
                f"= {fraction * REDS_CLIP_FRAMES:5.1f} frames of the clip (stored at {ratio:.2f} of raw)"
            )
    reds_raw = REDS_HR[0] * REDS_HR[1] * 3 * (1 + 1 / SCALE**2) * REDS_CLIP_FRAMES  # HR + LR, uncompressed
    for compressed, note in ((0.5, "zstd at ~0.5 of raw (docs/data_format.md)"), (1.0, "raw: upper bound")):
        clip = reds_raw * compressed
        for per_clip in PER_READ:
            before, after = (fractions[k, per_clip] * clip for k in (REDS_CLIP_FRAMES, 10))
            print(
                f"REDS, {note}, {per_clip} crop(s) per read: {before / 2**20:6.1f} -> {after / 2**20:6.1f} MiB per "
                f"sample; {REDS_GPUS} GPUs x {gpu_rate:g} samples/s: {before * gpu_rate * REDS_GPUS / 2**30:5.2f} -> "
                f"{after * gpu_rate * REDS_GPUS / 2**30:5.2f} GiB/s from shared storage"
            )


def loader_samples_per_s(data_dir: Path, crop_in_ray_data: bool, samples: int, per_clip: int) -> float:
    spec = CropSpec(NUM_FRAMES, LR_PATCH, seed=0, samples_per_clip=per_clip)
    spec = dataclasses.replace(spec, epochs=spec.epochs_for(samples + 1, 4))  # the sample has 4 train clips
    prepared = open_dataset(data_dir)
    dataset = (
        train_dataset(prepared, crop=spec) if crop_in_ray_data else train_dataset(prepared, whole_clips=spec)
    )
    batches = make_train_batch_iterator(
        dataset.iterator(),
        lr_patch=LR_PATCH,
        num_frames=NUM_FRAMES,
        batch_size=1,
        samples_per_clip=per_clip,
        crop_here=not crop_in_ray_data,
    )
    try:
        next(batches)  # first batch: starts the Ray Data pipeline
        started = time.perf_counter()
        for _ in range(samples):
            batch = next(batches)
        assert batch["lr"].shape == (1, NUM_FRAMES, 3, LR_PATCH, LR_PATCH)
        return samples / (time.perf_counter() - started)
    finally:
        batches.close()


def model_samples_per_s(steps: int) -> float | None:
    """Samples/s of forward + Charbonnier + backward + Adam of the sample TTVSR, or None if not available."""
    try:
        from vsr_models.losses import charbonnier_loss
        from vsr_models.ttvsr import TTVSR, TTVSRConfig
    except ImportError as err:
        print(f"model not available ({err}): loader figures only")
        return None
    model = TTVSR(TTVSRConfig(mid_channels=16, num_extract_blocks=2, num_propagation_blocks=4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    lr = torch.rand(1, NUM_FRAMES, 3, LR_PATCH, LR_PATCH)
    gt = torch.rand(1, NUM_FRAMES, 3, LR_PATCH * SCALE, LR_PATCH * SCALE)

    def step() -> None:
        optimizer.zero_grad()
        charbonnier_loss(model(lr), gt).backward()
        optimizer.step()

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - started)


def pipeline_starts(total_iters: int, batch: int, workers: int, clips: int) -> tuple[int, int]:
    """(starts with the defaults, starts with one execution per epoch of one crop per clip) for a run."""
    from pipelines.training.config import DataSection

    spec = CropSpec(NUM_FRAMES, LR_PATCH, samples_per_clip=DataSection().samples_per_clip)
    samples = total_iters * batch * workers
    passes = -(-samples // (spec.epochs_for(samples, clips) * clips * spec.samples_per_clip))
    return passes, -(-samples // clips)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--model-steps", type=int, default=1)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument(
        "--samples-per-clip",
        type=int,
        nargs="+",
        default=[1, 4],
        help="crops drawn per clip read (the default data.samples_per_clip is 4)",
    )
    parser.add_argument("--bytes-only", action="store_true", help="only the bytes read per sample")
    parser.add_argument(
        "--gpu-samples-per-s",
        type=float,
        default=1.5,
        help="training samples one GPU consumes per second, for the storage figure (an estimate: see "
        "docs/data_format.md; bench/gpu_check.py measures frames/s on a GPU, / 50 frames per sample)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory() as tmp:
        init_ray(num_cpus=args.cpus)
        report_bytes(Path(tmp), args.gpu_samples_per_s)
        if args.bytes_only:
            ray.shutdown()
            return
        source = render_sample_dataset(Path(tmp) / "src", num_frames=60)
        prepare_dataset(PrepareConfig(source=str(source), output=str(Path(tmp) / "prepared")))
        for per_clip in args.samples_per_clip:
            for crop_in_ray_data, label in ((True, "crops in Ray Data"), (False, "crops in the worker")):
                rate = loader_samples_per_s(Path(tmp) / "prepared", crop_in_ray_data, args.samples, per_clip)
                print(
                    f"loader, {label:<19}, {per_clip} per clip: {rate:7.2f} samples/s "
                    f"({rate * NUM_FRAMES:7.1f} LR frames/s)"
                )
        ray.shutdown()
    # REDS recipe (docs/models.md#training-recipes): 400k iterations, 8 GPUs x 1 sequence, 266 training clips.
    now, before = pipeline_starts(400_000, 1, 8, 266)
    print(
        f"REDS, 400k iterations x 8 workers: {now} Ray Data pipeline start(s) with the defaults "
        f"(was {before:,}: one per epoch of 266 crops)"
    )
    rate = model_samples_per_s(args.model_steps) if args.model_steps > 0 else None
    if rate is not None:
        print(
            f"small TTVSR train step, {args.torch_threads} threads: {rate:7.3f} samples/s ({1 / rate:.1f} s/sample)"
        )


if __name__ == "__main__":
    main()
