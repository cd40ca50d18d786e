"""Resuming a search never unpickles storage nobody vouches for: Tune's files are checked against the
seal the search's last run stored in its MLflow parent run (docs/security.md) before Tune reads them.

The searches here are set up by hand, as a finished run of the search leaves them (a sealed folder and a
parent run), then doctored: running a real search first would add minutes and prove nothing more.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import yaml

from jobs._tuning import parser, search_config
from jobs.tune_ttvsr import main
from pipelines.common.errors import StateError
from pipelines.tracking import RunTracker, mlflow_client
from pipelines.tracking.tuning import SEARCH_ID_TAG, SEARCH_PARENT_TAG
from pipelines.training.config import resolve_paths
from pipelines.tuning.config import base_experiment
from pipelines.tuning.state import SEAL_TAG, STATE_FILE, seal_search, search_fingerprint, verify_search

TEST_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "ttvsr_test.yaml"
NAME = "sealed_search"


class _CreatesMarker:
    """A pickle whose loading creates ``marker``: stands for any code a replaced file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _sealed_search(tmp_path: Path, dataset: Path, *, seal: bool) -> tuple[list[str], Path]:
    """A search's command line and its Tune folder, as a run of it that stopped left them."""
    config = tmp_path / "search.yaml"
    experiment = {
        "data": {"path": str(dataset)},
        "run": {"storage_path": str(tmp_path / "runs")},
        "tracking": {"experiment": "sealed"},
    }
    search = {"model.key_frame_stride": {"grid": [1, 2]}}
    config.write_text(yaml.safe_dump({"base": str(TEST_CONFIG), "experiment": experiment, "search": search}))
    argv = ["--config", str(config), "--set", f"name={NAME}", "--mlflow-uri", f"sqlite:///{tmp_path}/m.db"]
    spec = search_config("ttvsr", parser().parse_args(argv))
    folder = tmp_path / "runs" / NAME
    (folder / "trial_0").mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(pickle.dumps({"tuner": "state"}))
    (folder / "trial_0" / "result.json").write_text("{}\n")
    base = resolve_paths(base_experiment(spec))
    state = {"search_id": "a1", "fingerprint": search_fingerprint(spec, base)}
    state, digest = seal_search(str(folder), state)
    uri = f"sqlite:///{tmp_path}/m.db"
    parent = RunTracker.start_tagged(uri, "sealed", NAME, SEARCH_PARENT_TAG, "a1", tags={SEARCH_ID_TAG: "a1"})
    if seal:
        parent.set_tags({SEAL_TAG: digest})
    RunTracker.start(uri, "sealed", "trial_0", tags={SEARCH_ID_TAG: "a1"})  # newer, the search id too
    return argv, folder


@pytest.mark.parametrize("sealed", [True, False], ids=["doctored-after-seal", "never-sealed"])
def test_doctored_tuner_pkl_is_refused_in_one_line_and_never_unpickled(
    tmp_path, tiny_prepared_dataset, capsys, sealed
):
    argv, folder = _sealed_search(tmp_path, tiny_prepared_dataset, seal=sealed)
    marker = tmp_path / "code-ran"
    (folder / "tuner.pkl").write_bytes(pickle.dumps(_CreatesMarker(marker)))
    capsys.readouterr()  # the setup's output (MLflow creating its tables)

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {folder}")
    assert ("tuner.pkl: changed since this search last ran" in err) if sealed else ("not sealed" in err)
    assert "--set name=" in err  # the fix
    assert not marker.exists()
    assert (folder / STATE_FILE).exists()  # nothing of the search was removed


def test_seal_names_a_file_added_or_removed_since(tmp_path):
    folder = tmp_path / "search"
    (folder / "train" / "trial_0").mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(b"state")
    state, digest = seal_search(str(folder), {"search_id": "a1"})
    assert set(state["files"]) == {"tuner.pkl"}  # not the state file itself
    (folder / "train" / "trial_0" / "checkpoint.pt").write_bytes(b"x")  # Train's: checked by the project
    verify_search(str(folder), state, digest)

    (folder / "searcher-state-1.pkl").write_bytes(b"injected")
    with pytest.raises(StateError, match="searcher-state-1.pkl: added since"):
        verify_search(str(folder), state, digest)
    (folder / "searcher-state-1.pkl").unlink()
    (folder / "tuner.pkl").unlink()
    with pytest.raises(StateError, match="tuner.pkl: removed since"):
        verify_search(str(folder), state, digest)
    state["files"]["tuner.pkl"] = "0" * 64  # the list in the storage edited to match a doctored file
    with pytest.raises(StateError, match="not sealed"):
        verify_search(str(folder), state, digest)


def test_search_seal_is_a_tag_of_the_parent_run(tmp_path, tiny_prepared_dataset):
    _, folder = _sealed_search(tmp_path, tiny_prepared_dataset, seal=True)
    client = mlflow_client(f"sqlite:///{tmp_path}/m.db")
    runs = client.search_runs([client.get_experiment_by_name("sealed").experiment_id])
    (parent,) = [r for r in runs if SEARCH_PARENT_TAG in r.data.tags]
    assert len(parent.data.tags[SEAL_TAG]) == 64
