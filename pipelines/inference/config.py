"""The typed configs of inference: what ``jobs/infer.py`` and ``jobs/profile_model.py`` run.

- :class:`InferConfig`: the settings of one streamed video (``jobs/infer.py --config`` / ``--set``);
- :class:`InferenceConfig`: a whole ``jobs/infer.py`` run: input, output, the model (a
  :class:`~pipelines.inference.loading.ModelRef`), those settings, and the actor pool of a folder of
  videos (:func:`pipelines.inference.run.run_inference`);
- :class:`ProfileConfig`: a network to count (:func:`pipelines.inference.profiling.run_profile`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.common.errors import ConfigError
from pipelines.data.video_io import is_frame_folder
from pipelines.inference.loading import ModelRef


@dataclass
class InferConfig:
    """Inference settings (``jobs/infer.py --config`` / ``--set``; flags override them).

    tile: LR tile size for spatial tiling (None: whole frames, or a tile chosen to fit the device).
    tile_overlap: LR pixels shared by neighbouring tiles (None: ``tile // 4``).
    chunk: frames per temporal window held in memory (None: the whole video at once).
    chunk_overlap: frames shared by consecutive windows (None: ``chunk // 4``, at least the
        frames a fixed-length model needs around each output frame).
    device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ...
    precision: ``auto`` (bf16 where the hardware runs it natively, else fp32), ``fp32``, ``bf16``, ``fp16``.
    codec, crf, preset, pix_fmt: the output video's encoding (None: the suffix's default,
        :data:`pipelines.inference.encode.DEFAULT_CODEC`).
    no_audio: drop the audio and subtitle streams (default: copied).
    start, end: the part to super-resolve: seconds (``12.5``, ``1:02``) or a frame (``300f``).
    outscale: output size over input size (None: 4, the network's); resized with ``outscale_filter``.
    fps: a constant output frame rate (None: the input's own frame times).
    allow_truncated: super-resolve the frames of a video file that is cut short instead of refusing it;
        the summary says how many frames are missing.
    """

    tile: int | None = None
    tile_overlap: int | None = None
    chunk: int | None = 30
    chunk_overlap: int | None = None
    device: str = "auto"
    precision: str = "auto"
    codec: str | None = None
    crf: int | None = None
    preset: str | None = None
    pix_fmt: str | None = None
    no_audio: bool = False
    start: str | None = None
    end: str | None = None
    outscale: float | None = None
    outscale_filter: str = "lanczos"
    fps: str | None = None
    allow_truncated: bool = False

    def __post_init__(self) -> None:
        if self.tile == 0:  # 0 reads as "no tile", as None does
            self.tile = None
        if self.tile is not None and self.tile < 0:
            raise ValueError(
                f"--tile (tile) must be a positive LR tile size, or 0 / none for whole frames, got {self.tile}"
            )


@dataclass(frozen=True)
class InferenceConfig:
    """One ``jobs/infer.py`` run: a video (file or folder of frames) streamed, or a folder of videos on Ray
    Data (:attr:`many`)."""

    input: Path  # video file, folder of frames, or folder of videos
    output: Path  # video file or PNG folder; for a folder of videos: the output folder
    model: ModelRef
    video: InferConfig = field(default_factory=InferConfig)
    progress: bool = True  # per-frame progress lines (one video)
    overwrite: bool = False
    scale_check: bool = False  # decode each output afterwards: every frame at 4x the input size
    num_workers: int = 1  # actors for a folder of videos
    gpus_per_worker: float = 0
    address: str | None = None  # Ray cluster of a folder of videos (None: local)
    suffix: str = ".mp4"  # output suffix for a folder of videos ('' for PNG)

    @property
    def many(self) -> bool:
        """A folder of videos (or of frame folders), run on Ray Data, rather than one video."""
        return self.input.is_dir() and not is_frame_folder(self.input)


def model_ref(
    model: str | None, official: str | None, arch: str | None, tracking_uri: str | None
) -> ModelRef:
    """The network ``jobs/infer.py`` was given: ``--model`` or ``--official`` (which needs ``--arch``)."""
    if official and not arch:
        raise ConfigError("--official needs --arch ttvsr|vsrt")
    return ModelRef(str(model or official), arch, tracking_uri)


@dataclass(frozen=True)
class ProfileConfig:
    """A network to count (``jobs/profile_model.py``): its family, config fields and input size."""

    arch: str
    size: tuple[int, int] = (180, 320)  # LR frame (height, width)
    frames: int = 10  # LR frames in the sequence
    model: dict[str, Any] = field(default_factory=dict)  # config fields of the family (--set)
    chunk_overlap: int | None = None  # temporal window overlap (vsrt)
    device: str = "meta"  # meta: count only; cpu / cuda: also time the run
