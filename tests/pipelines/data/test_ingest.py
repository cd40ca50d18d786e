"""Training and validation ingestion from prepared shards, on a real local Ray."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_frame_dataset

from pipelines.common.errors import DataError
from pipelines.data.degradations import degrade
from pipelines.data.ingest import (
    CropDraw,
    CropSpec,
    apply_crop,
    draw_crop,
    iter_val_clips,
    make_train_batch_iterator,
    mirror_extend,
    sample_rng,
    train_dataset,
)
from pipelines.data.manifest import open_dataset
from pipelines.data.prepare import PrepareConfig, prepare_dataset
from pipelines.data.sources import decode_frame_clip

NUM_FRAMES, LR_PATCH, SCALE = 4, 8, 4
_PREPARED: dict = {}


@pytest.fixture
def prepared(ray_local, tmp_path_factory):
    """Train clips a, b, c (10 frames, HR 64x72, LR 16x18, BI x4) and val clip val_a (6 frames), stored in
    segments of 3 frames (a crop window of 4 spans 2 or 3 of them); built once."""
    if "dir" not in _PREPARED:
        root = tmp_path_factory.mktemp("ingest")
        source = make_frame_dataset(root / "src", {"a": 10, "b": 10, "c": 10, "val_a": 6}, size=(64, 72))
        prepare_dataset(
            PrepareConfig(source=str(source), output=str(root / "prepared"), shard_size=2, segment_frames=3)
        )
        _PREPARED["dir"], _PREPARED["source"] = root / "prepared", source
    return _PREPARED["dir"]


@contextlib.contextmanager
def ordered():
    """Ray Data delivers rows in plan order (set before the Dataset is created), so runs compare row by row."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    try:
        yield
    finally:
        ctx.execution_options.preserve_order = before


def _batches(data_dir, count, *, crop_in_ray_data=True, seed=3, batch_size=3, **kwargs):

    data_dir = open_dataset(data_dir)
    with ordered():
        spec = CropSpec(NUM_FRAMES, LR_PATCH, seed=seed, epochs=2)
        ds = (
            train_dataset(data_dir, crop=spec)
            if crop_in_ray_data
            else train_dataset(data_dir, whole_clips=spec)
        )
        iterator = make_train_batch_iterator(
            ds.iterator(),
            lr_patch=LR_PATCH,
            num_frames=NUM_FRAMES,
            batch_size=batch_size,
            scale=SCALE,
            seed=seed,
            crop_here=not crop_in_ray_data,
            **kwargs,
        )
        try:
            return [next(iterator) for _ in range(count)]
        finally:
            iterator.close()


def _cached(name, data_dir, **kwargs):
    """Two batches of 3 from 3 training clips: one per epoch of the plan (cached: Ray Data runs once)."""
    if name not in _PREPARED:
        _PREPARED[name] = _batches(data_dir, 2, **kwargs)
    return _PREPARED[name]


def test_batches_have_the_training_shapes_and_range(prepared):
    batch = _cached("in_ray_data", prepared)[0]
    assert set(batch) == {"lr", "gt"}
    assert batch["lr"].shape == (3, NUM_FRAMES, 3, LR_PATCH, LR_PATCH)
    assert batch["gt"].shape == (3, NUM_FRAMES, 3, LR_PATCH * SCALE, LR_PATCH * SCALE)
    for frames in batch.values():
        assert frames.dtype == torch.float32
        assert frames.min() >= 0.0 and frames.max() <= 1.0 and frames.std() > 0.05


def test_lr_and_gt_crops_stay_aligned_under_augmentation(prepared):
    """BI of the GT crop equals the LR crop away from the crop border (the kernel reaches 2 LR pixels)."""
    batches = _cached("in_ray_data", prepared)
    gt = torch.cat([b["gt"] for b in batches]).mul(255).round().to(torch.uint8)
    lr = torch.cat([b["lr"] for b in batches]).mul(255).round().to(torch.uint8)
    relowered = degrade(gt, "BI", SCALE)
    inner = (..., slice(2, -2), slice(2, -2))
    assert torch.equal(relowered[inner], lr[inner])
    # The same check fails for a GT shifted by a single LR pixel, so it does see misalignment.
    shifted = degrade(gt[..., SCALE:, :].contiguous(), "BI", SCALE)
    assert not torch.equal(shifted[..., 1:-1, 2:-2], lr[..., 2:-2, 2:-2])


