"""Preparation the way a cluster runs it: tasks on two nodes write the shards, the driver only plans.

A simulated two-node cluster (``ray.cluster_utils.Cluster``, two raylets on this machine sharing its disk
as nodes share NFS): shards are written by tasks on both nodes, the driver receives done-records only,
and a node killed mid-job leaves a dataset that a re-run completes with the same checksums. An S3 run
would differ only in the output URI (``s3://bucket/prefix``) and credentials on every node; the code
path (pyarrow filesystems, move-then-record) is the one exercised here through ``file://`` URIs.
"""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from conftest import make_frame_dataset

from pipelines.common.errors import DataError
from pipelines.data.manifest import open_dataset
from pipelines.data.prepare import PrepareConfig, prepare_dataset
from pipelines.data.prepare.plan import assign_splits, plan_clips, plan_shards

CLIPS = {f"clip{i:02d}": 8 for i in range(10)} | {"val_a": 8}


@pytest.fixture(scope="module")
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # leave the shared local cluster; the next test that needs one starts it again
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    worker = cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address)
    try:
        yield cluster, worker
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_frame_dataset(tmp_path_factory.mktemp("scale") / "src", CLIPS, size=(96, 128))


def _config(source, output) -> PrepareConfig:
    return PrepareConfig(source=str(source), output=str(output), shard_size=1)


def _checksums(output) -> dict[str, str]:
    return {s.path: s.sha256 for s in open_dataset(output, verify=True).shards()}


def test_shards_are_written_on_both_nodes_and_only_records_reach_the_driver(two_nodes, source, tmp_path):
    summary = prepare_dataset(_config(source, f"file://{tmp_path / 'uninterrupted'}"))
    assert summary.shards_written == len(CLIPS) and summary.output.startswith("file://")
    assert len(summary.shards_by_node) == 2, summary.shards_by_node  # both nodes wrote shards
    # What the driver received is records (ids, sizes, checksums, timings): a small fraction of the
    # frames written, and no more than a few KiB per shard whatever the frame size.
    assert summary.driver_received_bytes < summary.bytes / 20
    assert summary.driver_received_bytes / summary.shards_written < 4096
    assert set(summary.stage_seconds) == {"decode", "degrade", "compress", "write"}
    assert all(seconds > 0 for seconds in summary.stage_seconds.values())
    assert "ms per frame (task time)" in summary.describe()
    _checksums(tmp_path / "uninterrupted")  # every shard verifies (in Ray tasks)


def test_a_node_killed_mid_job_then_a_rerun_gives_the_same_verified_dataset(two_nodes, source, tmp_path):
    cluster, worker = two_nodes
    reference = _checksums_of_fresh_run(source, tmp_path / "reference")
    output = tmp_path / "interrupted"
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = prepare_dataset(_config(source, output))
        except Exception as error:  # a run that loses its node may fail; the rerun must finish it
            outcome["error"] = error

    job = threading.Thread(target=run)
    job.start()
    deadline = time.monotonic() + 120
    while not list(output.glob("shards/*/*.done.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    written_before_kill = len(list(output.glob("shards/*/*.done.json")))
    cluster.remove_node(worker)  # its raylet and every worker process on it die now
    job.join(timeout=300)
    assert not job.is_alive()
    assert 0 < written_before_kill < len(CLIPS)  # the kill really happened mid-job

    rerun = prepare_dataset(_config(source, output))
    assert rerun.shards_written + rerun.shards_skipped == len(CLIPS)
    assert _checksums(output) == reference  # nothing duplicated, partial or missing
    assert not [p for p in output.rglob("*") if ".tmp-" in p.name]  # no temporary file is left
    again = prepare_dataset(_config(source, output))
    assert (again.shards_written, again.shards_skipped) == (0, len(CLIPS))


def _checksums_of_fresh_run(source, output) -> dict[str, str]:
    prepare_dataset(_config(source, output))
    return _checksums(output)


def _tiny_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_vimeo_sized_listing_is_discovered_in_tasks_without_per_file_driver_io(
    ray_local, tmp_path, monkeypatch
):
    """100,002 frame files (14,286 septuplets): the driver reads the lists, never a frame file."""
    import PIL.Image

    from pipelines.data import sources
    from pipelines.data.prepare import discovery

    root, png = tmp_path / "vimeo", _tiny_png()
    names = [f"{a:05d}/{b:04d}" for a in range(1, 16) for b in range(1, 1021)][:14286]
    for rel in names:
        folder = root / "sequences" / rel
        folder.mkdir(parents=True)
        for i in range(1, 8):
            (folder / f"im{i}.png").write_bytes(png)
    (root / "sep_trainlist.txt").write_text("\n".join(names[:-286]) + "\n")
    (root / "sep_testlist.txt").write_text("\n".join(names[-286:]) + "\n")

    def no_driver_io(*args, **kwargs):
        raise AssertionError("the driver opened a frame file")

    # Patched in this (driver) process only: Ray's worker processes import the real ones.
    monkeypatch.setattr(PIL.Image, "open", no_driver_io)
    monkeypatch.setattr(sources, "image_files", no_driver_io)
    monkeypatch.setattr(sources, "_stat", no_driver_io)
    found = sources.discover(root, "auto", inspect=discovery.inspect_in_tasks)

    assert found.layout == "vimeo" and len(found.items) == 14286 and not found.quarantined
    assert sum(len(item.files) for item in found.items) == 100_002
    assert found.items[0].frame_size == (8, 12)
    cfg = PrepareConfig(source=str(root), output=str(tmp_path / "out"), clip_length=7)
    shards = plan_shards(plan_clips(found.items, assign_splits(found.items, cfg.splits), {}, cfg), cfg)
    assert sum(len(s.clips) for s in shards) == 14286
    assert {s.split for s in shards} == {"train", "val"} and len(shards) == -(-14000 // 64) + -(-286 // 64)


def test_a_listed_septuplet_that_is_missing_is_one_clear_error(ray_local, tmp_path):
    from pipelines.data import sources
    from pipelines.data.prepare import discovery

    root = tmp_path / "vimeo"
    (root / "sequences" / "00001" / "0001").mkdir(parents=True)
    (root / "sequences" / "00001" / "0001" / "im1.png").write_bytes(_tiny_png())
    (root / "sep_trainlist.txt").write_text("00001/0001\n00001/0002\n")
    with pytest.raises(DataError, match=r"00001/0002: listed by the dataset but missing"):
        sources.discover(root, "vimeo", inspect=discovery.inspect_in_tasks)
