"""Streamed super-resolution of one video (or folder of frames), window by window.

:func:`super_resolve_video` decodes the video one temporal window at a time, super-resolves each window
with :func:`vsr_models.inference.super_resolve` (spatial tiles when asked, or when whole frames would not
fit the device: :mod:`pipelines.inference.memory`) and encodes only the frames for which the window is the
most central (:func:`vsr_models.inference.most_central_windows`). Consecutive windows share
``chunk_overlap`` frames, so a recurrent model such as TTVSR, whose bidirectional propagation carries
features along the whole input (TTVSR Sec. 3), still sees temporal context on both sides of every output
frame, while memory stays bounded by a few windows of LR and SR frames whatever the video's length.

Decoding, the model and encoding run at the same time (:func:`pipelines.inference.pipeline.run_overlapped`).
A video file keeps everything but its resolution (:mod:`pipelines.inference.streams`): frame times, audio
and subtitles, colour tags and bit depth (``docs/video.md``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from pipelines.common.errors import ConfigError, OutputExistsError, VideoError
from pipelines.data.video_io import FrameReader, FrameWriter, open_frames, output_is_folder
from pipelines.inference.colour import from_unit_float, rgb_to_frame, to_unit_float
from pipelines.inference.encode import FILTERS, EncodeSettings, VideoFileWriter
from pipelines.inference.loading import ModelSpec, load_model, resolve_device
from pipelines.inference.memory import choose_tile
from pipelines.inference.pipeline import FrameProgress, resolve_precision, run_overlapped, with_precision
from pipelines.inference.streams import Source, SourceReader, open_source, parse_position
from vsr_models.inference import input_constraints, most_central_windows, super_resolve

SCALE = 4
"""Both networks upscale by 4 (TTVSR Sec. 4.1, VSR-Transformer Sec. 4)."""

Progress = Callable[[int, int], None]
"""Called as ``progress(frames written, total frames)``."""


def check_tile(network, tile: int | None) -> None:
    """Refuse a ``tile`` the network's family cannot run (``input_constraints``) in one line, before any
    frame is decoded or any worker is started."""
    if tile is None:
        return
    constraints = input_constraints(network)
    name = type(network).__name__
    problems = constraints.problems(tile, tile)
    if "spatial_size" in problems:
        raise ConfigError(
            f"--tile {tile}: {name} only runs on {constraints.spatial_size}x{constraints.spatial_size} LR "
            f"patches; use --tile {constraints.spatial_size} or leave --tile out"
        )
    if problems:
        smallest = -(-constraints.min_size // constraints.multiple) * constraints.multiple
        raise ConfigError(
            f"--tile {tile}: {name} needs a multiple of {constraints.multiple} that is at least "
            f"{constraints.min_size} (e.g. --tile {max(smallest, tile - tile % constraints.multiple)}), or 0 "
            "for whole frames"
        )


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
    precision: str = "fp32"
    notes: tuple[str, ...] = field(default=())  # corrections, re-encoded streams, tile chosen, colour

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


def check_not_input(in_path: str | os.PathLike, out_path: str | os.PathLike) -> None:
    """Refuse an output that is the input itself: the same file, a hard link to it, or a symlink to it.

    Checked before anything else, ``--overwrite`` or not: replacing the output would destroy the input.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    try:
        same = out_path.exists() and in_path.exists() and os.path.samefile(in_path, out_path)
    except OSError:
        same = False
    if same or (out_path.resolve() == in_path.resolve()):
        raise OutputExistsError(
            f"output {out_path} is the input {in_path} (the same file, a link to it or the same path); "
            "choose another output path: --overwrite never replaces an input"
        )


def _output_size(lr_size: tuple[int, int], outscale: float | None) -> tuple[int, int] | None:
    """``(height, width)`` of an ``--outscale`` output (even, for 4:2:0 video), or None for x4."""
    if outscale is None or outscale == SCALE:
        return None
    if not 0 < outscale <= 16:
        raise ConfigError(f"--outscale {outscale}: use a scale between 0 and 16 (4 is the network's own)")
    return tuple(max(2, 2 * round(side * outscale / 2)) for side in lr_size)


