"""A search's identity, kept beside its Tune experiment (:data:`STATE_FILE`): the search id, which finds its
MLflow parent run, and a fingerprint of what defines it, which tells a resumed search from another one.

Resuming a search hands its storage to ``Tuner.restore``, which unpickles ``tuner.pkl``, the searcher's and
scheduler's state and cloudpickled fields of the experiment state: a replaced file there would run code.
So every run of a search seals what it leaves (:func:`seal_search`: the sha256 of every file Tune may read,
listed in :data:`STATE_FILE`, and the digest of that list as the parent run's :data:`SEAL_TAG`, in MLflow,
which whoever writes the storage cannot change), and a resumed search checks every file against it before
Tune reads anything (:func:`verify_search`; ``docs/security.md``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import PurePosixPath
from typing import Any

from pipelines.common.config import config_to_dict, flatten
from pipelines.common.errors import ConfigError, StateError
from pipelines.common.files import check_unchanged
from pipelines.common.storage import resolve
from pipelines.training.config import Experiment
from pipelines.tuning.config import SearchConfig

STATE_FILE = "ray_vsr_search.json"  # <storage_path>/<search name>/: the search id and its fingerprint
SEAL_TAG = "tune_state_sha256"  # on the parent run: the digest of the sealed file list (seal_search)
UNSEALED = ("train/",)  # the trials' Train runs: read by the project's own checkpoint checks, not by Tune


# -- the search's identity: its id, kept beside the Tune experiment --------------------------------------


def search_fingerprint(spec: SearchConfig, base: Experiment) -> str:
    """What makes a search the same search: its space, scheduler, sampling and base config (not where it
    runs, how many trials run at once or what happens to the winner)."""
    ignored = (
        "max_concurrent_trials",
        "max_cluster_resources",
        "register_best",
        "promote_champion",
        "device",
    )
    # The family (the job's arch, the base's arch) is not in it: the model keys tell the families apart,
    # and searches started before the family was a config field resume.
    search = {k: v for k, v in config_to_dict(spec).items() if k not in (*ignored, "experiment", "arch")}
    left_out = ("arch", "run.address", "tracking.uri", "data.verify")
    trial_config = {k: v for k, v in flatten(base).items() if k not in left_out}
    text = json.dumps({"search": search, "base": trial_config}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _filesystem(path: str) -> tuple[Any, str]:
    location = resolve(path)
    return location.fs, location.path


def read_search_state(experiment_path: str) -> dict[str, Any] | None:
    """:data:`STATE_FILE` of the search at ``experiment_path``, or None."""
    import pyarrow.fs

    fs, path = _filesystem(f"{experiment_path}/{STATE_FILE}")
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return json.loads(stream.read().decode())


def write_search_state(experiment_path: str, state: dict[str, Any]) -> None:
    fs, path = _filesystem(f"{experiment_path}/{STATE_FILE}")
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(json.dumps(state, indent=2).encode())


def open_search(experiment_path: str, fingerprint: str) -> tuple[dict[str, Any], bool]:
    """The search's state and whether Tune can restore it: that of the search already at
    ``experiment_path`` if it is this one, a new one (new id) if nothing ran there yet.

    Raises:
        ConfigError: another search (other space, base config, ...) has run under this name.
    """
    from ray import tune

    state = read_search_state(experiment_path)
    restorable = tune.Tuner.can_restore(experiment_path)
    if restorable and (state is None or state["fingerprint"] != fingerprint):
        name = PurePosixPath(experiment_path).name
        raise ConfigError(
            f"a different Tune search already ran as {name} ({experiment_path}: other search space, base "
            f"config or settings); run the same config to resume it, or give this one another name "
            f"(--set name=...)"
        )
    if state is None or state["fingerprint"] != fingerprint:
        state = {"search_id": uuid.uuid4().hex, "fingerprint": fingerprint}
        write_search_state(experiment_path, state)
    return state, restorable


# -- the seal: what Tune may unpickle on resume, checked before it reads anything -------------------------


def _file_digests(experiment_path: str) -> dict[str, str]:
    """sha256 of every file under ``experiment_path`` but :data:`STATE_FILE` and :data:`UNSEALED`."""
    import pyarrow.fs

    fs, root = _filesystem(experiment_path)
    root = root.rstrip("/")
    if fs.get_file_info(root).type != pyarrow.fs.FileType.Directory:
        return {}
    digests = {}
    for info in fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True)):
        name = info.path[len(root) + 1 :]
        if info.type != pyarrow.fs.FileType.File or name == STATE_FILE or name.startswith(UNSEALED):
            continue
        sha = hashlib.sha256()
        with fs.open_input_stream(info.path) as stream:
            while block := stream.read(2**22):
                sha.update(block)
        digests[name] = sha.hexdigest()
    return dict(sorted(digests.items()))


def _seal_digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def seal_search(experiment_path: str, state: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Record the sha256 of every file the search left (in :data:`STATE_FILE`); the new state and the
    digest to store as the parent run's :data:`SEAL_TAG`. Called when ``Tuner.fit`` returns or raises."""
    files = _file_digests(experiment_path)
    state = state | {"files": files}
    write_search_state(experiment_path, state)
    return state, _seal_digest(files)


def verify_search(experiment_path: str, state: dict[str, Any], sealed: str | None) -> None:
    """Check the search's storage against its seal before ``Tuner.restore`` reads it.

    Raises:
        StateError: no seal (the search was killed before it could seal, or the parent run is another
            one), a file changed, added or removed since: Tune would unpickle data nobody vouches for.
    """
    fix = f"give the search another name (--set name=...), or delete {experiment_path} to start it over"
    files = state.get("files")
    if not sealed or not isinstance(files, dict) or _seal_digest(files) != sealed:
        raise StateError(
            f"{experiment_path}: the Tune state there was not sealed by this search's last run (killed "
            f"before it could, or changed since), and resuming would unpickle it; {fix}"
        )
    check_unchanged(
        files,
        _file_digests(experiment_path),
        lambda name, change: StateError(
            f"{experiment_path}/{name}: {change} since this search last ran, and resuming would "
            f"unpickle the search's state; {fix}"
        ),
    )
