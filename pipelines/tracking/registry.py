"""The model registry: versions in the ``ray_vsr`` format (:mod:`pipelines.tracking.flavor`) and aliases.

:func:`register_model` logs a trained network to its run, registers it as a new version and moves the
``champion`` alias to it when its validation PSNR beats the current champion's;
:func:`register_checkpoint` (``jobs/register_model.py``) registers a training checkpoint folder.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from pipelines.common.files import CHECKPOINT_STATE_FILE, load_plain, sha256_file
from pipelines.tracking import flavor
from pipelines.tracking.flavor import FLAVOR_NAME, MODEL_DATA_FILE, example_input, signature
from pipelines.tracking.runs import (
    RunTracker,
    _experiment_id,
    create_run,
    log_model_metrics,
    mlflow_client,
    resolve_tracking_uri,
    set_model_version_tags,
)

_LOGGED_MODEL_NAME = "model"
# Version tags that record what the champion comparison is based on.
VAL_PSNR_TAG = "val_psnr"


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version in the registry and whether it now holds the champion alias."""

    name: str
    version: str
    is_champion: bool
    champion_version: str | None  # the version holding the alias after registration
    champion_psnr: float | None
    alias: str | None = "champion"  # None: registered without touching any alias
    incomparable: list[str] | None = None  # lineage tags that differ from the champion's (alias kept)
    # (its validation PSNR, bicubic's) when the alias stayed away because it does not beat bicubic
    below_bicubic: tuple[float, float] | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def describe(self) -> str:
        """One summary line: ``registered models:/ttvsr/3 (champion)`` or who stays champion."""
        if self.alias is None:
            return f"registered {self.uri}"
        if self.is_champion:
            return f"registered {self.uri} ({self.alias})"
        if self.below_bicubic:
            psnr, bicubic = self.below_bicubic
            return (
                f"registered {self.uri}, not {self.alias}: its validation PSNR {psnr:.2f} dB does not beat "
                f"bicubic's {bicubic:.2f} dB (train longer; --champion makes it {self.alias} regardless)"
            )
        if self.incomparable:
            return (
                f"registered {self.uri} ({self.alias} stays v{self.champion_version}, validated on another "
                f"{' / '.join(t.removeprefix('val_') for t in self.incomparable)}: not comparable)"
            )
        return f"registered {self.uri} ({self.alias} stays v{self.champion_version})"


def _log_version(
    tracker: RunTracker,
    model: nn.Module,
    registered_model: str,
    input_example: np.ndarray,
    step: int = 0,
    metrics: Mapping[str, float] | None = None,
    dataset: tuple[str, str] | None = None,
) -> str:
    """Log ``model`` in the ``ray_vsr`` flavor to the tracker's run and register it; the new version.

    The LoggedModel is named after the run (the MLflow UI lists models by name; ``runs:/<id>/<run
    name>`` loads it). ``step`` (the training iteration of the weights) is its step; ``metrics`` (its
    validation) are logged at that step as the model's own, ``best/<key>`` (``val/<key>`` again would
    add a point to the run's validation curve), naming ``dataset`` ``(name, digest)``, the run's dataset
    input, so the model page shows what they measure.
    """
    import mlflow
    from mlflow.models import Model

    mlflow.set_tracking_uri(tracker.tracking_uri)
    mlflow.set_registry_uri(tracker.tracking_uri)
    client = mlflow_client(tracker.tracking_uri)
    run_name = client.get_run(tracker.run_id).info.run_name or _LOGGED_MODEL_NAME
    # The LoggedModel MLflow 3 creates goes to the active run's experiment (else to the default one).
    with mlflow.start_run(run_id=tracker.run_id):
        info = Model.log(
            artifact_path=None,  # deprecated in MLflow 3 but still positional: the name is `name`
            name=run_name,
            flavor=flavor,
            flavor_name=FLAVOR_NAME,  # the LoggedModel's flavor (else this module's name)
            registered_model_name=registered_model,
            model=model,
            signature=signature(input_example),
            input_example=input_example,
            step=step,
        )
    if metrics:
        log_model_metrics(
            client, tracker.run_id, {f"best/{k}": v for k, v in metrics.items()}, step, info.model_id, dataset
        )
    version = str(info.registered_model_version)
    flavor.record_artifact_digests(tracker.tracking_uri, registered_model, version)
    return version


