"""Training checkpoints: what a worker saves and restores beside the weights.

A checkpoint folder (``<storage_path>/<run>/checkpoint_<iteration>``) holds ``model.pt``
(:func:`vsr_models.save_checkpoint`, loadable on its own), ``training_state.pt`` (optimizer,
LR schedule, iteration, MLflow run id, last validation) and ``rng_rank<r>.pt`` per worker. Checkpoints
live on shared storage that others can write to, so every file holds tensors and plain Python values
only and is read with ``torch.load(weights_only=True)``: nothing in a checkpoint can run code
(``docs/security.md``).

A checkpoint resumes on another layout (``docs/cluster.md#resuming-on-another-layout``): another number
of workers, nodes or GPUs per node. Each worker's RNG file holds only its own device's CUDA generator,
never the whole node's, and the run folder is read through :mod:`pipelines.common.storage`, so a
``file://``, ``s3://`` or ``gs://`` storage path resumes like a plain one.
"""

from __future__ import annotations

import io
import os
import posixpath
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from pipelines.common.errors import DataError
from pipelines.common.files import CHECKPOINT_MODEL_FILE, CHECKPOINT_STATE_FILE, atomic_path, load_plain
from pipelines.common.storage import Location, resolve
from vsr_models import load_checkpoint, save_checkpoint

MODEL_FILE = CHECKPOINT_MODEL_FILE
STATE_FILE = CHECKPOINT_STATE_FILE
RNG_FILE = "rng_rank{rank}.pt"
CUDA_DEVICE_KEY = "cuda_device"  # in an RNG file: the generator state of the worker's own CUDA device


@dataclass
class TrainingState:
    """What a checkpoint holds beside the weights."""

    iteration: int = 0
    mlflow_run_id: str | None = None
    val_metrics: dict[str, float] = field(default_factory=dict)
    # Training sequences all workers have consumed: a resumed run's crop plan starts past them
    # (pipelines.training.run.training_crops), whatever global batch each part of the run had.
    samples: int = 0


# -- random number generators as tensors --------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Python's, NumPy's, torch's and this worker's CUDA device's generator states, as tensors and numbers.

    Only the current device's CUDA generator (the worker's own, ``torch.cuda.set_device`` in the loop's
    setup) is saved: under Ray Train each worker sees every GPU of its node, and a whole-node list
    (``get_rng_state_all``) cannot be restored on a node with fewer GPUs. Nothing is saved when CUDA
    was never initialised in this process (a CPU worker; nothing drew CUDA random numbers).
    """
    version, python_keys, gauss = random.getstate()
    kind, numpy_keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "keys": torch.tensor(python_keys, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(numpy_keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state[CUDA_DEVICE_KEY] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["keys"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    # Files written before this layout rule hold the node's list under "cuda", one state per GPU of the
    # node that wrote it; which one was this worker's is not recorded, and training draws no CUDA
    # random numbers (crops are drawn in Ray Data, seeded), so that list is left unused.
    if CUDA_DEVICE_KEY in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state[CUDA_DEVICE_KEY])  # onto the current device: this worker's


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- checkpoint folders -------------------------------------------------------------------------------


def _load_plain(where: Path | Location) -> Any:
    fix = "delete its checkpoint folder to resume from the previous one"
    if isinstance(where, Location) and not where.is_local:
        return load_plain(io.BytesIO(where.read_bytes()), fix=fix, name=where.uri)
    return load_plain(where.local_path if isinstance(where, Location) else where, fix=fix)


def save_training_checkpoint(
    directory: Path,
    rank: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    state: TrainingState,
) -> None:
    """Write this worker's part of a checkpoint; Ray merges the workers' folders into one."""
    if rank == 0:
        save_checkpoint(model, directory / MODEL_FILE, extra={"iteration": state.iteration})
        with atomic_path(directory / STATE_FILE) as temp:
            torch.save(
                {
                    "iteration": state.iteration,
                    "mlflow_run_id": state.mlflow_run_id,
                    "val_metrics": state.val_metrics,
                    "samples": state.samples,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                },
                temp,
            )
    with atomic_path(directory / RNG_FILE.format(rank=rank)) as temp:
        torch.save(rng_state(), temp)


def read_training_state(directory: str | os.PathLike | Location) -> dict[str, Any]:
    """``training_state.pt`` of a checkpoint folder (plain tensors and Python values only)."""
    return _load_plain(resolve(directory).join(STATE_FILE))


def run_folder(storage_path: str, name: str) -> Location:
    """Where Ray Train keeps the run ``name``'s checkpoints: ``<storage_path>/<name>``, a path or a URI."""
    return resolve(storage_path).join(name)


