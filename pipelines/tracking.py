"""Experiment tracking and the model registry: every MLflow call of the project lives here.

- :func:`resolve_tracking_uri`: ``--mlflow-uri``, else ``$MLFLOW_TRACKING_URI``, else an embedded
  SQLite store ``sqlite:///mlflow.db`` whose artifacts go to ``mlartifacts/`` beside the database.
  SQLite paths are made absolute so Ray workers in another folder write to the same store.
- :class:`RunTracker`: one MLflow run found or created by its run name (re-running a name continues
  the same run). Only Ray Train's rank 0 holds an active tracker; other ranks get an inactive one
  whose methods do nothing, so the training loop has no ``if rank == 0`` around logging.
- :func:`register_model`: logs the final network with ``mlflow.pytorch.log_model(name="model")``,
  registers it as a new version and moves the ``champion`` alias to it when its validation PSNR beats
  the current champion's. :func:`load_model` loads ``models:/ttvsr@champion`` back.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ARTIFACT_DIR_NAME = "mlartifacts"
_SQLITE_PREFIX = "sqlite:///"
# MLflow's log_batch accepts at most 100 params per call.
_PARAMS_PER_BATCH = 100
# Version tags that record what the champion comparison is based on.
VAL_PSNR_TAG = "val_psnr"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use, with a relative SQLite path made absolute."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith(_SQLITE_PREFIX):
        db = Path(uri[len(_SQLITE_PREFIX) :]).expanduser().resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        return f"{_SQLITE_PREFIX}{db}"
    return uri


def artifact_root(tracking_uri: str) -> str | None:
    """Where an embedded (SQLite) store keeps artifacts: ``mlartifacts/`` beside the database file.

    ``None`` for a tracking server, which decides itself (``mlflow server --artifacts-destination``).
    """
    if tracking_uri.startswith(_SQLITE_PREFIX):
        return str(Path(tracking_uri[len(_SQLITE_PREFIX) :]).parent / ARTIFACT_DIR_NAME)
    return None


def mlflow_client(tracking_uri: str):
    """An ``MlflowClient`` whose tracking and registry stores are both ``tracking_uri``.

    ``MlflowClient(uri)`` alone takes the registry from process-global state (``mlflow.set_registry_uri``),
    which may point at another store.
    """
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes (e.g. a dataset manifest, which itself lists every shard's checksum)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def find_run(tracking_uri: str, experiment: str, run_name: str) -> str | None:
    """The id of the newest run named ``run_name`` in ``experiment``, or None."""
    client = mlflow_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"attributes.run_name = '{run_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


class RunTracker:
    """Logs to one MLflow run; an inactive tracker (``run_id=None``) ignores every call.

    Built in the driver with :meth:`start`, then re-attached inside the rank-0 worker with
    :meth:`attach` from the run id alone, so no MLflow state crosses process boundaries.
    """

    def __init__(self, tracking_uri: str | None, run_id: str | None) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self._client = mlflow_client(tracking_uri) if run_id else None

    @property
    def active(self) -> bool:
        return self._client is not None

    @classmethod
    def start(cls, tracking_uri: str, experiment: str, run_name: str, tags: Mapping[str, str] | None = None):
        """The run named ``run_name`` in ``experiment``, created if there is none (the newest if several)."""
        client = mlflow_client(tracking_uri)
        run_id = find_run(tracking_uri, experiment, run_name)
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            return cls(tracking_uri, run_id)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            experiment_id = client.create_experiment(
                experiment, artifact_location=artifact_root(tracking_uri)
            )
        else:
            experiment_id = found.experiment_id
        run_id = client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {})).info.run_id
        return cls(tracking_uri, run_id)

    @classmethod
    def attach(cls, tracking_uri: str, run_id: str, active: bool = True) -> RunTracker:
        """A tracker for an existing run; ``active=False`` (ranks other than 0) gives a no-op tracker."""
        return cls(tracking_uri, run_id if active else None)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params not logged before (MLflow params are immutable: a resumed run keeps its first values)."""
        if not self.active:
            return
        from mlflow.entities import Param

        logged = self._client.get_run(self.run_id).data.params
        new = [Param(k, _param_text(v)) for k, v in params.items() if k not in logged]
        for start in range(0, len(new), _PARAMS_PER_BATCH):
            self._client.log_batch(self.run_id, params=new[start : start + _PARAMS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v))]
        self._client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active:
            return
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, str(value))

    def tags(self) -> dict[str, str]:
        return dict(self._client.get_run(self.run_id).data.tags) if self.active else {}

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        if self.active:
            self._client.log_dict(self.run_id, data, artifact_file)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """A ``(h, w, 3)`` uint8 image as a PNG, browsable per step in the MLflow UI."""
        if self.active:
            self._client.log_image(self.run_id, image, key=key, step=step)

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        """``[(step, value), ...]`` of one metric, in logging order."""
        if not self.active:
            return []
        return [(m.step, m.value) for m in self._client.get_metric_history(self.run_id, key)]

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the run ``FINISHED``, ``FAILED`` or ``KILLED``."""
        if self.active:
            self._client.set_terminated(self.run_id, status=status)


def _param_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version in the registry and whether it now holds the champion alias."""

    name: str
    version: str
    is_champion: bool
    champion_version: str | None  # the version holding the alias after registration
    champion_psnr: float | None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def describe(self) -> str:
        """One summary line: ``registered models:/ttvsr/3 (champion)`` or who stays champion."""
        alias = "champion" if self.is_champion else f"champion stays v{self.champion_version}"
        return f"registered {self.uri} ({alias})"


