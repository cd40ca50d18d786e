"""``jobs/evaluate.py``: score a model on one split of a prepared dataset against bicubic, in a Ray task.

:func:`run_evaluation`

1. checks the dataset (manifest and shard checksums) on the driver, before any Ray or MLflow work;
2. resolves what is evaluated (:func:`resolve_source`): this project's checkpoint (file or training
   checkpoint folder), an MLflow URI (``models:/name@alias`` is pinned to its version,
   ``models:/name/<n>``, so the alias cannot move meanwhile) or an authors' released checkpoint
   (``official`` + ``arch``);
3. scores it in one Ray task, on a GPU (``num_gpus=1``) when ``device`` is ``auto`` and the cluster has
   one, or ``cuda``; else on one CPU. The task loads the network itself (:meth:`ModelRef.load`): only
   paths and small settings travel to it, and only the per-clip scores come back. ``model_settings``
   change config fields of the loaded network that keep its weights, such as TTVSR's
   ``key_frame_stride`` (:func:`~pipelines.inference.loading.with_model_settings`; the frame-interval
   sweeps of ``docs/tuning.md``);
4. logs a new MLflow run ``eval-<model>-<dataset folder>`` in ``experiment`` (tags: what was evaluated,
   the dataset and the protocol; params; metrics ``psnr``, ``ssim``, ``bicubic_psnr``, ``bicubic_ssim``;
   artifacts ``per_clip.csv``, ``per_clip.md``), under the version's training run
   (``mlflow.parentRunId``, ``source_run_id``) for a registered model, whose version then also gets
   ``eval_<manifest sha256[:12]>_psnr`` / ``_ssim`` / ``_channel`` / ``_run_id`` tags (not when
   ``model_settings`` changed how it computes: that score is not the version's own)
   (:mod:`pipelines.tracking.evaluation`);
5. writes ``per_clip.csv`` / ``per_clip.md`` to ``output`` when one is given.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.common.errors import ConfigError, DataError
from pipelines.common.files import CHECKPOINT_MODEL_FILE
from pipelines.common.storage import absolute, check_storage_uri
from pipelines.data.manifest import PreparedDataset, open_dataset
from pipelines.evaluation.config import EvaluationConfig
from pipelines.evaluation.protocol import ValidationProtocol
from pipelines.evaluation.scoring import EvaluationReport, evaluate
from pipelines.inference.loading import MODEL_URI, ModelRef
from pipelines.tracking.evaluation import SOURCE_RUN_TAG
from pipelines.tracking.runs import PARENT_RUN_TAG
from vsr_models import ARCHITECTURES

PER_CLIP_CSV = "per_clip.csv"
PER_CLIP_MARKDOWN = "per_clip.md"


@dataclass(frozen=True)
class ModelSource:
    """What the scoring task loads (absolute paths, a pinned URI) and how the MLflow run describes it."""

    ref: ModelRef  # loaded inside the task
    label: str  # the <model> of the run name eval-<model>-<dataset>
    tags: dict[str, str] = field(default_factory=dict)
    version: dict[str, str] | None = None  # registered version: name, version, uri, source_run_id


@dataclass(frozen=True)
class ScoringRequest:
    """Everything the Ray task needs: paths, a URI and a few settings (never weights)."""

    model: ModelRef
    device: str  # cpu | cuda: what the task was scheduled with
    data: PreparedDataset  # only the split scored: what the task needs of the manifest the driver read
    protocol: ValidationProtocol
    model_settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluationSummary:
    """The scores, where they were computed, and where they were logged / written."""

    report: EvaluationReport
    device: str  # cpu | cuda: where the task ran
    run_id: str | None = None  # the MLflow evaluation run (None with log_to_mlflow=False)
    tracking_uri: str | None = None
    files: tuple[str, ...] = ()  # per_clip.csv / per_clip.md written under `output`

    def table(self) -> str:
        return self.report.table()

    def metrics(self) -> dict[str, float]:
        return self.report.metrics()

    def describe(self) -> str:
        """One line: the MLflow run (and store) and the files written."""
        parts = []
        if self.run_id is not None:
            parts.append(
                f"evaluated on {self.device}; MLflow run {self.run_id} in {self.tracking_uri} "
                f"(artifacts {PER_CLIP_CSV}, {PER_CLIP_MARKDOWN})"
            )
        else:
            parts.append(f"evaluated on {self.device}; not logged to MLflow")
        if self.files:
            parts.append(f"wrote {', '.join(self.files)}")
        return "; ".join(parts)


def task_options(device: str, cluster_resources: dict[str, float]) -> tuple[dict[str, Any], str]:
    """The Ray resources of the scoring task and the device it uses inside: ``({"num_gpus": 1}, "cuda")``
    for ``cuda`` or for ``auto`` when the cluster has a GPU (``ray.cluster_resources()``), else
    ``({"num_cpus": 1}, "cpu")``. With ``auto`` a GPU that is busy is waited for rather than scoring a
    video network on one CPU; on an autoscaling cluster whose GPU nodes are all scaled down, ``auto`` sees
    no GPU: pass ``cuda``."""
    gpus = float(cluster_resources.get("GPU", 0))
    if device.startswith("cuda"):
        if gpus < 1:
            raise ConfigError(
                f"--device {device}: the Ray cluster has no GPU (its resources: "
                f"{', '.join(f'{k}={v:g}' for k, v in sorted(cluster_resources.items()) if k.isupper())}); "
                "use --device auto or cpu, or join a cluster with a GPU node"
            )
        return {"num_gpus": 1}, "cuda"  # Ray's CUDA_VISIBLE_DEVICES: the assigned GPU is cuda:0
    if device == "auto" and gpus >= 1:
        return {"num_gpus": 1}, "cuda"
    return {"num_cpus": 1}, "cpu"


def score_task(request: ScoringRequest) -> EvaluationReport:
    """The body of the Ray task: load the network where it runs, score the split, return the scores."""
    model = request.model.load(request.device, **request.model_settings)
    return evaluate(model, request.data, request.protocol)


def _file_label(path: Path) -> str:
    """``checkpoint_00001000`` for a training checkpoint folder or its model.pt, else the file's stem."""
    if path.name == CHECKPOINT_MODEL_FILE:
        return path.parent.name
    return path.name if path.is_dir() else path.stem


