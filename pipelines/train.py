"""Training TTVSR and VSR-Transformer on Ray Train with the released recipes.

One runner serves both networks (``jobs/train_ttvsr.py``, ``jobs/train_vsrt.py``):

- :func:`run_training` (driver): checks the prepared dataset, finds or creates the MLflow run named
  ``run.name``, starts a :class:`ray.train.torch.TorchTrainer` (DDP: NCCL on GPUs, gloo on CPUs)
  and, when training ends, registers the final network with the ``champion`` alias if its
  validation PSNR is the best so far (:mod:`pipelines.tracking`).
- :func:`train_loop_per_worker` (every worker): the iteration-based loop of TTVSR Sec. 4.1 /
  VSR-Transformer Sec. 4.1: Charbonnier loss, Adam (0.9, 0.99) with SPyNet in its own parameter
  group at 0.125x the learning rate and frozen for the first ``fix_spynet_iters`` iterations,
  cosine annealing with restarts (:class:`CosineRestartFactor`), optional gradient clipping and
  bf16 autocast on GPUs. Validation scores whole held-out clips (sharded over the workers).
- Checkpoints go through ``ray.train.report`` to ``<storage_path>/<name>/checkpoint_<iteration>``:
  ``model.pt`` (``vsr_models.save_checkpoint``, loadable on its own), ``training_state.pt``
  (optimizer, scheduler, iteration, MLflow run id, last validation) and ``rng_rank<r>.pt`` per worker.
  A failed worker is replaced and the loop resumes from the last checkpoint
  (``FailureConfig.max_failures``); a stopped run started again with the same name resumes likewise
  and keeps logging to the same MLflow run.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR

from pipelines.config import ConfigError, config_to_dict, flatten
from pipelines.evaluate import image_strip, score_clips, summarise
from pipelines.experiment import (
    Experiment,
    OptimSection,
    ScheduleSection,
    add_experiment_args,
    experiment_from_args,
    resolve_paths,
)
from pipelines.tracking import (
    RegisteredVersion,
    RunTracker,
    file_fingerprint,
    register_model,
    resolve_tracking_uri,
)
from vsr_models.losses import charbonnier_loss

logger = logging.getLogger("ray_vsr.train")

SPYNET_PREFIX = "spynet."  # parameter-name prefix of the flow network in both models
MODEL_FILE = "model.pt"
STATE_FILE = "training_state.pt"
REGISTERED_ITERATION_TAG = "registered_iteration"


class DatasetMissingError(FileNotFoundError):
    """The config points at a folder with no prepared dataset; the message names the command to run."""


class StepCallback(Protocol):
    """Called on every worker after each optimizer step (monitoring, fault injection in tests)."""

    def __call__(self, iteration: int, model: nn.Module, rank: int) -> None: ...


# -- optimisation recipe -----------------------------------------------------------------------------


def build_optimizer(model: nn.Module, optim: OptimSection) -> torch.optim.Adam:
    """Adam with two parameter groups: the network at ``lr`` and SPyNet (``spynet.*``) at ``lr * spynet_lr_mult``."""
    spynet = [p for name, p in model.named_parameters() if name.startswith(SPYNET_PREFIX)]
    rest = [p for name, p in model.named_parameters() if not name.startswith(SPYNET_PREFIX)]
    groups = [{"params": rest, "lr": optim.lr, "name": "network"}]
    if spynet:
        groups.append({"params": spynet, "lr": optim.lr * optim.spynet_lr_mult, "name": "spynet"})
    return torch.optim.Adam(groups, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)


@dataclass
class CosineRestartFactor:
    """Learning-rate multiplier of cosine annealing with warm restarts (BasicSR's CosineAnnealingRestartLR).

    In period ``k`` (starting at iteration ``s_k``, length ``T_k``, restart weight ``w_k``)::

        lr(i) = eta_min + w_k * (base_lr - eta_min) * (1 + cos(pi * (i - s_k) / T_k)) / 2

    and ``eta_min`` after the last period. Returned as ``lr(i) / base_lr`` for ``LambdaLR``; one
    instance per parameter group since ``eta_min`` is absolute (the SPyNet group has a smaller base).
    """

    base_lr: float
    periods: list[int]
    restart_weights: list[float]
    eta_min: float

    def __call__(self, iteration: int) -> float:
        start = 0
        for period, weight in zip(self.periods, self.restart_weights, strict=True):
            if iteration < start + period:
                cosine = 0.5 * (1 + math.cos(math.pi * (iteration - start) / period))
                return (self.eta_min + weight * (self.base_lr - self.eta_min) * cosine) / self.base_lr
            start += period
        return self.eta_min / self.base_lr


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: ScheduleSection) -> LambdaLR:
    """An iteration-stepped ``LambdaLR`` with one :class:`CosineRestartFactor` per parameter group."""
    factors = [
        CosineRestartFactor(
            group["lr"], list(schedule.periods), list(schedule.restart_weights), schedule.eta_min
        )
        for group in optimizer.param_groups
    ]
    return LambdaLR(optimizer, factors)


def set_spynet_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze the flow network (TTVSR Sec. 4.1: fixed for the first 5,000 iterations)."""
    for name, parameter in model.named_parameters():
        if name.startswith(SPYNET_PREFIX):
            parameter.requires_grad_(trainable)


def data_parallel(model: nn.Module, world_size: int, device: torch.device) -> nn.Module:
    """``model`` wrapped in DDP when there are several workers.

    DDP registers gradient hooks only for parameters that require grad when it is built, so the
    wrapper is rebuilt whenever SPyNet is frozen or unfrozen (construction re-broadcasts rank 0's
    weights, which are identical on every rank anyway).
    """
    if world_size == 1:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


# -- checkpoints ---------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainingState:
    """What a checkpoint holds beside the weights."""

    iteration: int = 0
    mlflow_run_id: str | None = None
    val_metrics: dict[str, float] = field(default_factory=dict)


def save_training_checkpoint(
    directory: Path,
    rank: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    state: TrainingState,
) -> None:
    """Write this worker's part of a checkpoint; Ray merges the workers' folders into one."""
    from vsr_models import save_checkpoint

    if rank == 0:
        save_checkpoint(model, directory / MODEL_FILE, extra={"iteration": state.iteration})
        torch.save(
            {
                "iteration": state.iteration,
                "mlflow_run_id": state.mlflow_run_id,
                "val_metrics": state.val_metrics,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
            },
            directory / STATE_FILE,
        )
    torch.save(_rng_state(), directory / f"rng_rank{rank}.pt")


def read_training_state(directory: Path) -> dict[str, Any]:
    """``training_state.pt`` of a checkpoint folder (plain tensors and Python values only)."""
    return torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)


