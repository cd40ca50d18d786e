"""The training loop every Ray Train worker runs, in the shape of Ray Train's own examples.

:func:`train_loop_per_worker` is ``setup`` then, per iteration, ``train_step`` followed by the periodic
work: ``log_progress`` every ``log_every``, ``validate`` every ``val_every`` and ``save_and_report``
every ``checkpoint_every`` iterations. The recipe is TTVSR Sec. 3.4 / VSR-Transformer supplementary Sec. D
(``docs/models.md#training-recipes``): Charbonnier loss, Adam with SPyNet at 0.125x and frozen at
first, cosine restarts, optional gradient clipping and bf16 autocast on GPUs.

Every collective (the loss mean, the validation gather) runs on tensors of the worker's device
(``ray.train.torch.get_device()``): NCCL serves CUDA tensors only. The loss is accumulated on the
device and read back once per ``log_every`` iterations, so a step never waits for the host.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipelines.common.console import quiet_logging
from pipelines.common.errors import DataError, TrainingDiverged
from pipelines.common.progress import format_eta
from pipelines.data.ingest import iter_val_clips, make_train_batch_iterator
from pipelines.data.manifest import PreparedDataset
from pipelines.evaluation.protocol import ValidationProtocol
from pipelines.evaluation.scoring import image_strip, score_clips, summarise
from pipelines.tracking import RunTracker
from pipelines.tracking.background import BackgroundTracker, fail_fast_http_requests, system_metrics
from pipelines.tracking.runs import metric_key
from pipelines.training.config import Experiment
from pipelines.training.recipe import build_optimizer, lr_schedule, set_spynet_trainable
from pipelines.training.state import (
    TrainingState,
    restore_training_checkpoint,
    run_folder,
    save_training_checkpoint,
    seed_everything,
)
from vsr_models import build_model
from vsr_models.losses import charbonnier_loss

logger = logging.getLogger("ray_vsr.train")

SCORE_METRIC = "checkpoint_score"
"""The reported metric Ray Train ranks checkpoints by (``CheckpointConfig.checkpoint_score_attribute``):
the validation PSNR of the checkpoint's weights, or :data:`UNVALIDATED` for a checkpoint saved between
validations. A finite number either way: Ray keeps it in a JSON snapshot to resume from, where NaN does
not survive."""
UNVALIDATED = -1.0  # below any PSNR


class StepCallback(Protocol):
    """Called on every worker after each optimizer step (monitoring, fault injection in tests)."""

    def __call__(self, iteration: int, model: nn.Module, rank: int) -> None: ...


def data_parallel(model: nn.Module, world_size: int, device: torch.device) -> nn.Module:
    """``model`` wrapped in DDP when there are several workers.

    DDP registers gradient hooks only for parameters that require grad when it is built, so the
    wrapper is rebuilt whenever SPyNet is frozen or unfrozen (construction re-broadcasts rank 0's
    weights, which are identical on every rank anyway).
    """
    if world_size == 1:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def mean_over_workers(value: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The mean of ``value`` over the workers; a collective on the worker's ``device``.

    NCCL (the backend on GPUs) serves CUDA tensors only: a tensor on another device than the worker's
    is refused here, on every backend, so CPU runs catch what would fail on the first GPU cluster.
    """
    if value.device != device:
        raise RuntimeError(f"collective on a {value.device} tensor in a worker on {device}: move it first")
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


class LossWindow:
    """Loss and training time since the last log line, kept on the device (no per-step host sync)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        self.steps = 0
        self.start = time.perf_counter()
        self.excluded = 0.0

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss.detach().float()
        self.steps += 1

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start - self.excluded

    @contextlib.contextmanager
    def excluding(self) -> Iterator[None]:
        """Leave the time spent inside out of the training throughput."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - started


@dataclass
class Worker:
    """Everything one worker's loop holds."""

    cfg: Experiment
    rank: int
    world_size: int
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    state: TrainingState
    tracker: BackgroundTracker  # queued: a tracking outage neither stalls nor fails a step
    batches: Iterator[dict[str, torch.Tensor]]
    step_callback: StepCallback | None
    validation: PreparedDataset  # the validation split's records, opened once by the driver
    network: nn.Module | None = None  # the model, DDP-wrapped when there are several workers
    spynet_trainable: bool | None = None

    @property
    def frames_per_step(self) -> int:
        data = self.cfg.data
        return data.batch_size * data.num_frames * 2**data.mirror_times * self.world_size


