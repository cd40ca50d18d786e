"""Preparation under damaged inputs and careless commands: nothing lost, nothing crashes, every
problem reported (quarantine entries, summary lines, one clear error)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, make_frame_dataset, tiny_tmpfs, truncated_copy, write_clip

from pipelines.common.config import load_config
from pipelines.common.errors import ConfigError, DataError
from pipelines.data.manifest import open_dataset
from pipelines.data.prepare import PrepareConfig, prepare_dataset


def _config(source, output, **overrides) -> PrepareConfig:
    return PrepareConfig(source=str(source), output=str(output), **({"shard_size": 1} | overrides))


def test_a_dataset_whose_only_clip_is_broken_prepares_with_it_quarantined(ray_local, tmp_path):
    source = make_frame_dataset(tmp_path / "src", {"only": 4}, size=(16, 16), split_folders=False)
    broken = source / "only" / "00000002.png"
    truncated_copy(broken, broken, broken.stat().st_size // 2)  # the header reads, the pixels do not
    out = tmp_path / "out"
    for _ in range(2):  # a re-run takes the same path: the done-record of an empty shard is kept
        summary = prepare_dataset(_config(source, out))
        assert summary.clips == 0 and len(summary.quarantined) == 1
        assert summary.quarantined[0]["input"] == str(broken)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["clips"] == [] and manifest["quarantined"] == list(summary.quarantined)


def test_frames_smaller_than_the_scale_are_quarantined_with_a_reason(ray_local, tmp_path):
    source = tmp_path / "src"
    write_clip(source / "tiny", np.zeros((3, 3, 2, 3), np.uint8))
    write_clip(source / "fine", np.full((3, 8, 8, 3), 100, np.uint8))
    summary = prepare_dataset(_config(source, tmp_path / "out"))
    assert summary.clips == 1
    (entry,) = summary.quarantined
    assert entry["input"] == "tiny" and "smaller than the scale x4" in entry["reason"]


def test_cropping_is_counted_in_the_summary(ray_local, frame_dataset, tmp_path):
    summary = prepare_dataset(_config(frame_dataset, tmp_path / "out"))
    # every clip of frame_dataset is 34x40: the HR height is cropped to 32
    assert summary.cropped_clips == 4
    assert "HR cropped to a multiple of x4  4 clips" in summary.describe()


def test_another_sources_dataset_in_the_output_is_refused_unless_overwrite(ray_local, tmp_path):
    first = make_frame_dataset(tmp_path / "first", {"a": 3}, size=(16, 16), split_folders=False)
    second = make_frame_dataset(tmp_path / "second", {"b": 3}, size=(16, 16), split_folders=False)
    out = tmp_path / "out"
    prepare_dataset(_config(first, out))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(DataError, match="holds another prepared dataset.*source .*first.*--overwrite"):
        prepare_dataset(_config(second, out))
    with pytest.raises(DataError, match="degradation BI \\(this run: BD\\)"):
        prepare_dataset(_config(first, out, degradation="BD"))
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing was touched
    assert [c.clip_id for c in open_dataset(out).clips()] == ["a"]
    prepare_dataset(_config(second, out, overwrite=True))
    assert [c.clip_id for c in open_dataset(out).clips()] == ["b"]


def test_a_truncated_manifest_is_one_clear_error(ray_local, frame_dataset, tmp_path):
    out = tmp_path / "out"
    prepare_dataset(_config(frame_dataset, out))
    text = (out / "manifest.json").read_text()
    (out / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match="does not read as a manifest .*damaged"):
        open_dataset(out)
    with pytest.raises(DataError, match="does not read as a prepared dataset.*--overwrite"):
        prepare_dataset(_config(frame_dataset, out))


def test_scales_the_networks_do_not_support_are_refused_unless_asked():
    with pytest.raises(ConfigError, match="both networks upscale x4.*--any-scale"):
        load_config(PrepareConfig, None, ["scale=5"])
    assert load_config(PrepareConfig, None, ["scale=5", "any_scale=true"]).scale == 5


def test_strict_stops_with_one_line_and_no_ray_error_log(tmp_path):
    source = make_frame_dataset(tmp_path / "src", {"a": 3, "b": 3}, size=(16, 16), split_folders=False)
    broken = source / "b" / "00000001.png"
    truncated_copy(broken, broken, broken.stat().st_size // 2)
    done = subprocess.run(
        [sys.executable, "jobs/prepare_data.py", "--source", str(source), "--output", str(tmp_path / "out"),
         "--strict", "--num-cpus", "2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"error: {broken}: cannot decode image") and "--strict" in lines[-1]
    assert "Traceback" not in done.stderr and "ERROR" not in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_full_disk_while_writing_a_shard_is_one_line_naming_it_and_leaves_no_temporary_file(tmp_path):
    import os

    from pipelines.common.storage import resolve
    from pipelines.data.prepare.shards import ShardWriter

    with tiny_tmpfs(tmp_path / "full", "the shard below is 4.8 MB of incompressible frames") as full:
        plan = {"key": "k", "path": "shards/part-00000.parquet", "record_path": "shards/part-00000.done.json"}
        writer = ShardWriter(resolve(full / "ds"), plan)
        frames = [os.urandom(300_000) for _ in range(8)]
        row = {
            "clip_id": "c", "split": "train", "source": "c", "frame_start": 0, "num_frames": 8, "scale": 4,
            "hr_height": 1, "hr_width": 1, "lr_height": 1, "lr_width": 1,
            "frame_names": [f"{i:08d}" for i in range(8)], "hr_frames": frames, "lr_frames": frames,
        }  # fmt: skip
        with pytest.raises(DataError) as full_disk:
            writer.add(row, segment_frames=2)
            writer.finish()
        message = str(full_disk.value)
        assert "\n" not in message and message.startswith("no space left on the device while writing")
        assert str(full / "ds" / "shards" / "part-00000.parquet") in message and "free space" in message
        # the hidden temporary file went too
        assert [p.name for p in (full / "ds" / "shards").iterdir()] == []
