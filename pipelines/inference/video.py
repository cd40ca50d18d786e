"""Streamed super-resolution of one video (or folder of frames), window by window.

:func:`super_resolve_video` decodes the video one temporal window at a time, super-resolves each window
with :func:`vsr_models.inference.super_resolve` (spatial tiles when asked) and encodes only the frames
for which the window is the most central (:func:`vsr_models.inference.most_central_windows`).
Consecutive windows share ``chunk_overlap`` frames, so a recurrent model such as TTVSR, whose
bidirectional propagation carries features along the whole input (TTVSR Sec. 3), still sees temporal
context on both sides of every output frame, while memory stays bounded by one window of LR and SR
frames whatever the video's length.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipelines.common.errors import ConfigError, VideoError
from pipelines.common.progress import ThroughputReporter
from pipelines.data.video_io import FrameReader, FrameWriter, open_frames
from pipelines.inference.loading import ModelSpec, load_model, resolve_device
from vsr_models.frames import float_to_uint8, uint8_to_float
from vsr_models.inference import input_constraints, most_central_windows, super_resolve

SCALE = 4
"""Both networks upscale by 4 (TTVSR Sec. 4.1, VSR-Transformer Sec. 4)."""

Progress = Callable[[int, int], None]
"""Called as ``progress(frames written, total frames)``."""


@dataclass
class InferConfig:
    """Inference settings (``jobs/infer.py --config`` / ``--set``; flags override them).

    tile: LR tile size for spatial tiling (None: whole frames). VSR-Transformer always uses 64.
    tile_overlap: LR pixels shared by neighbouring tiles (None: ``tile // 4``).
    chunk: frames per temporal window held in memory (None: the whole video at once).
    chunk_overlap: frames shared by consecutive windows (None: ``chunk // 4``, at least the
        frames a fixed-length model needs around each output frame).
    device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ...
    crf: x264 quality of ``.mp4`` / ``.mov`` outputs (None: ``video_io.H264_CRF``).
    allow_truncated: super-resolve the frames of a video file that is cut short instead of refusing it;
        the summary says how many frames are missing.
    """

    tile: int | None = None
    tile_overlap: int | None = None
    chunk: int | None = 30
    chunk_overlap: int | None = None
    device: str = "auto"
    crf: int | None = None
    allow_truncated: bool = False


@dataclass(frozen=True)
class InferSummary:
    """What :func:`super_resolve_video` did: sizes are ``(height, width)``."""

    input: str
    output: str
    num_frames: int
    lr_size: tuple[int, int]
    sr_size: tuple[int, int]
    fps: float
    seconds: float
    device: str
    truncation: str | None = None  # why the input is cut short (only with allow_truncated)
    missing_frames: int | None = None  # estimated frames missing from a cut-short input

    @property
    def frames_per_second(self) -> float:
        """Throughput: output frames per second of wall time, decoding and encoding included."""
        return self.num_frames / self.seconds if self.seconds > 0 else float("inf")


class _SlidingFrames:
    """The decoded LR frames of the current temporal window; frames shared with the next one are kept."""

    def __init__(self, reader: FrameReader):
        self.reader = reader
        self.start = 0
        self.frames = np.empty((0, reader.info.height, reader.info.width, 3), np.uint8)

    def window(self, start: int, stop: int) -> np.ndarray:
        """LR frames ``start .. stop - 1``; windows must move forward."""
        end = self.start + len(self.frames)
        kept = self.frames[max(start - self.start, 0) :]
        fresh = self.reader.read(max(start, end), stop) if stop > end else kept[:0]
        self.frames, self.start = np.concatenate([kept, fresh])[: stop - start], start
        return self.frames


def temporal_windows(
    num_frames: int, chunk: int | None, chunk_overlap: int | None, num_frames_needed: int | None = None
) -> list[tuple[int, int, list[int]]]:
    """The streaming windows of a video: ``[(start, stop, [frames written from this window]), ...]``.

    ``chunk=None`` (or a video no longer than ``chunk``) is one window. Otherwise windows of
    ``chunk`` frames overlap by ``chunk_overlap`` (default ``chunk // 4``), raised to
    ``num_frames_needed - 1`` for a fixed-length model (VSR-Transformer) so each output frame has its
    ``num_frames`` neighbours inside its window.
    """
    if chunk is None or num_frames <= chunk:
        return [(0, num_frames, list(range(num_frames)))]
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1 or None, got {chunk}")
    overlap = chunk // 4 if chunk_overlap is None else chunk_overlap
    if num_frames_needed is not None:
        if chunk < num_frames_needed:
            raise ConfigError(
                f"chunk={chunk} is shorter than the {num_frames_needed} frames the model takes; raise --chunk"
            )
        overlap = max(overlap, num_frames_needed - 1)
    return [(start, start + chunk, kept) for start, kept in most_central_windows(num_frames, chunk, overlap)]


def super_resolve_video(
    model: ModelSpec,
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    tile: int | None = None,
    tile_overlap: int | None = None,
    chunk: int | None = 30,
    chunk_overlap: int | None = None,
    device: str | torch.device = "auto",
    crf: int | None = None,
    progress: bool | Progress = True,
    overwrite: bool = False,
    arch: str | None = None,
    tracking_uri: str | None = None,
    allow_truncated: bool = False,
) -> InferSummary:
    """Super-resolve one video file or folder of frames x4 and write the result.

    Decodes, super-resolves and encodes one temporal window at a time (:func:`temporal_windows`):
    memory holds ``chunk`` LR frames and their SR frames, never the whole video.

    Args:
        model: network, checkpoint path or MLflow model URI (:func:`load_model`).
        in_path: a video file (decoded with decord) or a folder of frames.
        out_path: ``.mkv`` / ``.avi`` (FFV1, lossless), ``.mp4`` / ``.mov`` (H.264, ``crf``) or a
            path without a suffix for a folder of PNG frames. Written atomically.
        tile, tile_overlap: spatial tiling in LR pixels (:func:`vsr_models.inference.tiled_forward`).
        chunk, chunk_overlap: temporal windows (:func:`temporal_windows`).
        device: where the network runs (``auto``: CUDA when available).
        progress: print frames/s to stderr (``True``) or call ``progress(done, total)``.
        overwrite: replace an existing output file, or the frames of an output folder this project
            wrote (other files in it are kept); never a folder it did not write.
        arch, tracking_uri: see :func:`load_model`.
        allow_truncated: accept a video cut short (its container declares more than the file holds);
            by default it is refused, since the output would look complete.

    Raises:
        MissingInputError: missing input or checkpoint (a ``FileNotFoundError``).
        OutputExistsError: ``out_path`` exists and may not be replaced (a ``FileExistsError``).
        VideoError: an input that cannot be decoded or is cut short, or an unsupported output suffix.
        ModelLoadError: an MLflow URI that does not resolve.
    """
    started = time.perf_counter()
    # Fail on a bad input before the (slow) model load.
    reader = open_frames(in_path, allow_truncated=allow_truncated)
    try:
        info = reader.info
        target = resolve_device(device)
        network = load_model(model, device=target, arch=arch, tracking_uri=tracking_uri)
        windows = temporal_windows(
            info.num_frames, chunk, chunk_overlap, input_constraints(network).num_frames
        )
        if progress is True:
            report: Progress | None = ThroughputReporter(Path(in_path).name)
        else:
            report = progress or None
        frames = _SlidingFrames(reader)
        written = 0
        with FrameWriter(out_path, info.fps, overwrite=overwrite, crf=crf) as writer:
            for start, stop, kept in windows:
                lr = uint8_to_float(frames.window(start, stop))[None]
                sr = super_resolve(network, lr, tile=tile, overlap=tile_overlap, scale=SCALE)[0]
                writer.write(float_to_uint8(sr[[frame - start for frame in kept]]))
                written += len(kept)
                if report is not None:
                    report(written, info.num_frames)
    finally:
        reader.close()
    return InferSummary(
        input=str(in_path),
        output=str(out_path),
        num_frames=written,
        lr_size=(info.height, info.width),
        sr_size=(SCALE * info.height, SCALE * info.width),
        fps=info.fps,
        seconds=time.perf_counter() - started,
        device=str(target),
        truncation=reader.truncation.reason if reader.truncation else None,
        missing_frames=reader.truncation.estimate_missing(written) if reader.truncation else None,
    )


def check_output(summary: InferSummary) -> None:
    """Decode the written output and check it has every input frame at ``SCALE`` times the size.

    Raises:
        VideoError: the output's frame count or size differs from what the input implies.
    """
    reader = open_frames(summary.output)
    try:
        found = (reader.info.num_frames, reader.info.height, reader.info.width)
    finally:
        reader.close()
    expected = (summary.num_frames, *summary.sr_size)
    if found != expected:
        raise VideoError(
            f"{summary.output} has {found[0]} frames of {found[2]}x{found[1]}, expected {expected[0]} frames of "
            f"{expected[2]}x{expected[1]} ({SCALE}x the {summary.lr_size[1]}x{summary.lr_size[0]} input "
            f"{summary.input})"
        )


def describe(summary: InferSummary) -> str:
    """One line for logs: frames, sizes, throughput."""
    (h, w), (sh, sw) = summary.lr_size, summary.sr_size
    line = (
        f"{summary.input} -> {summary.output}: {summary.num_frames} frames {w}x{h} -> {sw}x{sh} "
        f"in {summary.seconds:.1f} s ({summary.frames_per_second:.2f} frames/s on {summary.device})"
    )
    if summary.truncation:
        missing = (
            "an unknown number of" if summary.missing_frames is None else f"about {summary.missing_frames}"
        )
        line += f"; INCOMPLETE: the input is cut short ({summary.truncation}), {missing} frames are missing"
    return line
