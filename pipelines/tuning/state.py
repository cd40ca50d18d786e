"""A search's identity, kept beside its Tune experiment (:data:`STATE_FILE`): the search id, which finds its
MLflow parent run, and a fingerprint of what defines it, which tells a resumed search from another one."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import PurePosixPath
from typing import Any

from pipelines.common.config import config_to_dict, flatten
from pipelines.common.errors import ConfigError
from pipelines.training.experiment import Experiment
from pipelines.tuning.config import SearchConfig

STATE_FILE = "ray_vsr_search.json"  # <storage_path>/<search name>/: the search id and its fingerprint


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
    search = {k: v for k, v in config_to_dict(spec).items() if k not in (*ignored, "experiment")}
    where = ("run.address", "tracking.uri", "data.verify")
    trial_config = {k: v for k, v in flatten(base).items() if k not in where}
    text = json.dumps({"search": search, "base": trial_config}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _filesystem(path: str) -> tuple[Any, str]:
    import pyarrow.fs

    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


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