def test_crops_in_ray_data_and_in_the_worker_are_the_same_draws(prepared):
    """Both places seed each sample with (seed, epoch, clip id, draw), so two runs agree batch for batch."""
    in_ray_data = _cached("in_ray_data", prepared)
    in_worker = _cached("in_worker", prepared, crop_in_ray_data=False)
    for a, b in zip(in_ray_data, in_worker, strict=True):
        assert torch.equal(a["lr"], b["lr"]) and torch.equal(a["gt"], b["gt"])
    # The second batch is the second epoch: new crops of the same clips.
    assert not torch.equal(in_ray_data[0]["lr"], in_ray_data[1]["lr"])


def test_first_epoch_shifts_the_crop_stream(prepared):
    """A resumed run (first_epoch past the samples it consumed) draws new crops, not epoch 0's again."""
    from pipelines.data.ingest import _crop_stage, plan_clips

    manifest = open_dataset(prepared)
    clips, first_row = plan_clips(manifest, "train"), {"id": np.array([0])}

    def crops(**spec):
        return _crop_stage(
            first_row, clips, manifest.filesystem, CropSpec(NUM_FRAMES, LR_PATCH, seed=3, **spec), SCALE
        )

    first, again, resumed = crops(), crops(), crops(first_epoch=5)
    assert np.array_equal(first["lr"], again["lr"]) and list(first["epoch"]) == [0]
    assert not np.array_equal(first["lr"], resumed["lr"]) and list(resumed["epoch"]) == [5]


def test_the_sampling_plan_visits_every_clip_once_per_epoch_in_a_new_order():
    from pipelines.data.ingest import plan_row

    spec = CropSpec(NUM_FRAMES, LR_PATCH, first_epoch=3, epochs=40, shuffle_seed=1)
    rows = [plan_row(i, 5, spec) for i in range(5 * spec.epochs)]
    epochs = [[clip for epoch, clip in rows if epoch == e] for e in range(3, 43)]
    assert all(sorted(order) == [0, 1, 2, 3, 4] for order in epochs)
    assert len({tuple(order) for order in epochs}) > 20  # shuffled anew each epoch
    unshuffled = CropSpec(NUM_FRAMES, LR_PATCH, shuffle_seed=None)
    assert [plan_row(i, 3, unshuffled) for i in range(4)] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    # A pass long enough for 400k iterations of 8 samples over REDS's 266 training clips, 4 crops per read:
    assert CropSpec(50, 64, samples_per_clip=4).epochs_for(400_000 * 8, 266) == 3008


def test_draws_cover_positions_and_each_augmentation_half_the_time():
    spec = CropSpec(NUM_FRAMES, LR_PATCH)
    draws = [draw_crop(sample_rng(0, 0, "clip", i), 10, (16, 18), spec) for i in range(400)]
    assert {d.frame_start for d in draws} == set(range(7))
    assert {d.top for d in draws} == set(range(9)) and {d.left for d in draws} == set(range(11))
    for flag in ("flip_h", "flip_v", "transpose", "reverse"):
        assert 0.4 < np.mean([getattr(d, flag) for d in draws]) < 0.6
    plain = draw_crop(
        sample_rng(0, 0, "clip", 0), 10, (16, 18), CropSpec(NUM_FRAMES, LR_PATCH, augment=False)
    )
    assert not (plain.flip_h or plain.flip_v or plain.transpose or plain.reverse)
    assert draw_crop(sample_rng(0, 0, "clip", 0), 3, (16, 18), spec) is None  # too few frames
    assert draw_crop(sample_rng(1, 0, "clip", 0), 10, (16, 18), spec) != draws[0]  # another seed


