"""The manifest: typed records that read and write the file as it is, one open_dataset, and the manifest
as untrusted data: shard paths stay inside the dataset (issue 18, "Paths confined")."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil

import pytest

from pipelines.common.errors import DataError
from pipelines.data.manifest import (
    MANIFEST_NAME,
    ClipRecord,
    Manifest,
    open_dataset,
)


def _doctored(tiny_prepared_dataset, tmp_path, edit) -> str:
    copy = tmp_path / "dataset"
    shutil.copytree(tiny_prepared_dataset, copy)
    data = json.loads((copy / "manifest.json").read_text())
    edit(data, copy)
    (copy / "manifest.json").write_text(json.dumps(data))
    return str(copy)


def _outside(data, copy, path_of) -> None:
    """Point the first shard at a copy of itself outside the dataset, same size and checksum: only the
    path gives it away."""
    real = copy / data["shards"][0]["path"]
    outside = copy.parent / "outside" / "part-00000.parquet"
    outside.parent.mkdir()
    shutil.copy(real, outside)
    data["shards"][0]["path"] = path_of(outside, copy)


@pytest.mark.parametrize(
    "path_of",
    [
        lambda outside, copy: str(outside),  # absolute
        lambda outside, copy: "../outside/part-00000.parquet",
        lambda outside, copy: "shards/../../outside/part-00000.parquet",
        lambda outside, copy: outside.as_uri(),  # file:///...
    ],
    ids=["absolute", "dotdot", "dotdot-inside", "uri"],
)
def test_a_shard_path_leaving_the_dataset_is_refused_at_load(tiny_prepared_dataset, tmp_path, path_of):
    dataset = _doctored(tiny_prepared_dataset, tmp_path, lambda data, copy: _outside(data, copy, path_of))
    with pytest.raises(DataError, match="is not inside the dataset") as err:
        open_dataset(dataset)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{dataset}/manifest.json: names the shard path")
    assert "prepare the dataset again" in message.lower()


def test_a_clip_record_naming_a_shard_outside_is_refused(tiny_prepared_dataset, tmp_path):
    def edit(data, copy):
        data["clips"][0]["shard"] = "/etc/passwd"

    with pytest.raises(DataError, match=r"names the shard path '/etc/passwd', which is not inside"):
        open_dataset(_doctored(tiny_prepared_dataset, tmp_path, edit))


def test_the_prepared_manifest_paths_are_accepted(tiny_prepared_dataset):
    dataset = open_dataset(tiny_prepared_dataset)
    assert all(s.path.startswith("shards/") for s in dataset.shards())


def test_the_typed_manifest_writes_the_bytes_it_was_read_from(tiny_prepared_dataset):
    """to_json is what preparation writes (write_json_atomic: JSON with indent 1), key for key."""
    raw = (tiny_prepared_dataset / MANIFEST_NAME).read_bytes()
    manifest = Manifest.from_json(json.loads(raw))
    assert json.dumps(manifest.to_json(), indent=1).encode() == raw
    assert isinstance(manifest.clips, tuple) and isinstance(manifest.clips[0], ClipRecord)
    assert isinstance(manifest.clips[0].lr_size, tuple) and isinstance(manifest.shards[0].clips, tuple)


def test_a_version_1_manifest_reads_and_writes_back_unchanged(tiny_prepared_dataset, tmp_path):
    def to_version_1(data, copy):
        data["format_version"] = 1
        data.pop("segment_frames")
        for clip in data["clips"]:
            clip.pop("row_groups")

    dataset = open_dataset(_doctored(tiny_prepared_dataset, tmp_path, to_version_1))
    assert dataset.manifest.format_version == 1 and dataset.manifest.segment_frames is None
    assert all(c.row_groups is None for c in dataset.clips())
    written = json.loads((tmp_path / "dataset" / MANIFEST_NAME).read_text())
    assert dataset.manifest.to_json() == written and list(dataset.manifest.to_json()) == list(written)


def test_open_dataset_checks_the_splits_and_names_the_command_for_a_missing_dataset(
    tiny_prepared_dataset, tmp_path
):
    dataset = open_dataset(str(tiny_prepared_dataset), splits=["train", "val"])
    assert dataset.split_names == ["train", "val"] and dataset.root == str(tiny_prepared_dataset)
    assert (
        dataset.fingerprint
        == hashlib.sha256((tiny_prepared_dataset / MANIFEST_NAME).read_bytes()).hexdigest()
    )
    with pytest.raises(
        DataError, match=rf"^split 'test' is not in {tiny_prepared_dataset} \(its splits: train, val\)$"
    ):
        open_dataset(tiny_prepared_dataset, splits=["train", "test"])
    missing = tmp_path / "nothing"
    with pytest.raises(
        DataError, match=rf"^no prepared dataset at {missing} \(no manifest.json\)\. Prepare it"
    ):
        open_dataset(missing)


def test_a_malformed_clip_record_is_one_line_naming_the_manifest(tiny_prepared_dataset, tmp_path):
    def edit(data, copy):
        del data["clips"][0]["num_frames"]

    dataset = _doctored(tiny_prepared_dataset, tmp_path, edit)
    with pytest.raises(
        DataError, match=r"manifest.json: does not read as a manifest \(KeyError: 'num_frames'\)"
    ):
        open_dataset(dataset)


def test_only_keeps_the_records_of_the_splits_asked_for(tiny_prepared_dataset):
    dataset = open_dataset(tiny_prepared_dataset)
    val = dataset.only(["val"])
    assert val.split_names == ["val"] and val.shards() == dataset.shards("val")
    assert val.clips() == dataset.clips("val") and val.sha256 == dataset.sha256
    assert len(pickle.dumps(val)) < len(pickle.dumps(dataset))
    with pytest.raises(DataError, match=r"no split 'test' in this prepared dataset \(splits: train, val\)"):
        dataset.only(["test"])
