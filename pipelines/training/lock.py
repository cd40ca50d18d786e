"""One training at a time per run: a lock in the run folder (``<storage_path>/<name>/``, :data:`LOCK_FILE`).

Two commands with the same ``--name`` would otherwise write one folder of checkpoints and log into one
MLflow run, interleaved. On a local or mounted path the lock is ``fcntl.flock`` on the file, which the
kernel drops when the process ends however it ends, so a crashed run never leaves a stale lock; the file
holds who holds it (host, pid, start time) for the refusal message. On an object store (``s3://``, where
there is no lock call) the file itself is the lock: one from a process of this host that is gone is taken
over, one from another host is refused with the command that removes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from pipelines.common.errors import ConfigError
from pipelines.common.storage import resolve

LOCK_FILE = ".ray-vsr-run.lock"


def _holder() -> dict[str, object]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _refusal(name: str, lock: str, holder: dict) -> ConfigError:
    who = f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
    return ConfigError(
        f"run {name} is already being trained ({who}; lock {lock}): wait for it to end, or give this "
        f"training another name (--name / --set run.name=...)"
    )


def _alive_here(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # cannot tell: assume it runs
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


@contextlib.contextmanager
def run_lock(storage_path: str, name: str) -> Iterator[None]:
    """Hold the lock of the run ``name`` under ``storage_path`` for the block.

    Raises:
        ConfigError: another process holds it (the message names it and the fix).
    """
    folder = resolve(storage_path).join(name)
    if folder.is_local:
        yield from _flock(folder.local_path, name)
    else:
        yield from _lock_file(folder, name)


def _flock(folder: Path, name: str) -> Iterator[None]:
    import fcntl

    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    with path.open("a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            try:
                holder = json.loads(file.read() or "{}")
            except ValueError:
                holder = {}
            raise _refusal(name, str(path), holder) from None
        file.seek(0)
        file.truncate()
        file.write(json.dumps(_holder()))
        file.flush()
        try:
            yield
        finally:
            # A run refused before it wrote anything leaves no folder behind.
            if created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
                path.unlink()
                folder.rmdir()


def _lock_file(folder, name: str) -> Iterator[None]:
    import pyarrow.fs

    lock = folder.join(LOCK_FILE)
    if lock.fs.get_file_info(lock.path).type == pyarrow.fs.FileType.File:
        with lock.fs.open_input_stream(lock.path) as stream:
            try:
                holder = json.loads(stream.read().decode() or "{}")
            except ValueError:
                holder = {}
        if _alive_here(holder):
            raise _refusal(name, lock.uri, holder)
    lock.fs.create_dir(folder.path, recursive=True)
    with lock.fs.open_output_stream(lock.path) as stream:
        stream.write(json.dumps(_holder()).encode())
    try:
        yield
    finally:
        lock.fs.delete_file(lock.path)
