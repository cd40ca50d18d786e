"""The typed config of one training run: :class:`Experiment`, for any registered network family.

A YAML file under ``configs/`` (``arch:`` names the family, ``model:`` holds its config fields) loads into
an :class:`Experiment` with :func:`load_experiment`; every field can be overridden with
``--set section.key=value``. The model section is the family's own config
(``vsr_models.get_family(arch).config_class``), and the crops are checked against the family's
``input_constraints()`` (:func:`check_crops`), so this module names no family.

The recipes live in YAML only (``docs/models.md#training-recipes``): ``configs/<arch>.yaml`` is a family's
released recipe, what ``jobs/train_<arch>.py`` trains without ``--config`` (:func:`default_recipe`):

- TTVSR (Sec. 3.4 of the paper, mmediting config): Charbonnier loss (eps 1e-12, mean), Adam
  (0.9, 0.99), lr 2e-4 with SPyNet at 0.125x and frozen for the first 5,000 iterations, cosine
  annealing to 1e-7 over 400k iterations, 50-frame sequences of 64x64 LR crops.
- VSR-Transformer (supplementary Sec. D, BasicSR config): 5 frames, Charbonnier sum, cosine restarts
  every 300k iterations with weights 1, 0.5, 0.5, 0.5.

The sections' own defaults are what a YAML file leaves out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipelines.common.config import flatten, load_config, parse_override, read_yaml, with_values
from pipelines.common.errors import ConfigError
from pipelines.common.storage import absolute
from vsr_models import InputConstraints, get_family

RECIPES = Path(__file__).resolve().parents[2] / "configs"
"""Where the families' released recipes are: ``configs/<arch>.yaml``."""


