"""Resuming a run whose storage path is a URI (``file://``, ``s3://``, ...) the way a plain path resumes
(``docs/cluster.md#resuming-on-another-layout``): the driver finds the last checkpoint through
:mod:`pipelines.common.storage`, so the crop epochs continue past it instead of replaying epoch 0, and the
checkpoints are checked as plain data before any worker starts.

``memory://`` (fsspec's in-memory filesystem) stands in for an object store, as in
``tests/pipelines/common/test_storage.py``: no S3 here.
"""

from __future__ import annotations

import os

import fsspec
import pytest
import torch

from pipelines.common.config import load_config
from pipelines.common.errors import DataError
from pipelines.data.manifest import open_dataset
from pipelines.training.config import Experiment, OptimSection, ScheduleSection, resolve_paths
from pipelines.training.recipe import build_optimizer, lr_schedule
from pipelines.training.run import training_crops
from pipelines.training.state import (
    STATE_FILE,
    TrainingState,
    check_checkpoints,
    latest_checkpoint_iteration,
    read_training_state,
    save_training_checkpoint,
)
from tests.conftest import REPO_ROOT
from vsr_models import build_model

TEST_CONFIG = REPO_ROOT / "configs" / "ttvsr_test.yaml"
TINY = {"mid_channels": 8, "num_extract_blocks": 1, "num_propagation_blocks": 1}
RUN = "ttvsr_test"  # the test config's run.name


class RunsAShellCommand:
    """Unpickling this runs ``touch <marker>``: a doctored file on shared storage."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _write_checkpoints(run_dir, iterations=(4, 8), workers: int = 2) -> None:
    """Complete checkpoints of ``workers`` workers and one folder Ray never registered, on local disk."""
    model = build_model("ttvsr", **TINY)
    optimizer = build_optimizer(model, OptimSection())
    scheduler = lr_schedule(optimizer, ScheduleSection(periods=[10], restart_weights=[1.0]))
    for iteration in iterations:
        folder = run_dir / f"checkpoint_{iteration:08d}"
        folder.mkdir(parents=True)
        for rank in (0, 1):
            state = TrainingState(iteration, samples=iteration * workers)
            save_training_checkpoint(folder, rank, model, optimizer, scheduler, state)
    (run_dir / "checkpoint_00000012").mkdir()  # no training_state.pt: not a complete checkpoint


def _copy_to_memory(run_dir, bucket: str) -> str:
    """The run folder's files under ``memory://<bucket>/runs/<run>``; returns the storage URI."""
    memory = fsspec.filesystem("memory")
    for file in run_dir.rglob("*"):
        if file.is_file():
            memory.pipe(f"/{bucket}/runs/{RUN}/{file.relative_to(run_dir)}", file.read_bytes())
        else:
            memory.makedirs(f"/{bucket}/runs/{RUN}/{file.relative_to(run_dir)}", exist_ok=True)
    return f"memory://{bucket}/runs"


def _crops(data, storage: str, workers: int = 2):
    cfg = load_config(
        Experiment,
        TEST_CONFIG,
        [
            f"data.path={data}",
            f"run.storage_path={storage}",
            f"scaling.num_workers={workers}",
            "train.total_iters=20",
        ],
    )
    return training_crops(resolve_paths(cfg), open_dataset(data))


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_a_run_resumed_under_a_uri_continues_the_crop_epochs_like_a_local_path(
    tiny_prepared_dataset, tmp_path, scheme
):
    local = tmp_path / "runs"
    _write_checkpoints(local / RUN)
    uri = f"file://{local}" if scheme == "file" else _copy_to_memory(local / RUN, f"resume-{tmp_path.name}")

    resumed_locally = _crops(tiny_prepared_dataset, str(local))
    # 8 iterations done, 2 workers x 1 sequence each: the plan starts past the 16 samples consumed
    assert resumed_locally.first_epoch == 16
    assert _crops(tiny_prepared_dataset, uri) == resumed_locally
    assert _crops(tiny_prepared_dataset, str(tmp_path / "new")).first_epoch == 0  # a new run


def test_a_doctored_checkpoint_under_a_uri_is_refused_before_any_worker_runs_it(tmp_path):
    _write_checkpoints(tmp_path / RUN, iterations=(4,))
    marker = tmp_path / "pwned"
    torch.save({"state": RunsAShellCommand(marker)}, tmp_path / RUN / "checkpoint_00000004" / "rng_rank1.pt")
    uri = _copy_to_memory(tmp_path / RUN, f"doctored-{tmp_path.name}")

    with pytest.raises(DataError, match=rf"{uri}/{RUN}/checkpoint_00000004/rng_rank1.pt: not a loadable"):
        check_checkpoints(f"{uri}/{RUN}")
    assert not marker.exists()
    (tmp_path / RUN / "checkpoint_00000004" / "rng_rank1.pt").unlink()
    check_checkpoints(_copy_to_memory(tmp_path / RUN, f"clean-{tmp_path.name}") + f"/{RUN}")  # loads


