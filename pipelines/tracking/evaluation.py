"""MLflow records of an evaluation (:func:`pipelines.evaluation.run.run_evaluation`).

- :func:`resolve_model_version`: ``models:/name@alias`` pinned to its registered version, and the
  training run it came from (the evaluation run is nested under it);
- :func:`log_evaluation`: one new, finished run holding an evaluation's params, metrics and per-clip
  tables;
- :func:`tag_version_score`: a registered version's own score on a dataset, as ``eval_<sha256[:12]>_*``
  version tags.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.tracking.runs import (
    RunTracker,
    _experiment_id,
    create_run,
    log_model_metrics,
    mlflow_client,
    resolve_tracking_uri,
    set_model_version_tags,
)

SOURCE_RUN_TAG = "source_run_id"
"""On an evaluation run and a version lookup: the training run the scored model came from."""


def resolve_model_version(tracking_uri: str, model_uri: str) -> dict[str, str] | None:
    """``models:/name@alias`` or ``models:/name/<n>`` -> its registered version, or None for any other URI.

    Returns ``{"name", "version", "uri"}`` (``uri``: ``models:/name/<n>``, pinned so the alias cannot
    move meanwhile) and, when the version has one, ``"source_run_id"``: the training run it came from
    (its ``mlflow_run_id`` tag, which training and ``register_checkpoint`` set, else the run that logged
    it). Raises ``MlflowException`` for a name, version or alias the registry does not hold.
    """
    prefix = "models:/"
    if not model_uri.startswith(prefix):
        return None
    parts = model_uri[len(prefix) :].rstrip("/").split("/")
    client = mlflow_client(tracking_uri)
    if len(parts) == 1 and "@" in parts[0]:
        name, alias = parts[0].rsplit("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    elif len(parts) == 2 and parts[1].isdigit():
        version = client.get_model_version(parts[0], parts[1])
    else:  # models:/<logged model id>, models:/name/<stage>: no single registered version to tag
        return None
    found = {
        "name": version.name,
        "version": str(version.version),
        "uri": f"{prefix}{version.name}/{version.version}",
    }
    source_run = (version.tags or {}).get("mlflow_run_id") or version.run_id
    if source_run:
        found[SOURCE_RUN_TAG] = str(source_run)
    # The LoggedModel behind the version (MLflow 3): its id, or its models:/m-... URI as the source
    model_id = getattr(version, "model_id", None) or (
        version.source.removeprefix("models:/") if str(version.source).startswith("models:/m-") else None
    )
    if model_id:
        found["model_id"] = str(model_id)
    return found


def log_evaluation(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    *,
    tags: Mapping[str, Any],
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    texts: Mapping[str, str],
    model_id: str | None = None,
    dataset: tuple[str, str] | None = None,
) -> str:
    """A new, finished MLflow run in ``experiment`` holding one evaluation; returns its id.

    ``model_id``: the LoggedModel evaluated (a registered version's): the run lists it as an input and
    its metrics are the model's, shown on the model's page; ``dataset``: (name, digest) the metrics
    were measured on, which the model page shows beside them.

    Every call creates a run (re-evaluating the same model and data is a new run, not a continued one:
    params are immutable, and the model behind an alias may have changed). ``texts`` maps artifact file
    names (``per_clip.csv``) to their contents; metrics are logged at step 0. A ``mlflow.parentRunId``
    tag in ``tags`` makes the UI show the run under that (training) run.
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow_client(uri)
    experiment_id = _experiment_id(client, uri, experiment)
    run_id = create_run(client, experiment_id, run_name, tags)
    tracker = RunTracker(uri, run_id)
    try:
        tracker.log_params(params)
        if model_id is None and dataset is None:
            tracker.log_metrics(metrics, step=0)
        else:
            log_model_metrics(client, run_id, metrics, 0, model_id, dataset)
        if model_id is not None:
            from mlflow.entities import LoggedModelInput

            client.log_inputs(run_id, models=[LoggedModelInput(model_id)])
        for artifact_file, text in texts.items():
            client.log_text(run_id, text, artifact_file)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
    return run_id


def tag_version_score(
    tracking_uri: str,
    version: Mapping[str, str],
    dataset_sha256: str,
    *,
    psnr: float,
    ssim: float,
    channel: str,
    run_id: str,
) -> None:
    """Tag a registered ``version`` (:func:`resolve_model_version`'s) with its score on the dataset whose
    manifest has ``dataset_sha256``: ``eval_<sha256[:12]>_psnr`` / ``_ssim`` / ``_channel`` / ``_run_id``."""
    prefix = f"eval_{dataset_sha256[:12]}"
    set_model_version_tags(
        tracking_uri,
        version["name"],
        version["version"],
        {
            f"{prefix}_psnr": psnr,
            f"{prefix}_ssim": ssim,
            f"{prefix}_channel": channel,
            f"{prefix}_run_id": run_id,
        },
    )
