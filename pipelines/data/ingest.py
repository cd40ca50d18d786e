"""Training and validation ingestion of prepared datasets (ARCHITECTURE.md, data flow 5).

Training samples follow the released TTVSR recipe (``docs/models.md#training-recipes``): a random window of
``num_frames`` consecutive frames, a random ``lr_patch`` x ``lr_patch`` LR crop with the HR crop
``scale`` times larger at the aligned position, then horizontal flip, vertical flip, transpose and
temporal reverse, each with probability 0.5 and always the same for LR and HR. On request the
sequence is mirror-extended (``[x, reversed x]``) as the recurrent models are fed Vimeo-90K septuplets.

Randomness is a function of ``(seed, epoch, clip id, draw)`` only, so a sample does not depend on which
worker received its clip, on the number of workers, or on the order Ray Data delivers clips in. That
lets the crops run in two places with identical results:

- in Ray Data, before the training workers (``train_dataset(..., crop=CropSpec(...))``): the epoch is
  the dataset's execution index, which Ray Data increments each time the dataset is iterated anew
  (``DataContext._execution_idx``); the workers receive small crops and only collate them;
- in the worker (``train_dataset(...)`` without ``crop``): the worker receives whole decoded clips and
  :func:`make_train_batch_iterator` crops them, counting epochs itself.

The first moves less data to the workers (a crop instead of a whole clip) and spreads the decoding over
the cluster, so it is what training should use; the second keeps ``train_dataset(data_dir)`` usable
on its own and is the reference the first is tested against.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from pipelines.common.errors import DataError
from pipelines.data.manifest import load_manifest
from pipelines.data.schema import READ_COLUMNS, decode_frames
from vsr_models.frames import mirror_extend, uint8_to_float


@dataclass(frozen=True)
class CropSpec:
    """What one training sample is: ``num_frames`` frames, ``lr_patch``-pixel LR crops, augmented."""

    num_frames: int
    lr_patch: int
    seed: int = 0
    augment: bool = True  # flips, transpose, temporal reverse (each p=0.5)
    samples_per_clip: int = 1  # crops drawn from each clip per epoch
    # Number of the first epoch. A resumed run passes the iteration it resumes from: a run has seen at
    # most one epoch per iteration, so its new epochs draw crops it has not drawn before.
    first_epoch: int = 0


def sample_rng(seed: int, epoch: int, clip_id: str, draw: int) -> np.random.Generator:
    """The generator of one sample: depends only on ``(seed, epoch, clip id, draw)``."""
    return np.random.default_rng([seed, epoch, zlib.crc32(clip_id.encode()), draw])


@dataclass(frozen=True)
class CropDraw:
    """The random choices of one sample, in LR pixels and frames."""

    frame_start: int
    top: int
    left: int
    flip_h: bool
    flip_v: bool
    transpose: bool
    reverse: bool


def draw_crop(
    rng: np.random.Generator, num_frames: int, lr_size: tuple[int, int], spec: CropSpec
) -> CropDraw | None:
    """Draw a crop for a clip of ``num_frames`` LR frames of ``lr_size``; None if the clip is too small."""
    h, w = lr_size
    if num_frames < spec.num_frames or h < spec.lr_patch or w < spec.lr_patch:
        return None
    frame_start = int(rng.integers(0, num_frames - spec.num_frames + 1))
    top = int(rng.integers(0, h - spec.lr_patch + 1))
    left = int(rng.integers(0, w - spec.lr_patch + 1))
    flips = rng.random(4) < 0.5 if spec.augment else np.zeros(4, dtype=bool)
    return CropDraw(frame_start, top, left, *(bool(f) for f in flips))


def apply_crop(frames: np.ndarray, draw: CropDraw, patch: int, factor: int) -> np.ndarray:
    """Crop and augment ``frames (t', h, w, 3)`` already cut to the draw's window; ``factor`` is 1 for LR,
    the scale for HR (positions and sizes scale with it, so HR stays aligned with LR)."""
    top, left, size = draw.top * factor, draw.left * factor, patch * factor
    out = frames[:, top : top + size, left : left + size]
    if draw.flip_h:
        out = out[:, :, ::-1]
    if draw.flip_v:
        out = out[:, ::-1]
    if draw.transpose:
        out = out.transpose(0, 2, 1, 3)
    if draw.reverse:
        out = out[::-1]
    return np.ascontiguousarray(out)


def crop_clip(row: dict, lr_frames, hr_frames, rng: np.random.Generator, spec: CropSpec, scale: int):
    """One training sample ``(lr (t, p, p, 3), gt (t, sp, sp, 3))`` uint8 from one clip, or None.

    ``lr_frames`` / ``hr_frames`` are either compressed frame lists (only the window is decompressed)
    or decoded ``(t, h, w, 3)`` arrays.
    """
    lr_size = (row["lr_height"], row["lr_width"])
    draw = draw_crop(rng, row["num_frames"], lr_size, spec)
    if draw is None:
        return None
    window = range(draw.frame_start, draw.frame_start + spec.num_frames)
    if isinstance(lr_frames, np.ndarray):
        lr, hr = lr_frames[window.start : window.stop], hr_frames[window.start : window.stop]
    else:
        lr = decode_frames(lr_frames, *lr_size, indices=window)
        hr = decode_frames(hr_frames, row["hr_height"], row["hr_width"], indices=window)
    return apply_crop(lr, draw, spec.lr_patch, 1), apply_crop(hr, draw, spec.lr_patch, scale)


def _rows(table: pa.Table) -> Iterator[tuple[dict, pa.Array, pa.Array]]:
    """Per clip: its scalar fields and its two compressed frame lists (zero-copy)."""
    scalars = table.drop_columns(["hr_frames", "lr_frames"]).to_pylist()
    for i, row in enumerate(scalars):
        yield row, table["lr_frames"][i].values, table["hr_frames"][i].values


def _empty_crops(spec: CropSpec, scale: int) -> dict:
    t, p = spec.num_frames, spec.lr_patch
    return {
        "clip_id": np.array([], dtype=object),
        "lr": np.empty((0, t, p, p, 3), np.uint8),
        "gt": np.empty((0, t, p * scale, p * scale, 3), np.uint8),
    }


def _crop_stage(table: pa.Table, spec: CropSpec, scale: int) -> dict:
    """Ray Data stage: crops of every clip in the batch, seeded with the dataset's execution index."""
    from ray.data import DataContext

    # Ray Data counts the completed executions of a dataset; each training epoch is one execution.
    epoch = spec.first_epoch + getattr(DataContext.get_current(), "_execution_idx", 0)
    ids, lrs, gts = [], [], []
    for row, lr_frames, hr_frames in _rows(table):
        for draw in range(spec.samples_per_clip):
            sample = crop_clip(
                row, lr_frames, hr_frames, sample_rng(spec.seed, epoch, row["clip_id"], draw), spec, scale
            )
            if sample is not None:
                ids.append(row["clip_id"])
                lrs.append(sample[0])
                gts.append(sample[1])
    if not ids:
        return _empty_crops(spec, scale)
    return {"clip_id": np.array(ids, dtype=object), "lr": np.stack(lrs), "gt": np.stack(gts)}


def _decode_shard_stage(table: pa.Table) -> dict:
    """Ray Data stage: whole clips, decoded to ``(t, h, w, 3)`` uint8 (one clip per batch)."""
    ((row, lr_frames, hr_frames),) = list(_rows(table))
    return {
        "clip_id": np.array([row["clip_id"]], dtype=object),
        "num_frames": np.array([row["num_frames"]]),
        "lr_height": np.array([row["lr_height"]]),
        "lr_width": np.array([row["lr_width"]]),
        "hr_height": np.array([row["hr_height"]]),
        "hr_width": np.array([row["hr_width"]]),
        "lr": decode_frames(lr_frames, row["lr_height"], row["lr_width"])[None],
        "gt": decode_frames(hr_frames, row["hr_height"], row["hr_width"])[None],
    }


def train_dataset(
    data_dir: str | Path,
    split: str = "train",
    *,
    crop: CropSpec | None = None,
    verify: bool = True,
    shuffle_seed: int | None = 0,
):
    """A Ray Dataset of the split's training samples (``crop`` given) or whole decoded clips.

    Rows have ``clip_id`` and uint8 ``lr (t, h, w, 3)`` / ``gt (t, H, W, 3)``; with ``crop`` they are
    already cropped and augmented. Shard files are read in a new order every epoch
    (``shuffle_seed`` None: not reproducible). Pass it to ``TorchTrainer(datasets={"train": ...})`` and
    call :func:`make_train_batch_iterator` on ``ray.train.get_dataset_shard("train")``.
    """
    import ray.data
    from ray.data import FileShuffleConfig

    manifest = load_manifest(data_dir, verify=verify)
    paths = [str(p) for p in manifest.shard_paths(split)]
    if not paths:
        raise DataError(f"{manifest.root}: split '{split}' has no shards (every input was quarantined?)")
    shuffle = (
        FileShuffleConfig(seed=shuffle_seed, reseed_after_execution=True)
        if shuffle_seed is not None
        else None
    )
    ds = ray.data.read_parquet(paths, columns=READ_COLUMNS, shuffle=shuffle)
    if crop is None:
        return ds.map_batches(_decode_shard_stage, batch_size=1, batch_format="pyarrow")
    return ds.map_batches(
        _crop_stage, batch_size=1, batch_format="pyarrow", fn_kwargs={"spec": crop, "scale": manifest.scale}
    )


def _worker_rank() -> int:
    try:
        import ray.train

        return ray.train.get_context().get_world_rank()
    except Exception:  # not inside a Ray Train worker
        return 0


def make_train_batch_iterator(
    shard,
    *,
    lr_patch: int = 64,
    num_frames: int = 50,
    batch_size: int = 1,
    scale: int = 4,
    seed: int = 0,
    mirror_times: int = 0,
    augment: bool = True,
    samples_per_clip: int = 1,
    shuffle_buffer: int = 0,
    start_epoch: int = 0,
    prefetch_batches: int = 2,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless training batches ``{'lr': (n, t, 3, h, w), 'gt': (n, t, 3, sh, sw)}`` float in [0, 1].

    ``shard`` is a Ray ``DataIterator`` (``ray.train.get_dataset_shard('train')``) over
    :func:`train_dataset` rows; it is iterated epoch after epoch for an iteration-based schedule.
    Rows that are already crops are checked against ``lr_patch``/``num_frames``/``scale`` and collated;
    whole clips are cropped here with the same draws the Ray Data stage would make. ``mirror_times``
    appends the reversed sequence that many times (2: TTVSR's 28 frames from a Vimeo-90K septuplet). ``shuffle_buffer``
    > 0 shuffles samples through a buffer seeded by ``(seed, epoch, worker rank)``.
    """
    spec = CropSpec(num_frames, lr_patch, seed, augment, samples_per_clip)
    rank = _worker_rank()
    buffer: list[tuple[np.ndarray, np.ndarray]] = []
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    for epoch in itertools.count(start_epoch):
        shuffler = np.random.default_rng([seed, epoch, rank, 1])
        drawn = 0
        for batch in shard.iter_batches(
            batch_size=1, batch_format="numpy", prefetch_batches=prefetch_batches
        ):
            for sample in _samples(batch, spec, scale, epoch):
                drawn += 1
                if shuffle_buffer > 0:
                    buffer.append(sample)
                    if len(buffer) < shuffle_buffer:
                        continue
                    sample = buffer.pop(int(shuffler.integers(len(buffer))))
                pending.append(sample)
                if len(pending) == batch_size:
                    yield _collate(pending, mirror_times)
                    pending = []
        if drawn == 0:  # would otherwise loop forever without yielding
            raise DataError(
                "make_train_batch_iterator: this worker's shard gave no training sample in a whole epoch: "
                f"no clip with at least {num_frames} frames of at least {lr_patch}x{lr_patch} LR pixels, or "
                "fewer training clips than workers; lower num_frames / lr_patch or prepare more clips"
            )


def _samples(batch: dict, spec: CropSpec, scale: int, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The training samples in one ``iter_batches`` batch: crops pass through, whole clips are cropped."""
    lr_rows, gt_rows = batch["lr"], batch["gt"]
    for i, clip_id in enumerate(batch["clip_id"]):
        lr, gt = np.asarray(lr_rows[i]), np.asarray(gt_rows[i])
        if "num_frames" not in batch:  # a crop from the Ray Data stage
            expected = (spec.num_frames, spec.lr_patch, spec.lr_patch, 3)
            if lr.shape != expected or gt.shape[1:3] != (spec.lr_patch * scale,) * 2:
                raise DataError(
                    f"train_dataset made crops lr {lr.shape} gt {gt.shape} but the batch iterator expects "
                    f"lr {expected} at scale {scale}: give train_dataset's CropSpec the same num_frames, "
                    "lr_patch and the dataset's scale"
                )
            yield lr, gt
            continue
        row = {k: int(batch[k][i]) for k in ("num_frames", "lr_height", "lr_width", "hr_height", "hr_width")}
        for draw in range(spec.samples_per_clip):
            sample = crop_clip(row, lr, gt, sample_rng(spec.seed, epoch, str(clip_id), draw), spec, scale)
            if sample is not None:
                yield sample


def _collate(samples: list[tuple[np.ndarray, np.ndarray]], mirror_times: int) -> dict[str, torch.Tensor]:
    lr = uint8_to_float(np.stack([s[0] for s in samples]))
    gt = uint8_to_float(np.stack([s[1] for s in samples]))
    if mirror_times:
        lr, gt = mirror_extend(lr, mirror_times), mirror_extend(gt, mirror_times)
    return {"lr": lr, "gt": gt}


def iter_val_clips(
    data_dir: str | Path,
    split: str = "val",
    *,
    verify: bool = True,
    rank: int = 0,
    world_size: int = 1,
    max_clips: int | None = None,
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """Whole clips ``(clip_id, lr (1, t, 3, h, w), gt (1, t, 3, H, W))`` float in [0, 1], in id order.

    Of the first ``max_clips`` clips, only those with index ``i % world_size == rank`` are yielded (one
    validation worker's share); the others are skipped before their frames are decompressed, so
    sharding the validation over workers also shares its decoding. Reads the shards directly with
    pyarrow (no Ray): validation sets are small.
    """
    import pyarrow.parquet as pq

    manifest = load_manifest(data_dir, verify=verify)
    index = 0
    for path in manifest.shard_paths(split):
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            for row, lr_frames, hr_frames in _rows(parquet.read_row_group(group, columns=READ_COLUMNS)):
                if max_clips is not None and index >= max_clips:
                    return
                index += 1
                if (index - 1) % world_size != rank:
                    continue
                lr = decode_frames(lr_frames, row["lr_height"], row["lr_width"])
                gt = decode_frames(hr_frames, row["hr_height"], row["hr_width"])
                yield row["clip_id"], uint8_to_float(lr[None]), uint8_to_float(gt[None])
