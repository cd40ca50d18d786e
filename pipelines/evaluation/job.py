"""``jobs/evaluate.py``: score a model on one split of a prepared dataset against bicubic, in a Ray task.

:func:`run_evaluation`

1. checks the dataset (manifest and shard checksums) on the driver, before any Ray or MLflow work;
2. resolves what is evaluated: this project's checkpoint (file or training checkpoint folder), an MLflow
   URI (``models:/name@alias`` is pinned to its version, ``models:/name/<n>``, so the alias cannot move
   meanwhile) or an authors' released checkpoint (``official`` + ``arch``);
3. scores it in one Ray task, on a GPU (``num_gpus=1``) when ``device`` is ``auto`` and the cluster has
   one, or ``cuda``; else on one CPU. The task loads the network itself from the path or URI: only
   paths and small settings travel to it, and only the per-clip scores come back. ``model_settings``
   change config fields of the loaded network that keep its weights, such as TTVSR's
   ``key_frame_stride`` (:func:`with_model_settings`; the frame-interval sweeps of ``docs/tuning.md``);
4. logs a new MLflow run ``eval-<model>-<dataset folder>`` in ``experiment`` (tags: what was evaluated,
   the dataset and the protocol; params; metrics ``psnr``, ``ssim``, ``bicubic_psnr``, ``bicubic_ssim``;
   artifacts ``per_clip.csv``, ``per_clip.md``), under the version's training run
   (``mlflow.parentRunId``, ``source_run_id``) for a registered model, whose version then also gets
   ``eval_<manifest sha256[:12]>_psnr`` / ``_ssim`` / ``_channel`` / ``_run_id`` tags (not when
   ``model_settings`` changed how it computes: that score is not the version's own);
5. writes ``per_clip.csv`` / ``per_clip.md`` to ``output`` when one is given.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipelines.common.cli import check_arch, flag_overrides, job_parser, run_job
from pipelines.common.config import load_config
from pipelines.common.errors import ConfigError, DataError
from pipelines.common.files import CHECKPOINT_MODEL_FILE
from pipelines.common.storage import check_storage_uri, resolve
from pipelines.data.manifest import PreparedDataset, check_dataset
from pipelines.evaluation.scoring import EvaluationReport, evaluate
from pipelines.inference.loading import MODEL_URI, load_model
from vsr_models import ARCHITECTURES

DEFAULT_MODEL = "models:/ttvsr@champion"
PER_CLIP_CSV = "per_clip.csv"
PER_CLIP_MARKDOWN = "per_clip.md"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass
class EvaluationConfig:
    """What ``jobs/evaluate.py`` scores: a model on one split of a prepared dataset, and where it logs."""

    # registry / run URI, checkpoint folder or model.pt; default models:/ttvsr@champion unless `official`
    model: str | None = None
    official: str | None = None  # an authors' released checkpoint (.pth), instead of `model`; needs `arch`
    arch: str | None = None  # architecture of `official`: a family of vsr_models.ARCHITECTURES
    data: str = "data/sample"  # prepared dataset folder (manifest.json + shards/): a path or a URI (s3://...)
    verify_data: bool = False  # check every shard's sha256 first (in Ray tasks); else manifest and sizes
    split: str = "val"
    channel: Literal["rgb", "y"] = "rgb"  # REDS4 / sample: rgb; Vid4, UDM10, Vimeo-90K-T (BD): y
    crop_border: int = 0
    centre_frame_only: bool = False
    mirror_times: int = 0  # Vimeo-90K-T with TTVSR: 2 (7 -> 28 frames, outputs averaged over copies)
    max_clips: int | None = None
    chunk: int | None = None  # temporal window for long clips on small memory
    # config fields of the network that keep its weights, e.g. {key_frame_stride: 5} (with_model_settings)
    model_settings: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"  # auto: a GPU when the Ray cluster has one, else a CPU; cpu; cuda
    output: str | None = None  # folder for per_clip.csv / per_clip.md (default: none written locally)
    log_to_mlflow: bool = True  # a new run in `experiment`: metrics, per-clip tables, what was evaluated
    experiment: str = "ray-vsr-evaluation"
    tracking_uri: str | None = None  # MLflow store for models:/ URIs and the run; default as in training

    def __post_init__(self) -> None:
        check_arch(self.arch)
        if self.official is not None and self.model is not None:
            raise ConfigError(f"give either --model ({self.model}) or --official ({self.official}), not both")
        if self.official is not None and self.arch is None:
            raise ConfigError(
                f"--official {self.official} needs --arch ttvsr|vsrt: the architecture of the released "
                "checkpoint"
            )
        if self.arch is not None and self.official is None:
            raise ConfigError(
                f"--arch {self.arch} applies only to a released checkpoint: add --official PATH, or drop "
                "--arch for this project's checkpoints and models:/ URIs"
            )
        if not _DEVICE.match(self.device):
            raise ConfigError(f"device {self.device!r} is not one of auto, cpu, cuda (or cuda:N)")

    @property
    def source(self) -> str:
        """What is evaluated: ``official``, else ``model``, else ``models:/ttvsr@champion``."""
        return self.official or self.model or DEFAULT_MODEL


@dataclass(frozen=True)
class ModelSource:
    """What the scoring task loads (absolute paths, a pinned URI) and how the MLflow run describes it."""

    spec: str  # given to load_model inside the task
    arch: str | None
    label: str  # the <model> of the run name eval-<model>-<dataset>
    tags: dict[str, str] = field(default_factory=dict)
    version: dict[str, str] | None = None  # registered version: name, version, uri, source_run_id


@dataclass(frozen=True)
class ScoringRequest:
    """Everything the Ray task needs: paths, a URI and a few settings (never weights)."""

    model: str
    arch: str | None
    tracking_uri: str | None
    device: str  # cpu | cuda: what the task was scheduled with
    data: str
    split: str
    channel: str
    crop_border: int
    centre_frame_only: bool
    mirror_times: int
    max_clips: int | None
    chunk: int | None
    model_settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluationResult:
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


def with_model_settings(model: Any, settings: Mapping[str, Any]) -> Any:
    """``model`` rebuilt with other values of config fields that keep its tensors, its weights kept.

    Such a field says how the trained network computes, not what it learnt: TTVSR's ``key_frame_stride``
    (which frames become key frames, whose tokens the attention reaches; Table 5 of the paper varies it
    on one trained model) or any ``runtime_fields`` entry of the family. A field that would change a
    tensor's name or shape (``mid_channels``, ``token_size``) is a :class:`ConfigError` naming it.
    """
    if not settings:
        return model
    import torch

    import vsr_models

    arch = vsr_models.model_arch(model)
    family = vsr_models.get_family(arch)
    config = vsr_models.model_config(model) | dict.fromkeys(family.init_only_fields) | dict(settings)
    given = ", ".join(f"model.{k}={v!r}" for k, v in settings.items())
    try:
        with torch.device("meta"):  # shapes only: the weights are the loaded network's
            rebuilt = vsr_models.build_model(arch, **config)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{given}: {error}") from None
    weights, expected = model.state_dict(), rebuilt.state_dict()
    changed = sorted(
        name
        for name in weights.keys() | expected.keys()
        if name not in weights or name not in expected or weights[name].shape != expected[name].shape
    )
    if changed:
        raise ConfigError(
            f"{given} changes the network's tensors ({', '.join(changed[:3])}"
            f"{', ...' if len(changed) > 3 else ''}): an evaluation can only vary {arch} settings that keep "
            "the trained weights (such as key_frame_stride); train a model for each value instead"
        )
    rebuilt.load_state_dict(weights, assign=True)
    return rebuilt.eval()


def score_task(request: ScoringRequest) -> EvaluationReport:
    """The body of the Ray task: load the network where it runs, score the split, return the scores."""
    model = load_model(
        request.model, device=request.device, arch=request.arch, tracking_uri=request.tracking_uri
    )
    model = with_model_settings(model, request.model_settings)
    return evaluate(
        model,
        request.data,
        split=request.split,
        channel=request.channel,
        crop_border=request.crop_border,
        centre_frame_only=request.centre_frame_only,
        mirror_times=request.mirror_times,
        max_clips=request.max_clips,
        chunk=request.chunk,
    )


def _absolute(path: str) -> str:
    """A path made absolute on the driver (the task may run in another folder or on another node)."""
    return str(Path(path).expanduser().resolve())


def _file_label(path: Path) -> str:
    """``checkpoint_00001000`` for a training checkpoint folder or its model.pt, else the file's stem."""
    if path.name == CHECKPOINT_MODEL_FILE:
        return path.parent.name
    return path.name if path.is_dir() else path.stem


