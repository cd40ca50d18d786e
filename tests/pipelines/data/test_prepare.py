"""Preparation on a real local Ray: shards, manifest, degradation, resume, quarantine, checksums."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_frame_dataset, truncated_copy

from pipelines.common.errors import DataError
from pipelines.data.degradations import degrade
from pipelines.data.manifest import ClipRecord, SplitRecord, open_dataset
from pipelines.data.prepare import PrepareConfig, prepare_dataset
from pipelines.data.schema import CLIP_SCHEMA, DEFAULT_SEGMENT_FRAMES, FORMAT_VERSION, decode_frames
from pipelines.data.sources import decode_frame_clip


def _config(source, output, **overrides) -> PrepareConfig:
    return PrepareConfig(source=str(source), output=str(output), **({"shard_size": 1} | overrides))


def _read_clip(path, clip_id):
    """One clip's row with its segments' frames joined (format version 2: a row per segment)."""
    segments = [r for r in pq.read_table(path).to_pylist() if r["clip_id"] == clip_id]
    assert [r["segment_start"] for r in segments] == sorted(r["segment_start"] for r in segments)
    row = segments[0] | {
        k: sum((r[k] for r in segments), []) for k in ("frame_names", "hr_frames", "lr_frames")
    }
    hr = decode_frames(row["hr_frames"], row["hr_height"], row["hr_width"])
    lr = decode_frames(row["lr_frames"], row["lr_height"], row["lr_width"])
    return row, hr, lr


def test_frame_dataset_shards_manifest_and_lossless_frames(ray_local, frame_dataset, tmp_path):
    out = tmp_path / "prepared"
    summary = prepare_dataset(_config(frame_dataset, out, degradation="BD"))
    assert (summary.clips, summary.frames, summary.shards_written, summary.shards_skipped) == (4, 23, 4, 0)
    assert summary.frames_processed == 23 and summary.quarantined == ()

    manifest = open_dataset(out)
    assert manifest.degradation == "BD" and manifest.scale == 4
    assert manifest.manifest.splits == (SplitRecord("train", 3, 18), SplitRecord("val", 1, 5))
    assert [s.path for s in manifest.shards()] == [
        "shards/train/part-00000.parquet",
        "shards/train/part-00001.parquet",
        "shards/train/part-00002.parquet",
        "shards/val/part-00000.parquet",
    ]
    assert manifest.manifest.source.layout == "folders"
    assert manifest.manifest.source.fingerprint["method"] == "content"
    clip = manifest.clips("val")[0]
    # 34x40 is not a multiple of 4: HR is cropped to 32x40 and the manifest says so.
    assert clip == ClipRecord(
        clip_id="val_a",
        split="val",
        shard="shards/val/part-00000.parquet",
        source="val/val_a",
        frame_start=0,
        num_frames=5,
        hr_size=(32, 40),
        lr_size=(8, 10),
        source_size=(34, 40),
        cropped=True,
        row_groups=(0, 1),
    )
    assert json.loads((out / "manifest.json").read_text())["clips"][-1] == {
        "clip_id": "val_a",
        "split": "val",
        "shard": "shards/val/part-00000.parquet",
        "source": "val/val_a",
        "frame_start": 0,
        "num_frames": 5,
        "hr_size": [32, 40],
        "lr_size": [8, 10],
        "source_size": [34, 40],
        "cropped": True,
        "row_groups": [0, 1],
    }
    assert manifest.manifest.cropped_clips == ("a", "b", "c", "val_a")

    shard = manifest.shard_paths("val")[0]
    assert pq.read_schema(shard).remove_metadata() == CLIP_SCHEMA.remove_metadata()
    assert pq.ParquetFile(shard).metadata.num_row_groups == 1
    row, hr, lr = _read_clip(shard, "val_a")
    source = decode_frame_clip(sorted(str(p) for p in (frame_dataset / "val" / "val_a").iterdir()))
    np.testing.assert_array_equal(hr, source[:, :32])  # lossless, bottom rows cropped
    expected_lr = degrade(torch.from_numpy(source[:, :32]).permute(0, 3, 1, 2).contiguous(), "BD", 4)
    np.testing.assert_array_equal(lr, expected_lr.permute(0, 2, 3, 1).numpy())
    assert row["frame_names"] == [f"{i:08d}.png" for i in range(5)]


def test_rerun_skips_everything(ray_local, frame_dataset, tmp_path):
    cfg = _config(frame_dataset, tmp_path / "prepared", shard_size=2)
    prepare_dataset(cfg)
    first = open_dataset(cfg.output)
    again = prepare_dataset(cfg)
    assert (again.shards_written, again.shards_skipped, again.frames_processed) == (0, 3, 0)
    assert [s.sha256 for s in open_dataset(cfg.output).shards()] == [s.sha256 for s in first.shards()]


def test_resume_rewrites_only_the_missing_shard_and_leaves_no_temp_files(ray_local, frame_dataset, tmp_path):
    out = tmp_path / "prepared"
    cfg = _config(frame_dataset, out)
    prepare_dataset(cfg)
    shards = sorted((out / "shards").rglob("part-*.parquet"))
    before = {p: p.stat().st_mtime_ns for p in shards}
    # Simulate a crash while writing train/part-00001: its file and record gone, a temp file left behind.
    lost = out / "shards" / "train" / "part-00001.parquet"
    lost.unlink()
    (out / "shards" / "train" / "part-00001.done.json").unlink()
    (out / "shards" / "train" / ".part-00001.parquet.tmp-999").write_bytes(b"half a shard")

    summary = prepare_dataset(cfg)
    assert (summary.shards_written, summary.shards_skipped) == (1, 3)
    for path, mtime in before.items():
        if path == lost:
            assert path.is_file()
        else:
            assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"
    assert [p.name for p in out.rglob("*") if ".tmp-" in p.name] == []
    open_dataset(out)  # every checksum matches


def test_changed_source_rewrites_its_shard(ray_local, frame_dataset, tmp_path):
    cfg = _config(frame_dataset, tmp_path / "prepared")
    prepare_dataset(cfg)
    frame = frame_dataset / "train" / "b" / "00000002.png"
    os.utime(frame, ns=(frame.stat().st_atime_ns, frame.stat().st_mtime_ns + 10**9))
    summary = prepare_dataset(cfg)
    assert (summary.shards_written, summary.shards_skipped) == (1, 3)


def test_verify_refuses_a_corrupted_shard_and_the_fast_check_a_cut_or_missing_one(
    ray_local, frame_dataset, tmp_path
):
    out = tmp_path / "prepared"
    cfg = _config(frame_dataset, out)
    prepare_dataset(cfg)
    shard = out / "shards" / "train" / "part-00002.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    open_dataset(out)  # the fast start check sees the right size: only the checksums can tell
    with pytest.raises(DataError, match="sha256 does not match") as err:
        open_dataset(out, verify=True)  # hashed in Ray tasks
    assert str(shard) in str(err.value) and "Re-run prepare with the same --output" in str(err.value)
    assert prepare_dataset(cfg).shards_written == 1  # the done-record no longer matches the file
    open_dataset(out, verify=True)

    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DataError, match="bytes but the manifest lists"):
        open_dataset(out)
    shard.unlink()
    with pytest.raises(DataError, match="shard listed in the manifest is missing"):
        open_dataset(out)


def test_corrupt_png_is_quarantined_and_strict_stops(ray_local, frame_dataset, tmp_path):
    broken = frame_dataset / "train" / "b" / "00000003.png"
    truncated_copy(broken, broken, broken.stat().st_size // 2)
    out = tmp_path / "prepared"
    summary = prepare_dataset(_config(frame_dataset, out))
    assert summary.clips == 3
    assert summary.quarantined == ({"input": str(broken), "reason": summary.quarantined[0]["reason"]},)
    assert "cannot decode image" in summary.quarantined[0]["reason"]
    manifest = open_dataset(out)
    assert [c.clip_id for c in manifest.clips()] == ["a", "c", "val_a"]
    assert manifest.manifest.quarantined == summary.quarantined
    assert json.loads((out / "manifest.json").read_text())["quarantined"] == list(summary.quarantined)
    assert "quarantined: " + str(broken) in summary.describe()

    with pytest.raises(DataError, match="--strict") as err:
        prepare_dataset(_config(frame_dataset, tmp_path / "strict", strict=True))
    assert str(broken) in str(err.value)
    assert not (tmp_path / "strict" / "manifest.json").exists()


def test_real_videos_are_cut_checked_and_quarantined(ray_local, video_folder, tmp_path):
    out = tmp_path / "prepared"
    cfg = _config(video_folder, out, clip_length=8, max_frames_per_video=16, shard_size=4)
    summary = prepare_dataset(cfg)
    manifest = open_dataset(out)
    assert manifest.manifest.source.layout == "videos"
    assert [(c.clip_id, c.frame_start, c.num_frames) for c in manifest.clips()] == [
        ("bugy_000000", 0, 8),
        ("bugy_000008", 8, 8),
        ("tree_000000", 0, 8),
        ("tree_000008", 8, 8),
    ]
    tree = manifest.clip("tree_000008")
    assert (tree.hr_size, tree.lr_size, tree.cropped) == ((240, 320), (60, 80), False)
    quarantined = {q["input"]: q["reason"] for q in summary.quarantined}
    assert set(quarantined) == {"tree_cut.avi", "tree_header.avi"}
    assert quarantined["tree_cut.avi"].startswith("truncated: RIFF header declares")
    bugy = [w["message"] for w in manifest.manifest.warnings if w["input"] == "bugy.avi"]
    assert any("damaged or out-of-order frames, at 10)" in m for m in bugy)
    assert any("frames carry no timestamp" in m for m in bugy)
    assert "warning: bugy.avi" in summary.describe()

    row, hr, lr = _read_clip(manifest.shard_paths("train")[0], "bugy_000008")
    assert row["frame_names"] == [f"{i:08d}" for i in range(8, 16)]
    assert hr.shape == (8, 528, 720, 3) and lr.shape == (8, 132, 180, 3)

    with pytest.raises(DataError, match="tree_cut.avi: truncated"):
        prepare_dataset(
            _config(video_folder, tmp_path / "strict", clip_length=8, max_frames_per_video=16, strict=True)
        )


def test_manifest_is_json_with_versions(ray_local, frame_dataset, tmp_path):
    out = tmp_path / "prepared"
    prepare_dataset(_config(frame_dataset, out, shard_size=8))
    data = json.loads((out / "manifest.json").read_text())
    assert data["format_version"] == FORMAT_VERSION == 2 and data["project_version"] not in ("", None)
    assert data["segment_frames"] == DEFAULT_SEGMENT_FRAMES
    assert data["shards"][0]["rows"] == 3 and data["shards"][0]["clips"] == ["a", "b", "c"]


def test_output_inside_source_and_missing_output_are_refused(frame_dataset):
    with pytest.raises(DataError, match="inside the source"):
        prepare_dataset(_config(frame_dataset, frame_dataset / "out"))
    with pytest.raises(DataError, match="pass --output"):
        prepare_dataset(PrepareConfig(source=str(frame_dataset)))


def test_config_validation():
    with pytest.raises(ValueError, match="BD' is defined for scale 4 only"):
        PrepareConfig(degradation="BD", scale=2)
    with pytest.raises(ValueError, match="clip_length must be at least 1"):
        PrepareConfig(clip_length=0)
    with pytest.raises(ValueError, match="segment_frames must be at least 1"):
        PrepareConfig(segment_frames=0)


def test_long_frame_folders_are_cut_into_clips(ray_local, tmp_path):
    source = make_frame_dataset(tmp_path / "src", {"long": 10}, size=(16, 16), split_folders=False)
    prepare_dataset(
        _config(
            source, tmp_path / "out", clip_length=4, scale=2, any_scale=True, segment_frames=3, shard_size=2
        )
    )
    manifest = open_dataset(tmp_path / "out")
    assert [(c.clip_id, c.num_frames, c.lr_size) for c in manifest.clips()] == [
        ("long_000000", 4, (8, 8)),
        ("long_000004", 4, (8, 8)),
        ("long_000008", 2, (8, 8)),
    ]
    # Each clip is stored as segments of at most 3 frames, one row group each, in clip order.
    assert [c.row_groups for c in manifest.clips()] == [(0, 2), (2, 2), (0, 1)]
    first = pq.read_table(manifest.shard_paths("train")[0]).to_pylist()
    assert [(r["clip_id"], r["segment_start"], len(r["hr_frames"]), r["num_frames"]) for r in first] == [
        ("long_000000", 0, 3, 4),
        ("long_000000", 3, 1, 4),
        ("long_000004", 0, 3, 4),
        ("long_000004", 3, 1, 4),
    ]
    assert pq.ParquetFile(manifest.shard_paths("train")[0]).metadata.num_row_groups == 4
