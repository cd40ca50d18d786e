"""Training any registered network family on Ray Train: the driver side (``jobs/train_<arch>.py``).

:func:`run_training` (an :class:`~pipelines.training.config.Experiment` in, a :class:`TrainingSummary`
out) checks the prepared dataset, finds or creates the MLflow run named ``run.name`` and records what it
trains with (:mod:`pipelines.tracking.training`),
starts a :class:`ray.train.torch.TorchTrainer` (DDP: NCCL on GPUs, gloo on CPUs) running
:func:`pipelines.training.loop.train_loop_per_worker` and, when training ends, registers the final
network, moving the ``champion`` alias to it if its validation PSNR is the best so far
(:mod:`pipelines.tracking`).

Checkpoints go through ``ray.train.report`` to ``<storage_path>/<name>/checkpoint_<iteration>``
(:mod:`pipelines.training.state`). A failed worker is replaced and the loop resumes from the last
checkpoint (``FailureConfig.max_failures``); a stopped run started again with the same name resumes
likewise and keeps logging to the same MLflow run.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.common.console import verbose
from pipelines.common.errors import ConfigError, DataError
from pipelines.common.ray_session import init_ray, sigterm_as_ctrl_c
from pipelines.common.shared_storage import check_visible_from_nodes, place_marker
from pipelines.common.storage import check_storage_uri, is_uri
from pipelines.data.ingest import CropSpec, train_dataset
from pipelines.data.manifest import MANIFEST_NAME, ClipRecord, PreparedDataset, open_dataset
from pipelines.tracking import (
    RegisteredVersion,
    RunTracker,
    resolve_tracking_uri,
)
from pipelines.tracking.background import (
    TrackingUnavailableError,
    fail_fast_http_requests,
    is_transient,
    retry_until,
)
from pipelines.tracking.training import (
    DatasetRecord,
    log_training_start,
    register_trained,
)
from pipelines.training.config import Experiment, resolve_paths
from pipelines.training.loop import (
    SCORE_METRIC,
    UNVALIDATED,
    StepCallback,
    train_loop_per_worker,
    validation_protocol,
)
from pipelines.training.recipe import describe_global_batch, describe_schedule, with_batch_lr
from pipelines.training.state import (
    MODEL_FILE,
    check_checkpoints,
    latest_checkpoint_progress,
    read_training_state,
    run_folder,
)
from vsr_models import get_family, load_checkpoint

REGISTER_PATIENCE_S = 600.0
"""How long registration at the end of training waits for a tracking server that is away."""


@dataclass(frozen=True)
class TrainingSummary:
    """What one call of :func:`run_training` produced."""

    run_name: str
    mlflow_run_id: str
    tracking_uri: str
    iteration: int
    checkpoint_path: str
    val_metrics: dict[str, float]
    registered: RegisteredVersion | None  # None when this iteration was registered before
    best_iteration: int = 0  # of the checkpoint with the best validation PSNR (what is registered)
    best_checkpoint_path: str = ""

    def describe(self) -> str:
        lines = [
            f"run {self.run_name}: {self.iteration} iterations, checkpoint {self.checkpoint_path}",
            f"best validation at iteration {self.best_iteration}: {self.best_checkpoint_path}",
            f"MLflow run {self.mlflow_run_id} in {self.tracking_uri}",
        ]
        if self.val_metrics:
            lines.append(
                f"best validation PSNR {self.val_metrics['psnr']:.2f} dB / SSIM {self.val_metrics['ssim']:.4f} "
                f"(bicubic {self.val_metrics['bicubic_psnr']:.2f} dB / {self.val_metrics['bicubic_ssim']:.4f})"
            )
        if self.registered is not None:
            lines.append(self.registered.describe())
        return "\n".join(lines)


def training_crops(
    cfg: Experiment, dataset: PreparedDataset, progress: tuple[int, int] | None = None
) -> CropSpec:
    """The sampling plan of the run's training crops (``pipelines.data.ingest``), drawn in Ray Data tasks.

    The plan covers every sample the run still needs in one pass (one Ray Data execution per run). A
    resumed run numbers its epochs past the samples it has consumed (counted in its checkpoints, whatever
    the global batch of each earlier part of the run), so it draws crops it has not drawn. ``progress``
    is that checkpoint's iteration and samples when the caller has read them already
    (:func:`pipelines.training.state.check_checkpoints`).
    """
    per_iteration = cfg.global_batch
    if progress is None:
        progress = latest_checkpoint_progress(run_folder(cfg.run.storage_path, cfg.run.name), per_iteration)
    done, consumed = progress
    spec = CropSpec(
        cfg.data.num_frames,
        cfg.data.lr_patch,
        cfg.train.seed,
        True,
        cfg.data.samples_per_clip,
        first_epoch=consumed,
        shuffle_seed=cfg.train.seed,
    )
    fitting = len(fitting_clips(cfg, dataset))
    # One spare iteration per worker: streaming_split may hand the workers unequal shares.
    needed = (cfg.train.total_iters - done + cfg.scaling.num_workers) * per_iteration
    return dataclasses.replace(spec, epochs=spec.epochs_for(needed, fitting))


def fitting_clips(cfg: Experiment, dataset: PreparedDataset) -> list[ClipRecord]:
    """The training clips that hold a ``data.num_frames`` x ``data.lr_patch`` crop."""
    return [
        c for c in dataset.clips(cfg.data.train_split)
        if c.num_frames >= cfg.data.num_frames and min(c.lr_size) >= cfg.data.lr_patch
    ]  # fmt: skip


def check_training_inputs(cfg: Experiment, dataset: PreparedDataset) -> None:
    """Refuse up front what the manifest and the config can tell will fail later (in a worker, after retries).

    The dataset's scale must be the network's; some training clip must hold a ``data.num_frames`` x
    ``data.lr_patch`` crop, and there must be at least one such clip per worker; the storage path must
    be a writable folder.
    """
    scale = get_family(cfg.arch).scale
    if dataset.scale != scale:
        raise DataError(
            f"{dataset.root} was prepared at x{dataset.scale} but {cfg.arch} upscales x{scale}: prepare the "
            f"data with --scale {scale}"
        )
    clips = dataset.clips(cfg.data.train_split)
    fitting = fitting_clips(cfg, dataset)
    if not fitting:
        longest = max(clips, key=lambda c: (c.num_frames, min(c.lr_size)), default=None)
        found = (
            f"the longest has {longest.num_frames} frames of {list(longest.lr_size)} LR"
            if longest
            else "none"
        )
        raise DataError(
            f"no training clip of {dataset.root} (split {cfg.data.train_split}) holds a crop of "
            f"data.num_frames={cfg.data.num_frames} frames of data.lr_patch={cfg.data.lr_patch} LR pixels "
            f"({found}); lower data.num_frames / data.lr_patch or prepare longer, larger clips"
        )
    if len(fitting) < cfg.scaling.num_workers:
        raise DataError(
            f"{len(fitting)} training clips of {dataset.root} fit the crop but scaling.num_workers is "
            f"{cfg.scaling.num_workers}: every worker needs at least one; use fewer workers or more clips"
        )
    storage = cfg.run.storage_path
    if not is_uri(storage):
        folder = Path(storage)
        if folder.exists() and not folder.is_dir():
            raise ConfigError(
                f"run.storage_path {storage} is a file, not a folder; choose a folder (--storage-path)"
            )
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(
                f"run.storage_path {storage} cannot be created ({error}); choose a writable folder"
            ) from None
        if not os.access(folder, os.W_OK):
            raise ConfigError(f"run.storage_path {storage} is not writable; choose a writable folder")


def dataset_record(cfg: Experiment, dataset: PreparedDataset) -> DatasetRecord:
    """What MLflow records of the dataset the run trains on (:func:`pipelines.tracking.training.log_training_start`)."""
    return DatasetRecord(
        manifest=dataset.manifest.to_json(),
        manifest_name=MANIFEST_NAME,
        name=dataset.location.name,
        digest=dataset.sha256[:32],
        source=cfg.data.path,
        profile=dataset.profile(),
    )


def check_paths_reach_nodes(cfg: Experiment) -> None:
    """Refuse in seconds a run storage or dataset path that some node of the cluster does not see.

    Without it a node-local path fails at the first checkpoint report, after ``checkpoint_every``
    iterations on every worker and every retry (:mod:`pipelines.common.shared_storage`, docs/cluster.md).
    """
    check_visible_from_nodes(
        writes={"run.storage_path": cfg.run.storage_path},
        reads={"data.path": f"{cfg.data.path.rstrip('/')}/{MANIFEST_NAME}"},
    )


def run_training(
    cfg: Experiment,
    *,
    step_callback: StepCallback | None = None,
    callbacks: Sequence[Any] = (),
    register: bool = True,
) -> TrainingSummary:
    """Train (or resume) the run ``cfg.run.name`` on Ray Train and register the result in MLflow.

    One training per run name at a time (:func:`pipelines.training.lock.run_lock`): a second one is
    refused in one line before it reads or writes anything of the run.
    """
    from pipelines.training.lock import run_lock

    cfg = resolve_paths(cfg)
    for where in (cfg.data.path, cfg.run.storage_path):  # a missing filesystem package: before Ray starts
        check_storage_uri(where)
    with run_lock(cfg.run.storage_path, cfg.run.name):
        return _run_training(cfg, step_callback=step_callback, callbacks=callbacks, register=register)


def _run_training(
    cfg: Experiment,
    *,
    step_callback: StepCallback | None,
    callbacks: Sequence[Any],
    register: bool,
) -> TrainingSummary:
    """:func:`run_training`, the run's lock held."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipelines.training.rendezvous import LoopbackTorchConfig

    if cfg.data.verify:
        init_ray(cfg.run.address)  # the checksums are computed in Ray tasks, where the data is
    # The one read of the dataset's manifest: what the Ray Data plan, the workers' validation and the
    # registered version's lineage are made of.
    dataset = open_dataset(
        cfg.data.path, splits=[cfg.data.train_split, cfg.data.val_split], verify=cfg.data.verify
    )
    check_training_inputs(cfg, dataset)
    # The checkpoint the workers will resume from, checked once: its iteration and samples consumed.
    progress = check_checkpoints(run_folder(cfg.run.storage_path, cfg.run.name), cfg.global_batch)
    trained = with_batch_lr(cfg)  # what the workers train with: optim.lr after scaling.lr_rule
    global_batch, batch_warning = describe_global_batch(cfg)
    print(f"global batch: {global_batch}", flush=True)
    if batch_warning:
        print(f"warning: {batch_warning}", file=sys.stderr, flush=True)
    init_ray(cfg.run.address)
    check_paths_reach_nodes(cfg)  # before the MLflow run exists: a refused job leaves nothing behind
    tracking_uri = resolve_tracking_uri(cfg.tracking.uri)
    tracker = RunTracker.start(tracking_uri, cfg.tracking.experiment, cfg.run.name, tags={"arch": cfg.arch})
    schedule = describe_schedule(trained)
    print(f"schedule: {schedule}", flush=True)
    # Params keep their first value; the metrics record the layout of every (re)start at its iteration.
    log_training_start(
        tracker,
        cfg,
        derived={"arch": cfg.arch, "data.fingerprint": dataset.fingerprint, "schedule": schedule}
        | {"global_batch": cfg.global_batch, "effective_lr": trained.optim.lr},
        layout={"global_batch": cfg.global_batch, "effective_lr": trained.optim.lr},
        step=progress[0],
        dataset=dataset_record(cfg, dataset),
    )

    resources = {"CPU": cfg.scaling.cpus_per_worker} | ({"GPU": 1} if cfg.scaling.use_gpu else {})
    # A pass over the plan that ran short would start another execution: do not print its plan again.
    ray.data.DataContext.get_current().print_on_execution_start = False
    # Its bars run in Ray Data's coordinator actor, off any terminal: line noise; the loop prints progress.
    ray.data.DataContext.get_current().enable_progress_bars = verbose()
    # Checked by every worker before its first iteration: covers nodes that join after the start check.
    storage_marker = place_marker("run.storage_path", cfg.run.storage_path)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "experiment": trained,
            "scale": int(dataset.scale),
            "validation": dataset.only([cfg.data.val_split]),
            "mlflow_run_id": tracker.run_id,
            "tracking_uri": tracking_uri,
            "step_callback": step_callback,
            "storage_marker": storage_marker,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu, resources_per_worker=resources
        ),
        torch_config=LoopbackTorchConfig(),  # the DDP rendezvous stays on loopback on a local cluster
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=cfg.run.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            # The best num_to_keep by validation PSNR, and always the latest (to resume from).
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.run.num_to_keep,
                checkpoint_score_attribute=SCORE_METRIC,
                checkpoint_score_order="max",
            ),
            callbacks=list(callbacks),
        ),
        datasets={
            "train": train_dataset(
                dataset, split=cfg.data.train_split, crop=training_crops(cfg, dataset, progress)
            )
        },
    )
    try:
        with sigterm_as_ctrl_c():
            result = trainer.fit()
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C / SIGTERM: Train aborted the run, then exits
        end_unfinished_run(tracker, "KILLED")
        raise KeyboardInterrupt from None
    except Exception:
        end_unfinished_run(tracker, "FAILED")
        raise
    finally:
        if storage_marker is not None:
            storage_marker.remove()
    return register_result(
        cfg, tracker, best_checkpoint(result), dataset, register=register, latest=result.checkpoint
    )