def test_apply_crop_flips_transposes_and_reverses():
    frames = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    draw = CropDraw(0, 1, 1, flip_h=True, flip_v=False, transpose=True, reverse=True)
    out = apply_crop(frames, draw, patch=2, factor=1)
    expected = frames[::-1, 1:3, 1:3][:, :, ::-1].transpose(0, 2, 1, 3)
    np.testing.assert_array_equal(out, expected)
    hr = apply_crop(np.repeat(np.repeat(frames, 2, axis=1), 2, axis=2), draw, patch=2, factor=2)
    np.testing.assert_array_equal(hr[:, ::2, ::2], expected)  # HR crop = the LR crop, twice the size


def test_mirror_extension():
    x = torch.arange(7.0).view(1, 7, 1, 1, 1)
    once = mirror_extend(x)
    assert once.flatten().tolist() == [0, 1, 2, 3, 4, 5, 6, 6, 5, 4, 3, 2, 1, 0]
    twice = mirror_extend(x, times=2)  # TTVSR's 28 frames for a Vimeo-90K septuplet
    assert twice.shape[1] == 28 and torch.equal(twice[:, 14:], once)
    (batch,) = _batches_for_mirror()
    assert batch["lr"].shape[1] == 2 * NUM_FRAMES and torch.equal(
        batch["lr"][:, NUM_FRAMES:], batch["lr"][:, :NUM_FRAMES].flip(1)
    )


def _batches_for_mirror():
    return (
        _batches(_PREPARED["dir"], 1, mirror_times=1) if "dir" in _PREPARED else pytest.skip("needs prepared")
    )


def test_validation_yields_whole_clips_matching_the_source(prepared):
    clips = list(iter_val_clips(open_dataset(prepared)))
    assert [c[0] for c in clips] == ["val_a"]
    _, lr, gt = clips[0]
    assert lr.shape == (1, 6, 3, 16, 18) and gt.shape == (1, 6, 3, 64, 72)
    source = decode_frame_clip(sorted(str(p) for p in (_PREPARED["source"] / "val" / "val_a").iterdir()))
    expected = torch.from_numpy(source).permute(0, 3, 1, 2).float().div(255)[None]
    assert torch.equal(gt, expected)


def test_validation_share_decodes_only_its_own_clips(prepared, monkeypatch):
    import pipelines.data.ingest as ingest

    decoded = []
    real_decode = ingest.decode_frames
    monkeypatch.setattr(ingest, "decode_frames", lambda *a, **k: decoded.append(1) or real_decode(*a, **k))
    everything = [c[0] for c in iter_val_clips(open_dataset(prepared), "train")]
    assert everything == ["a", "b", "c"] and len(decoded) == 6  # LR and GT of each clip
    decoded.clear()
    dataset = open_dataset(prepared)
    shares = [[c[0] for c in iter_val_clips(dataset, "train", rank=r, world_size=2)] for r in (0, 1)]
    assert shares == [["a", "c"], ["b"]] and len(decoded) == 6  # each clip decoded by one worker only
    decoded.clear()
    assert [c[0] for c in iter_val_clips(dataset, "train", rank=1, world_size=2, max_clips=1)] == []
    assert decoded == []


def test_the_workers_copy_of_an_opened_dataset_gives_the_same_clips_and_crops(prepared):
    """Ingestion takes the dataset opened once; the workers' copy (``only``) of just the split they read,
    pickled as Ray sends it, gives the same samples without reading the manifest again."""
    import pickle

    dataset = open_dataset(prepared, splits=["train", "val"])
    val_only = pickle.loads(pickle.dumps(dataset.only(["val"])))  # what travels to a worker
    assert val_only.split_names == ["val"] and val_only.fingerprint == dataset.fingerprint
    assert [c.clip_id for c in val_only.clips()] == ["val_a"] and val_only.manifest.quarantined == ()
    for (id_a, lr_a, gt_a), (id_b, lr_b, gt_b) in zip(
        iter_val_clips(val_only), iter_val_clips(dataset), strict=True
    ):
        assert id_a == id_b and torch.equal(lr_a, lr_b) and torch.equal(gt_a, gt_b)
    with pytest.raises(DataError, match=r"no split 'train' .*splits: val"):
        list(iter_val_clips(val_only, "train"))
    with ordered():
        spec = CropSpec(NUM_FRAMES, LR_PATCH, seed=3)
        rows = [train_dataset(d, crop=spec).take_all() for d in (dataset.only(["train"]), dataset)]
    assert [r["clip_id"] for r in rows[0]] == [r["clip_id"] for r in rows[1]]
    assert all(np.array_equal(a["lr"], b["lr"]) for a, b in zip(rows[0], rows[1], strict=True))