def test_a_run_resumed_on_fewer_workers_starts_its_crops_past_every_sample_it_consumed(
    tiny_prepared_dataset, tmp_path
):
    """8 iterations on 4 workers consumed 32 samples: 2 workers resuming start at epoch 32, not 8 x 2."""
    _write_checkpoints(tmp_path / "runs" / RUN, workers=4)
    plan = _crops(tiny_prepared_dataset, str(tmp_path / "runs"), workers=2)
    assert plan.first_epoch == 32
    assert plan == _crops(tiny_prepared_dataset, f"file://{tmp_path / 'runs'}", workers=2)

    # a checkpoint written before the count: estimated at this run's global batch, as before
    state_file = tmp_path / "runs" / RUN / "checkpoint_00000008" / STATE_FILE
    saved = read_training_state(state_file.parent)
    del saved["samples"]
    torch.save(saved, state_file)
    assert _crops(tiny_prepared_dataset, str(tmp_path / "runs"), workers=2).first_epoch == 16


def _write_snapshot(run_dir, latest: str | None) -> None:
    """Ray Train's snapshot of a run whose registered checkpoints end at ``latest`` (None: none registered).

    Written with Ray's own schema (an internal class: it tracks the installed Ray's file format).
    """
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import (
        _CheckpointManagerState,
        _TrainingResultState,
    )

    results = [] if latest is None else [_TrainingResultState(checkpoint_dir_name=latest, metrics={})]
    snapshot = _CheckpointManagerState(
        checkpoint_results=results,
        checkpoint_report_indices=list(range(len(results))),
        latest_checkpoint_result=results[-1] if results else None,
        pending_training_results=[],
        pending_validation_specs=[],
        current_report_index=len(results),
        validated_checkpoint_dir_names=[],
        timed_out_validation_checkpoint_dir_names=[],
        failed_validation_checkpoint_dir_names=[],
    )
    (run_dir / "checkpoint_manager_snapshot.json").write_text(snapshot.model_dump_json())


def test_the_crop_plan_follows_the_checkpoint_ray_resumes_from_not_the_newest_folder(
    tiny_prepared_dataset, tmp_path
):
    """checkpoint 8 is complete on storage but Ray never registered it: workers restore 4, so must the plan."""
    run_dir = tmp_path / "runs" / RUN
    _write_checkpoints(run_dir)
    _write_snapshot(run_dir, "checkpoint_00000004")
    assert latest_checkpoint_iteration(run_dir) == 4
    assert _crops(tiny_prepared_dataset, str(tmp_path / "runs")).first_epoch == 8  # 4 iterations x 2 workers
    memory = _copy_to_memory(run_dir, f"unregistered-{tmp_path.name}")
    assert _crops(tiny_prepared_dataset, memory).first_epoch == 8

    _write_snapshot(run_dir, None)  # a snapshot with no checkpoint: Ray starts from scratch
    assert _crops(tiny_prepared_dataset, str(tmp_path / "runs")).first_epoch == 0


def test_only_the_checkpoint_ray_resumes_from_is_read_on_the_driver_and_only_once(
    tiny_prepared_dataset, tmp_path, monkeypatch
):
    """Every file of checkpoint 8 is checked once; checkpoint 4 (kept, not resumed from) is never downloaded."""
    from pipelines.common.storage import Location

    _write_checkpoints(tmp_path / RUN, iterations=(4, 8), workers=2)
    uri = _copy_to_memory(tmp_path / RUN, f"reads-{tmp_path.name}")
    read = []
    real_read_bytes = Location.read_bytes

    def recording_read_bytes(self):  # a spy: records what is read of the run, then reads the real store
        if self.uri.startswith(f"{uri}/{RUN}/"):
            read.append(self.uri.removeprefix(f"{uri}/{RUN}/"))
        return real_read_bytes(self)

    monkeypatch.setattr(Location, "read_bytes", recording_read_bytes)
    assert check_checkpoints(f"{uri}/{RUN}", global_batch=2) == (8, 16)
    assert sorted(read) == [
        f"checkpoint_00000008/{name}" for name in ("model.pt", "rng_rank0.pt", "rng_rank1.pt", STATE_FILE)
    ]

    read.clear()
    assert latest_checkpoint_iteration(f"{uri}/{RUN}") == 8  # from the folder's name
    assert _crops_with_progress(tiny_prepared_dataset, uri, (8, 16)).first_epoch == 16
    assert read == []


def _crops_with_progress(data, storage: str, progress: tuple[int, int]):
    cfg = load_config(
        Experiment,
        TEST_CONFIG,
        [f"data.path={data}", f"run.storage_path={storage}", "scaling.num_workers=2", "train.total_iters=20"],
    )
    return training_crops(resolve_paths(cfg), open_dataset(data), progress)