def end_unfinished_run(tracker: RunTracker, status: str) -> None:
    """Mark the MLflow run ``FAILED`` or ``KILLED`` on the way out of a training that did not finish.

    What the job must show is the training's own error (or the Ctrl-C): with the tracking server away,
    MLflow's default retries would hold the driver for minutes and then replace that error with its own.
    So one attempt of at most 10 s (:func:`pipelines.tracking.background.fail_fast_http_requests`), and a
    failure here is a warning line (the run stays ``RUNNING`` in MLflow), never the job's error.
    """
    try:
        with fail_fast_http_requests():
            tracker.finish(status)
    except Exception as error:
        print(
            f"warning: MLflow run {tracker.run_id} could not be marked {status}: the tracking server "
            f"{tracker.tracking_uri} did not answer ({type(error).__name__}); it stays RUNNING there",
            file=sys.stderr,
            flush=True,
        )


def best_checkpoint(result: Any) -> Any:
    """The kept checkpoint with the highest validation PSNR (the latest if none was validated)."""
    scored = [
        (metrics[SCORE_METRIC], checkpoint)
        for checkpoint, metrics in (result.best_checkpoints or [])
        if metrics.get(SCORE_METRIC, UNVALIDATED) > UNVALIDATED
    ]
    return max(scored, key=lambda pair: pair[0])[1] if scored else result.checkpoint