def setup(loop_config: dict[str, Any]) -> Worker:
    """Build the model, optimizer and schedule, resume from Ray Train's checkpoint, attach MLflow."""
    import ray.train
    import ray.train.torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    quiet_logging()  # Ray Train's and MLflow's INFO lines stay off the console (pipelines.common.console)
    cfg: Experiment = loop_config["experiment"]
    if loop_config.get("storage_marker") is not None:  # a node that joined after the driver's start check
        loop_config["storage_marker"].check_here()  # docs/cluster.md#shared-storage
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives use the current device
    if cfg.scaling.torch_threads:
        torch.set_num_threads(cfg.scaling.torch_threads)
    seed_everything(cfg.train.seed + rank)

    model = build_model(cfg.arch, **cfg.model_overrides()).to(device)
    if not cfg.model.spynet_pretrained:
        # Without the pretrained flow network of the released recipe, start from "no motion" rather
        # than from the arbitrary flows of random weights (vsr_models.spynet.SpyNet.start_from_zero_flow).
        model.spynet.start_from_zero_flow()
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = lr_schedule(optimizer, cfg.schedule)
    state = TrainingState(mlflow_run_id=loop_config["mlflow_run_id"])
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            restored = restore_training_checkpoint(
                Path(directory), rank, model, optimizer, scheduler, global_batch=cfg.global_batch
            )
        if restored.mlflow_run_id != state.mlflow_run_id:
            logger.warning(
                "checkpoint was logged to MLflow run %s; continuing in run %s (found by the run name)",
                restored.mlflow_run_id,
                state.mlflow_run_id,
            )
        state.iteration, state.val_metrics = restored.iteration, restored.val_metrics
        state.samples = restored.samples
    tracker = BackgroundTracker(
        RunTracker.attach(loop_config["tracking_uri"], state.mlflow_run_id, active=rank == 0)
    )
    if checkpoint is not None:
        tracker.log_metrics({"resumed_from_iteration": state.iteration}, step=state.iteration)
        if rank == 0:
            logger.info("resumed from iteration %d", state.iteration)
            tracker = SkipLoggedSteps(tracker, _last_logged_step(loop_config, state))
    # Endless: crops drawn in Ray Data (the driver's sampling plan), collated onto this worker's device.
    batches = make_train_batch_iterator(
        ray.train.get_dataset_shard("train"),
        lr_patch=cfg.data.lr_patch,
        num_frames=cfg.data.num_frames,
        batch_size=cfg.data.batch_size,
        scale=loop_config["scale"],
        seed=cfg.train.seed,
        mirror_times=cfg.data.mirror_times,
        samples_per_clip=cfg.data.samples_per_clip,
        shuffle_buffer=cfg.data.shuffle_buffer,
        device=device,
    )
    return Worker(
        cfg, rank, world_size, device, model, optimizer, scheduler, state, tracker, batches,
        loop_config.get("step_callback"), loop_config["validation"],
    )  # fmt: skip


class SkipLoggedSteps:
    """A tracker that drops the metrics and images of steps the run logged before it was stopped: a
    resumed run re-does the steps after its checkpoint, and MLflow would keep both values of each."""

    def __init__(self, tracker: Any, logged_until: int) -> None:
        self.tracker, self.logged_until = tracker, logged_until

    def log_metrics(self, metrics: Any, step: int) -> None:
        if step > self.logged_until:
            self.tracker.log_metrics(metrics, step=step)

    def log_image(self, image: Any, key: str, step: int) -> None:
        if step > self.logged_until:
            self.tracker.log_image(image, key=key, step=step)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tracker, name)


def _last_logged_step(loop_config: dict[str, Any], state: TrainingState) -> int:
    """The last step of the run's ``loss`` history in MLflow (one read, at a resume), else the checkpoint's."""
    try:
        history = RunTracker.attach(loop_config["tracking_uri"], state.mlflow_run_id).metric_history("loss")
    except Exception:  # tracking away: the re-done steps may then be logged twice, nothing worse
        logger.warning("could not read the run's loss history: re-done steps may be logged twice")
        return state.iteration
    return max([state.iteration, *(step for step, _ in history)])