def resolve_source(cfg: EvaluationConfig, tracking_uri: str | None) -> ModelSource:
    """What ``cfg`` evaluates, resolved on the driver without reading any weights.

    ``tracking_uri``: the resolved store, to pin ``models:/`` URIs to their version (None: no MLflow
    lookups). A registry lookup that fails is left to the task, whose :func:`load_model` says why.
    """
    if cfg.official is not None:
        path = _absolute(cfg.official)
        return ModelSource(
            path, cfg.arch, Path(path).stem, {"eval.official": path, "eval.arch": str(cfg.arch)}
        )
    given = cfg.source
    if Path(given).exists() or not MODEL_URI.match(given):  # a checkpoint (a missing one: the task says so)
        path = _absolute(given)
        return ModelSource(path, None, _file_label(Path(path)), {"eval.model_path": path})
    tags = {"eval.model_uri": given}
    version = None
    if tracking_uri is not None and given.startswith("models:/"):
        from mlflow.exceptions import MlflowException

        from pipelines.tracking.runs import resolve_model_version

        try:
            version = resolve_model_version(tracking_uri, given)
        except MlflowException:
            version = None  # the task's load_model raises the one-line ModelLoadError
    if version is not None:
        tags |= {
            "eval.model_uri_pinned": version["uri"],
            "eval.registered_model": version["name"],
            "eval.registered_version": version["version"],
        }
        if "source_run_id" in version:
            tags |= {
                "mlflow.parentRunId": version["source_run_id"],
                "source_run_id": version["source_run_id"],
            }
        return ModelSource(version["uri"], None, version["name"], tags, version)
    run = re.match(r"^runs:/([^/]+)", given)
    if run:
        tags |= {"mlflow.parentRunId": run.group(1), "source_run_id": run.group(1)}
        return ModelSource(given, None, f"run-{run.group(1)[:8]}", tags)
    label = given.rstrip("/").rsplit("/", 1)[-1].split("@")[0] or "model"
    return ModelSource(given, None, label, tags)