def _signature(input_example: np.ndarray):
    """Frames of any batch, length and size: only the channel axis is fixed."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    # Unnamed specs: the PyTorch flavor takes one plain array, not a dict of named inputs.
    any_frames = (-1, -1, input_example.shape[2], -1, -1)
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), any_frames)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), any_frames)]),
    )


def register_model(
    tracker: RunTracker,
    model: nn.Module,
    *,
    registered_model: str,
    input_example: np.ndarray,
    val_metrics: Mapping[str, float],
    alias: str = "champion",
    version_tags: Mapping[str, Any] | None = None,
) -> RegisteredVersion:
    """Log ``model`` to the tracker's run, register it, and move ``alias`` to it if it is the best so far.

    The network is stored in MLflow's ``pickle`` format rather than MLflow 3's default ``pt2``
    (``torch.export``): an exported graph is traced for one input shape and unrolls the recurrence for
    one sequence length, while a registered VSR model must take clips of any length and frame size.
    ``vsr_models`` travels with it (``code_paths``), so it loads where the project is not installed.

    Args:
        val_metrics: must hold ``psnr`` (compared with the champion's ``val_psnr`` version tag);
            all entries become ``val_<key>`` version tags.
        input_example: ``(1, t, 3, h, w)`` float32 LR frames the model accepts.
    """
    import mlflow

    import vsr_models

    mlflow.set_tracking_uri(tracker.tracking_uri)
    mlflow.set_registry_uri(tracker.tracking_uri)
    with mlflow.start_run(run_id=tracker.run_id):
        info = mlflow.pytorch.log_model(
            model.cpu().eval(),
            name="model",
            registered_model_name=registered_model,
            signature=_signature(input_example),
            input_example=input_example,
            serialization_format="pickle",
            code_paths=[str(Path(vsr_models.__file__).parent)],
        )
    version = str(info.registered_model_version)
    client = mlflow_client(tracker.tracking_uri)
    tags = {f"val_{k}": v for k, v in val_metrics.items()} | dict(version_tags or {})
    for key, value in tags.items():
        client.set_model_version_tag(registered_model, version, key, str(value))
    return promote_champion(tracker.tracking_uri, registered_model, version, val_metrics["psnr"], alias)


def promote_champion(
    tracking_uri: str, name: str, version: str, psnr: float, alias: str
) -> RegisteredVersion:
    """Point ``alias`` at ``version`` if there is no champion yet or ``psnr`` beats its ``val_psnr`` tag."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(tracking_uri)
    try:
        champion = client.get_model_version_by_alias(name, alias)
        champion_psnr = float(champion.tags.get(VAL_PSNR_TAG, "-inf"))
    except MlflowException:  # no version holds the alias yet
        champion, champion_psnr = None, -math.inf
    if champion is None or psnr > champion_psnr:
        client.set_registered_model_alias(name, alias, version)
        return RegisteredVersion(name, version, True, version, psnr)
    return RegisteredVersion(name, version, False, champion.version, champion_psnr)


def load_model(model_uri: str, tracking_uri: str | None = None) -> nn.Module:
    """A registered or logged network (``models:/ttvsr@champion``, ``runs:/<id>/model``) on the CPU."""
    import mlflow

    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.pytorch.load_model(model_uri, map_location="cpu")