def register_model(
    tracker: RunTracker,
    model: nn.Module,
    *,
    registered_model: str,
    input_example: np.ndarray,
    val_metrics: Mapping[str, float],
    alias: str = "champion",
    version_tags: Mapping[str, Any] | None = None,
    force_alias: bool = False,
) -> RegisteredVersion:
    """Log ``model`` to the tracker's run, register it, and move ``alias`` to it if it is the best so far
    (:func:`promote_champion`; ``force_alias``: whatever its score).

    The model is written in the ``ray_vsr`` flavor (:func:`save_model`): weights and config as plain
    data, rebuilt by the reader's own code, so it takes clips of any length and frame size (unlike a
    ``torch.export`` graph, traced for one shape) and loading it runs no code from the registry.

    Args:
        val_metrics: must hold ``psnr`` (compared with the champion's ``val_psnr`` version tag) and
            may hold ``bicubic_psnr`` (the baseline it must beat); all become ``val_<key>`` version tags.
        input_example: ``(1, t, 3, h, w)`` float32 LR frames the model accepts.
    """
    _refuse_non_finite(val_metrics["psnr"], f"the model of run {tracker.run_id}")  # before anything is logged
    tags = dict(version_tags or {})
    step = int(tags.get("iteration", 0))
    dataset = None
    if tags.get("dataset") and tags.get("val_dataset"):  # as training's dataset input names it
        dataset = (Path(str(tags["dataset"])).name, str(tags["val_dataset"])[:32])
    version = _log_version(tracker, model, registered_model, input_example, step, val_metrics, dataset)
    tags = {f"val_{k}": v for k, v in val_metrics.items()} | dict(version_tags or {})
    set_model_version_tags(tracker.tracking_uri, registered_model, version, tags)
    return promote_champion(
        tracker.tracking_uri,
        registered_model,
        version,
        val_metrics["psnr"],
        alias,
        bicubic_psnr=val_metrics.get("bicubic_psnr"),
        force=force_alias,
    )


# Version tags that say what val_psnr was measured on: the alias compares only versions that agree.
LINEAGE_TAGS = ("val_dataset", "val_protocol")


def promote_champion(
    tracking_uri: str,
    name: str,
    version: str,
    psnr: float,
    alias: str,
    *,
    bicubic_psnr: float | None = None,
    force: bool = False,
) -> RegisteredVersion:
    """Point ``alias`` at ``version`` if there is no champion yet, or if ``psnr`` beats the champion's
    ``val_psnr`` and both were validated on the same dataset and protocol (the ``val_dataset`` /
    ``val_protocol`` version tags): scores measured on other data are not comparable, so the alias then
    stays where it is.

    A model whose ``psnr`` does not beat ``bicubic_psnr`` (bicubic upscaling scored on the same clips,
    the baseline every super-resolution model must beat) never gets the alias, even as the first
    version: it stays registered, unaliased. ``force`` (``--champion``) moves the alias whatever the scores.
    """
    from mlflow.exceptions import MlflowException

    client = mlflow_client(tracking_uri)
    _refuse_non_finite(psnr, f"{name} version {version}")
    if force:
        client.set_registered_model_alias(name, alias, version)
        return RegisteredVersion(name, version, True, version, psnr, alias)
    if bicubic_psnr is not None and not psnr > bicubic_psnr:
        try:
            holder = client.get_model_version_by_alias(name, alias).version
        except MlflowException:
            holder = None
        return RegisteredVersion(
            name, version, False, holder, None, alias, below_bicubic=(psnr, bicubic_psnr)
        )
    try:
        champion = client.get_model_version_by_alias(name, alias)
        champion_psnr = _finite_or_minus_inf(champion.tags.get(VAL_PSNR_TAG))
    except MlflowException:  # no version holds the alias yet
        champion, champion_psnr = None, -math.inf
    if champion is not None and champion_psnr > -math.inf:  # a NaN / missing score: any finite one wins
        candidate = client.get_model_version(name, version).tags
        lineage = [key for key in LINEAGE_TAGS if champion.tags.get(key) != candidate.get(key)]
        if lineage:
            return RegisteredVersion(name, version, False, champion.version, champion_psnr, alias, lineage)
    if champion is None or psnr > champion_psnr:
        client.set_registered_model_alias(name, alias, version)
        return RegisteredVersion(name, version, True, version, psnr, alias)
    return RegisteredVersion(name, version, False, champion.version, champion_psnr, alias)


