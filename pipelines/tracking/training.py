"""MLflow records of a training run, written on the driver (:func:`pipelines.training.run.run_training`).

- :func:`log_training_start`: what the run trains with: the experiment as params (with the values the
  driver derives from it), this (re)start's layout as metrics at its iteration, ``config.yaml``, the
  dataset's manifest and its MLflow dataset entry;
- :func:`register_trained`: the trained network registered once per iteration (the run's
  :data:`REGISTERED_ITERATION_TAG` says which one was).

What the workers log while training (losses, validation, images) goes through rank 0's background queue
(:mod:`pipelines.tracking.background`, ``pipelines/training/loop.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from pipelines.common.config import config_to_dict, flatten
from pipelines.tracking.flavor import example_input
from pipelines.tracking.registry import RegisteredVersion, register_model
from pipelines.tracking.runs import RunTracker

REGISTERED_ITERATION_TAG = "registered_iteration"
"""Run tag: the iteration whose network the run registered (a retry or a re-run registers it once)."""


@dataclass(frozen=True)
class DatasetRecord:
    """The prepared dataset a run trains on, as MLflow records it: its manifest as an artifact
    (``dataset/<manifest_name>``) and a dataset entry (name, digest, source, profile)."""

    manifest: Mapping[str, Any]
    manifest_name: str
    name: str
    digest: str
    source: str
    profile: Mapping[str, Any]


def log_training_start(
    tracker: RunTracker,
    experiment: Any,
    *,
    derived: Mapping[str, Any],
    layout: Mapping[str, float],
    step: int,
    dataset: DatasetRecord,
) -> None:
    """Params: the flattened ``experiment`` and the ``derived`` values (a resumed run keeps its first ones);
    the ``layout`` (global batch, effective lr) as metrics at ``step``, so every (re)start is recorded at
    its iteration; ``config.yaml``; the dataset's manifest and entry."""
    tracker.log_params(flatten(experiment) | dict(derived))
    tracker.log_metrics(dict(layout), step=step)
    tracker.log_dict(config_to_dict(experiment), "config.yaml")
    tracker.log_dict(dict(dataset.manifest), f"dataset/{dataset.manifest_name}")
    tracker.log_dataset(
        name=dataset.name, digest=dataset.digest, source=dataset.source, profile=dict(dataset.profile)
    )


def register_trained(
    tracker: RunTracker,
    model: nn.Module,
    iteration: int,
    *,
    registered_model: str,
    val_metrics: Mapping[str, float],
    alias: str,
    force_alias: bool,
    version_tags: Mapping[str, Any],
) -> RegisteredVersion | None:
    """Register ``model`` (trained to ``iteration``) under ``registered_model`` unless the run registered that
    iteration before (``None`` then); tag the run with the iteration and the version.

    Asked of the run on every call: an attempt that failed after tagging the run had registered it.
    """
    if tracker.tags().get(REGISTERED_ITERATION_TAG) == str(iteration):
        return None
    registered = register_model(
        tracker,
        model,
        registered_model=registered_model,
        input_example=example_input(model),
        val_metrics=dict(val_metrics),
        alias=alias,
        force_alias=force_alias,
        version_tags={"iteration": iteration, **version_tags},
    )
    tracker.set_tags({REGISTERED_ITERATION_TAG: iteration, "registered_version": registered.version})
    return registered