def _dataset_tags(cfg: EvaluationConfig, manifest: PreparedDataset, sha256: str) -> dict[str, str]:
    return {
        "dataset.sha256": sha256,
        "dataset.path": resolve(cfg.data).uri,
        "dataset.split": cfg.split,
        "dataset.degradation": str(manifest.degradation or ""),
        "dataset.scale": str(manifest.scale),
        "protocol.channel": cfg.channel,
        "protocol.crop_border": str(cfg.crop_border),
        "protocol.centre_frame_only": str(cfg.centre_frame_only),
        "protocol.mirror_times": str(cfg.mirror_times),
        "protocol.max_clips": str(cfg.max_clips),
    }


def _write_tables(report: EvaluationReport, output: str) -> tuple[str, ...]:
    folder = Path(output).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in ((PER_CLIP_CSV, report.csv()), (PER_CLIP_MARKDOWN, report.markdown())):
        (folder / name).write_text(text)
        written.append(str(folder / name))
    return tuple(written)


def run_evaluation(cfg: EvaluationConfig) -> EvaluationResult:
    """Evaluate ``cfg.source`` on ``cfg.data`` / ``cfg.split`` against bicubic in a Ray task; log and write
    the results (module docstring). Starts or joins Ray (:func:`init_ray`) if this process has not."""
    import ray

    from pipelines.common.ray_session import init_ray
    from pipelines.tracking.runs import resolve_tracking_uri

    # before any Ray or MLflow work (a full verify, if asked, starts Ray for its tasks)
    check_storage_uri(cfg.data)
    if cfg.verify_data:
        from pipelines.common.ray_session import init_ray

        init_ray()
    manifest = check_dataset(cfg.data, [cfg.split], verify=cfg.verify_data)
    scales = sorted({family.scale for family in ARCHITECTURES.values()})
    if manifest.scale not in scales:
        raise DataError(
            f"{manifest.root} was prepared at x{manifest.scale} but the networks upscale "
            f"x{' / x'.join(map(str, scales))}: prepare the data with --scale {scales[0]}"
        )
    tracking_uri = resolve_tracking_uri(cfg.tracking_uri)
    uses_mlflow = cfg.log_to_mlflow or MODEL_URI.match(cfg.source) is not None
    source = resolve_source(cfg, tracking_uri if uses_mlflow else None)

    init_ray()
    resources, device = task_options(cfg.device, ray.cluster_resources())
    request = ScoringRequest(
        model=source.spec,
        arch=source.arch,
        tracking_uri=tracking_uri,
        device=device,
        data=resolve(cfg.data).uri,
        split=cfg.split,
        channel=cfg.channel,
        crop_border=cfg.crop_border,
        centre_frame_only=cfg.centre_frame_only,
        mirror_times=cfg.mirror_times,
        max_clips=cfg.max_clips,
        chunk=cfg.chunk,
        model_settings=dict(cfg.model_settings),
    )
    # DEFAULT: scheduled on the cluster, never in a caller's placement group (a Tune trial's holds no CPU)
    task = ray.remote(score_task).options(
        name=f"evaluate {source.label}", scheduling_strategy="DEFAULT", **resources
    )
    report: EvaluationReport = ray.get(task.remote(request))

    files = _write_tables(report, cfg.output) if cfg.output is not None else ()
    if not cfg.log_to_mlflow:
        return EvaluationResult(report, device, files=files)
    run_id = _log_to_mlflow(cfg, source, manifest, report, tracking_uri, device)
    return EvaluationResult(report, device, run_id, tracking_uri, files)


