"""Source discovery, layout detection, clear errors, and the checks on damaged inputs (no Ray needed)."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from conftest import make_frame_dataset, opencv_video, smooth_frames, truncated_copy, write_clip
from PIL import Image

from pipelines.data.containers import container_truncation
from pipelines.data.prepare.config import SplitConfig
from pipelines.data.prepare.plan import assign_splits
from pipelines.data.sources import (
    DataError,
    UnreadableInput,
    decode_frame_clip,
    decode_video_clip,
    detect_layout,
    discover,
    fingerprint,
    frame_anomaly_warnings,
    probe_video,
    timing_warnings,
)


def _clip(folder, num_frames=2, size=(8, 8), **naming):
    write_clip(folder, smooth_frames(num_frames, size, seed=0), **naming)


# ---------------------------------------------------------------------------------------------- layouts


def test_detects_each_layout(tmp_path):
    reds = tmp_path / "REDS"
    for clip in ("000", "001", "011"):
        _clip(reds / "train_sharp" / clip)
    vimeo = tmp_path / "vimeo"
    _clip(vimeo / "sequences" / "00001" / "0001", num_frames=7, name="im{}.png", first=1)
    (vimeo / "sep_trainlist.txt").write_text("00001/0001\n")
    folders = make_frame_dataset(tmp_path / "vid4", {"calendar": 2, "city": 2}, split_folders=False)
    split_folders = make_frame_dataset(tmp_path / "sample", {"a": 2, "val_b": 2})
    frames = tmp_path / "one_clip"
    _clip(frames)
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "x.mp4").write_bytes(b"")
    assert detect_layout(reds) == "reds"
    assert detect_layout(reds / "train_sharp") == "reds"
    assert detect_layout(vimeo) == "vimeo"
    assert detect_layout(folders) == "folders"
    assert detect_layout(split_folders) == "folders"
    assert detect_layout(frames) == "frames"
    assert detect_layout(videos) == "videos"
    assert detect_layout(videos / "x.mp4") == "videos"


def test_reds_holds_out_reds4_and_renumbers_official_val_clips(tmp_path):
    for clip in ("000", "001", "011", "015", "020", "021"):
        _clip(tmp_path / "train_sharp" / clip)
    _clip(tmp_path / "val_sharp" / "000")
    found = discover(tmp_path)
    splits = {item.item_id: item.split for item in found.items}
    assert splits == {
        "000": "val",
        "001": "train",
        "011": "val",
        "015": "val",
        "020": "val",
        "021": "train",
        "240": "train",
    }


def test_vimeo_septuplets_follow_the_lists(tmp_path):
    for rel in ("00001/0001", "00001/0002", "00002/0001"):
        _clip(tmp_path / "sequences" / rel, num_frames=7, name="im{}.png", first=1)
    (tmp_path / "sep_trainlist.txt").write_text("00001/0001\n00002/0001\n")
    (tmp_path / "sep_testlist.txt").write_text("00001/0002\n")
    found = discover(tmp_path)
    assert {i.item_id: i.split for i in found.items} == {
        "00001_0001": "train",
        "00002_0001": "train",
        "00001_0002": "val",
    }
    assert [os.path.basename(p) for p in found.items[0].frame_paths] == [f"im{i}.png" for i in range(1, 8)]


def test_frames_are_ordered_numerically(tmp_path):
    frames = smooth_frames(11, (8, 8), seed=0)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"im{i + 1}.png")
    found = discover(tmp_path, "frames")
    assert [os.path.basename(p) for p in found.items[0].frame_paths] == [f"im{i}.png" for i in range(1, 12)]
    np.testing.assert_array_equal(decode_frame_clip(found.items[0].frame_paths), frames)


def test_unknown_layout_names_the_path_and_the_options(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="unknown dataset layout") as err:
        discover(tmp_path)
    assert str(tmp_path) in str(err.value) and "notes.txt" in str(err.value) and "--layout" in str(err.value)
    with pytest.raises(DataError, match="unknown layout 'mp4'"):
        discover(tmp_path, "mp4")


def test_empty_and_missing_sources_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="empty") as err:
        discover(tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "nowhere")


def test_mixed_frame_sizes_within_a_clip_quarantine_that_clip(tmp_path):
    clip = tmp_path / "calendar"
    write_clip(clip, smooth_frames(3, (16, 16), seed=0))
    Image.fromarray(smooth_frames(1, (16, 20), seed=1)[0]).save(clip / "00000003.png")
    write_clip(tmp_path / "other", smooth_frames(2, (16, 16), seed=2))
    found = discover(tmp_path)
    assert [i.item_id for i in found.items] == ["other"]
    (entry,) = found.quarantined
    assert entry.input == str(clip) and "frames of different sizes within one clip" in entry.reason
    assert "16x16" in entry.reason and "16x20" in entry.reason and "00000003.png" in entry.reason


def test_unreadable_image_header_is_quarantined_not_fatal(tmp_path):
    make_frame_dataset(tmp_path, {"a": 2, "b": 2}, split_folders=False)
    (tmp_path / "b" / "00000001.png").write_bytes(b"not a png at all")
    found = discover(tmp_path)
    assert [i.item_id for i in found.items] == ["a"]
    assert found.quarantined[0].input.endswith("b/00000001.png")


def test_truncated_png_fails_to_decode(tmp_path):
    paths = write_clip(tmp_path / "clip", smooth_frames(2, (32, 32), seed=0))
    truncated_copy(paths[1], paths[1], paths[1].stat().st_size // 2)
    with pytest.raises(UnreadableInput) as err:
        decode_frame_clip([str(p) for p in paths])
    assert err.value.path == str(paths[1])


# ---------------------------------------------------------------------------------------------- splits


def test_val_clips_and_val_fraction(tmp_path):
    make_frame_dataset(tmp_path, {f"c{i}": 1 for i in range(10)}, size=(8, 8), split_folders=False)
    items = discover(tmp_path).items
    assert assign_splits(items, SplitConfig(val_clips=["c3"])) == {
        f"c{i}": "val" if i == 3 else "train" for i in range(10)
    }
    by_fraction = assign_splits(items, SplitConfig(val_fraction=0.3))
    assert sum(split == "val" for split in by_fraction.values()) == 3
    assert assign_splits(items, SplitConfig(val_fraction=0.3)) == by_fraction  # stable
    assert set(assign_splits(items, SplitConfig(default="val")).values()) == {"val"}
    with pytest.raises(DataError, match="not in the source: nope"):
        assign_splits(items, SplitConfig(val_clips=["nope"]))


def test_fingerprint_follows_content(tmp_path):
    make_frame_dataset(tmp_path, {"a": 2}, size=(8, 8), split_folders=False)
    first = fingerprint(tmp_path, discover(tmp_path).items[0].files)
    assert first["method"] == "content" and first["files"] == 2
    assert fingerprint(tmp_path, discover(tmp_path).items[0].files) == first
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a" / "00000001.png")
    assert fingerprint(tmp_path, discover(tmp_path).items[0].files)["sha256"] != first["sha256"]


# ---------------------------------------------------------------------------------------------- videos


def test_truncated_and_header_only_videos_are_detected(tmp_path):
    tree = opencv_video("tree.avi")
    assert container_truncation(tree) is None
    cut = truncated_copy(tree, tmp_path / "cut.avi", tree.stat().st_size // 2)
    assert "truncated: RIFF header declares" in container_truncation(cut)
    with pytest.raises(UnreadableInput, match="truncated"):
        probe_video(str(cut))
    header = truncated_copy(tree, tmp_path / "header.avi", 100)
    with pytest.raises(UnreadableInput):
        probe_video(str(header))


def test_truncation_check_reads_mp4_and_mkv_sizes(tmp_path):
    boxes = struct.pack(">I4s", 16, b"ftyp") + b"isom" * 2 + struct.pack(">I4s", 1000, b"mdat") + b"\0" * 100
    mp4 = tmp_path / "a.mp4"
    mp4.write_bytes(boxes)
    assert "MP4 box 'mdat' ends at byte 1016" in container_truncation(mp4)
    mp4.write_bytes(boxes[:24] + b"\0" * 992)
    assert container_truncation(mp4) is None
    # EBML header (4-byte id, 1-byte size 0x80|4, 4 bytes), Segment id + 8-byte size 1000, 10 bytes.
    ebml = (
        b"\x1a\x45\xdf\xa3"
        + bytes([0x84])
        + b"abcd"
        + b"\x18\x53\x80\x67"
        + b"\x01"
        + (1000).to_bytes(7, "big")
    )
    mkv = tmp_path / "a.mkv"
    mkv.write_bytes(ebml + b"\0" * 10)
    assert "truncated: EBML element" in container_truncation(mkv)
    mkv.write_bytes(ebml + b"\0" * 1000)
    assert container_truncation(mkv) is None


def test_probe_reads_length_size_and_rate():
    probe = probe_video(str(opencv_video("tree.avi")))
    assert (probe.num_frames, probe.frame_size) == (68, (240, 320))
    assert probe.fps == pytest.approx(15.0, abs=1e-3)
    # tree.avi's timestamps span ~29.5 s, not the 68 / 15 = 4.5 s its nominal rate implies.
    assert any("disagree with the nominal" in w for w in probe.warnings)


def test_timing_warnings():
    fps = 25.0
    assert timing_warnings(np.arange(10) / fps, fps) == []
    missing = np.arange(10) / fps
    missing[:3] = -3e17
    assert timing_warnings(missing, fps) == ["3 of 10 frames carry no timestamp"]
    slow = np.arange(10) / fps * 3
    assert "by up to 18.0 frames" in timing_warnings(slow, fps)[0]


def test_frame_anomalies_repeats_and_outliers():
    frames = smooth_frames(8, (32, 32), seed=0)
    assert frame_anomaly_warnings(frames) == []
    repeated = frames.copy()
    repeated[4] = repeated[3]
    assert frame_anomaly_warnings(repeated, frame_start=10)[0] == "1 repeated identical frames (at 14)"
    damaged = frames.copy()
    damaged[5] = 255 - damaged[5]
    (warning,) = frame_anomaly_warnings(damaged)
    assert "1 frames differ from both neighbours" in warning and "at 5)" in warning


def test_megamind_bugy_shows_damaged_frames_and_the_clean_copy_does_not():
    bugy, warnings = decode_video_clip(str(opencv_video("Megamind_bugy.avi")), 0, 45)
    assert bugy.shape == (45, 528, 720, 3)
    assert any("damaged or out-of-order frames, at 10, 40)" in w for w in warnings)
    _, clean_warnings = decode_video_clip(str(opencv_video("Megamind.avi")), 0, 45)
    assert clean_warnings == []


def test_video_clip_past_the_end_is_short_with_a_warning():
    frames, warnings = decode_video_clip(str(opencv_video("tree.avi")), 60, 20)
    assert len(frames) == 8
    assert warnings[0] == "decoded 8 of the 20 frames its container reports from frame 60"


def test_clips_of_a_video_without_timestamps_join_exactly():
    path = str(opencv_video("Megamind_bugy.avi"))
    probe = probe_video(path)
    assert not probe.seekable  # most frames carry no timestamp: seeking lands a frame early
    whole, _ = decode_video_clip(path, 0, 16, probe.seekable)
    second, warnings = decode_video_clip(path, 8, 8, probe.seekable)
    np.testing.assert_array_equal(second, whole[8:])
    assert any("at 10)" in w for w in warnings)
    assert probe_video(str(opencv_video("tree.avi"))).seekable