def _frame_rate(text: str | None) -> Fraction | None:
    """``--fps 30000/1001`` or ``--fps 29.97`` (read as 30000/1001) -> an exact rational rate."""
    if text in (None, ""):
        return None
    try:
        rate = Fraction(str(text)) if "/" in str(text) else Fraction(float(text)).limit_denominator(1001)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"--fps {text!r}: give a rate such as 25, 29.97 or 30000/1001") from None
    if rate <= 0:
        raise ConfigError(f"--fps {text!r} must be positive")
    return rate


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
    precision: str = "fp32",
    codec: str | None = None,
    crf: int | None = None,
    preset: str | None = None,
    pix_fmt: str | None = None,
    no_audio: bool = False,
    start: str | float | int | None = None,
    end: str | float | int | None = None,
    outscale: float | None = None,
    outscale_filter: str = "lanczos",
    fps: str | None = None,
    progress: bool | Progress = True,
    overwrite: bool = False,
    allow_truncated: bool = False,
) -> InferSummary:
    """Super-resolve one video file or folder of frames x4 and write the result.

    Decodes, super-resolves and encodes one temporal window at a time (:func:`temporal_windows`), the
    three stages overlapping: memory holds a few windows of LR and SR frames, never the whole video.

    Args:
        model: network, :class:`~pipelines.inference.loading.ModelRef`, checkpoint path or MLflow model
            URI (:func:`load_model`).
        in_path: a video file (PyAV) or a folder of frames.
        out_path: a video file (``.mkv`` / ``.avi``: FFV1, lossless; ``.mp4`` / ``.mov``: H.264; ``.webm``:
            VP9; ``codec`` picks another) or a path without a suffix for a folder of PNG frames.
            Written atomically; never the input itself (:func:`check_not_input`).
        tile, tile_overlap: spatial tiling in LR pixels; ``tile=None`` picks one when whole frames would
            not fit the device (:func:`pipelines.inference.memory.choose_tile`).
        chunk, chunk_overlap: temporal windows (:func:`temporal_windows`).
        device: where the network runs (``auto``: CUDA when available).
        precision: ``fp32`` (default here; ``jobs/infer.py`` defaults to ``auto``), ``bf16``, ``fp16``, ``auto``.
        codec, crf, preset, pix_fmt, no_audio, fps: the output's encoding (:class:`~pipelines.inference.config.InferConfig`).
        start, end: the part to super-resolve (:func:`pipelines.inference.streams.parse_position`).
        outscale, outscale_filter: resize the x4 frames to ``outscale`` times the input with this filter.
        progress: print per-frame progress to stderr (``True``) or call ``progress(done, total)``.
        overwrite: replace an existing output file, or the frames of an output folder this project
            wrote (other files in it are kept); never a folder it did not write, never the input.
        allow_truncated: accept a video cut short (its container declares more than the file holds);
            by default it is refused, since the output would look complete.

    Raises:
        MissingInputError: missing input or checkpoint (a ``FileNotFoundError``).
        OutputExistsError: ``out_path`` exists and may not be replaced, or is the input.
        VideoError: an input that cannot be decoded or is cut short, or an unsupported output.
        ConfigError: a setting that cannot apply (``--start`` past the end, a codec the container lacks,
            frames too large for the device even in the smallest tiles).
        ModelLoadError: an MLflow URI that does not resolve.
    """
    started = time.perf_counter()
    check_not_input(in_path, out_path)
    if outscale_filter not in FILTERS:
        raise ConfigError(f"--outscale-filter {outscale_filter!r}: use one of {', '.join(FILTERS)}")
    settings = EncodeSettings(codec, crf, preset, pix_fmt, not no_audio, _frame_rate(fps))
    first, last = parse_position(start), parse_position(end)
    # Fail on a bad input before the (slow) model load.
    reader, source = _open_input(in_path, first, last, allow_truncated)
    notes: list[str] = list(source.corrections) if source else []
    writer = None
    try:
        info = reader.info
        target = resolve_device(device)
        precision = resolve_precision(precision, target)
        size = _output_size((info.height, info.width), outscale)
        # The output is checked (exists, codec, container) before the slow model load.
        writer = _open_writer(out_path, source, info.fps, settings, overwrite, notes, outscale_filter)
        network = load_model(model, device=target)
        check_tile(network, tile)
        windows = temporal_windows(
            info.num_frames, chunk, chunk_overlap, input_constraints(network).num_frames
        )
        if tile is None:
            span = max(stop - begin for begin, stop, _ in windows)
            choice = choose_tile(network, (info.height, info.width), span, target)
            tile = choice.tile
            notes += [choice.note] if choice.note else []
        network = with_precision(network, precision)
        high_bit = source is not None and source.colour.high_bit_depth and writer_keeps_depth(writer)
        if source is not None and source.colour.high_bit_depth and not isinstance(writer, VideoFileWriter):
            notes.append("the input has more than 8 bits per sample; PNG frames hold 8")
        report = _reporter(progress, Path(in_path).name, info.num_frames)
        frames = _SlidingFrames(reader)
        written = 0

        def model_step(window, lr_frames: np.ndarray) -> np.ndarray:
            begin, _, kept = window
            sr = super_resolve(
                network, to_unit_float(lr_frames), tile=tile, overlap=tile_overlap, scale=SCALE
            )[0]
            return from_unit_float(sr[[frame - begin for frame in kept]], high_bit)

        def encode_step(window, sr_frames: np.ndarray) -> None:
            nonlocal written
            for offset, frame in enumerate(window[2]):
                writer.write(sr_frames[offset : offset + 1], [frame], size)
                written += 1
                if report is not None:
                    report(written, info.num_frames)

        run_overlapped(
            windows,
            lambda window: frames.window(window[0], window[1]),
            model_step,
            encode_step,
            idle=getattr(report, "heartbeat", None),
        )
        notes += reader.notes() if isinstance(reader, SourceReader) else []
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        reader.close()
    sr_size = size or (SCALE * info.height, SCALE * info.width)
    truncation = reader.truncation
    if source is not None:
        notes.append(f"colour: {source.colour.describe()} -> {_written_colour(writer)}")
    return InferSummary(
        input=str(in_path),
        output=str(out_path),
        num_frames=written,
        lr_size=(info.height, info.width),
        sr_size=tuple(sr_size),
        fps=info.fps,
        seconds=time.perf_counter() - started,
        device=str(target),
        truncation=truncation.reason if truncation else None,
        missing_frames=truncation.estimate_missing(written) if truncation else None,
        precision=precision,
        notes=tuple(notes),
    )