def checkpoint_folders(run: str | os.PathLike | Location) -> list[Location]:
    """The run's complete checkpoint folders (those holding ``training_state.pt``), oldest first.

    A folder without it was never registered by Ray Train (a worker stopped while uploading). The loop
    names each folder after its iteration (``checkpoint_<iteration>``), which orders them.
    """
    run = resolve(run)
    if not run.is_dir():
        return []
    selector = pafs.FileSelector(run.path, recursive=False, allow_not_found=True)
    names = sorted(
        (
            posixpath.basename(info.path.rstrip("/"))
            for info in run.fs.get_file_info(selector)
            if info.type == pafs.FileType.Directory
        ),
        key=lambda name: (_named_iteration(name), name),
    )
    folders = [run.join(name) for name in names if name.startswith("checkpoint_")]
    return [folder for folder in folders if folder.join(STATE_FILE).is_file()]


def _named_iteration(name: str) -> int:
    digits = name.removeprefix("checkpoint_")
    return int(digits) if digits.isdigit() else -1


def resume_folder(run: str | os.PathLike | Location) -> Location | None:
    """The checkpoint folder a run started again resumes from (None: it starts from scratch).

    Ray Train resumes from the latest checkpoint of its snapshot (``checkpoint_manager_snapshot.json``),
    which lists only the checkpoints it registered: a complete folder written after the last registration
    (a run stopped between a worker's upload and the report) is not resumed from, so the driver's crop
    plan must not count it either. Without a snapshot the newest complete folder by name is taken.
    """
    run = resolve(run)
    snapshot = _read_snapshot(run)
    if snapshot is None:
        folders = checkpoint_folders(run)
        return folders[-1] if folders else None
    latest = snapshot.get("latest_checkpoint_result")
    return None if latest is None else run.join(latest["checkpoint_dir_name"])


def latest_checkpoint_iteration(run: str | os.PathLike | Location) -> int:
    """The iteration of the checkpoint a run started again resumes from (0 if none).

    Taken from the folder's name (``checkpoint_<iteration>``, the loop's naming): nothing is read.
    """
    folder = resume_folder(run)
    if folder is None:
        return 0
    named = _named_iteration(folder.name)
    return named if named >= 0 else int(read_training_state(folder)["iteration"])


def latest_checkpoint_progress(run: str | os.PathLike | Location, global_batch: int) -> tuple[int, int]:
    """Iteration and samples consumed of the checkpoint a run resumes from (:func:`resume_folder`; (0, 0) if none).

    ``global_batch`` estimates the samples of a checkpoint that predates their count. Only that folder's
    ``training_state.pt`` is read (it holds Adam's moments: tens of MB from an object store).
    """
    folder = resume_folder(run)
    if folder is None:
        return 0, 0
    saved = read_training_state(folder)
    return int(saved["iteration"]), samples_done(saved, global_batch)


def check_checkpoints(run: str | os.PathLike | Location, global_batch: int = 1) -> tuple[int, int]:
    """Load every file of the checkpoint the run resumes from as plain data, on the driver, before any worker.

    A doctored or damaged file is one :class:`DataError` here instead of a failure in every worker
    (and every retry of it). Only :func:`resume_folder`'s checkpoint is read (on ``s3://`` and other URIs,
    into memory): it is the one every worker loads; the other kept checkpoints are read only by
    registration, which loads them as plain data too (``docs/security.md``).

    Returns that checkpoint's iteration and samples consumed (``(0, 0)`` for a new run), as
    :func:`latest_checkpoint_progress` would, without reading its ``training_state.pt`` a second time.
    """
    run = resolve(run)
    folder = resume_folder(run)  # reads and checks Ray Train's snapshot
    if folder is None:
        return 0, 0
    names, saved = set(), None
    for info in sorted(folder.list_files(), key=lambda info: info.path):
        file = folder.join(posixpath.relpath(info.path, folder.path))
        names.add(file.name)
        if file.name == MODEL_FILE:
            _check_model_file(file)
        elif file.name == STATE_FILE:
            saved = _load_plain(file)
        elif file.name.endswith(".pt"):
            _load_plain(file)
    missing = [f for f in (MODEL_FILE, STATE_FILE, RNG_FILE.format(rank=0)) if f not in names]
    if missing:
        raise DataError(
            f"checkpoint {folder.uri} lacks {', '.join(missing)} (damaged or cut short): move that "
            "folder out of the run to resume from the checkpoint before it"
        )
    return int(saved["iteration"]), samples_done(saved, global_batch)


SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's list of the run's checkpoints


def _read_snapshot(run: Location) -> dict[str, Any] | None:
    """Ray Train's snapshot of the run's checkpoints (None when there is none), or one line if it is damaged."""
    import json

    snapshot = run.join(SNAPSHOT_FILE)
    if snapshot.fs.get_file_info(snapshot.path).type != pafs.FileType.File:
        return None
    try:
        data = json.loads(snapshot.read_bytes().decode())
        latest = data.get("latest_checkpoint_result")
        if latest is not None and not isinstance(latest["checkpoint_dir_name"], str):
            raise ValueError("checkpoint_dir_name")
        return data
    except (ValueError, UnicodeDecodeError, AttributeError, KeyError, TypeError):
        raise DataError(
            f"{snapshot.uri}: Ray Train's list of the run's checkpoints is damaged (cut short?), so the run "
            f"cannot resume; move {run.uri} away to start it over, or train under another name"
        ) from None


def _check_model_file(file: Location) -> None:
    if file.is_local:
        load_checkpoint(file.local_path)
        return
    with tempfile.TemporaryDirectory() as local:  # load_checkpoint reads a file by its path
        copy = Path(local) / MODEL_FILE
        copy.write_bytes(file.read_bytes())
        try:
            load_checkpoint(copy)
        except Exception as error:  # name the stored file, not its temporary copy
            raise DataError(str(error).replace(str(copy), file.uri)) from None


def restore_training_checkpoint(
    directory: Path,
    rank: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    global_batch: int = 1,
) -> TrainingState:
    """Load weights, optimizer, scheduler and this rank's RNG state from a checkpoint folder.

    ``global_batch`` (this run's) estimates the samples consumed by a checkpoint that predates their count.

    The schedule resumes at the checkpoint's iteration from the base learning rates ``optimizer`` was
    built with, not the checkpoint's: a run resumed on another layout follows ``scaling.lr_rule`` at its
    new global batch (``docs/cluster.md#resuming-on-another-layout``). With the same config they are equal.
    """
    model.load_state_dict(load_checkpoint(directory / MODEL_FILE).state_dict())
    saved = read_training_state(directory)
    base_lrs = list(scheduler.base_lrs)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    _keep_base_lrs(optimizer, scheduler, base_lrs)
    rng_file = directory / RNG_FILE.format(rank=rank)
    if rng_file.is_file():  # absent when the run restarts with more workers
        set_rng_state(_load_plain(rng_file))
    return TrainingState(
        saved["iteration"],
        saved["mlflow_run_id"],
        dict(saved["val_metrics"]),
        samples_done(saved, global_batch),
    )


def samples_done(saved: dict[str, Any], global_batch: int) -> int:
    """The samples a checkpoint's ``training_state.pt`` says were consumed (estimated for older files)."""
    return int(saved.get("samples", saved["iteration"] * global_batch))


def _keep_base_lrs(optimizer: torch.optim.Optimizer, scheduler: LambdaLR, base_lrs: list[float]) -> None:
    """Put ``base_lrs`` back after a restore and set each group's lr for the restored iteration."""
    scheduler.base_lrs = base_lrs
    for group, factor, base_lr in zip(optimizer.param_groups, scheduler.lr_lambdas, base_lrs, strict=True):
        if hasattr(factor, "base_lr"):  # CosineRestartFactor: its eta_min is absolute, its base is not
            factor.base_lr = base_lr
        group["initial_lr"] = base_lr
        group["lr"] = base_lr * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
