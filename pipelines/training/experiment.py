"""Typed experiment configs: what one training run of TTVSR or VSR-Transformer is made of.

A YAML file under ``configs/`` loads into :class:`TTVSRExperiment` or :class:`VSRTExperiment` with
:func:`pipelines.common.config.load_config`; every field can be overridden with ``--set section.key=value``.
The defaults are the released recipes (``docs/models.md#training-recipes``):

- TTVSR (Sec. 3.4 of the paper, mmediting config): Charbonnier loss (eps 1e-12, mean), Adam
  (0.9, 0.99), lr 2e-4 with SPyNet at 0.125x and frozen for the first 5,000 iterations, cosine
  annealing to 1e-7 over 400k iterations, 50-frame sequences of 64x64 LR crops.
- VSR-Transformer (supplementary Sec. D, BasicSR config) differs in :class:`VSRTExperiment`: 5 frames, Charbonnier
  sum, cosine restarts every 300k iterations with weights 1, 0.5, 0.5, 0.5.

The command-line flags every training job shares (``--num-workers``, ``--gpus``, ``--name``, ...) are
added here too, so ``jobs/train_*.py`` stay three lines long.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from pipelines.common.cli import flag_overrides, job_parser
from pipelines.common.config import load_config, parse_override
from pipelines.common.errors import ConfigError
from vsr_models.ttvsr import TTVSRConfig
from vsr_models.vsrt import VSRTConfig


@dataclass
class DataSection:
    """The prepared dataset (``jobs/prepare_data.py`` output) and the training crops drawn from it."""

    path: str = "data/reds_bi"  # folder holding manifest.json and shards/: a path or a URI (s3://...)
    train_split: str = "train"
    val_split: str = "val"
    num_frames: int = 50  # frames per training sequence
    lr_patch: int = 64  # LR crop side; the GT crop is scale x larger (256 for x4)
    batch_size: int = 1  # sequences per worker per iteration
    samples_per_clip: int = 4  # crops drawn from each clip each time it is read (one read, several crops)
    mirror_times: int = (
        0  # append the reversed sequence this many times (Vimeo-90K: TTVSR feeds 7 -> 28 frames, 2)
    )
    shuffle_buffer: int = 8  # samples each worker shuffles through (crops of one clip arrive together)
    verify: bool = False  # check every shard's sha256 at start (--verify-data), in Ray tasks

    def __post_init__(self) -> None:
        for name in ("num_frames", "lr_patch", "batch_size", "samples_per_clip"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be at least 1, got {getattr(self, name)}")
        if self.mirror_times < 0:
            raise ValueError(f"data.mirror_times must be 0 or more, got {self.mirror_times}")


@dataclass
class OptimSection:
    """Adam with a separate SPyNet parameter group (TTVSR Sec. 3.4: flow net at 0.125x, frozen first)."""

    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    spynet_lr_mult: float = 0.125
    fix_spynet_iters: int = 5000  # SPyNet has requires_grad False for iterations [0, fix_spynet_iters)
    grad_clip_norm: float | None = None  # clip the global gradient norm when set

    def __post_init__(self) -> None:
        # A NaN or infinite rate would only show as a NaN loss once the workers run: refused here.
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"optim.lr must be a positive finite number, got {self.lr}")
        for name in ("weight_decay", "spynet_lr_mult"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(
                    f"optim.{name} must be a finite number, 0 or more, got {getattr(self, name)}"
                )
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must both be in [0, 1), got {list(self.betas)}")
        if self.grad_clip_norm is not None and not (
            math.isfinite(self.grad_clip_norm) and self.grad_clip_norm > 0
        ):
            raise ValueError(
                f"optim.grad_clip_norm must be a positive finite number (or null), got {self.grad_clip_norm}"
            )


@dataclass
class ScheduleSection:
    """Cosine annealing with warm restarts: period i restarts at ``restart_weights[i]`` x the base lr."""

    periods: list[int] = field(default_factory=lambda: [400_000])
    restart_weights: list[float] = field(default_factory=lambda: [1.0])
    eta_min: float = 1e-7

    def __post_init__(self) -> None:
        if len(self.periods) != len(self.restart_weights):
            raise ValueError(
                f"schedule.periods ({self.periods}) and schedule.restart_weights ({self.restart_weights}) "
                "must have the same length"
            )
        if not self.periods or min(self.periods) < 1:
            raise ValueError(f"schedule.periods must be positive iteration counts, got {self.periods}")
        if not (math.isfinite(self.eta_min) and self.eta_min >= 0):
            raise ValueError(f"schedule.eta_min must be a finite number, 0 or more, got {self.eta_min}")
        if not all(math.isfinite(w) and w >= 0 for w in self.restart_weights):
            raise ValueError(
                f"schedule.restart_weights must be finite numbers, 0 or more, got {self.restart_weights}"
            )


@dataclass
class LossSection:
    """Charbonnier loss sqrt((x - y)^2 + eps) (TTVSR Sec. 3.4, supplementary Eq. 13)."""

    eps: float = 1e-12
    reduction: Literal["mean", "sum"] = "mean"


@dataclass
class TrainSection:
    """The iteration-based schedule of one run."""

    total_iters: int = 400_000
    log_every: int = 100  # loss / lr / throughput to MLflow and the console
    val_every: int = 5000  # validation on whole held-out clips
    checkpoint_every: int = 5000
    seed: int = 0
    precision: Literal["bf16", "fp32"] = "bf16"  # autocast dtype on GPU; CPU always runs fp32

    def __post_init__(self) -> None:
        for name in ("total_iters", "log_every", "val_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class ValSection:
    """How validation scores whole clips (``docs/benchmarks.md#evaluation-conventions``)."""

    channel: Literal["rgb", "y"] = "rgb"  # REDS4: RGB; Vid4 / UDM10 / Vimeo-90K-T (BD): Y
    crop_border: int = 0
    centre_frame_only: bool = False  # Vimeo-90K-T scores only the centre frame of each septuplet
    # Feed each clip mirrored this many times and average every frame's outputs over its copies
    # (Vimeo-90K-T: TTVSR flips the septuplet twice, to 28 frames).
    mirror_times: int = 0
    max_clips: int | None = None  # cap the clips scored during training (None: all)
    max_frames: int | None = None  # cap the frames per clip during training (None: all)
    chunk: int | None = None  # temporal window for long clips (vsr_models.inference.super_resolve)
    num_image_strips: int = 2  # bicubic | output | ground truth PNGs logged per validation


@dataclass
class ScalingSection:
    """Ray Train workers (one DDP process each)."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0  # leave Ray Data at least one CPU on small machines
    torch_threads: int | None = None  # intra-op threads per worker (None: Ray's default, cpus_per_worker)
    # The global batch (data.batch_size x num_workers) optim.lr was set for, e.g. 8 for the REDS recipes
    # on 8 GPUs; a run whose global batch differs says so (docs/cluster.md#global-batch-and-learning-rate-rules).
    # None: no reference, nothing compared or scaled.
    recipe_global_batch: int | None = None
    # How optim.lr follows a global batch other than recipe_global_batch: "none" keeps it, "linear"
    # multiplies it by global / recipe batch, "sqrt" by the square root of that ratio.
    lr_rule: Literal["none", "linear", "sqrt"] = "none"

    def __post_init__(self) -> None:
        if self.recipe_global_batch is not None and self.recipe_global_batch < 1:
            raise ValueError(
                f"scaling.recipe_global_batch must be at least 1 (or null), got {self.recipe_global_batch}"
            )
        if self.lr_rule != "none" and self.recipe_global_batch is None:
            raise ValueError(
                f"scaling.lr_rule {self.lr_rule} scales optim.lr from the recipe's global batch: set "
                "scaling.recipe_global_batch to the global batch optim.lr was set for (or lr_rule none)"
            )
        if self.num_workers < 1:
            raise ValueError(
                f"scaling.num_workers must be at least 1, got {self.num_workers} (each worker is one DDP process)"
            )
        if self.cpus_per_worker <= 0:
            raise ValueError(f"scaling.cpus_per_worker must be positive, got {self.cpus_per_worker}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"scaling.torch_threads must be at least 1 (or null), got {self.torch_threads}")


MAX_RUN_NAME = 128  # characters: a folder name and an MLflow run name, with room for Tune's trial ids


@dataclass
class RunSection:
    """Where the run lives: its name (re-running a name resumes it), storage and Ray cluster."""

    name: str = "ttvsr"
    storage_path: str = "runs"  # checkpoints under <storage_path>/<name>/; shared storage for multi-node
    address: str | None = None  # Ray cluster address; None starts (or joins) a local one
    num_to_keep: int = 2  # checkpoints kept on storage
    max_failures: int = 3  # worker failures recovered from the last checkpoint

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/\\") or ("'" in self.name and '"' in self.name):
            raise ValueError(
                f"run.name must be a non-empty name without slashes and not both quote characters, got {self.name!r}"
            )
        # The run's folder is <storage_path>/<name>: a name must stay one plain folder inside it.
        if self.name in (".", "..") or not (self.name.isascii() and self.name.isprintable()):
            raise ValueError(
                f"run.name must be printable ASCII and not '.' or '..' (it names the folder "
                f"<storage_path>/<name>), got {self.name!r}"
            )
        if len(self.name) > MAX_RUN_NAME:
            raise ValueError(f"run.name must be at most {MAX_RUN_NAME} characters, got {len(self.name)}")
        if self.num_to_keep < 1:
            raise ValueError(f"run.num_to_keep must be at least 1, got {self.num_to_keep}")
        if self.max_failures < 0:
            raise ValueError(f"run.max_failures must be 0 or more, got {self.max_failures}")


@dataclass
class TrackingSection:
    """MLflow: where runs are recorded and under which name the final model is registered."""

    uri: str | None = (
        None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db (artifacts in ./mlartifacts)
    )
    experiment: str = "ray-vsr"
    registered_model: str = "ttvsr"
    champion_alias: str = "champion"
    # --champion: the final model takes champion_alias whatever its score. Otherwise it must beat the
    # champion and bicubic on the validation clips (pipelines.tracking.promote_champion).
    force_champion: bool = False
    system_metrics_interval: float | None = 10.0  # seconds between CPU / GPU / memory samples; None: off


@dataclass
class Experiment:
    """Everything but the network; :class:`TTVSRExperiment` / :class:`VSRTExperiment` add ``model``."""

    arch: ClassVar[str]

    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    loss: LossSection = field(default_factory=LossSection)
    train: TrainSection = field(default_factory=TrainSection)
    val: ValSection = field(default_factory=ValSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    run: RunSection = field(default_factory=RunSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step over all workers: ``data.batch_size`` x ``scaling.num_workers``."""
        return self.data.batch_size * self.scaling.num_workers

    def model_overrides(self) -> dict:
        """Keyword arguments for ``vsr_models.build_model(self.arch, **...)``."""
        return dataclasses.asdict(self.model)  # type: ignore[attr-defined]


@dataclass
class TTVSRExperiment(Experiment):
    """A TTVSR training run; the defaults are the released REDS recipe."""

    arch: ClassVar[str] = "ttvsr"
    model: TTVSRConfig = field(default_factory=TTVSRConfig)

    def __post_init__(self) -> None:
        if self.data.lr_patch % self.model.token_size:
            raise ValueError(
                f"data.lr_patch ({self.data.lr_patch}) must be a multiple of model.token_size "
                f"({self.model.token_size}): TTVSR cuts frames into token_size x token_size tokens"
            )
        # The network's own input constraints (vsr_models/registry.py), checked here rather than in
        # every worker's first forward pass.
        constraints = self.model.input_constraints()
        if self.data.lr_patch < constraints.min_size or self.data.lr_patch % constraints.multiple:
            raise ValueError(
                f"data.lr_patch ({self.data.lr_patch}) must be at least {constraints.min_size} and a "
                f"multiple of {constraints.multiple}: the smallest LR frame TTVSR takes (docs/models.md)"
            )
        # DDP (several workers) needs a gradient for every trainable parameter at every step. A
        # one-frame sequence has no neighbour to align or attend to: SPyNet and the trajectory attention
        # get none, and the second step fails in every worker (docs/cluster.md#configurations-ddp-cannot-run).
        # Two frames or more (mirror-extended ones count) use every parameter, in both families.
        frames = self.data.num_frames * 2**self.data.mirror_times
        if frames < 2 and self.scaling.num_workers > 1:
            raise ValueError(
                f"data.num_frames is {self.data.num_frames} with scaling.num_workers "
                f"{self.scaling.num_workers}: one-frame TTVSR sequences leave SPyNet and the trajectory "
                "attention unused, which DDP refuses; set data.num_frames to 2 or more (or data.mirror_times "
                "to 1, or train on one worker)"
            )


@dataclass
class VSRTExperiment(Experiment):
    """A VSR-Transformer training run; the defaults are the released REDS recipe."""

    arch: ClassVar[str] = "vsrt"
    model: VSRTConfig = field(default_factory=VSRTConfig)
    data: DataSection = field(default_factory=lambda: DataSection(num_frames=5, batch_size=4))
    optim: OptimSection = field(default_factory=lambda: OptimSection(fix_spynet_iters=5000))
    schedule: ScheduleSection = field(
        default_factory=lambda: ScheduleSection(periods=[300_000] * 4, restart_weights=[1.0, 0.5, 0.5, 0.5])
    )
    loss: LossSection = field(default_factory=lambda: LossSection(reduction="sum"))
    train: TrainSection = field(default_factory=lambda: TrainSection(total_iters=1_200_000))
    run: RunSection = field(default_factory=lambda: RunSection(name="vsrt"))
    tracking: TrackingSection = field(default_factory=lambda: TrackingSection(registered_model="vsrt"))

    def __post_init__(self) -> None:
        # The layer norms carry learned (c, spatial_size, spatial_size) weights and the positional
        # encoding is built for num_frames (docs/models.md#vsr-transformer), so crops must match both exactly.
        if self.data.lr_patch != self.model.spatial_size:
            raise ValueError(
                f"data.lr_patch ({self.data.lr_patch}) must equal model.spatial_size ({self.model.spatial_size})"
            )
        if self.data.num_frames != self.model.num_frames:
            raise ValueError(
                f"data.num_frames ({self.data.num_frames}) must equal model.num_frames ({self.model.num_frames})"
            )


EXPERIMENTS: dict[str, type[Experiment]] = {"ttvsr": TTVSRExperiment, "vsrt": VSRTExperiment}


def experiment_parser(description: str | None = None) -> argparse.ArgumentParser:
    """A job parser with ``--config``/``--set`` plus the flags every training job shares."""
    return add_experiment_args(job_parser(description))


def add_experiment_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags every training job shares (each overrides one config field)."""
    parser.add_argument("--num-workers", type=int, help="Ray Train workers (scaling.num_workers)")
    parser.add_argument(
        "--gpus", type=int, help="train on N GPUs: N workers with one GPU each (scaling.use_gpu, num_workers)"
    )
    parser.add_argument("--address", help="Ray cluster address (run.address); default: start a local Ray")
    parser.add_argument(
        "--mlflow-uri",
        help="MLflow tracking URI (tracking.uri); default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db",
    )
    parser.add_argument("--name", help="run name (run.name); running a name again resumes that run")
    parser.add_argument(
        "--storage-path", help="where checkpoints go (run.storage_path); shared storage for multi-node"
    )
    parser.add_argument(
        "--verify-data",
        action="store_true",
        default=None,
        help="check every shard's sha256 before training (data.verify; in parallel Ray tasks); by default "
        "only the manifest, shard presence and sizes are checked",
    )
    parser.add_argument(
        "--champion",
        action="store_true",
        default=None,
        help="make the trained model champion whatever its score (tracking.force_champion); by default it "
        "must beat bicubic and the current champion on its validation clips",
    )
    return parser


def scaled_periods(periods: list[int], total_iters: int) -> list[int]:
    """``periods`` stretched (or shrunk) in proportion so that they add up to ``total_iters`` exactly.

    ``[300]`` for 500 iterations -> ``[500]``; ``[300_000] * 4`` for 600k -> ``[150_000] * 4``. Each
    period keeps at least one iteration; the last one takes the rounding.
    """
    covered = sum(periods)
    scaled = [max(1, round(p * total_iters / covered)) for p in periods[:-1]]
    return [*scaled, max(1, total_iters - sum(scaled))]


def fit_schedule(cfg: Experiment, overrides: list[str]) -> Experiment:
    """The learning-rate schedule made to follow the run (``docs/models.md#the-schedule-follows-the-run``).

    A config's ``schedule.periods`` are written for its ``train.total_iters``. When the command changes
    ``train.total_iters`` (``--set train.total_iters=500``) but not the periods, or the periods stop short
    of the run, they are scaled with it (:func:`scaled_periods`), so the cosine reaches ``eta_min`` at the
    last iteration instead of idling there. Periods the command sets itself are the user's: if they stop
    short of ``train.total_iters`` the config is refused, naming both keys.
    """
    given = {parse_override(text)[0].removeprefix("experiment.") for text in overrides}
    periods, total = list(cfg.schedule.periods), cfg.train.total_iters
    covered = sum(periods)
    if "schedule.periods" in given:
        if covered < total:
            raise ConfigError(
                f"schedule.periods {periods} cover {covered} iterations but train.total_iters is {total}: "
                f"make the periods add up to {total}, or leave schedule.periods out to scale the config's to the run"
            )
        return cfg
    if covered < total or ("train.total_iters" in given and covered != total):
        schedule = dataclasses.replace(cfg.schedule, periods=scaled_periods(periods, total))
        return dataclasses.replace(cfg, schedule=schedule)
    return cfg


def load_experiment(cls: type[Experiment], path: str | None, overrides: list[str]) -> Experiment:
    """``load_config`` of an experiment, with its schedule fitted to the run (:func:`fit_schedule`)."""
    return fit_schedule(load_config(cls, path, overrides), overrides)


def experiment_from_args(cls: type[Experiment], args: argparse.Namespace) -> Experiment:
    """Load ``--config`` with ``--set`` overrides, then apply the shared flags on top."""
    overrides = list(args.overrides)
    if args.gpus is not None:
        if args.gpus < 1:
            raise ConfigError(f"--gpus must be at least 1, got {args.gpus}")
        if args.num_workers not in (None, args.gpus):
            raise ConfigError(
                f"--gpus {args.gpus} runs one worker per GPU; it contradicts --num-workers {args.num_workers}"
            )
        overrides += ["scaling.use_gpu=true", f"scaling.num_workers={args.gpus}"]
    flags = {
        "scaling.num_workers": args.num_workers,
        "run.address": args.address,
        "tracking.uri": args.mlflow_uri,
        "run.name": args.name,
        "run.storage_path": args.storage_path,
        "data.verify": args.verify_data,
        "tracking.force_champion": args.champion,
    }
    return load_experiment(cls, args.config, overrides + flag_overrides(flags))


def resolve_paths(cfg: Experiment) -> Experiment:
    """Absolute data and storage paths, so Ray workers (other processes, maybe other cwd) find them."""
    data_path = cfg.data.path if "://" in cfg.data.path else str(Path(cfg.data.path).expanduser().resolve())
    data = dataclasses.replace(cfg.data, path=data_path)
    storage = cfg.run.storage_path
    if "://" not in storage:  # s3://, gs://, ... are already absolute
        storage = str(Path(storage).expanduser().resolve())
    return dataclasses.replace(cfg, data=data, run=dataclasses.replace(cfg.run, storage_path=storage))