def _open_input(
    in_path: str | os.PathLike, start, end, allow_truncated: bool
) -> tuple[FrameReader, Source | None]:
    """A reader of the selected frames and, for a video file, its :class:`Source` (None for frame folders)."""
    path = Path(in_path)
    if path.is_dir() or not path.exists():
        if start is not None or end is not None:
            raise ConfigError(
                "--start / --end apply to video files; select the frames of a folder by copying them"
            )
        return open_frames(path, allow_truncated=allow_truncated), None
    source = open_source(path, start, end)
    if source.truncation is not None and not allow_truncated:
        found = len(source.times)
        missing = source.truncation.estimate_missing(found)
        estimate = f", about {missing} more are missing" if missing is not None else ""
        raise VideoError(
            f"video {path} is cut short ({source.truncation.reason}): only {found} frames decode{estimate}. "
            "Restore or re-download the file, or pass --allow-truncated to super-resolve the frames that are there"
        )
    return SourceReader(source), source


class _FolderOutput:
    """PNG frames (or a video of a folder input) through :class:`FrameWriter`, with the writer's interface."""

    def __init__(self, writer: FrameWriter, interpolation: str):
        self.writer, self.interpolation = writer, interpolation

    def write(self, frames: np.ndarray, indices: list[int], size: tuple[int, int] | None) -> None:
        from pipelines.inference.colour import ColourTags

        if frames.dtype == np.uint16:
            frames = (frames.astype(np.float32) / 257).round().astype(np.uint8)
        if size is not None:
            tags = ColourTags(0, 1, 13, 2, rgb=True)
            frames = np.stack(
                [rgb_to_frame(f, "rgb24", tags, size, self.interpolation).to_ndarray() for f in frames]
            )
        self.writer.write(frames)

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


def _open_writer(out_path, source: Source | None, fps: float, settings, overwrite, notes, interpolation):
    if source is None or output_is_folder(Path(out_path)):
        if source is not None and source.side_streams and settings.keep_audio:
            notes.append("PNG frames hold no audio or subtitles: only the video was written")
        rate = float(settings.fps or (source.rate if source else fps))
        return _FolderOutput(
            FrameWriter(out_path, rate, overwrite=overwrite, crf=settings.crf), interpolation
        )
    writer = VideoFileWriter(out_path, source, settings, overwrite=overwrite, notes=notes)
    writer.interpolation = interpolation
    return writer


def writer_keeps_depth(writer) -> bool:
    """Whether ``writer`` stores more than 8 bits per sample (a 10-bit pixel format)."""
    return isinstance(writer, VideoFileWriter) and writer.tags.bit_depth > 8


def _written_colour(writer) -> str:
    if not isinstance(writer, VideoFileWriter):
        return "8-bit RGB PNG"
    return f"{writer.encoder} {writer.pix_fmt} {writer.tags.describe()}"


def _reporter(progress: bool | Progress, name: str, total: int) -> Progress | None:
    if progress is True:
        return FrameProgress(name, total)
    return progress or None


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
    """A line for logs (frames, sizes, throughput), then one indented line per note (what was corrected,
    re-encoded, chosen)."""
    (h, w), (sh, sw) = summary.lr_size, summary.sr_size
    line = (
        f"{summary.input} -> {summary.output}: {summary.num_frames} frames {w}x{h} -> {sw}x{sh} "
        f"in {summary.seconds:.1f} s ({summary.frames_per_second:.2f} frames/s on {summary.device}, "
        f"{summary.precision})"
    )
    if summary.truncation:
        missing = (
            "an unknown number of" if summary.missing_frames is None else f"about {summary.missing_frames}"
        )
        line += f"; INCOMPLETE: the input is cut short ({summary.truncation}), {missing} frames are missing"
    return "\n".join([line, *(f"  {note}" for note in summary.notes)])
