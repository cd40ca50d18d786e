"""The manifest as untrusted data: shard paths stay inside the dataset (issue 18, "Paths confined")."""

from __future__ import annotations

import json
import shutil

import pytest

from pipelines.common.errors import DataError
from pipelines.data.manifest import load_manifest


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
        load_manifest(dataset)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{dataset}/manifest.json: names the shard path")
    assert "prepare the dataset again" in message.lower()


def test_a_clip_record_naming_a_shard_outside_is_refused(tiny_prepared_dataset, tmp_path):
    def edit(data, copy):
        data["clips"][0]["shard"] = "/etc/passwd"

    with pytest.raises(DataError, match=r"names the shard path '/etc/passwd', which is not inside"):
        load_manifest(_doctored(tiny_prepared_dataset, tmp_path, edit))


def test_the_prepared_manifest_paths_are_accepted(tiny_prepared_dataset):
    manifest = load_manifest(tiny_prepared_dataset)
    assert all(s["path"].startswith("shards/") for s in manifest.shards())