def train_step(worker: Worker, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One optimizer step on one batch; returns the loss (still on the device)."""
    cfg, device = worker.cfg, worker.device
    trainable = worker.state.iteration >= cfg.optim.fix_spynet_iters
    if trainable != worker.spynet_trainable:
        set_spynet_trainable(worker.model, trainable)
        worker.network = data_parallel(worker.model, worker.world_size, device)
        worker.spynet_trainable = trainable
    lr_frames = batch["lr"].to(device, non_blocking=True)
    gt_frames = batch["gt"].to(device, non_blocking=True)
    autocast = device.type == "cuda" and cfg.train.precision == "bf16"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        # the ingestion mirror-extends every clip or none: the model need not compare frames to know
        sr_frames = worker.network(lr_frames, mirrored=cfg.data.mirror_times > 0)
    loss = charbonnier_loss(sr_frames.float(), gt_frames, eps=cfg.loss.eps, reduction=cfg.loss.reduction)
    worker.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.optim.grad_clip_norm is not None:
        nn.utils.clip_grad_norm_(worker.model.parameters(), cfg.optim.grad_clip_norm)
    worker.optimizer.step()
    worker.scheduler.step()
    worker.state.iteration += 1
    worker.state.samples += cfg.data.batch_size * worker.world_size  # where a resumed crop plan starts
    return loss


def log_progress(worker: Worker, window: LossWindow) -> dict[str, float]:
    """Loss (mean over workers), learning rate and frames/s since the last call, to MLflow and the log."""
    elapsed = window.seconds
    total = worker.cfg.train.total_iters
    metrics = {
        "loss": float(mean_over_workers(window.loss_sum / window.steps, worker.device)),
        "lr": worker.optimizer.param_groups[0]["lr"],
        "frames_per_s": worker.frames_per_step * window.steps / elapsed,
    }
    worker.tracker.log_metrics(metrics, step=worker.state.iteration)
    if worker.rank == 0:
        eta = elapsed / window.steps * (total - worker.state.iteration)
        logger.info(
            "iter %d/%d  loss %.5f  lr %.3g  %.1f frames/s  ETA %s",
            worker.state.iteration, total, metrics["loss"], metrics["lr"], metrics["frames_per_s"],
            format_eta(eta),
        )  # fmt: skip
    window.reset()
    return metrics


def validation_protocol(cfg: Experiment) -> ValidationProtocol:
    """How the run scores its validation clips (``data.val_split`` and the ``val`` section): what the loop
    scores with and what a registered version's ``val_protocol`` tag records."""
    val = cfg.val
    return ValidationProtocol(
        split=cfg.data.val_split,
        channel=val.channel,
        crop_border=val.crop_border,
        centre_frame_only=val.centre_frame_only,
        mirror_times=val.mirror_times,
        max_clips=val.max_clips,
        max_frames=val.max_frames,
        chunk=val.chunk,
    )


def validate(worker: Worker) -> dict[str, float]:
    """Score the validation clips, each worker its share; every worker returns the dataset means."""
    cfg, tracker = worker.cfg, worker.tracker
    strips: list[tuple[str, np.ndarray]] = []

    def keep_strip(clip_id: str, bicubic: torch.Tensor, sr: torch.Tensor, gt: torch.Tensor) -> None:
        if len(strips) < cfg.val.num_image_strips:
            centre = sr.shape[0] // 2
            strips.append((clip_id, image_strip(bicubic[centre], sr[centre], gt[centre])))

    # The validation split's records as the driver read them: the manifest is not read again here.
    protocol = validation_protocol(cfg)
    clips = iter_val_clips(
        worker.validation,
        split=protocol.split,
        rank=worker.rank,
        world_size=worker.world_size,
        max_clips=protocol.max_clips,
    )
    scores = score_clips(worker.model, clips, protocol, on_clip=keep_strip if tracker.active else None)
    if worker.world_size > 1:
        # Python objects: all_gather_object moves them through tensors on the current device.
        gathered: list[Any] = [None] * worker.world_size
        dist.all_gather_object(gathered, scores)
        scores = [clip for part in gathered for clip in part]
    metrics = summarise(scores, cfg.val.channel).metrics()
    for clip_id, strip in strips:
        # clip ids come from the dataset: mapped to keys MLflow accepts (the first validation would fail)
        tracker.log_image(strip, key=f"val/{metric_key(clip_id)}", step=worker.state.iteration)
    tracker.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step=worker.state.iteration)
    if worker.rank == 0:
        logger.info(
            "iter %d  validation PSNR %.2f dB (bicubic %.2f), SSIM %.4f (%s)",
            worker.state.iteration, metrics["psnr"], metrics["bicubic_psnr"], metrics["ssim"],
            cfg.val.channel.upper(),
        )  # fmt: skip
    return metrics