def test_crop_shape_mismatch_is_a_clear_error(prepared):
    ds = train_dataset(open_dataset(prepared), crop=CropSpec(2, LR_PATCH))
    iterator = make_train_batch_iterator(
        ds.iterator(), lr_patch=LR_PATCH, num_frames=NUM_FRAMES, batch_size=1
    )
    with pytest.raises(DataError, match="give train_dataset's CropSpec the same num_frames"):
        next(iterator)


def test_clips_too_short_for_the_window_are_a_clear_error(prepared):
    iterator = make_train_batch_iterator(
        train_dataset(open_dataset(prepared), crop=CropSpec(50, 8)).iterator(),
        num_frames=50,
        lr_patch=8,
        batch_size=1,
    )
    with pytest.raises(DataError, match="no clip with at least 50 frames"):
        next(iterator)


def test_unknown_split_names_the_known_ones(prepared):
    with pytest.raises(DataError, match=r"no split 'test' .*splits: train, val"):
        train_dataset(open_dataset(prepared), "test", crop=CropSpec(NUM_FRAMES, LR_PATCH))


# ------------------------------------------------------------------------ stored segments and versions


def _as_version_1(prepared, target, junk_frame_of: str | None = None):
    """A copy of ``prepared`` in format version 1, as the code before segments wrote it: one row (and row
    group) per clip, no ``segment_start`` column, no page checksums, no ``row_groups`` / ``segment_frames``
    in the manifest. ``junk_frame_of``: that clip's first HR frame is replaced by bytes that are not zstd."""
    import hashlib
    import json
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.data.schema import CLIP_SCHEMA, PARQUET_WRITER_OPTIONS

    shutil.copytree(prepared, target)
    schema = CLIP_SCHEMA.remove(CLIP_SCHEMA.get_field_index("segment_start"))
    schema = schema.with_metadata({b"ray_vsr.format_version": b"1", b"ray_vsr.frame_codec": b"zstd"})
    options = {k: v for k, v in PARQUET_WRITER_OPTIONS.items() if k != "write_page_checksum"}
    options["compression"] = {k: v for k, v in options["compression"].items() if k != "segment_start"}
    options["use_dictionary"] = [k for k in options["use_dictionary"] if k != "segment_start"]
    data = json.loads((target / "manifest.json").read_text())
    for shard in data["shards"]:
        path = target / shard["path"]
        clips: dict[str, dict] = {}
        for row in pq.read_table(path).to_pylist():
            row.pop("segment_start")
            if row["clip_id"] in clips:
                for key in ("frame_names", "hr_frames", "lr_frames"):
                    clips[row["clip_id"]][key] += row[key]
            else:
                clips[row["clip_id"]] = row
        if junk_frame_of in clips:
            clips[junk_frame_of]["hr_frames"][0] = b"not zstd at all" * 8
        with pq.ParquetWriter(path, schema, **options) as writer:
            for row in clips.values():
                writer.write_table(pa.Table.from_pylist([row], schema=schema))
        shard["bytes"], shard["sha256"] = path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()
    for clip in data["clips"]:
        clip.pop("row_groups")
    data.pop("segment_frames")
    data["format_version"] = 1
    (target / "manifest.json").write_text(json.dumps(data))
    return target