def resolve_source(ref: ModelRef, lookup: bool = True) -> ModelSource:
    """What ``ref`` names, resolved on the driver without reading any weights.

    ``lookup``: pin ``models:/`` URIs to their version in ``ref.tracking_uri`` (False: no MLflow
    lookups). A registry lookup that fails is left to the task, whose :meth:`ModelRef.load` says why.
    """
    if ref.official:
        path = absolute(ref.spec)
        tags = {"eval.official": path, "eval.arch": str(ref.arch)}
        return ModelSource(ModelRef(path, ref.arch, ref.tracking_uri), Path(path).stem, tags)
    given = ref.spec
    if Path(given).exists() or not MODEL_URI.match(given):  # a checkpoint (a missing one: the task says so)
        path = absolute(given)
        return ModelSource(
            ModelRef(path, None, ref.tracking_uri), _file_label(Path(path)), {"eval.model_path": path}
        )
    tags = {"eval.model_uri": given}
    version = None
    if lookup and given.startswith("models:/"):
        from mlflow.exceptions import MlflowException

        from pipelines.tracking.evaluation import resolve_model_version

        try:
            version = resolve_model_version(ref.tracking_uri, given)
        except MlflowException:
            version = None  # the task's ModelRef.load raises the one-line ModelLoadError
    if version is not None:
        tags |= {
            "eval.model_uri_pinned": version["uri"],
            "eval.registered_model": version["name"],
            "eval.registered_version": version["version"],
        }
        if SOURCE_RUN_TAG in version:
            tags |= {PARENT_RUN_TAG: version[SOURCE_RUN_TAG], SOURCE_RUN_TAG: version[SOURCE_RUN_TAG]}
        return ModelSource(ModelRef(version["uri"], None, ref.tracking_uri), version["name"], tags, version)
    run = re.match(r"^runs:/([^/]+)", given)
    if run:
        tags |= {PARENT_RUN_TAG: run.group(1), SOURCE_RUN_TAG: run.group(1)}
        return ModelSource(ref, f"run-{run.group(1)[:8]}", tags)
    label = given.rstrip("/").rsplit("/", 1)[-1].split("@")[0] or "model"
    return ModelSource(ref, label, tags)


def _write_tables(report: EvaluationReport, output: str) -> tuple[str, ...]:
    folder = Path(output).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in ((PER_CLIP_CSV, report.csv()), (PER_CLIP_MARKDOWN, report.markdown())):
        (folder / name).write_text(text)
        written.append(str(folder / name))
    return tuple(written)