def save_and_report(worker: Worker, metrics: dict[str, float]) -> None:
    """Write this worker's part of a checkpoint and report it (a barrier: every worker calls it)."""
    import ray.train

    iteration = worker.state.iteration
    name = f"checkpoint_{iteration:08d}"
    try:
        with tempfile.TemporaryDirectory() as directory:
            save_training_checkpoint(
                Path(directory), worker.rank, worker.model, worker.optimizer, worker.scheduler, worker.state
            )
            ray.train.report(
                {"iteration": iteration, **metrics},
                checkpoint=ray.train.Checkpoint.from_directory(directory),
                checkpoint_dir_name=name,
            )
    except OSError as error:  # pyarrow's copy to the storage reports a full disk without an errno
        if error.errno != errno.ENOSPC and "No space left on device" not in str(error):
            raise
        cfg = worker.cfg
        where = error.filename or run_folder(cfg.run.storage_path, cfg.run.name).join(name).uri
        raise DataError(
            f"no space left on the device while writing {where} (checkpoint of iteration {iteration}): free "
            "space there or choose another --storage-path; a re-run resumes from the last complete checkpoint"
        ) from None


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The training loop each Ray Train worker runs (see the module docstring).

    MLflow is reached through queues drained by background threads (:mod:`pipelines.tracking.background`)
    whose requests fail fast and are retried there: with the tracking server away, training steps on at
    its normal rate and the values logged meanwhile are sent when it is back. The queue is flushed at the
    end, waiting a bounded time (a shorter one when the loop failed, so a restart is not held up).
    """
    with fail_fast_http_requests():
        worker = setup(loop_config)
        try:
            with _system_metrics(worker, loop_config):
                _train(worker)
        except BaseException:
            worker.tracker.close(timeout=5.0)
            raise
        worker.tracker.close()


@contextlib.contextmanager
def _system_metrics(worker: Worker, loop_config: dict[str, Any]) -> Iterator[None]:
    """CPU / GPU / memory of every node, from its first worker, to the run (``tracking.system_metrics_interval``),
    through a background queue, at the training iteration of each sample."""
    import ray.train

    interval = worker.cfg.tracking.system_metrics_interval
    context = ray.train.get_context()
    if interval is None or context.get_local_rank() != 0:
        yield
        return
    # Rank 0 shares its queue (one flush at the end); the first worker of another node has its own.
    own = worker.rank != 0
    node = (
        BackgroundTracker(RunTracker.attach(loop_config["tracking_uri"], worker.state.mlflow_run_id))
        if own
        else worker.tracker
    )
    try:
        with system_metrics(
            node, f"node{context.get_node_rank()}", step=lambda: worker.state.iteration, interval=interval
        ):
            yield
    except BaseException:
        if own:
            node.close(timeout=5.0)
        raise
    if own:
        node.close()


def check_finite_loss(worker: Worker, loss: float, last_checkpoint: int | None) -> None:
    """Stop the run when the loss (the mean over the workers, read back at ``log_every`` and at
    checkpoints only: no per-step host sync) is NaN or infinite, before a checkpoint holds the weights.

    Raises:
        TrainingDiverged: on every worker alike (the loss is the same all-reduced value on each).
    """
    if math.isfinite(loss):
        return
    cfg = worker.cfg
    if last_checkpoint is None:
        where = "no checkpoint was written before it, so a re-run starts over"
    else:
        folder = run_folder(cfg.run.storage_path, cfg.run.name).join(f"checkpoint_{last_checkpoint:08d}").uri
        where = f"the last good checkpoint is {folder}, which a re-run of the same name resumes from"
    raise TrainingDiverged(
        f"run {cfg.run.name} diverged: the loss was {loss} by iteration {worker.state.iteration}; {where} "
        f"(lower optim.lr, now {cfg.optim.lr:g}, or set optim.grad_clip_norm)"
    )


def _train(worker: Worker) -> None:
    """The iterations of :func:`train_loop_per_worker`, from the resumed one to ``train.total_iters``."""
    import ray.train

    train = worker.cfg.train
    window = LossWindow(worker.device)
    last_checkpoint = worker.state.iteration or None  # a resumed run starts from a checkpoint
    while worker.state.iteration < train.total_iters:
        window.add(train_step(worker, next(worker.batches)))
        iteration = worker.state.iteration
        if worker.step_callback is not None:
            worker.step_callback(iteration, worker.model, worker.rank)
        done = iteration == train.total_iters
        metrics: dict[str, float] = {}
        if iteration % train.log_every == 0 or done:
            metrics = log_progress(worker, window)
            check_finite_loss(worker, metrics["loss"], last_checkpoint)
        validated = iteration % train.val_every == 0 or done
        if validated:
            with window.excluding():
                worker.state.val_metrics = validate(worker)
            metrics |= {f"val_{k}": v for k, v in worker.state.val_metrics.items()}
        # ray.train.report is a barrier and waits for the controller to take the previous report, so
        # it is called at checkpoints and validations only; MLflow gets the loss every log_every steps.
        if iteration % train.checkpoint_every == 0 or done:
            # Ray keeps the best checkpoints by their validation PSNR, and always the latest.
            score = metrics.get("val_psnr", UNVALIDATED) if validated else UNVALIDATED
            if "loss" not in metrics and window.steps:  # the steps since the last log_every
                window_loss = mean_over_workers(window.loss_sum / window.steps, worker.device)
                check_finite_loss(worker, float(window_loss), last_checkpoint)
            with window.excluding():
                save_and_report(worker, {SCORE_METRIC: score} | metrics)
            last_checkpoint = iteration
        elif validated:
            with window.excluding():
                ray.train.report({"iteration": iteration, **metrics})