def test_a_version_1_dataset_still_reads_with_the_same_crops_and_clips(prepared, tmp_path):
    import pyarrow.parquet as pq

    from pipelines.data.ingest import _crop_stage, plan_clips

    old = open_dataset(_as_version_1(prepared, tmp_path / "v1"))
    new = open_dataset(prepared)
    assert old.manifest.format_version == 1 and new.manifest.format_version == 2
    assert old.manifest.segment_frames is None and {c.row_groups for c in old.clips()} == {None}
    assert pq.ParquetFile(old.shard_paths("train")[0]).metadata.num_row_groups == 2  # a row group per clip
    assert pq.ParquetFile(new.shard_paths("train")[0]).metadata.num_row_groups == 8  # 4 segments per clip
    spec = CropSpec(NUM_FRAMES, LR_PATCH, seed=5, samples_per_clip=3, epochs=2)
    for row in range(6):
        batch = {"id": np.array([row])}
        a = _crop_stage(batch, plan_clips(old, "train"), old.filesystem, spec, SCALE)
        b = _crop_stage(batch, plan_clips(new, "train"), new.filesystem, spec, SCALE)
        assert list(a["clip_id"]) == list(b["clip_id"]) and len(a["clip_id"]) == 3
        assert np.array_equal(a["lr"], b["lr"]) and np.array_equal(a["gt"], b["gt"])
    for split in ("train", "val"):
        for (id_a, lr_a, gt_a), (id_b, lr_b, gt_b) in zip(
            iter_val_clips(old, split), iter_val_clips(new, split), strict=True
        ):
            assert id_a == id_b and torch.equal(lr_a, lr_b) and torch.equal(gt_a, gt_b)


def _extent(row_group) -> tuple[int, int]:
    """The byte range of a row group in its file: from its first page to the end of its last column."""
    columns = [row_group.column(i) for i in range(row_group.num_columns)]
    starts = [c.dictionary_page_offset or c.data_page_offset for c in columns]
    return min(starts), max(s + c.total_compressed_size for s, c in zip(starts, columns, strict=True))


def test_a_crop_reads_only_the_segments_its_window_spans(prepared, tmp_path):
    """Bytes taken from storage per sample: the spanned segments' row groups (the shard's footer is read
    once per process, here before counting), where a version-1 dataset reads the whole clip."""
    import pyarrow.parquet as pq

    from pipelines.data import ingest
    from pipelines.data.ingest import _crop_stage, plan_clips
    from pipelines.data.read_stats import counting_filesystem

    spec = CropSpec(NUM_FRAMES, LR_PATCH, seed=5)
    manifest = open_dataset(prepared)
    clips = plan_clips(manifest, "train")
    filesystem, counter = counting_filesystem()
    ingest._FOOTERS.clear()
    for row in range(3):  # reads every shard's footer once
        _crop_stage({"id": np.array([row])}, clips, filesystem, spec, SCALE)
    assert len(ingest._FOOTERS) == 2
    for row in range(3):
        counter.reset()
        out = _crop_stage({"id": np.array([row])}, clips, filesystem, spec, SCALE)
        (clip,) = [c for c in clips if c.clip_id == out["clip_id"][0]]
        footer = pq.ParquetFile(clip.shard).metadata
        draw = draw_crop(sample_rng(5, 0, clip.clip_id, 0), clip.num_frames, clip.lr_size, spec)
        spanned = clip.segments_of(draw.frame_start, draw.frame_start + NUM_FRAMES)
        assert len(spanned) in (2, 3)  # of 4 segments of 3, 3, 3, 1 frames
        extents = [_extent(footer.row_group(clip.first_row_group + s)) for s in range(clip.segments)]
        sizes = [stop - start for start, stop in extents]
        spanned_bytes = extents[spanned[-1]][1] - extents[spanned[0]][0]  # segments are contiguous
        assert spanned_bytes * 0.8 < counter.bytes_read <= spanned_bytes
        assert counter.bytes_read < 0.8 * sum(sizes)

    old = open_dataset(_as_version_1(prepared, tmp_path / "v1"))
    old_clips = plan_clips(old, "train")
    _crop_stage({"id": np.array([0])}, old_clips, filesystem, spec, SCALE)
    counter.reset()
    out = _crop_stage({"id": np.array([0])}, old_clips, filesystem, spec, SCALE)
    (clip,) = [c for c in old_clips if c.clip_id == out["clip_id"][0]]
    start, stop = _extent(pq.ParquetFile(clip.shard).metadata.row_group(clip.first_row_group))
    assert (stop - start) * 0.8 < counter.bytes_read <= stop - start