def validation_lineage(cfg: Experiment, dataset: PreparedDataset) -> dict[str, str]:
    """What a validation PSNR was measured on: the dataset the run opened (its manifest's sha256) and the
    protocol (:func:`pipelines.training.loop.validation_protocol`).

    Recorded as version tags; the champion alias compares only versions whose tags agree
    (:func:`pipelines.tracking.promote_champion`).
    """
    return {"val_dataset": dataset.fingerprint, "val_protocol": validation_protocol(cfg).lineage()}


def register_result(
    cfg: Experiment,
    tracker: RunTracker,
    checkpoint: Any,
    dataset: PreparedDataset,
    register: bool = True,
    latest: Any = None,
    val_metrics: dict[str, float] | None = None,
    patience_s: float = REGISTER_PATIENCE_S,
) -> TrainingSummary:
    """Register ``checkpoint``'s network (the best one) unless an earlier call registered that iteration.

    ``dataset`` is the dataset the run trained and validated on, as the run opened it (its lineage goes
    into the version's tags). ``latest`` is the run's newest checkpoint (what a resumed run continues from), when it differs;
    ``val_metrics`` replace the checkpoint's own validation (a re-score on ``cfg.val``'s protocol).

    A tracking server that is away is retried with backoff for ``patience_s`` seconds (each request makes
    one attempt meanwhile, with MLflow's usual timeout:
    :func:`pipelines.tracking.background.fail_fast_http_requests`); after that a
    :class:`~pipelines.tracking.background.TrackingUnavailableError` (one line, exit status 2) names the
    kept checkpoint and the one command that registers it later (``docs/cluster.md#tracking-server``).
    An attempt cut off between creating the version and tagging the run leaves a version that the
    retry registers again (a duplicate, never a loss).
    """
    if checkpoint is None:
        raise RuntimeError(f"run {cfg.run.name} finished without a checkpoint under {cfg.run.storage_path}")
    latest = latest or checkpoint
    with checkpoint.as_directory() as directory:
        model = load_checkpoint(Path(directory) / MODEL_FILE)
        state = read_training_state(Path(directory))
    with latest.as_directory() as directory:
        trained = int(read_training_state(Path(directory))["iteration"])
    iteration, val_metrics = int(state["iteration"]), dict(val_metrics or state["val_metrics"])

    def register_once() -> RegisteredVersion | None:
        if not register:
            return None
        return register_trained(
            tracker,
            model,
            iteration,
            registered_model=cfg.tracking.registered_model,
            val_metrics=val_metrics,
            alias=cfg.tracking.champion_alias,
            force_alias=cfg.tracking.force_champion,
            version_tags={
                "val_channel": cfg.val.channel,
                "dataset": cfg.data.path,
                "mlflow_run_id": tracker.run_id,
                **validation_lineage(cfg, dataset),
            },
        )

    deadline = time.monotonic() + patience_s
    try:
        # One attempt per try, but MLflow's own timeout: uploading model.pt to a healthy server that
        # proxies it to object storage may take far longer than the 10 s that detects an outage.
        with fail_fast_http_requests(short_timeout=False):
            registered = retry_until(register_once, deadline, f"registering {checkpoint.path}")
            retry_until(lambda: tracker.finish("FINISHED"), deadline, f"ending MLflow run {tracker.run_id}")
    except Exception as error:
        if not is_transient(error):
            raise
        raise TrackingUnavailableError(
            f"run {cfg.run.name} trained to iteration {trained}, but the tracking server {tracker.tracking_uri} "
            f"did not answer for {patience_s:.0f} s ({type(error).__name__}), so nothing was registered and "
            f"MLflow run {tracker.run_id} stays RUNNING; the checkpoint {checkpoint.path} is kept. Once the "
            f"server is back, register it with: {register_command(cfg, tracker.tracking_uri, checkpoint.path)}"
        ) from None
    return TrainingSummary(
        run_name=cfg.run.name,
        mlflow_run_id=tracker.run_id,
        tracking_uri=tracker.tracking_uri,
        iteration=trained,
        checkpoint_path=latest.path,
        val_metrics=val_metrics,
        registered=registered,
        best_iteration=iteration,
        best_checkpoint_path=checkpoint.path,
    )


def register_command(cfg: Experiment, tracking_uri: str, checkpoint_path: str) -> str:
    """The ``jobs/register_model.py`` command line that registers ``checkpoint_path`` as training would.

    No ``--alias``: the champion comparison is not repeated, the alias is moved by hand if wanted.
    """
    source, fetch = checkpoint_path, ""
    if is_uri(cfg.run.storage_path):  # register_model.py reads a local folder
        remote = f"{cfg.run.storage_path.rstrip('/')}/{cfg.run.name}/{Path(checkpoint_path).name}"
        source, fetch = (
            Path(checkpoint_path).name,
            f"copy {remote} to a local folder {Path(checkpoint_path).name}, then ",
        )
    words = [
        "python", "jobs/register_model.py", source, "--name", cfg.tracking.registered_model,
        "--experiment", cfg.tracking.experiment, "--mlflow-uri", tracking_uri,
    ]  # fmt: skip
    return fetch + " ".join(shlex.quote(word) for word in words)