def run_evaluation(cfg: EvaluationConfig) -> EvaluationSummary:
    """Evaluate ``cfg.source`` on ``cfg.data`` / ``cfg.split`` against bicubic in a Ray task; log and write
    the results (module docstring). Starts or joins Ray (:func:`init_ray`) if this process has not."""
    import ray

    from pipelines.common.ray_session import init_ray
    from pipelines.tracking.runs import resolve_tracking_uri

    # before any Ray or MLflow work (a full verify, if asked, starts Ray for its tasks)
    check_storage_uri(cfg.data)
    if cfg.verify_data:
        init_ray()
    dataset = open_dataset(cfg.data, splits=[cfg.split], verify=cfg.verify_data)
    scales = sorted({family.scale for family in ARCHITECTURES.values()})
    if dataset.scale not in scales:
        raise DataError(
            f"{dataset.root} was prepared at x{dataset.scale} but the networks upscale "
            f"x{' / x'.join(map(str, scales))}: prepare the data with --scale {scales[0]}"
        )
    tracking_uri = resolve_tracking_uri(cfg.tracking_uri)
    uses_mlflow = cfg.log_to_mlflow or MODEL_URI.match(cfg.source) is not None
    source = resolve_source(cfg.model_ref(tracking_uri), lookup=uses_mlflow)

    init_ray()
    resources, device = task_options(cfg.device, ray.cluster_resources())
    request = ScoringRequest(
        source.ref, device, dataset.only([cfg.split]), cfg.protocol, dict(cfg.model_settings)
    )
    # DEFAULT: scheduled on the cluster, never in a caller's placement group (a Tune trial's holds no CPU)
    task = ray.remote(score_task).options(
        name=f"evaluate {source.label}", scheduling_strategy="DEFAULT", **resources
    )
    report: EvaluationReport = ray.get(task.remote(request))

    files = _write_tables(report, cfg.output) if cfg.output is not None else ()
    if not cfg.log_to_mlflow:
        return EvaluationSummary(report, device, files=files)
    run_id = _log_to_mlflow(cfg, source, dataset, report, tracking_uri, device)
    return EvaluationSummary(report, device, run_id, tracking_uri, files)


def _dataset_tags(cfg: EvaluationConfig, dataset: PreparedDataset) -> dict[str, str]:
    return {
        "dataset.sha256": dataset.sha256,
        "dataset.path": dataset.root,
        "dataset.split": cfg.split,
        "dataset.degradation": str(dataset.degradation or ""),
        "dataset.scale": str(dataset.scale),
        "protocol.channel": cfg.channel,
        "protocol.crop_border": str(cfg.crop_border),
        "protocol.centre_frame_only": str(cfg.centre_frame_only),
        "protocol.mirror_times": str(cfg.mirror_times),
        "protocol.max_clips": str(cfg.max_clips),
    }


def _log_to_mlflow(
    cfg: EvaluationConfig,
    source: ModelSource,
    dataset: PreparedDataset,
    report: EvaluationReport,
    tracking_uri: str,
    device: str,
) -> str:
    """The evaluation run (and, for a registered version, its ``eval_<sha256[:12]>_*`` tags); its id."""
    from pipelines.tracking.evaluation import log_evaluation, tag_version_score

    sha256 = dataset.sha256
    dataset_name = dataset.location.name
    params = asdict(cfg) | {"model": None if cfg.official else cfg.source}
    params = {k: v for k, v in params.items() if v not in (None, {}) and k not in ("tracking_uri", "output")}
    run_id = log_evaluation(
        tracking_uri,
        cfg.experiment,
        f"eval-{source.label}-{dataset_name}",
        tags={**source.tags, **_dataset_tags(cfg, dataset), "eval.device": device},
        params=params,
        metrics=report.metrics(),
        texts={PER_CLIP_CSV: report.csv(), PER_CLIP_MARKDOWN: report.markdown()},
        model_id=(source.version or {}).get("model_id"),  # the run links to the LoggedModel it scored
        dataset=(dataset_name, sha256[:32]),  # as training's dataset input names it
    )
    if source.version is not None and not cfg.model_settings:  # the version's own score, as registered
        tag_version_score(
            tracking_uri,
            source.version,
            sha256,
            psnr=report.model.psnr,
            ssim=report.model.ssim,
            channel=cfg.channel,
            run_id=run_id,
        )
    return run_id