def latest_checkpoint_iteration(run_dir: Path) -> int:
    """The iteration of the newest complete checkpoint under a run's storage folder (0 if none)."""
    iterations = [
        int(read_training_state(state.parent)["iteration"])
        for state in run_dir.glob(f"checkpoint_*/{STATE_FILE}")
    ]
    return max(iterations, default=0)


def restore_training_checkpoint(
    directory: Path, rank: int, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: LambdaLR
) -> TrainingState:
    """Load weights, optimizer, scheduler and this rank's RNG state from a checkpoint folder."""
    from vsr_models import load_checkpoint

    model.load_state_dict(load_checkpoint(directory / MODEL_FILE).state_dict())
    saved = read_training_state(directory)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    rng_file = directory / f"rng_rank{rank}.pt"
    if rng_file.is_file():  # absent when the run restarts with more workers
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return TrainingState(saved["iteration"], saved["mlflow_run_id"], dict(saved["val_metrics"]))


# -- the loop on every worker ------------------------------------------------------------------------


class _ThroughputWindow:
    """Loss and training time since the last log line; validation and checkpoints are not counted."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64)
        self.steps = 0
        self.start = time.perf_counter()
        self.excluded = 0.0

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss.detach().double().cpu()
        self.steps += 1

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start - self.excluded

    @contextmanager
    def excluding(self) -> Iterator[None]:
        """Leave the time spent inside out of the training throughput."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - started


