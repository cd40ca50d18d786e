"""The best trial of a training search, re-scored on the whole validation clips and registered as
``best-<name>`` (``docs/tuning.md``); the search's other MLflow records are in :mod:`pipelines.tracking.tuning`."""

from __future__ import annotations

import dataclasses
import logging

from pipelines.data.manifest import PreparedDataset
from pipelines.evaluation.run import run_evaluation
from pipelines.tracking import RegisteredVersion, RunTracker, promote_champion, set_alias
from pipelines.tracking.tuning import REGISTERED_TAG
from pipelines.training.config import Experiment
from pipelines.training.run import register_result
from pipelines.tuning.config import SearchConfig
from pipelines.tuning.results import TrialSummary
from pipelines.tuning.trial import validation_evaluation

logger = logging.getLogger("ray_vsr.tune")


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
