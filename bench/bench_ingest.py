"""Training ingestion throughput per worker: 50-frame sequences of 64x64 LR crops (256x256 HR), x4,
against what one training step of the small CPU TTVSR (configs/ttvsr_sample.yaml's model) consumes.

Builds a sample dataset of 60-frame clips, prepares it, then times `make_train_batch_iterator` with
batch size 1 on one process (as one Ray Train worker would run it) in both modes: crops drawn in Ray
Data tasks from the sampling plan and collated by `iter_torch_batches` (what training uses), and whole
clips cropped in the worker (the reference). Then prints how many Ray Data pipeline starts a REDS run
of the recipe's length incurs with the defaults (the plan covers the run) and with the former design
(one pipeline execution per epoch of one crop per clip).

    .venv/bin/python bench/bench_ingest.py [--samples 20] [--cpus 2] [--model-steps 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import ray
import torch

from pipelines.common.ray_session import init_ray
from pipelines.data.ingest import CropSpec, make_train_batch_iterator, train_dataset
from pipelines.data.prepare import PrepareConfig, prepare_dataset
from pipelines.data.sample import render_sample_dataset

NUM_FRAMES, LR_PATCH, SCALE = 50, 64, 4


def loader_samples_per_s(data_dir: Path, crop_in_ray_data: bool, samples: int, per_clip: int) -> float:
    spec = CropSpec(NUM_FRAMES, LR_PATCH, seed=0, samples_per_clip=per_clip)
    spec = dataclasses.replace(spec, epochs=spec.epochs_for(samples + 1, 4))  # the sample has 4 train clips
    dataset = (
        train_dataset(data_dir, crop=spec) if crop_in_ray_data else train_dataset(data_dir, whole_clips=spec)
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
    from pipelines.training.experiment import DataSection

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
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory() as tmp:
        source = render_sample_dataset(Path(tmp) / "src", num_frames=60)
        init_ray(num_cpus=args.cpus)
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
