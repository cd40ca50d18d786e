"""Training and validation ingestion of prepared datasets (ARCHITECTURE.md, data flow 4).

Training samples follow the released TTVSR recipe (``docs/models.md#training-recipes``): a random window of
``num_frames`` consecutive frames, a random ``lr_patch`` x ``lr_patch`` LR crop with the HR crop
``scale`` times larger at the aligned position, then horizontal flip, vertical flip, transpose and
temporal reverse, each with probability 0.5 and always the same for LR and HR. On request the
sequence is mirror-extended (``[x, reversed x]``) as the recurrent models are fed Vimeo-90K septuplets.

The training dataset is a *sampling plan*: row ``i`` is epoch ``first_epoch + i // n`` and the clip at
position ``i % n`` of that epoch's shuffled order (``n`` clips). Its Ray Data stage draws
``samples_per_clip`` crops from the clip's size in the manifest, then reads from the clip's shard (any
filesystem the dataset lives on) only the segments (row groups) their frame windows span
(``docs/data_format.md#what-training-reads-from-shared-storage``). The
plan covers as many epochs as the run needs (``CropSpec.epochs``), so the pipeline starts once per run
rather than once per epoch, and the epoch is data this project owns rather than a counter inside Ray.

Randomness is a function of ``(seed, epoch, clip id, draw)`` only, so a sample does not depend on which
worker received its clip, on the number of workers, or on the order Ray Data delivers clips in. That
lets the crops run in two places with identical results:

- in Ray Data, before the training workers (``train_dataset(..., crop=CropSpec(...))``): the workers
  receive small crops, collated by ``iter_torch_batches`` and placed on the worker's device;
- in the worker (``train_dataset(..., whole_clips=CropSpec(...))``): the worker receives whole decoded
  clips and :func:`make_train_batch_iterator` crops them with the same draws (the reference).

The first moves less data to the workers and spreads the decoding over the cluster, so it is what
training uses.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from pipelines.common.errors import DataError
from pipelines.data.manifest import PreparedDataset, ShardRecord, corrupt_shard
from pipelines.data.schema import READ_OPTIONS, decode_frames
from vsr_models.frames import mirror_extend, uint8_to_float


@dataclass(frozen=True)
class CropSpec:
    """What one training sample is: ``num_frames`` frames, ``lr_patch``-pixel LR crops, augmented."""

    num_frames: int
    lr_patch: int
    seed: int = 0
    augment: bool = True  # flips, transpose, temporal reverse (each p=0.5)
    samples_per_clip: int = 1  # crops drawn from each clip per epoch
    # Number of the first epoch. A resumed run passes the number of samples it has consumed: every
    # epoch holds at least one sample, so its new epochs draw crops it has not drawn before.
    first_epoch: int = 0
    epochs: int = 1  # epochs in one pass of the sampling plan (one Ray Data execution)
    shuffle_seed: int | None = 0  # the clip order of each epoch; None: clip id order every epoch

    def __post_init__(self) -> None:
        for name in ("num_frames", "lr_patch", "samples_per_clip", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"CropSpec.{name} must be at least 1, got {getattr(self, name)}")

    def epochs_for(self, samples: int, clips: int) -> int:
        """Epochs a pass needs so that ``clips`` clips give at least ``samples`` samples."""
        return max(1, -(-samples // max(1, clips * self.samples_per_clip)))


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


def crop_clip(
    row: dict,
    lr_frames: np.ndarray,
    hr_frames: np.ndarray,
    rng: np.random.Generator,
    spec: CropSpec,
    scale: int,
):
    """One training sample ``(lr (t, p, p, 3), gt (t, sp, sp, 3))`` uint8 from a decoded clip, or None."""
    draw = draw_crop(rng, row["num_frames"], (row["lr_height"], row["lr_width"]), spec)
    if draw is None:
        return None
    window = slice(draw.frame_start, draw.frame_start + spec.num_frames)
    return apply_crop(lr_frames[window], draw, spec.lr_patch, 1), apply_crop(
        hr_frames[window], draw, spec.lr_patch, scale
    )


@dataclass(frozen=True)
class PlanClip:
    """Where one clip of the sampling plan is stored, and its size (from the manifest, so crops are drawn
    before anything is read): its shard, the uri for messages, its row groups (segments)."""

    clip_id: str
    shard: str  # path on the dataset's filesystem
    uri: str
    shard_sha256: str  # identifies this version of the shard (keys the footer cache)
    first_row_group: int
    segments: int
    segment_frames: int  # frames per segment; the last may hold fewer (version 1: the whole clip)
    num_frames: int
    lr_size: tuple[int, int]
    hr_size: tuple[int, int]

    def segments_of(self, start: int, stop: int) -> range:
        """The segment indices holding frames ``[start, stop)``."""
        return range(start // self.segment_frames, (stop - 1) // self.segment_frames + 1)


def clip_layout(dataset: PreparedDataset, shard: ShardRecord) -> list[PlanClip]:
    """The clips of one shard of the dataset, in row-group order (format versions 1 and 2)."""
    location = dataset.location.join(shard.path)
    out, row_group = [], 0
    for clip_id in shard.clips:
        record = dataset.clip(clip_id)
        if record.row_groups is None:  # version 1: one row group per clip, all its frames
            (first, count), segment_frames = (row_group, 1), None
        else:
            (first, count), segment_frames = record.row_groups, dataset.manifest.segment_frames
        out.append(
            PlanClip(
                clip_id,
                location.path,
                location.uri,
                shard.sha256,
                first,
                count,
                segment_frames or max(1, record.num_frames),
                record.num_frames,
                record.lr_size,
                record.hr_size,
            )
        )
        row_group = first + count
    return out


def plan_clips(dataset: PreparedDataset, split: str) -> list[PlanClip]:
    """The split's clips in id order, with their row groups."""
    dataset.check_split(split)  # a split the dataset lacks is a DataError naming the others
    clips = [clip for shard in dataset.shards(split) for clip in clip_layout(dataset, shard)]
    if not clips:
        raise DataError(f"{dataset.root}: split '{split}' has no shards (every input was quarantined?)")
    return sorted(clips, key=lambda c: c.clip_id)