def _log_to_mlflow(
    cfg: EvaluationConfig,
    source: ModelSource,
    manifest: PreparedDataset,
    report: EvaluationReport,
    tracking_uri: str,
    device: str,
) -> str:
    """The evaluation run (and, for a registered version, its ``eval_<sha256[:12]>_*`` tags); its id."""
    from pipelines.tracking.runs import log_evaluation, set_model_version_tags

    sha256 = manifest.sha256
    dataset_name = manifest.location.name
    params = asdict(cfg) | {"model": None if cfg.official else cfg.source}
    params = {k: v for k, v in params.items() if v not in (None, {}) and k not in ("tracking_uri", "output")}
    run_id = log_evaluation(
        tracking_uri,
        cfg.experiment,
        f"eval-{source.label}-{dataset_name}",
        tags={**source.tags, **_dataset_tags(cfg, manifest, sha256), "eval.device": device},
        params=params,
        metrics=report.metrics(),
        texts={PER_CLIP_CSV: report.csv(), PER_CLIP_MARKDOWN: report.markdown()},
        model_id=(source.version or {}).get("model_id"),  # the run links to the LoggedModel it scored
        dataset=(dataset_name, sha256[:32]),  # as training's dataset input names it
    )
    if source.version is not None and not cfg.model_settings:  # the version's own score, as registered
        prefix = f"eval_{sha256[:12]}"
        set_model_version_tags(
            tracking_uri,
            source.version["name"],
            source.version["version"],
            {
                f"{prefix}_psnr": report.model.psnr,
                f"{prefix}_ssim": report.model.ssim,
                f"{prefix}_channel": cfg.channel,
                f"{prefix}_run_id": run_id,
            },
        )
    return run_id


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    """Command-line entry of ``jobs/evaluate.py``: print the per-clip table against bicubic, then (on
    stderr, so that stdout stays the table) the MLflow run and the files written."""
    parser = job_parser(description, set_example="crop_border=4")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model",
        help=f"models:/<name>@<alias>, runs:/<id>/<run name>, checkpoint folder or model.pt (default {DEFAULT_MODEL})",
    )
    source.add_argument("--official", metavar="PATH", help="authors' released checkpoint (needs --arch)")
    # Checked by EvaluationConfig (check_arch): an unknown name is one line listing the registry's families.
    parser.add_argument("--arch", help="architecture of --official (ttvsr, vsrt)")
    parser.add_argument("--data", help="prepared dataset folder: a path or a URI such as s3://bucket/reds_bi")
    parser.add_argument(
        "--verify-data",
        action="store_true",
        default=None,
        help="check every shard's sha256 first, in parallel Ray tasks (default: manifest and sizes only)",
    )
    parser.add_argument("--split", help="split to score (default val)")
    parser.add_argument("--channel", choices=["rgb", "y"], help="score on RGB or the MATLAB Y channel")
    parser.add_argument(
        "--device", help="auto (default: a GPU when the Ray cluster has one, else a CPU), cpu or cuda"
    )
    parser.add_argument("--output", metavar="DIR", help="also write per_clip.csv and per_clip.md here")
    parser.add_argument(
        "--mlflow-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, sqlite:///mlflow.db)"
    )
    parser.add_argument("--experiment", help="MLflow experiment of the run (default ray-vsr-evaluation)")
    parser.add_argument(
        "--no-mlflow", action="store_true", default=None, help="log nothing to MLflow (print only)"
    )
    args = parser.parse_args(argv)
    flags = {
        "model": args.model,
        "official": args.official,
        "arch": args.arch,
        "data": args.data,
        "verify_data": args.verify_data,
        "split": args.split,
        "channel": args.channel,
        "device": args.device,
        "output": args.output,
        "experiment": args.experiment,
        "log_to_mlflow": False if args.no_mlflow else None,
        "tracking_uri": args.mlflow_uri,
    }

    def body() -> None:
        cfg = load_config(EvaluationConfig, args.config, [*args.overrides, *flag_overrides(flags)])
        result = run_evaluation(cfg)
        print(result.table(), flush=True)
        print(result.describe(), file=sys.stderr)

    return run_job(body)