def check_minimum(section: str, minimum: int, **values: float) -> None:
    """Refuse the first of ``values`` below ``minimum``: ``data.lr_patch must be at least 1, got 0``."""
    for name, value in values.items():
        if value < minimum:
            bound = "0 or more" if minimum == 0 else f"at least {minimum}"
            raise ValueError(f"{section}.{name} must be {bound}, got {value}")


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
        check_minimum(
            "data", 1, num_frames=self.num_frames, lr_patch=self.lr_patch, batch_size=self.batch_size,
            samples_per_clip=self.samples_per_clip,
        )  # fmt: skip
        check_minimum("data", 0, mirror_times=self.mirror_times)


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
        check_minimum(
            "train", 1, total_iters=self.total_iters, log_every=self.log_every, val_every=self.val_every,
            checkpoint_every=self.checkpoint_every,
        )  # fmt: skip


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
        check_minimum("run", 1, num_to_keep=self.num_to_keep)
        check_minimum("run", 0, max_failures=self.max_failures)


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
    """One training run: the network family ``arch``, its config ``model`` and the run's sections.

    ``model`` is the family's config dataclass; given as a mapping (a YAML section), it is built from
    it field by field, like every other section (:func:`model_section`).
    """

    arch: str
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    loss: LossSection = field(default_factory=LossSection)
    train: TrainSection = field(default_factory=TrainSection)
    val: ValSection = field(default_factory=ValSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    run: RunSection = field(default_factory=RunSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    model: Any = None

    def __post_init__(self) -> None:
        family = get_family(self.arch)
        if not isinstance(self.model, family.config_class):
            self.model = model_section(self.arch, self.model or {})
        check_crops(self.arch, self.model.input_constraints(), self.data.lr_patch, self.data.num_frames)
        # DDP (several workers) needs a gradient for every trainable parameter at every step. A
        # one-frame sequence of a family that aligns or attends to neighbours leaves those parameters
        # (the family's one_frame_unused) without one, and the second step fails in every worker
        # (docs/cluster.md#configurations-ddp-cannot-run).
        frames = self.data.num_frames * 2**self.data.mirror_times
        unused = family.one_frame_unused
        if unused and frames < 2 and self.scaling.num_workers > 1:
            raise ValueError(
                f"data.num_frames is {self.data.num_frames} with scaling.num_workers "
                f"{self.scaling.num_workers}: one-frame {family.model_class.__name__} sequences leave {unused} unused, which "
                "DDP refuses; set data.num_frames to 2 or more (or data.mirror_times to 1, or train on one worker)"
            )

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step over all workers: ``data.batch_size`` x ``scaling.num_workers``."""
        return self.data.batch_size * self.scaling.num_workers

    def model_overrides(self) -> dict:
        """Keyword arguments for ``vsr_models.build_model(self.arch, **...)``."""
        return dataclasses.asdict(self.model)


def model_section(arch: str, values: Mapping[str, Any]) -> Any:
    """The family's config (``family.make_config``) with a ``model:`` section's values, each checked against
    its field's type: an unknown key or a wrong type is a :class:`ConfigError` naming ``model.<key>``."""
    family = get_family(arch)
    section = dataclasses.make_dataclass("ModelSection", [("model", family.config_class)])
    return with_values(section(family.make_config({})), {"model": dict(values)}).model


def check_crops(arch: str, constraints: InputConstraints, lr_patch: int, num_frames: int) -> None:
    """Refuse training crops the network cannot take (its ``input_constraints()``, docs/models.md).

    Checked when the config loads rather than in every worker's first forward pass.
    """
    problems = constraints.problems(lr_patch, lr_patch, num_frames)
    if not problems:
        return
    network = get_family(arch).model_class.__name__
    why = constraints.why or f"the LR frames {network} takes"
    # A fixed patch and sequence (VSR-Transformer: learned (c, s, s) layer norms, a positional encoding
    # built for num_frames): crops must match both exactly.
    refusals = {
        "spatial_size": f"data.lr_patch ({lr_patch}) must equal model.spatial_size ({constraints.spatial_size})",
        "num_frames": f"data.num_frames ({num_frames}) must equal model.num_frames ({constraints.num_frames})",
        "min_size": f"data.lr_patch ({lr_patch}) must be at least {constraints.min_size} and a multiple of "
        f"{constraints.multiple}: the smallest LR frame {network} takes (docs/models.md)",
        "multiple": f"data.lr_patch ({lr_patch}) must be a multiple of {constraints.multiple}: {why} (docs/models.md)",
    }
    raise ValueError(refusals[problems[0]])


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


def default_recipe(arch: str) -> Path:
    """``configs/<arch>.yaml``: the family's released recipe, what a job trains without ``--config``."""
    get_family(arch)  # an unknown family: the registry's error, listing the known ones
    return RECIPES / f"{arch}.yaml"


def load_experiment(
    path: str | Path | None, overrides: Sequence[str] = (), *, arch: str | None = None
) -> Experiment:
    """The experiment of a YAML file with ``--set`` overrides, on top of its family's released recipe.

    The family is ``arch`` (a job's), else the file's ``arch:``; its :func:`default_recipe` gives every
    value the file and the overrides leave out (``path`` ``None``: the recipe alone). Errors name the
    key, and the file as :func:`~pipelines.common.config.load_config` does. The schedule is fitted to
    the run (:func:`fit_schedule`).
    """
    given = read_yaml(path) if path else {}
    values = flatten(given) | dict(parse_override(text) for text in overrides)
    values["arch"] = arch or values.get("arch")  # the job's family, else the file's (or --set arch=)
    try:
        if not isinstance(values["arch"], str):
            raise ConfigError(
                "arch: no network family; name one (arch: ttvsr, ...) or use jobs/train_<arch>.py"
            )
        try:
            recipe = default_recipe(values["arch"])
        except ValueError as err:  # an unknown family: the registry's message, listing the known ones
            raise ConfigError(f"arch: {err}") from None
        cfg = with_values(load_config(Experiment, recipe), values)
    except ConfigError as err:
        raise ConfigError(f"{err} (in {path})" if path else str(err)) from None
    return fit_schedule(cfg, list(overrides))


def resolve_paths(cfg: Experiment) -> Experiment:
    """Absolute data and storage paths, so Ray workers (other processes, maybe other cwd) find them."""
    data = dataclasses.replace(cfg.data, path=absolute(cfg.data.path))
    run = dataclasses.replace(cfg.run, storage_path=absolute(cfg.run.storage_path))
    return dataclasses.replace(cfg, data=data, run=run)
