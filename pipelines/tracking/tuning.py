"""MLflow records of a search (:func:`pipelines.tuning.run.run_search`) besides its trials' own runs
(``docs/tuning.md``):

- the tags that tie the runs to their search, and the statuses a trial run's :data:`TRIAL_STATUS_TAG` holds;
- :func:`start_parent_run`: the search's parent run, found again by the search id, with the space as
  params and ``search.yaml``;
- :func:`record_statuses`: every trial run's status, and closing the runs the search left open;
- :func:`log_reports`: the results table and plots, as artifacts of the parent run.

The best trial's registration (``best-<name>``) re-scores it and registers it as a training run does, so it
lives with the search (:func:`pipelines.tuning.best.register_best`); it marks the parent run with
:data:`REGISTERED_TAG`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pipelines.common.config import config_to_dict
from pipelines.tracking.runs import RunTracker

TUNE_EXPERIMENT_TAG = "tune_experiment"
TUNE_TRIAL_TAG = "tune_trial_id"
SEARCH_ID_TAG = "tune_search_id"  # on the parent run and every trial run: which search they belong to
TRIAL_STATUS_TAG = "tune_status"  # COMPLETED | STOPPED_EARLY | ERRORED
SEARCH_PARENT_TAG = "tune_search_parent"  # on the parent run only: the search id (the trials have it too)
REGISTERED_TAG = "best_registered_version"  # on the parent run: the version registered as best-<name>

COMPLETED = "completed"  # trained to train.total_iters, or evaluated
STOPPED_EARLY = "stopped early"  # by the scheduler (ASHA)
ERRORED = "errored"


def start_parent_run(spec: Any, base: Any, tracking_uri: str, search_id: str) -> RunTracker:
    """The search's MLflow parent run (found by the search id), with the space as params and the YAML.

    ``spec`` is the search (:class:`pipelines.tuning.config.SearchConfig`), ``base`` the experiment its
    trials start from. Found by :data:`SEARCH_PARENT_TAG`, which only the parent carries: the trial runs
    carry the search id too, and the newest of them is not the parent (whose tags hold the seal a resume
    checks)."""
    parent = RunTracker.start_tagged(
        tracking_uri,
        base.tracking.experiment,
        spec.name,
        SEARCH_PARENT_TAG,
        search_id,
        tags={TUNE_EXPERIMENT_TAG: spec.name, "arch": base.arch, SEARCH_ID_TAG: search_id},
    )
    settings = {"num_samples": spec.num_samples, "metric": spec.metric, "scheduler": spec.scheduler.name}
    if spec.evaluate is not None:
        settings |= {"evaluate": spec.evaluate, "scheduler": "none"}
    parent.log_params({f"search.{key}": {d.kind: d.args} for key, d in spec.space().items()} | settings)
    # the search as its YAML holds it; the family the job gave is the run's arch tag
    parent.log_dict({k: v for k, v in config_to_dict(spec).items() if k != "arch"}, "search.yaml")
    return parent


def record_statuses(trials: Iterable[Any], tracking_uri: str) -> None:
    """Tag every trial run (``trial.mlflow_run_id``) with its ``trial.status``; close the runs of trials
    stopped early (FINISHED: the scheduler ended a trial that ran as it should; ``tune_status`` says it
    stopped early) or errored (FAILED)."""
    for trial in trials:
        if not trial.mlflow_run_id:
            continue
        tracker = RunTracker.attach(tracking_uri, trial.mlflow_run_id)
        tracker.set_tags({TRIAL_STATUS_TAG: trial.status})
        if trial.status == ERRORED:
            tracker.finish("FAILED")
        elif trial.status == STOPPED_EARLY or tracker.status() == "RUNNING":
            # RUNNING: its actor ended with its last result, before closing it
            tracker.finish("FINISHED")


def log_reports(parent: RunTracker, write: Callable[[Path], list[Path]]) -> tuple[str, ...]:
    """The reports ``write(folder)`` puts in a temporary folder (the results table and plots), as
    artifacts of the parent run; their artifact paths."""
    with tempfile.TemporaryDirectory() as folder:
        written = write(Path(folder))
        for path in written:
            parent.log_artifact(path, None if path.parent == Path(folder) else path.parent.name)
        return tuple(str(path.relative_to(folder)) for path in written)
