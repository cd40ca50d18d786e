"""What a search leaves in MLflow besides the trials' own runs: its parent run, every trial run's status,
the results table and plots, and the best training trial registered as ``best-<name>``
(``docs/tuning.md``)."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

from pipelines.common.config import config_to_dict
from pipelines.data.manifest import PreparedDataset
from pipelines.evaluation.run import run_evaluation
from pipelines.tracking import RegisteredVersion, RunTracker, promote_champion, set_alias
from pipelines.training.config import Experiment
from pipelines.training.run import register_result
from pipelines.tuning.config import SearchConfig
from pipelines.tuning.results import ERRORED, STOPPED_EARLY, TrialSummary, write_reports
from pipelines.tuning.trial import SEARCH_ID_TAG, TUNE_EXPERIMENT_TAG, validation_evaluation

logger = logging.getLogger("ray_vsr.tune")

TRIAL_STATUS_TAG = "tune_status"  # completed | stopped early | errored
SEARCH_PARENT_TAG = "tune_search_parent"  # on the parent run only: the search id (the trials have it too)
REGISTERED_TAG = "best_registered_version"  # on the parent run: the version registered as best-<name>


def start_parent_run(spec: SearchConfig, base: Experiment, tracking_uri: str, search_id: str) -> RunTracker:
    """The search's MLflow parent run (found by the search id), with the space as params and the YAML.

    Found by :data:`SEARCH_PARENT_TAG`, which only the parent carries: the trial runs carry the search id
    too, and the newest of them is not the parent (whose tags hold the seal a resume checks)."""
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


def record_statuses(trials: list[TrialSummary], tracking_uri: str) -> None:
    """Tag every trial run with its status; close the runs of trials stopped early (FINISHED: the
    scheduler ended a trial that ran as it should; ``tune_status`` says it stopped early) or errored
    (FAILED)."""
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


def log_reports(parent: RunTracker, trials: list[TrialSummary], metric: str) -> tuple[str, ...]:
    """The results table and plots, as artifacts of the parent run; their artifact paths."""
    with tempfile.TemporaryDirectory() as folder:
        written = write_reports(trials, metric, Path(folder))
        for path in written:
            parent.log_artifact(path, None if path.parent == Path(folder) else path.parent.name)
        return tuple(str(path.relative_to(folder)) for path in written)


def register_best(
    spec: SearchConfig, best: TrialSummary, cfg: Experiment, parent: RunTracker, dataset: PreparedDataset
) -> tuple[RegisteredVersion | None, RegisteredVersion | None]:
    """Re-score the best trial's final network on the whole validation clips, register it with the alias
    ``best-<name>`` and, with ``promote_champion``, offer it to the champion alias.

    Trials validate on capped clips (``val.max_clips`` / ``val.max_frames``) to stay cheap; the
    registered version carries the full score, measured as ``jobs/evaluate.py`` measures it (a Ray task,
    on a GPU when there is one), so the ``champion`` alias compares it with training runs validated on
    the same dataset and protocol (``dataset``: as the search opened it). The trial's own score is kept as the ``trial_val_psnr`` tag. A search
    run again after it finished registers nothing new (the parent's :data:`REGISTERED_TAG`).
    """
    import ray.train

    if best.checkpoint is None or best.mlflow_run_id is None:
        logger.warning("best trial %s left no checkpoint: nothing to register", best.trial_id)
        return None, None
    if parent.tags().get(REGISTERED_TAG):
        logger.info("search %s registered %s before", spec.name, parent.tags()[REGISTERED_TAG])
        return None, None
    full = dataclasses.replace(
        cfg,
        val=dataclasses.replace(cfg.val, max_clips=None, max_frames=None),
        tracking=dataclasses.replace(cfg.tracking, champion_alias=spec.best_alias),
    )
    rescored = run_evaluation(validation_evaluation(full, best.checkpoint, max_clips=None)).metrics()
    logger.info(
        "best trial %s: %s %.4g on capped validation, PSNR %.2f dB on the whole clips",
        best.trial_id, spec.metric, best.last, rescored["psnr"],
    )  # fmt: skip
    tracker = RunTracker.attach(cfg.tracking.uri, best.mlflow_run_id)
    tracker.set_tags({"trial_val_psnr": best.last})
    checkpoint = ray.train.Checkpoint(best.checkpoint)
    summary = register_result(full, tracker, checkpoint, dataset, val_metrics=rescored)
    registered = summary.registered
    if registered is None:  # registered when an interrupted run of this search got that far
        return None, None
    name, version = registered.name, registered.version
    set_alias(cfg.tracking.uri, name, spec.best_alias, version)  # this search's own alias: always its best
    registered = RegisteredVersion(name, version, True, version, rescored["psnr"], spec.best_alias)
    parent.set_tags({REGISTERED_TAG: f"{name}/{version}"})
    champion = None
    if spec.promote_champion:
        champion = promote_champion(
            cfg.tracking.uri,
            name,
            version,
            rescored["psnr"],
            cfg.tracking.champion_alias,
            bicubic_psnr=rescored["bicubic_psnr"],
            force=cfg.tracking.force_champion,
        )
    return registered, champion