def _format_eta(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h{minutes:02d}m" if days else f"{hours:02d}h{minutes:02d}m{seconds:02d}s"


def _mean_over_workers(value: torch.Tensor) -> float:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return float(value)


def validate(
    model: nn.Module, cfg: Experiment, rank: int, world_size: int, tracker: RunTracker, iteration: int
) -> dict[str, float]:
    """Score the validation clips, each worker its share; every worker returns the dataset means."""
    from pipelines.ingest import iter_val_clips

    strips: list[tuple[str, np.ndarray]] = []

    def keep_strip(clip_id: str, bicubic: torch.Tensor, sr: torch.Tensor, gt: torch.Tensor) -> None:
        if len(strips) < cfg.val.num_image_strips:
            centre = sr.shape[0] // 2
            strips.append((clip_id, image_strip(bicubic[centre], sr[centre], gt[centre])))

    # verify=False: run_training checked every shard's sha256 once before training started.
    clips = iter_val_clips(
        cfg.data.path,
        split=cfg.data.val_split,
        verify=False,
        rank=rank,
        world_size=world_size,
        max_clips=cfg.val.max_clips,
    )
    scores = score_clips(
        model,
        clips,
        channel=cfg.val.channel,
        crop_border=cfg.val.crop_border,
        centre_frame_only=cfg.val.centre_frame_only,
        mirror_times=cfg.val.mirror_times,
        max_frames=cfg.val.max_frames,
        chunk=cfg.val.chunk,
        on_clip=keep_strip if tracker.active else None,
    )
    if world_size > 1:
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, scores)
        scores = [clip for part in gathered for clip in part]
    metrics = summarise(scores, cfg.val.channel).metrics()
    for clip_id, strip in strips:
        tracker.log_image(strip, key=f"val/{clip_id}", step=iteration)
    return metrics


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The training loop each Ray Train worker runs (see the module docstring)."""
    import ray.train
    import ray.train.torch

    from pipelines.ingest import make_train_batch_iterator
    from vsr_models import build_model

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg: Experiment = loop_config["experiment"]
    step_callback: StepCallback | None = loop_config.get("step_callback")
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives (all_gather_object in validation) use it
    if cfg.scaling.torch_threads:
        torch.set_num_threads(cfg.scaling.torch_threads)
    _seed_everything(cfg.train.seed + rank)

    model = build_model(cfg.arch, **cfg.model_overrides()).to(device)
    if not getattr(cfg.model, "spynet_pretrained", None):
        # Without the pretrained flow network of the released recipe, start from "no motion" rather
        # than from the arbitrary flows of random weights (vsr_models.spynet.SpyNet.start_from_zero_flow).
        model.spynet.start_from_zero_flow()
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.schedule)
    state = TrainingState(mlflow_run_id=loop_config["mlflow_run_id"])
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            restored = restore_training_checkpoint(Path(directory), rank, model, optimizer, scheduler)
        if restored.mlflow_run_id != state.mlflow_run_id:
            logger.warning(
                "checkpoint was logged to MLflow run %s; continuing in run %s (found by the run name)",
                restored.mlflow_run_id,
                state.mlflow_run_id,
            )
        state.iteration, state.val_metrics = restored.iteration, restored.val_metrics
    tracker = RunTracker.attach(loop_config["tracking_uri"], state.mlflow_run_id, active=rank == 0)
    if checkpoint is not None:
        tracker.log_metrics({"resumed_from_iteration": state.iteration}, step=state.iteration)
        if rank == 0:
            logger.info("resumed from iteration %d", state.iteration)

    train = cfg.train
    frames_per_step = cfg.data.batch_size * cfg.data.num_frames * 2**cfg.data.mirror_times * world_size
    # Endless: the shard is iterated epoch after epoch; crops were drawn in Ray Data (see run_training).
    batches = make_train_batch_iterator(
        ray.train.get_dataset_shard("train"),
        lr_patch=cfg.data.lr_patch,
        num_frames=cfg.data.num_frames,
        batch_size=cfg.data.batch_size,
        scale=loop_config["scale"],
        seed=cfg.train.seed,
        mirror_times=cfg.data.mirror_times,
    )
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and train.precision == "bf16"
    )
    network, spynet_trainable = model, None
    window = _ThroughputWindow()
    while state.iteration < train.total_iters:
        trainable = state.iteration >= cfg.optim.fix_spynet_iters
        if trainable != spynet_trainable:
            set_spynet_trainable(model, trainable)
            network, spynet_trainable = data_parallel(model, world_size, device), trainable

        batch = next(batches)
        lr_frames = batch["lr"].to(device, non_blocking=True)
        gt_frames = batch["gt"].to(device, non_blocking=True)
        with autocast:
            sr_frames = network(lr_frames)
        loss = charbonnier_loss(sr_frames.float(), gt_frames, eps=cfg.loss.eps, reduction=cfg.loss.reduction)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip_norm)
        optimizer.step()
        scheduler.step()
        state.iteration += 1
        window.add(loss)
        if step_callback is not None:
            step_callback(state.iteration, model, rank)

        done = state.iteration == train.total_iters
        metrics: dict[str, float] = {}
        if state.iteration % train.log_every == 0 or done:
            elapsed = window.seconds
            metrics = {
                "loss": _mean_over_workers(window.loss_sum / window.steps),
                "lr": optimizer.param_groups[0]["lr"],
                "frames_per_s": frames_per_step * window.steps / elapsed,
            }
            tracker.log_metrics(metrics, step=state.iteration)
            if rank == 0:
                eta = elapsed / window.steps * (train.total_iters - state.iteration)
                logger.info(
                    "iter %d/%d  loss %.5f  lr %.3g  %.1f frames/s  ETA %s",
                    state.iteration,
                    train.total_iters,
                    metrics["loss"],
                    metrics["lr"],
                    metrics["frames_per_s"],
                    _format_eta(eta),
                )
            window.reset()
        validated = state.iteration % train.val_every == 0 or done
        if validated:
            with window.excluding():
                state.val_metrics = validate(model, cfg, rank, world_size, tracker, state.iteration)
            tracker.log_metrics({f"val/{k}": v for k, v in state.val_metrics.items()}, step=state.iteration)
            metrics |= {f"val_{k}": v for k, v in state.val_metrics.items()}
            if rank == 0:
                logger.info(
                    "iter %d  validation PSNR %.2f dB (bicubic %.2f), SSIM %.4f (%s)",
                    state.iteration,
                    state.val_metrics["psnr"],
                    state.val_metrics["bicubic_psnr"],
                    state.val_metrics["ssim"],
                    cfg.val.channel.upper(),
                )
        # ray.train.report is a barrier and waits for the controller to take the previous report, so
        # it is called at checkpoints and validations only; MLflow gets the loss every log_every steps.
        if state.iteration % train.checkpoint_every == 0 or done:
            with window.excluding(), tempfile.TemporaryDirectory() as directory:
                save_training_checkpoint(Path(directory), rank, model, optimizer, scheduler, state)
                ray.train.report(
                    {"iteration": state.iteration, **metrics},
                    checkpoint=ray.train.Checkpoint.from_directory(directory),
                    checkpoint_dir_name=f"checkpoint_{state.iteration:08d}",
                )
        elif validated:
            with window.excluding():
                ray.train.report({"iteration": state.iteration, **metrics})


# -- the driver ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingSummary:
    """What one call of :func:`run_training` produced."""

    run_name: str
    mlflow_run_id: str
    tracking_uri: str
    iteration: int
    checkpoint_path: str
    val_metrics: dict[str, float]
    registered: RegisteredVersion | None  # None when this final iteration was registered before

    def describe(self) -> str:
        lines = [
            f"run {self.run_name}: {self.iteration} iterations, checkpoint {self.checkpoint_path}",
            f"MLflow run {self.mlflow_run_id} in {self.tracking_uri}",
        ]
        if self.val_metrics:
            lines.append(
                f"validation PSNR {self.val_metrics['psnr']:.2f} dB / SSIM {self.val_metrics['ssim']:.4f} "
                f"(bicubic {self.val_metrics['bicubic_psnr']:.2f} dB / {self.val_metrics['bicubic_ssim']:.4f})"
            )
        if self.registered is not None:
            lines.append(self.registered.describe())
        return "\n".join(lines)


def check_dataset(data_dir: str | Path, splits: list[str]) -> Any:
    """The dataset's manifest, or :class:`DatasetMissingError` naming the command that prepares it."""
    from pipelines.prepare import load_manifest

    manifest_file = Path(data_dir) / "manifest.json"
    if not manifest_file.is_file():
        raise DatasetMissingError(
            f"no prepared dataset at {data_dir} (no manifest.json). Prepare it first, e.g. "
            f"`python jobs/prepare_data.py --dataset sample --output {data_dir}` for the built-in sample, or "
            f"`python jobs/prepare_data.py --source <your data> --output {data_dir}`; "
            "then point data.path at it (--set data.path=...)"
        )
    manifest = load_manifest(data_dir)
    for split in splits:
        if split not in manifest.splits:
            raise ConfigError(
                f"split '{split}' is not in {data_dir} (its splits: {', '.join(manifest.splits)})"
            )
    return manifest