def _flip_middle(path, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + count] = bytes(b ^ 0xFF for b in data[middle : middle + count])
    path.write_bytes(bytes(data))


def test_a_damaged_shard_is_one_line_naming_it_and_the_cause(tiny_prepared_dataset, ray_local, tmp_path):
    """Bytes flipped in the middle of a shard: the size check at start passes, reading names the shard."""
    import shutil

    from pipelines.common.errors import find_user_error
    from pipelines.data.manifest import CorruptShard

    copy = tmp_path / "damaged"
    shutil.copytree(tiny_prepared_dataset, copy)
    manifest = open_dataset(copy)
    train_shard, val_shard = manifest.shard_paths("train")[0], manifest.shard_paths("val")[0]
    for shard in (train_shard, val_shard):
        _flip_middle(Path(shard))
    open_dataset(copy)  # sizes unchanged: the fast check at start cannot see it

    with pytest.raises(CorruptShard) as err:
        list(iter_val_clips(manifest, "val"))
    message = str(err.value)
    assert message.startswith(f"{val_shard}: the shard does not read") and "\n" not in message
    assert "CRC checksum verification failed" in message and "--verify-data" in message

    spec = CropSpec(4, 16, seed=0, epochs=1)
    iterator = make_train_batch_iterator(
        train_dataset(manifest, crop=spec).iterator(), num_frames=4, lr_patch=16
    )
    with pytest.raises(Exception) as err:  # raised in a Ray Data task, wrapped by Ray
        next(iterator)
    found = find_user_error(err.value)
    assert isinstance(found, CorruptShard) and str(found).startswith(
        f"{train_shard}: the shard does not read"
    )

    # A version-1 shard has no page checksums: a damaged frame fails in zstd, named the same way.
    old = _as_version_1(tiny_prepared_dataset, tmp_path / "v1", junk_frame_of="000_astronaut")
    with pytest.raises(
        CorruptShard, match=r"part-00000.parquet: the shard does not read .*ZSTD decompression failed"
    ):
        list(iter_val_clips(open_dataset(old), "train"))


def test_a_shard_missing_on_the_node_that_reads_it_names_the_node_and_the_shared_storage_fix(
    tiny_prepared_dataset, ray_local, tmp_path
):
    """The shard is gone after the driver's start check (a node without the dataset's mount sees exactly
    that): one line naming the node and the mount, not "damaged, re-run prepare"."""
    import shutil
    import socket

    from pipelines.data.ingest import plan_clips, read_clip
    from pipelines.data.manifest import CorruptShard

    copy = tmp_path / "unmounted"
    shutil.copytree(tiny_prepared_dataset, copy)
    manifest = open_dataset(copy)
    clip = plan_clips(manifest, "val")[0]
    Path(clip.uri).unlink()

    @ray_local.remote
    def read_in_a_ray_task():
        try:
            read_clip(manifest.filesystem, clip)
        except DataError as error:
            return type(error).__name__, str(error), ray_local.get_runtime_context().get_node_id()

    kind, message, node = ray_local.get(read_in_a_ray_task.remote())
    assert kind == "DataError" and "\n" not in message
    assert message.startswith(f"{clip.uri}: no such file on Ray node {node} (host {socket.gethostname()})")
    assert "mounted at the same path on every node (docs/cluster.md#shared-storage)" in message
    assert "damaged" not in message

    with pytest.raises(DataError, match="no such file on Ray node") as here:  # validation reads in the worker
        read_clip(manifest.filesystem, clip)
    assert not isinstance(here.value, CorruptShard)