def epoch_order(num_clips: int, epoch: int, shuffle_seed: int | None) -> np.ndarray:
    """The clip positions of one epoch, in the order the plan visits them."""
    if shuffle_seed is None:
        return np.arange(num_clips)
    return np.random.default_rng([shuffle_seed, epoch, 7]).permutation(num_clips)


def plan_row(index: int, num_clips: int, spec: CropSpec) -> tuple[int, int]:
    """``(epoch, clip position)`` of row ``index`` of the sampling plan."""
    epoch, position = divmod(index, num_clips)
    epoch += spec.first_epoch
    return epoch, int(epoch_order(num_clips, epoch, spec.shuffle_seed)[position])


class StoredClip:
    """The frames of one clip read from its shard: only the segments asked for, still compressed."""

    def __init__(self, clip: PlanClip, table: pa.Table, segments: list[int]):
        self.clip = clip
        self.lr: dict[int, pa.Buffer] = {}
        self.hr: dict[int, pa.Buffer] = {}
        starts = [s * clip.segment_frames for s in segments]
        for i, start in enumerate(starts):
            for offset, (lr, hr) in enumerate(
                zip(table["lr_frames"][i].values, table["hr_frames"][i].values)
            ):
                self.lr[start + offset], self.hr[start + offset] = lr, hr

    def frames(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """LR and HR frames ``[start, stop)`` decoded to ``(t, h, w, 3)`` uint8; a damaged buffer names the shard."""
        window = range(start, stop)
        try:
            return (
                decode_frames([self.lr[i] for i in window], *self.clip.lr_size),
                decode_frames([self.hr[i] for i in window], *self.clip.hr_size),
            )
        except (OSError, pa.ArrowException) as err:  # e.g. "ZSTD decompression failed"
            raise corrupt_shard(self.clip.uri, err) from None


# Parquet footers of the shards this process has opened, keyed by shard path and sha256: a segmented
# shard's footer describes every row group, and re-reading it for each sample would cost more than a
# small crop. Bounded; footers of REDS shards are a few KB.
_FOOTERS: dict[tuple[str, str], object] = {}
_FOOTER_CACHE_SIZE = 64


def read_clip(filesystem, clip: PlanClip, segments: list[int] | None = None) -> StoredClip:
    """Read ``segments`` (all when None) of ``clip`` from its shard, checking they are the manifest's clip.

    Unreadable bytes (a damaged page, a corrupt footer) are one :class:`CorruptShard` naming the shard; a
    shard that is not there at all is :func:`shard_not_found` (a node without the dataset's mount).
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    segments = list(range(clip.segments)) if segments is None else segments
    key = (clip.shard, clip.shard_sha256)
    try:
        with filesystem.open_input_file(clip.shard) as f:
            parquet = pq.ParquetFile(f, metadata=_FOOTERS.get(key), **READ_OPTIONS)
            if key not in _FOOTERS:
                if len(_FOOTERS) >= _FOOTER_CACHE_SIZE:
                    _FOOTERS.pop(next(iter(_FOOTERS)))
                _FOOTERS[key] = parquet.metadata
            columns = ["clip_id", "num_frames", "lr_frames", "hr_frames"]
            table = parquet.read_row_groups([clip.first_row_group + s for s in segments], columns=columns)
    except DataError:
        raise
    except FileNotFoundError:
        raise shard_not_found(clip.uri) from None
    except (OSError, pa.ArrowException, IndexError) as err:
        raise corrupt_shard(clip.uri, err) from None
    ids, counts = set(table["clip_id"].to_pylist()), set(table["num_frames"].to_pylist())
    stored = pc.list_value_length(table["hr_frames"]).to_pylist()  # frames per row, no bytes copied
    expected = [min(clip.segment_frames, clip.num_frames - s * clip.segment_frames) for s in segments]
    if ids != {clip.clip_id} or counts != {clip.num_frames} or stored != expected:
        raise DataError(
            f"{clip.uri}: row groups {clip.first_row_group}+{segments} are not the {clip.num_frames} frames "
            f"of clip {clip.clip_id} the manifest lists; the shard was changed after preparation: prepare "
            "the dataset again"
        )
    return StoredClip(clip, table, segments)


def shard_not_found(uri: str) -> DataError:
    """The one-line error for a shard missing where it is read: names the node and the shared-storage fix.

    The driver checked at start that the manifest's shards are there, so a shard missing in a Ray Data
    task is most often a node that lacks the dataset's mount (one that joined later, or mounts elsewhere):
    re-running prepare, the fix for a damaged shard, would not help (``docs/cluster.md#shared-storage``).
    """
    return DataError(
        f"{uri}: no such file on {_this_node()}; the prepared dataset (data.path) must be on shared storage "
        "mounted at the same path on every node (docs/cluster.md#shared-storage): mount it there, or if it "
        "is mounted, the shard was removed after preparation: re-run prepare with the same --output"
    )


def _this_node() -> str:
    import socket

    import ray

    if ray.is_initialized():
        return f"Ray node {ray.get_runtime_context().get_node_id()} (host {socket.gethostname()})"
    return f"host {socket.gethostname()}"


def _clip_row(clip: PlanClip) -> dict:
    return {
        "num_frames": clip.num_frames,
        "lr_height": clip.lr_size[0],
        "lr_width": clip.lr_size[1],
        "hr_height": clip.hr_size[0],
        "hr_width": clip.hr_size[1],
    }


def _empty_crops(spec: CropSpec, scale: int) -> dict:
    t, p = spec.num_frames, spec.lr_patch
    return {
        "clip_id": np.array([], dtype=object),
        "epoch": np.array([], dtype=np.int64),
        "lr": np.empty((0, t, p, p, 3), np.uint8),
        "gt": np.empty((0, t, p * scale, p * scale, 3), np.uint8),
    }


def _crop_stage(batch: dict, clips: list[PlanClip], filesystem, spec: CropSpec, scale: int) -> dict:
    """Ray Data stage over plan rows: draw each row's crops for the row's epoch, then read from its clip
    only the segments their windows span and decompress only the windows' frames."""
    ids, epochs, lrs, gts = [], [], [], []
    for index in batch["id"]:
        epoch, position = plan_row(int(index), len(clips), spec)
        clip = clips[position]
        draws = [
            draw_crop(sample_rng(spec.seed, epoch, clip.clip_id, d), clip.num_frames, clip.lr_size, spec)
            for d in range(spec.samples_per_clip)
        ]
        draws = [d for d in draws if d is not None]
        if not draws:  # the clip is too small for the crop: nothing to read
            continue
        windows = [(d.frame_start, d.frame_start + spec.num_frames) for d in draws]
        segments = sorted({s for start, stop in windows for s in clip.segments_of(start, stop)})
        stored = read_clip(filesystem, clip, segments)
        for draw, (start, stop) in zip(draws, windows, strict=True):
            lr, hr = stored.frames(start, stop)
            ids.append(clip.clip_id)
            epochs.append(epoch)
            lrs.append(apply_crop(lr, draw, spec.lr_patch, 1))
            gts.append(apply_crop(hr, draw, spec.lr_patch, scale))
    if not ids:
        return _empty_crops(spec, scale)
    return {
        "clip_id": np.array(ids, dtype=object),
        "epoch": np.array(epochs),
        "lr": np.stack(lrs),
        "gt": np.stack(gts),
    }


def _decode_clip_stage(batch: dict, clips: list[PlanClip], filesystem, spec: CropSpec) -> dict:
    """Ray Data stage over plan rows: the row's whole clip, decoded to ``(t, h, w, 3)`` uint8 (one row)."""
    (index,) = batch["id"]
    epoch, position = plan_row(int(index), len(clips), spec)
    clip = clips[position]
    lr, gt = read_clip(filesystem, clip).frames(0, clip.num_frames)
    return {
        "clip_id": np.array([clip.clip_id], dtype=object),
        "epoch": np.array([epoch]),
        **{k: np.array([v]) for k, v in _clip_row(clip).items()},
        "lr": lr[None],
        "gt": gt[None],
    }


def train_dataset(
    dataset: PreparedDataset,
    split: str = "train",
    *,
    crop: CropSpec | None = None,
    whole_clips: CropSpec | None = None,
):
    """A Ray Dataset of the split's training samples (``crop``) or whole decoded clips (``whole_clips``).

    Both follow the sampling plan of the spec given (module docstring): rows carry ``clip_id``, ``epoch``
    and uint8 ``lr (t, h, w, 3)`` / ``gt (t, H, W, 3)``; with ``crop`` they are already cropped and
    augmented. Pass it to ``TorchTrainer(datasets={"train": ...})`` and call
    :func:`make_train_batch_iterator` on ``ray.train.get_dataset_shard("train")``.

    ``dataset``: the dataset as the caller opened it (:func:`pipelines.data.manifest.open_dataset`), or the
    part of it the caller hands down (:meth:`~pipelines.data.manifest.PreparedDataset.only`): its manifest
    is not read again.
    """
    import ray.data

    if (crop is None) == (whole_clips is None):
        raise ValueError("train_dataset: pass exactly one of crop= (samples) or whole_clips= (decoded clips)")
    spec = crop or whole_clips
    clips = plan_clips(dataset, split)
    rows = ray.data.range(len(clips) * spec.epochs, override_num_blocks=min(len(clips) * spec.epochs, 200))
    common = {"clips": clips, "filesystem": dataset.filesystem, "spec": spec}
    if crop is None:  # whole clips
        dataset = rows.map_batches(_decode_clip_stage, batch_size=1, fn_kwargs=common)
    else:
        dataset = rows.map_batches(_crop_stage, batch_size=1, fn_kwargs=common | {"scale": dataset.scale})
    # A user error in a stage (a damaged shard) reaches the worker as itself, so the job prints its one
    # line (pipelines.common.errors.find_user_error); Ray Data's wrapper would drop it on the way.
    dataset.context.raise_original_map_exception = True
    return dataset


def _worker_rank() -> int:
    try:
        import ray.train

        return ray.train.get_context().get_world_rank()
    except Exception:  # not inside a Ray Train worker
        return 0


class _CropCollate(NumpyBatchCollateFn):
    """``iter_torch_batches`` collate: a batch of crops -> uint8 tensors ``(n, t, h, w, 3)``, shapes checked.

    The tensors stay uint8 until they are on the worker's device (a quarter of the bytes to move).
    """

    def __init__(self, spec: CropSpec, scale: int):
        self.expected = (spec.num_frames, spec.lr_patch, spec.lr_patch, 3)
        self.gt_side = spec.lr_patch * scale
        self.scale = scale

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        lr, gt = batch["lr"], batch["gt"]
        if "num_frames" in batch:
            raise DataError(
                "make_train_batch_iterator(crop_here=False) was given whole clips: build the dataset with "
                "train_dataset(..., crop=CropSpec(...)), or pass crop_here=True"
            )
        if lr.shape[1:] != self.expected or gt.shape[2:4] != (self.gt_side,) * 2:
            raise DataError(
                f"train_dataset made crops lr {lr.shape[1:]} gt {gt.shape[1:]} but the batch iterator expects "
                f"lr {self.expected} at scale {self.scale}: give train_dataset's CropSpec the same num_frames, "
                "lr_patch and the dataset's scale"
            )
        return {
            "lr": torch.from_numpy(np.ascontiguousarray(lr)),
            "gt": torch.from_numpy(np.ascontiguousarray(gt)),
        }


def _as_float(batch: dict[str, torch.Tensor], mirror_times: int) -> dict[str, torch.Tensor]:
    """uint8 ``(n, t, h, w, 3)`` -> float ``(n, t, 3, h, w)`` in [0, 1] on the tensors' device, mirrored on request."""
    lr, gt = uint8_to_float(batch["lr"]), uint8_to_float(batch["gt"])
    if mirror_times:
        lr, gt = mirror_extend(lr, mirror_times), mirror_extend(gt, mirror_times)
    return {"lr": lr, "gt": gt}


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
    prefetch_batches: int = 2,
    device: torch.device | str = "cpu",
    crop_here: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless training batches ``{'lr': (n, t, 3, h, w), 'gt': (n, t, 3, sh, sw)}`` float in [0, 1] on ``device``.

    ``shard`` is a Ray ``DataIterator`` (``ray.train.get_dataset_shard('train')``) over :func:`train_dataset`
    rows; it is iterated pass after pass of the sampling plan. Crops from Ray Data (the default) are
    collated by ``iter_torch_batches`` (``prefetch_batches`` ahead, placed on ``device``, shuffled through
    ``shuffle_buffer`` samples); with ``crop_here`` the rows are whole clips, cropped here with the same
    draws the Ray Data stage would make (the reference path). ``mirror_times`` appends the reversed
    sequence that many times (2: TTVSR's 28 frames from a Vimeo-90K septuplet).
    """
    spec = CropSpec(num_frames, lr_patch, seed, augment, samples_per_clip)
    rank = _worker_rank()
    for passes in itertools.count():
        if crop_here:
            batches = _crop_in_worker(shard, spec, scale, batch_size, prefetch_batches)
        else:
            batches = shard.iter_torch_batches(
                batch_size=batch_size,
                collate_fn=_CropCollate(spec, scale),
                device=device,
                prefetch_batches=prefetch_batches,
                local_shuffle_buffer_size=shuffle_buffer or None,
                local_shuffle_seed=(seed * 1_000_003 + rank * 1009 + passes) if shuffle_buffer else None,
            )
        drawn = 0
        for batch in batches:
            drawn += 1
            yield _as_float({k: batch[k].to(device, non_blocking=True) for k in ("lr", "gt")}, mirror_times)
        if drawn == 0:  # would otherwise loop forever without yielding
            raise DataError(
                "make_train_batch_iterator: this worker's shard gave no training batch in a whole pass: no clip "
                f"with at least {num_frames} frames of at least {lr_patch}x{lr_patch} LR pixels, or fewer "
                "training clips than workers; lower num_frames / lr_patch or prepare more clips"
            )


def _crop_in_worker(shard, spec: CropSpec, scale: int, batch_size: int, prefetch_batches: int):
    """The reference path: whole clips from Ray Data, cropped here; uint8 batches of ``batch_size``."""
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    for batch in shard.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=prefetch_batches):
        if "num_frames" not in batch:
            raise DataError(
                "make_train_batch_iterator(crop_here=True) needs whole clips: build the dataset with "
                "train_dataset(..., whole_clips=CropSpec(...))"
            )
        row = {k: int(batch[k][0]) for k in ("num_frames", "lr_height", "lr_width", "hr_height", "hr_width")}
        lr, gt, epoch = np.asarray(batch["lr"][0]), np.asarray(batch["gt"][0]), int(batch["epoch"][0])
        for draw in range(spec.samples_per_clip):
            rng = sample_rng(spec.seed, epoch, str(batch["clip_id"][0]), draw)
            sample = crop_clip(row, lr, gt, rng, spec, scale)
            if sample is None:
                continue
            pending.append(sample)
            if len(pending) == batch_size:
                yield {
                    "lr": torch.from_numpy(np.stack([s[0] for s in pending])),
                    "gt": torch.from_numpy(np.stack([s[1] for s in pending])),
                }
                pending = []


def iter_val_clips(
    dataset: PreparedDataset,
    split: str = "val",
    *,
    rank: int = 0,
    world_size: int = 1,
    max_clips: int | None = None,
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """Whole clips ``(clip_id, lr (1, t, 3, h, w), gt (1, t, 3, H, W))`` float in [0, 1], in id order.

    Of the first ``max_clips`` clips, only those with index ``i % world_size == rank`` are yielded (one
    validation worker's share); the others are skipped before their frames are decompressed, so
    sharding the validation over workers also shares its decoding. Reads the shards directly with
    pyarrow (no Ray): validation sets are small. ``dataset`` as for :func:`train_dataset`.
    """
    dataset.check_split(split)  # a split the dataset lacks is a DataError naming the others
    index = 0
    for shard in dataset.shards(split):
        for clip in clip_layout(dataset, shard):  # row-group order: the shard is read front to back
            if max_clips is not None and index >= max_clips:
                return
            index += 1
            if (index - 1) % world_size != rank:
                continue
            lr, gt = read_clip(dataset.filesystem, clip).frames(0, clip.num_frames)
            yield clip.clip_id, uint8_to_float(lr[None]), uint8_to_float(gt[None])
