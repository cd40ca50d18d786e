"""What a preparation run is asked to do: :class:`PrepareConfig` (YAML / ``--set`` / flags)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipelines.data.schema import DEFAULT_SEGMENT_FRAMES, DEFAULT_ZSTD_LEVEL
from pipelines.data.sources import LAYOUTS

NETWORK_SCALE = 4  # TTVSR and VSR-Transformer both upscale x4 (vsr_models.registry.ModelFamily.scale)
SAMPLE_SOURCE = "sample"
SAMPLE_OUTPUT = "data/sample"


@dataclass
class SplitConfig:
    """How clips are assigned to splits when the layout does not say (REDS4, Vimeo lists, split folders).

    ``val_clips`` (source clip or video ids) overrides the layout's split; ``val_fraction`` sends that
    fraction of the remaining unassigned sources to ``val``, chosen by a hash of their ids (stable).
    Whole sources go to one split, so clips cut from one video never straddle train and val.
    """

    default: str = "train"
    val_clips: list[str] | None = None
    val_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"splits.val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class PrepareConfig:
    """Everything a preparation run needs (:func:`pipelines.data.prepare.run.run_prepare`); loadable from
    YAML with ``pipelines.common.config.load_config``."""

    source: str = SAMPLE_SOURCE  # a path, or 'sample' for the bundled sample dataset
    layout: Literal["auto", "reds", "vimeo", "folders", "frames", "videos"] = "auto"
    output: str = ""  # required, except for the sample dataset (default data/sample)
    degradation: Literal["BI", "BD"] = "BI"
    scale: int = 4
    clip_length: int = 100  # longer clip folders and videos are cut into clips of this many frames
    max_frames_per_video: int | None = None  # read only the first N frames of each video (quick runs)
    splits: SplitConfig = field(default_factory=SplitConfig)
    shard_size: int = 64  # at most this many clips per shard ...
    shard_max_mb: int = 512  # ... and at most this much raw HR (MiB), whichever comes first
    strict: bool = False  # stop at the first unreadable input instead of quarantining it
    sample_cache: str = "data/sample_src"  # where '--dataset sample' renders its frames
    decode_retries: int = 3  # retries of a decode task whose worker died
    zstd_level: int = DEFAULT_ZSTD_LEVEL
    # Frames per stored segment (a row group): a training crop reads only the segments its window spans.
    segment_frames: int = DEFAULT_SEGMENT_FRAMES
    overwrite: bool = False  # replace a dataset prepared differently (other source / settings) in output
    any_scale: bool = False  # allow scales other than the networks' x4 (data for a network of your own)
    address: str | None = None  # Ray cluster to join (default: RAY_ADDRESS, else a new local Ray)
    num_cpus: int | None = None  # CPUs of the local Ray started when no cluster is given

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.degradation not in ("BI", "BD"):
            raise ValueError(f"degradation must be 'BI' or 'BD', got {self.degradation!r}")
        if self.scale < 1:
            raise ValueError(f"scale must be a positive integer, got {self.scale}")
        if self.degradation == "BD" and self.scale != 4:
            raise ValueError("degradation 'BD' is defined for scale 4 only (the authors' script); use BI")
        if self.scale != NETWORK_SCALE and not self.any_scale:
            raise ValueError(
                f"scale {self.scale}: both networks upscale x{NETWORK_SCALE}; prepare with --scale {NETWORK_SCALE}, "
                "or pass --any-scale (any_scale: true) to prepare data for a network of your own"
            )
        for name in ("clip_length", "shard_size", "shard_max_mb", "segment_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
