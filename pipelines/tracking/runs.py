"""MLflow runs: where they are stored, and one run found or created by its name.

- :func:`resolve_tracking_uri`: ``--mlflow-uri``, else ``$MLFLOW_TRACKING_URI``, else an embedded
  SQLite store ``sqlite:///mlflow.db`` whose artifacts go to ``mlartifacts/`` beside the database.
  SQLite paths are made absolute so Ray workers in another folder write to the same store.
- :class:`RunTracker`: one MLflow run found or created by its run name (re-running a name continues
  the same run). Only Ray Train's rank 0 holds an active tracker; other ranks get an inactive one
  whose methods do nothing, so the training loop has no ``if rank == 0`` around logging. Its calls are
  synchronous: the training loop logs through :class:`pipelines.tracking.background.BackgroundTracker`,
  which a tracking outage cannot stall.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ARTIFACT_DIR_NAME = "mlartifacts"
_SQLITE_PREFIX = "sqlite:///"
PARENT_RUN_TAG = "mlflow.parentRunId"
"""MLflow's own tag: the UI nests a run under this one (an evaluation under the training run it scores,
a search's trials under its parent run)."""
# MLflow's log_batch accepts at most 100 params per call.
_PARAMS_PER_BATCH = 100


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use, with a relative SQLite path made absolute."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith(_SQLITE_PREFIX):
        db = Path(uri[len(_SQLITE_PREFIX) :]).expanduser().resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        return f"{_SQLITE_PREFIX}{db}"
    return uri


def metric_entries(metrics: Mapping[str, float], step: int) -> list:
    """``log_batch`` entries for ``metrics`` at ``step``, all stamped now (a retried batch repeats identical
    rows); values that are not finite are left out."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if math.isfinite(float(v))]


def log_new_params(client: Any, run_id: str, texts: Mapping[str, str]) -> None:
    """Log the params of ``texts`` that ``run_id`` has not logged before (MLflow params are immutable: a
    resumed run keeps its first values), in ``log_batch`` calls of at most 100."""
    from mlflow.entities import Param

    logged = client.get_run(run_id).data.params
    new = [Param(k, v) for k, v in texts.items() if k not in logged]
    for start in range(0, len(new), _PARAMS_PER_BATCH):
        client.log_batch(run_id, params=new[start : start + _PARAMS_PER_BATCH])


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


def metric_key(name: str) -> str:
    """``name`` (a clip id, from the dataset) as a key MLflow accepts for a metric or an image: characters
    outside ``A-Z a-z 0-9 _ . - space /`` become ``_`` and ``.`` / ``..`` path parts lose their dots; a
    changed name gets a short hash of the original so that two clips never share a key."""
    import hashlib
    import re

    parts = re.sub(r"[^A-Za-z0-9_.\- /]", "_", name).split("/")
    key = "/".join(p.replace(".", "_") if p in (".", "..") else p for p in parts if p) or "_"
    if key == name:
        return key
    return f"{key}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def filter_literal(value: str) -> str:
    """``value`` as a string literal of an MLflow search filter (which has no escape for its quote)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    from pipelines.common.errors import ConfigError

    raise ConfigError(f"name {value!r} holds both quote characters, which MLflow cannot search for; drop one")


def _newest_run(tracking_uri: str, experiment: str, filter_string: str) -> str | None:
    client = mlflow_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id], filter_string, order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0].info.run_id if runs else None


def find_run(tracking_uri: str, experiment: str, run_name: str) -> str | None:
    """The id of the newest run named ``run_name`` in ``experiment``, or None."""
    return _newest_run(tracking_uri, experiment, f"attributes.run_name = {filter_literal(run_name)}")


