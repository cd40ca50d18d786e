"""One trial of a search: a training run (:func:`run_trial`, the Train V2 pattern: a function that builds a
``TorchTrainer``) or one evaluation (:func:`run_evaluation_trial`), and the tags its MLflow run carries."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from pipelines.common.config import with_values
from pipelines.evaluation.config import EvaluationConfig
from pipelines.evaluation.run import run_evaluation
from pipelines.tracking import RunTracker
from pipelines.tracking.runs import PARENT_RUN_TAG
from pipelines.tracking.tuning import SEARCH_ID_TAG, TUNE_EXPERIMENT_TAG, TUNE_TRIAL_TAG
from pipelines.training.config import Experiment
from pipelines.training.run import run_training
from pipelines.tuning.space import drawn_values, model_settings

LATEST_CHECKPOINT_KEY = "latest_checkpoint"  # Tune result key: the trial's newest checkpoint folder


# -- one trial -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialPlan:
    """What every trial shares: the resolved base config, and where results go."""

    base: Experiment  # every trial's config before its drawn values (absolute paths)
    tune_experiment: str
    parent_run_id: str
    metric: str
    search_id: str = ""
    evaluate: str | None = None  # evaluation sweeps: the model, pinned (models:/name/<version>, a path)
    device: str = "auto"

    def experiment(self, sampled: Mapping[str, Any], trial_id: str) -> Experiment:
        """The trial's training config: base + drawn values, its Train run named after the trial."""
        return with_values(self.base, drawn_values(sampled) | {"run.name": trial_id})

    def trial_tags(self, trial_id: str) -> dict[str, str]:
        return {
            "arch": self.base.arch,
            TUNE_EXPERIMENT_TAG: self.tune_experiment,
            TUNE_TRIAL_TAG: trial_id,
            SEARCH_ID_TAG: self.search_id,
            PARENT_RUN_TAG: self.parent_run_id,
        }


class ValidationReportCallback(TuneReportCallback):
    """Passes the Train run's validations up to Tune, each with the newest checkpoint's folder.

    The training loop also reports at checkpoints between validations; Tune rejects results without
    the searched metric, and ASHA should compare trials at validations only.
    """

    def __init__(self, metric: str) -> None:
        super().__init__()
        self.metric = metric
        self.latest_checkpoint: str | None = None

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if checkpoint is not None:
            self.latest_checkpoint = checkpoint.path
        # rank 0's metrics, the ones the training loop logs; a checkpoint between validations has NaN
        if math.isfinite(metrics[0].get(self.metric, math.nan)):
            result = metrics[0] | {LATEST_CHECKPOINT_KEY: self.latest_checkpoint}
            super().after_report(run_context, [result, *metrics[1:]], checkpoint)


def run_trial(config: dict[str, Any], plan: TrialPlan) -> None:
    """One training trial (runs in a Tune actor): train the base config with this trial's drawn values."""
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = plan.experiment(config, trial_id)
    # Created here so the tags are set from the start; run_training finds the run by its name.
    RunTracker.start(cfg.tracking.uri, cfg.tracking.experiment, cfg.run.name, tags=plan.trial_tags(trial_id))
    run_training(cfg, callbacks=[ValidationReportCallback(plan.metric)], register=False)


def validation_evaluation(
    cfg: Experiment,
    model: str,
    *,
    max_clips: int | None,
    device: str = "auto",
    settings: Mapping | None = None,
) -> EvaluationConfig:
    """An evaluation of ``model`` on ``cfg``'s validation split and protocol, on whole clips."""
    val = cfg.val
    return EvaluationConfig(
        model=model,
        data=cfg.data.path,
        split=cfg.data.val_split,
        channel=val.channel,
        crop_border=val.crop_border,
        centre_frame_only=val.centre_frame_only,
        mirror_times=val.mirror_times,
        max_clips=max_clips,
        chunk=val.chunk,
        model_settings=dict(settings or {}),
        device=device,
        tracking_uri=cfg.tracking.uri,
        log_to_mlflow=False,
    )


def run_evaluation_trial(config: dict[str, Any], plan: TrialPlan) -> None:
    """One evaluation trial (runs in a Tune actor): score ``plan.evaluate`` with the drawn settings.

    The evaluation is one Ray task (:func:`run_evaluation`); its scores go to Tune and to the trial's
    MLflow run (params: the drawn values; metrics ``val/psnr``, ...; the per-clip tables).
    """
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = plan.experiment(config, trial_id)
    values = drawn_values(config)
    settings = model_settings(values)
    uri = cfg.tracking.uri
    tracker = RunTracker.start(uri, cfg.tracking.experiment, trial_id, tags=plan.trial_tags(trial_id))
    try:
        tracker.log_params(values | {"evaluate": plan.evaluate, "data.path": cfg.data.path})
        request = validation_evaluation(
            cfg, str(plan.evaluate), max_clips=cfg.val.max_clips, device=plan.device, settings=settings
        )
        result = run_evaluation(request)
    except BaseException:
        tracker.finish("FAILED")
        raise
    metrics = result.metrics()
    tracker.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step=0)
    tracker.log_text(result.report.csv(), "per_clip.csv")
    tracker.log_text(result.report.markdown(), "per_clip.md")
    tracker.set_tags({"eval.device": result.device})
    tracker.finish("FINISHED")
    ray.tune.report({f"val_{k}": v for k, v in metrics.items()})
