"""File helpers every stage uses: checksums, atomic writes, the project's version.

Outputs are written beside their final name under a hidden temporary name and renamed into place
(``os.replace`` is atomic on one filesystem), so a reader never sees a half-written file under the
real name and an interrupted job leaves only temporary files, which carry :data:`TEMP_MARKER`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from vsr_models.checkpoint import project_version

__all__ = [
    "CHECKPOINT_MODEL_FILE",
    "CHECKPOINT_STATE_FILE",
    "load_plain",
    "TEMP_MARKER",
    "atomic_path",
    "is_disk_full",
    "project_version",
    "sha256_file",
    "temp_path_for",
    "write_json_atomic",
]

CHECKPOINT_MODEL_FILE = "model.pt"
"""The network file inside a training checkpoint folder (written by training, read by every loader)."""
CHECKPOINT_STATE_FILE = "training_state.pt"
"""Iteration, optimizer, schedule, last validation: beside the network in a training checkpoint folder."""

TEMP_MARKER = ".tmp-"
"""Part of every temporary file name: ``.<name>.tmp-<pid>``."""


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is a full disk: ENOSPC, or pyarrow's and PyAV's wrappers of it (pyarrow's
    streams report ``[errno 28] No space left on device`` in the message only for some calls)."""
    return isinstance(error, OSError) and (
        error.errno == errno.ENOSPC or "No space left on device" in str(error)
    )


def check_unchanged(
    expected: Mapping[str, str], found: Mapping[str, str], refuse: Callable[[str, str], Exception]
) -> None:
    """Raise ``refuse(name, change)`` for the first file (by name) whose digest in ``found`` is not the one
    in ``expected`` (``change`` is ``added``, ``removed`` or ``changed``); nothing when the two listings
    agree."""
    for name in sorted(set(expected) | set(found)):
        if expected.get(name) != found.get(name):
            change = "added" if name not in expected else "removed" if name not in found else "changed"
            raise refuse(name, change)


def sha256_file(path: str | os.PathLike, chunk: int = 8 * 2**20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def temp_path_for(path: Path) -> Path:
    """The hidden temporary name ``path`` is written under before it is renamed into place."""
    return path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed to ``path``.

    On an exception the temporary file is deleted and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path_for(path)
    try:
        yield temp
        if temp.is_file():
            with temp.open("rb") as f:
                os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as temp:
        temp.write_text(json.dumps(data, indent=1, sort_keys=False))


def load_plain(path: str | os.PathLike | BinaryIO, fix: str, name: str | None = None) -> Any:
    """``torch.load`` of a file that must hold tensors and plain values only (``weights_only=True``).

    Anything else (a pickled object, which could run code when loaded) or a damaged file is a
    ``DataError`` naming the file (``name``, else ``path``) and ``fix``, the way out for the user.
    ``path`` may be an open binary file (the bytes of an object-store file).
    """
    import torch

    from pipelines.common.errors import DataError

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for anything but tensors and plain values
        lines = [line for line in str(error).splitlines() if line.strip()]
        unpickler = isinstance(error, pickle.UnpicklingError) or "WeightsUnpickler error:" in str(error)
        reason = (
            "it holds objects other than tensors and plain values" if unpickler else lines[0] if lines else ""
        )
        raise DataError(
            f"{name or path}: not a loadable checkpoint file ({type(error).__name__}: {reason}). Checkpoints are read "
            f"as tensors and plain values only; this file was not written by ray-vsr or was changed: {fix}"
        ) from None