def example_input(cfg: Experiment) -> np.ndarray:
    """A small ``(1, t, 3, h, w)`` LR input the network accepts, for the MLflow signature and example."""
    frames = getattr(cfg.model, "num_frames", 3)
    size = getattr(cfg.model, "spatial_size", 64)
    return np.random.default_rng(0).random((1, frames, 3, size, size), dtype=np.float32)


def init_ray(address: str | None) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=address)


def run_training(
    cfg: Experiment,
    *,
    step_callback: StepCallback | None = None,
    callbacks: Sequence[Any] = (),
    register: bool = True,
) -> TrainingSummary:
    """Train (or resume) the run ``cfg.run.name`` on Ray Train and register the result in MLflow."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipelines.ingest import CropSpec, train_dataset

    cfg = resolve_paths(cfg)
    manifest = check_dataset(cfg.data.path, [cfg.data.train_split, cfg.data.val_split])
    manifest_file = Path(cfg.data.path) / "manifest.json"
    tracking_uri = resolve_tracking_uri(cfg.tracking.uri)
    tracker = RunTracker.start(tracking_uri, cfg.tracking.experiment, cfg.run.name, tags={"arch": cfg.arch})
    tracker.log_params(flatten(cfg) | {"arch": cfg.arch, "data.fingerprint": file_fingerprint(manifest_file)})
    tracker.log_dict(config_to_dict(cfg), "config.yaml")
    tracker.log_artifact(manifest_file, "dataset")

    init_ray(cfg.run.address)
    # Crops are drawn in Ray Data tasks (off the training workers' CPUs), seeded by (seed, epoch, clip).
    # A resumed run starts its epoch numbering past what it has seen (Ray Data counts from 0 again).
    first_epoch = latest_checkpoint_iteration(Path(cfg.run.storage_path) / cfg.run.name)
    crop = CropSpec(
        cfg.data.num_frames, cfg.data.lr_patch, cfg.train.seed, True, cfg.data.samples_per_clip, first_epoch
    )
    resources = {"CPU": cfg.scaling.cpus_per_worker} | ({"GPU": 1} if cfg.scaling.use_gpu else {})
    # Each epoch is one Ray Data execution with the same plan: do not print it every epoch.
    ray.data.DataContext.get_current().print_on_execution_start = False
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "experiment": cfg,
            "scale": int(manifest.scale),
            "mlflow_run_id": tracker.run_id,
            "tracking_uri": tracking_uri,
            "step_callback": step_callback,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=cfg.run.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.num_to_keep),
            callbacks=list(callbacks),
        ),
        datasets={"train": train_dataset(cfg.data.path, split=cfg.data.train_split, crop=crop, verify=False)},
    )
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except Exception:
        tracker.finish("FAILED")
        raise
    return register_result(cfg, tracker, result.checkpoint, register=register)


def register_result(
    cfg: Experiment, tracker: RunTracker, checkpoint: Any, register: bool = True
) -> TrainingSummary:
    """Register the latest checkpoint's network unless this iteration was registered by an earlier call."""
    from vsr_models import load_checkpoint

    if checkpoint is None:
        raise RuntimeError(f"run {cfg.run.name} finished without a checkpoint under {cfg.run.storage_path}")
    with checkpoint.as_directory() as directory:
        model = load_checkpoint(Path(directory) / MODEL_FILE)
        state = read_training_state(Path(directory))
    iteration, val_metrics = int(state["iteration"]), dict(state["val_metrics"])
    registered = None
    if register and tracker.tags().get(REGISTERED_ITERATION_TAG) != str(iteration):
        registered = register_model(
            tracker,
            model,
            registered_model=cfg.tracking.registered_model,
            input_example=example_input(cfg),
            val_metrics=val_metrics,
            alias=cfg.tracking.champion_alias,
            version_tags={
                "iteration": iteration,
                "val_channel": cfg.val.channel,
                "dataset": cfg.data.path,
                "mlflow_run_id": tracker.run_id,
            },
        )
        tracker.set_tags({REGISTERED_ITERATION_TAG: iteration, "registered_version": registered.version})
    tracker.finish("FINISHED")
    return TrainingSummary(
        run_name=cfg.run.name,
        mlflow_run_id=tracker.run_id,
        tracking_uri=tracker.tracking_uri,
        iteration=iteration,
        checkpoint_path=checkpoint.path,
        val_metrics=val_metrics,
        registered=registered,
    )


def main(cls: type[Experiment], argv: list[str] | None = None, description: str | None = None) -> int:
    """Command-line entry of ``jobs/train_<arch>.py``: parse, load the config, train, print the summary."""
    parser = add_experiment_args(
        argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    args = parser.parse_args(argv)
    try:
        cfg = experiment_from_args(cls, args)
        summary = run_training(cfg)
    except (ConfigError, DatasetMissingError) as err:
        parser.exit(2, f"error: {err}\n")
    print(summary.describe())
    return 0