def find_run_by_tag(tracking_uri: str, experiment: str, key: str, value: str) -> str | None:
    """The id of the newest run of ``experiment`` tagged ``key=value``, or None."""
    return _newest_run(tracking_uri, experiment, f"tags.`{key}` = {filter_literal(value)}")


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
        experiment_id = _experiment_id(client, tracking_uri, experiment)
        run_id = create_run(client, experiment_id, run_name, dict(tags or {}))
        return cls(tracking_uri, run_id)

    @classmethod
    def start_tagged(
        cls, tracking_uri: str, experiment: str, run_name: str, key: str, value: str, tags: Mapping[str, str]
    ) -> RunTracker:
        """The run of ``experiment`` tagged ``key=value``, else a new one named ``run_name``, whatever other
        runs bear that name (e.g. a search's parent run: its id tag, not its name, says which search)."""
        client = mlflow_client(tracking_uri)
        run_id = find_run_by_tag(tracking_uri, experiment, key, value)
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            return cls(tracking_uri, run_id)
        experiment_id = _experiment_id(client, tracking_uri, experiment)
        all_tags = {**tags, key: value}
        run_id = create_run(client, experiment_id, run_name, all_tags)
        return cls(tracking_uri, run_id)

    @classmethod
    def attach(cls, tracking_uri: str, run_id: str, active: bool = True) -> RunTracker:
        """A tracker for an existing run; ``active=False`` (ranks other than 0) gives a no-op tracker."""
        return cls(tracking_uri, run_id if active else None)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params not logged before (MLflow params are immutable: a resumed run keeps its first values)."""
        if self.active:
            log_new_params(self._client, self.run_id, {k: _param_text(v) for k, v in params.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self.active:
            self._client.log_batch(self.run_id, metrics=metric_entries(metrics, step))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active:
            return
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, str(value))

    def status(self) -> str | None:
        """``RUNNING``, ``FINISHED``, ``FAILED``, ``KILLED`` (None for an inactive tracker)."""
        return self._client.get_run(self.run_id).info.status if self.active else None

    def tags(self) -> dict[str, str]:
        return dict(self._client.get_run(self.run_id).data.tags) if self.active else {}

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        if self.active:
            self._client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.active:
            self._client.log_text(self.run_id, text, artifact_file)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """A ``(h, w, 3)`` uint8 image as a PNG, browsable per step in the MLflow UI."""
        if self.active:
            self._client.log_image(self.run_id, image, key=key, step=step)

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        """``[(step, value), ...]`` of one metric, in logging order."""
        if not self.active:
            return []
        return [(m.step, m.value) for m in self._client.get_metric_history(self.run_id, key)]

    def log_dataset(
        self, name: str, digest: str, source: str, profile: Mapping[str, Any], context: str = "training"
    ) -> None:
        """Record a prepared dataset as an input of the run (MLflow's dataset lineage, shown in the UI)."""
        if not self.active:
            return
        from mlflow.entities import Dataset, DatasetInput, InputTag

        source_type = source.split("://", 1)[0] if "://" in source else "local"
        dataset = Dataset(name, digest, source_type, json.dumps({"uri": source}), profile=json.dumps(profile))
        self._client.log_inputs(
            self.run_id, datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context", context)])]
        )

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the run ``FINISHED``, ``FAILED`` or ``KILLED``."""
        if self.active:
            self._client.set_terminated(self.run_id, status=status)


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""The tag the MLflow 3 UI picks an experiment's view by; untagged experiments holding LoggedModels can
open in the GenAI view (models listed as "Agent versions")."""
MODEL_TRAINING_KIND = "custom_model_development"  # the UI's "model training" view (runs, models, charts)


def _experiment_id(client: Any, tracking_uri: str, experiment: str) -> str:
    """The id of ``experiment``, created (with the store's artifact root) if there is none, tagged as a
    model-training experiment for the MLflow UI (also one created by an earlier release)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return client.create_experiment(
            experiment,
            artifact_location=artifact_root(tracking_uri),
            tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND},
        )
    if EXPERIMENT_KIND_TAG not in found.tags:
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return found.experiment_id


def source_tags() -> dict[str, str]:
    """Who ran what: ``mlflow.user``, ``mlflow.source.name`` (the command: ``jobs/train_ttvsr.py``,
    ``ray-vsr-train-ttvsr``), ``mlflow.source.type`` and ``mlflow.source.git.commit`` of this project's
    checkout (none for an installed wheel), as MLflow's own ``start_run`` records them."""
    import getpass
    import sys

    from mlflow.utils.git_utils import get_git_commit

    command = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    if "ray" in command.parts and "workers" in command.parts:  # a Ray worker (a Tune trial's driver)
        name = "ray-vsr (Ray Tune trial)"
    else:
        root = Path(__file__).resolve().parents[2]
        name = (
            str(command.resolve().relative_to(root))
            if command.resolve().is_relative_to(root)
            else command.name
        )
        name = command.name if name.startswith(".venv") else name  # an installed ray-vsr-* command
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers)
        user = str(os.getuid())
    tags = {"mlflow.user": user, "mlflow.source.name": name, "mlflow.source.type": "JOB"}
    commit = get_git_commit(str(Path(__file__).resolve().parent))
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def create_run(client: Any, experiment_id: str, run_name: str, tags: Mapping[str, Any]) -> str:
    """A new run with :func:`source_tags` under ``tags``; returns its id."""
    all_tags = source_tags() | {k: str(v) for k, v in tags.items()}
    return client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id


def _param_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)


def log_model_metrics(
    client: Any,
    run_id: str,
    metrics: Mapping[str, float],
    step: int,
    model_id: str | None,
    dataset: tuple[str, str] | None,
) -> None:
    """Metrics of ``run_id`` that belong to the LoggedModel ``model_id`` and name the dataset
    ``(name, digest)`` they were measured on (MLflow 3's model page lists them with it)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    name, digest = dataset or (None, None)
    batch = [
        Metric(k, float(v), now, step, model_id=model_id, dataset_name=name, dataset_digest=digest)
        for k, v in metrics.items()
        if math.isfinite(float(v))
    ]
    client.log_batch(run_id, metrics=batch)


def set_model_version_tags(tracking_uri: str, name: str, version: str, tags: Mapping[str, Any]) -> None:
    """Set (or replace) tags of one registered model version."""
    client = mlflow_client(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