def _finite_or_minus_inf(text: str | None) -> float:
    """A champion's ``val_psnr`` tag as a number; missing, unreadable, NaN or infinite: -inf (beaten by
    any finite score, so a champion that was registered with a NaN can be replaced)."""
    try:
        value = float(text) if text is not None else -math.inf
    except ValueError:
        return -math.inf
    return value if math.isfinite(value) else -math.inf


def _refuse_non_finite(psnr: float, what: str) -> None:
    """A NaN or infinite validation PSNR is never registered nor compared with the champion's."""
    from pipelines.common.errors import TrainingDiverged

    if not math.isfinite(psnr):
        raise TrainingDiverged(
            f"{what}: its validation PSNR is {psnr} (the network diverged), so it is neither registered "
            "nor compared with the champion; train again from an earlier checkpoint with a lower optim.lr"
        )


def set_alias(tracking_uri: str, name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version`` of ``name``, whatever it pointed at (an alias one search owns)."""
    mlflow_client(tracking_uri).set_registered_model_alias(name, alias, version)


def register_checkpoint(
    checkpoint_dir: str | os.PathLike,
    registered_model: str,
    tracking_uri: str | None = None,
    experiment: str = "ray-vsr",
    alias: str | None = None,
) -> RegisteredVersion:
    """Register the network of a training checkpoint folder (``<dir>/model.pt``) in the ``ray_vsr`` format.

    The way to replace a version registered by an earlier release as a pickle: the checkpoint it came
    from is ``<storage_path>/<run name>/checkpoint_<iteration:08d>`` (its ``mlflow_run_id`` and
    ``iteration`` version tags). The model is logged to a new MLflow run ``register-<registered_model>``;
    the folder's ``training_state.pt``, if present, gives the ``val_*``, ``iteration`` and
    ``mlflow_run_id`` (of the training run) version tags as training would have set them.

    Args:
        checkpoint_dir: a training checkpoint folder, or a ``vsr_models.save_checkpoint`` file itself.
        alias: point this alias (e.g. ``champion``) at the new version, whatever its PSNR; None: no alias.

    Raises:
        MissingInputError: no such folder, or no ``model.pt`` in it.
        vsr_models.IncompatibleCheckpointError: ``model.pt`` is not a ray-vsr checkpoint.
        DataError: an unreadable ``training_state.pt``.
    """
    import vsr_models
    from pipelines.common.errors import MissingInputError

    source = Path(checkpoint_dir)
    model_file = source / MODEL_DATA_FILE if source.is_dir() else source
    if not model_file.is_file():
        raise MissingInputError(
            f"checkpoint {source} does not exist or holds no {MODEL_DATA_FILE}: give a training checkpoint "
            f"folder (<storage_path>/<run name>/checkpoint_<iteration>) or a vsr_models.save_checkpoint file"
        )
    model = vsr_models.load_checkpoint(model_file)
    state = _read_training_state(source / CHECKPOINT_STATE_FILE) if source.is_dir() else {}
    val_metrics = dict(state.get("val_metrics") or {})
    version_tags: dict[str, Any] = {f"val_{k}": v for k, v in val_metrics.items()}
    version_tags["source_checkpoint"] = str(model_file.parent.resolve())
    for key in ("iteration", "mlflow_run_id"):
        if state.get(key) is not None:
            version_tags[key] = state[key]

    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow_client(uri)
    run_id = create_run(client, _experiment_id(client, uri, experiment), f"register-{registered_model}", {})
    tracker = RunTracker(uri, run_id)
    try:
        tracker.log_params(
            {
                "arch": vsr_models.model_arch(model),
                "source.checkpoint": str(model_file.resolve()),
                "source.sha256": sha256_file(model_file),
            }
        )
        version = _log_version(tracker, model, registered_model, example_input(model))
        set_model_version_tags(uri, registered_model, version, version_tags)
        if alias is not None:
            client.set_registered_model_alias(registered_model, alias, version)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
    psnr = val_metrics.get("psnr")
    return RegisteredVersion(
        registered_model, version, alias is not None, version if alias else None, psnr, alias
    )


def _read_training_state(path: Path) -> dict[str, Any]:
    """``training_state.pt`` (tensors and plain values only), or ``{}`` when there is none."""
    if not path.is_file():
        return {}
    fix = f"move it away to register {path.parent / MODEL_DATA_FILE} without its validation metrics"
    state = load_plain(path, fix=fix)
    return state if isinstance(state, dict) else {}
