"""Storage locations: local paths, file:// URIs and fsspec filesystems through one code path."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.common.errors import DataError
from pipelines.common.storage import HashingWriter, absolute, is_uri, resolve, sha256_location


def test_paths_and_file_uris_are_the_same_local_location(tmp_path):
    plain, uri = resolve(tmp_path / "data"), resolve(f"file://{tmp_path}/data")
    assert plain.is_local and uri.is_local and plain.path == uri.path == str(tmp_path / "data")
    assert uri.uri == f"file://{tmp_path}/data" and uri.join("shards", "a.parquet").uri.endswith(
        "/data/shards/a.parquet"
    )
    assert uri.join("x").parent.path == uri.path and uri.name == "data"


@pytest.mark.parametrize("where", ["file", "memory"])
def test_atomic_writes_listing_and_hashing_on_local_and_fsspec_filesystems(tmp_path, where):
    """memory:// stands in for an object store here (fsspec, no atomic rename): the same calls serve both."""
    root = resolve(f"file://{tmp_path}/out" if where == "file" else f"memory://ray-vsr-test-{tmp_path.name}")
    target = root.join("shards", "train", "part-00000.done.json")
    target.write_json_atomic({"rows": 3})
    assert target.read_json() == {"rows": 3} and target.is_file() and root.join("shards").is_dir()
    assert [info.base_name for info in root.join("shards").list_files()] == ["part-00000.done.json"]
    assert not [i for i in root.list_files() if ".tmp-" in i.base_name]  # the temporary name is gone
    target.delete()
    assert not target.is_file() and root.join("missing").list_files() == []


def test_a_parquet_file_is_hashed_while_it_is_written(tmp_path):
    table = pa.table({"clip_id": ["a", "b"], "frames": [b"x" * 1000, b"y" * 2000]})
    location = resolve(tmp_path / "shard.parquet")
    with location.fs.open_output_stream(location.path) as stream:
        hashing = HashingWriter(stream)
        writer = pq.ParquetWriter(hashing, table.schema)
        writer.write_table(table)
        writer.close()
    data = (tmp_path / "shard.parquet").read_bytes()
    assert hashing.size == len(data) == location.size()
    assert hashing.sha256 == hashlib.sha256(data).hexdigest() == sha256_location(location)
    assert pq.read_table(tmp_path / "shard.parquet").equals(table)


def test_a_scheme_nothing_serves_is_one_clear_error():
    with pytest.raises(DataError, match=r"nosuchfs://bucket/x: no filesystem for nosuchfs://"):
        resolve("nosuchfs://bucket/x")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("az://box/reds", "az://box/reds: az:// needs a filesystem package that is not installed"),
        # pyarrow's HDFS lists every libjvm path it tried, one per line, when no JVM is installed
        ("hdfs://nosuchhost:1/reds", "hdfs://nosuchhost:1/reds: cannot open this storage URI ("),
    ],
)
def test_a_storage_uri_that_cannot_open_is_one_line(uri, message):
    import importlib.util

    from pipelines.common.storage import check_storage_uri

    if uri.startswith("az://") and importlib.util.find_spec("adlfs") is not None:
        pytest.skip("adlfs is installed here: az:// has its filesystem")
    with pytest.raises(DataError) as refused:
        resolve(uri)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)
    if uri.startswith("az://"):
        assert "pip install adlfs" in str(refused.value)
        with pytest.raises(DataError, match="pip install adlfs"):
            check_storage_uri(uri)  # the same, without contacting any store
    check_storage_uri("s3://bucket/reds")  # pyarrow's own: nothing to install


def test_absolute_keeps_uris_and_makes_plain_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert absolute("runs") == str(tmp_path / "runs") and not is_uri("runs")
    assert absolute("~/data") == str(tmp_path / "home" / "data")
    for uri in ("s3://bucket/runs", "file:///mnt/shared/runs", "memory://runs/x"):
        assert is_uri(uri) and absolute(uri) == uri
    # what it says is what resolve() opens: a plain path is local, a URI its scheme's filesystem
    assert resolve(absolute("runs")).is_local and resolve(absolute("runs")).path == str(tmp_path / "runs")
