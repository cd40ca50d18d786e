"""A video file in and out with PyAV: frame times from the packets, colour, and every other stream kept.

- :func:`open_source` demuxes the video stream once (no decoding) for the time of every frame: a header
  that disagrees with the packets (tree.avi: 444 frames at 15 fps declared, 68 frames stored over 29.6 s)
  or packets without timestamps (Megamind_bugy.avi) are corrected from the packets, and each correction
  is a line of the job's summary. ``--start`` / ``--end`` select frames by time or index.
- :class:`SourceReader` decodes forward only, converting to RGB with the input's own colour matrix and
  range (:mod:`pipelines.inference.colour`).
- :class:`VideoFileWriter` encodes the x4 frames at the input's timestamps and colour tags and copies the
  audio and subtitle packets beside them, interleaved as they go (memory stays bounded), transcoding
  audio the container cannot hold. Written to a hidden partial file, renamed into place at the end.

``docs/video.md`` describes what is kept and how.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from pipelines.common.errors import ConfigError, VideoError
from pipelines.common.files import TEMP_MARKER, is_disk_full
from pipelines.data.containers import Truncation, check_container
from pipelines.data.video_io import VideoInfo, check_replaceable, disk_full_error
from pipelines.inference.colour import (
    ColourTags,
    frame_to_rgb,
    output_tags,
    read_tags,
    rgb_to_frame,
    tag_codec_context,
)

# --codec names -> (encoder, 8-bit pixel format, high bit depth pixel format or None)
CODECS: dict[str, tuple[str, str, str | None]] = {
    "h264": ("libx264", "yuv420p", "yuv420p10le"),
    "h265": ("libx265", "yuv420p", "yuv420p10le"),
    "hevc": ("libx265", "yuv420p", "yuv420p10le"),
    "ffv1": ("ffv1", "bgr0", "gbrp10le"),
    "vp9": ("libvpx-vp9", "yuv420p", None),
    "av1": ("libsvtav1", "yuv420p", "yuv420p10le"),
}
DEFAULT_CODEC = {
    ".mkv": "ffv1",
    ".avi": "ffv1",
    ".mp4": "h264",
    ".mov": "h264",
    ".m4v": "h264",
    ".webm": "vp9",
}
DEFAULT_CRF = {"libx264": 12, "libx265": 14, "libvpx-vp9": 15, "libsvtav1": 20}
"""Visually lossless constant rate factors (x264 12 as before; x265 / VP9 / AV1 near the same quality)."""
FILTERS = ("lanczos", "bicubic", "bilinear", "area")
"""``--outscale-filter`` choices: swscale's resampling filters."""
_TIME = re.compile(r"^(?:(\d+):)?(?:(\d+):)?(\d+(?:\.\d*)?)$")


def parse_position(text: str | None) -> float | int | None:
    """``--start`` / ``--end``: ``12.5`` or ``1:02.5`` (seconds, float) or ``300f`` (a frame index, int)."""
    if text is None or text == "":
        return None
    text = str(text).strip()
    if text.endswith("f") and text[:-1].isdigit():
        return int(text[:-1])
    match = _TIME.match(text)
    if not match:
        raise ConfigError(
            f"cannot read position {text!r}; use seconds (12.5), [hh:]mm:ss(.ms) or a frame (300f)"
        )
    parts = [float(p) for p in match.groups() if p is not None]
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    return seconds


@dataclass
class Source:
    """A video file's frames as stored: their times, the selected range, colour and other streams."""

    path: Path
    time_base: Fraction
    times: list[int]  # presentation time of every frame, in time_base ticks, in display order
    end_time: int  # end of the last frame's display, in ticks
    rate: Fraction  # nominal frame rate (rational: 30000/1001, not 29.97)
    first: int  # selected frames: first .. stop - 1
    stop: int
    colour: ColourTags
    width: int
    height: int
    start_seconds: float  # where the output's clock starts (the selection's start, or the file's)
    end_seconds: float | None  # where the selection ends (None: the end of the file)
    truncation: Truncation | None = None
    corrections: list[str] = field(default_factory=list)
    side_streams: list[int] = field(default_factory=list)  # indices of audio / subtitle streams

    @property
    def num_frames(self) -> int:
        return self.stop - self.first

    @property
    def info(self) -> VideoInfo:
        return VideoInfo(self.num_frames, self.height, self.width, float(self.rate))

    def frame_duration(self, index: int) -> int:
        """Ticks frame ``index`` is shown for (up to the next frame, or the file's end for the last)."""
        following = self.times[index + 1] if index + 1 < len(self.times) else self.end_time
        return max(following - self.times[index], 1)

    def seconds(self, index: int) -> float:
        return float((self.times[index]) * self.time_base)


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise VideoError(f"{path} has no video stream; pass a video file or a folder of frames")
    return container.streams.video[0]


def open_source(
    path: str | os.PathLike, start: float | int | None = None, end: float | int | None = None
) -> Source:
    """Read a video file's frame times (from its packets), colour and side streams, and select a range.

    Raises:
        VideoError: no video stream, nothing decodes, or an empty selection.
    """
    import av

    path = Path(path)
    truncation = check_container(path)
    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        raise VideoError(
            f"cannot decode video {path}: {reason}. Check the file plays, or re-encode it "
            f"(ffmpeg -i {path.name} -c:v libx264 -crf 12 fixed.mp4) or extract its frames to a folder"
        ) from error
    with container:
        stream = _video_stream(container, path)
        time_base = stream.time_base or Fraction(1, 90000)
        stamps, missing, last_duration = [], 0, 0
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None:
                missing += 1
                stamp = (stamps[-1] + 1) if stamps else 0
            stamps.append(stamp)
            last_duration = packet.duration or 0
        container.seek(0)
        first_frame = next(container.decode(stream), None)
        if first_frame is None or not stamps:
            raise VideoError(f"video {path} has no decodable frames; check the file is complete")
        colour = read_tags(stream.codec_context, first_frame)
        rate = Fraction(stream.average_rate or stream.guessed_rate or 25)
        times = sorted(stamps)
        gaps = np.diff(times)
        typical = int(np.median(gaps)) if len(gaps) else max(int(round(1 / (rate * time_base))), 1)
        end_time = times[-1] + (last_duration or typical)
        corrections = _corrections(stream, time_base, rate, times, end_time, missing, path.name)
        time_base, times, end_time = _on_rate_grid(time_base, rate, times, end_time)
        side = [s.index for s in container.streams if s.type in ("audio", "subtitle")]
        file_start = min(
            [float(times[0] * time_base)]
            + [
                float(s.start_time * s.time_base)
                for s in container.streams
                if s.index in side and s.start_time
            ]
        )
        source = Source(
            path, time_base, times, end_time, rate, 0, len(times), colour, first_frame.width,
            first_frame.height, max(file_start, 0.0), None, truncation, corrections, side,
        )  # fmt: skip
    _select(source, start, end)
    return source


def _on_rate_grid(time_base: Fraction, rate: Fraction, times: list[int], end_time: int):
    """Constant-rate frames stored in a coarse time base (Matroska's milliseconds) back on the exact grid.

    When every frame is within one tick of ``first + i / rate``, the times become ``i`` in a time base of
    ``1 / rate`` (30000/1001 stays exact instead of 33, 34, 33 ms steps); anything else is kept as stored.
    """
    grid = 1 / rate
    if time_base == grid or not times:
        return time_base, times, end_time
    first = Fraction(times[0]) * time_base
    expected = [first + index * grid for index in range(len(times))]
    if any(abs(Fraction(t) * time_base - e) > time_base for t, e in zip(times, expected)):
        return time_base, times, end_time
    offset = round(first / grid)
    return grid, [offset + index for index in range(len(times))], offset + len(times)


def _corrections(stream, time_base, rate, times, end_time, missing, name) -> list[str]:
    """Lines saying where the header disagrees with the packets, and what was taken instead."""
    lines = []
    declared = stream.frames or 0
    played = float((end_time - times[0]) * time_base)
    if declared and declared != len(times):
        lines.append(
            f"{name}: its header declares {declared} frames at {float(rate):g} fps but the file holds {len(times)} "
            f"frames over {played:.2f} s; kept each frame's own time (variable frame rate), so the output lasts "
            f"{played:.2f} s like the input"
        )
    if missing:
        lines.append(f"{name}: {missing} frames carry no timestamp; timed from their order in the file")
    return lines


def _select(source: Source, start: float | int | None, end: float | int | None) -> None:
    """Restrict ``source`` to ``start .. end`` (seconds from the first frame, or frame indices)."""
    origin = source.times[0]

    def index(position: float | int, default: int) -> int:
        if position is None:
            return default
        if isinstance(position, int):
            return min(max(position, 0), len(source.times))
        ticks = origin + position / source.time_base
        return int(np.searchsorted(source.times, ticks - 1e-6))

    source.first, source.stop = index(start, 0), index(end, len(source.times))
    if source.stop <= source.first:
        raise ConfigError(
            f"--start {start} / --end {end} select no frame of {source.path} ({len(source.times)} frames, "
            f"{float((source.end_time - origin) * source.time_base):.2f} s)"
        )
    if start is not None:
        source.start_seconds = source.seconds(source.first)
    if end is not None and source.stop < len(source.times):
        source.end_seconds = source.seconds(source.stop)
    if start is not None or end is not None:
        source.corrections.append(
            f"{source.path.name}: frames {source.first}..{source.stop - 1} "
            f"({source.seconds(source.first) - float(origin * source.time_base):.2f} s to "
            f"{float(((source.times[source.stop] if source.stop < len(source.times) else source.end_time) - origin) * source.time_base):.2f} s)"
        )


class SourceReader:
    """Decodes the selected frames forward only, as ``(t, h, w, 3)`` uint8 / uint16 RGB."""

    def __init__(self, source: Source):
        import av

        self.source = source
        self.path = source.path
        self.info = source.info
        self.truncation = source.truncation
        self._container = av.open(str(source.path))
        self._container.streams.video[
            0
        ].thread_type = "AUTO"  # frame threads: decoding keeps up with the model
        self._frames = self._container.decode(video=0)
        self._next = 0  # frames decoded so far (file order)
        self.untimed = (
            0  # decoded frames without their display time (none, or out of order): timed from the packets
        )

    def read(self, start: int, stop: int) -> np.ndarray:
        """Selected frames ``start .. stop - 1``; ``start`` must be the next frame not yet read."""
        first, last = self.source.first + start, self.source.first + stop
        if first < self._next:
            raise ValueError(f"SourceReader reads forward only: frame {first} was already read")
        frames = []
        for frame in self._frames:
            self._next += 1
            index = self._next - 1
            self.untimed += index < len(self.source.times) and frame.pts != self.source.times[index]
            if self._next - 1 < first:
                continue
            frames.append(frame_to_rgb(frame, self.source.colour))
            if self._next >= last:
                break
        if len(frames) < stop - start:
            raise VideoError(
                f"video {self.path} has {len(self.source.times)} frames but only {self._next} decode; the file is "
                "damaged: re-encode it or extract its frames to a folder"
            )
        return np.stack(frames)

    def notes(self) -> list[str]:
        """What the decoder showed that the packets did not (frames without their display time)."""
        if not self.untimed:
            return []
        return [
            f"{self.path.name}: {self.untimed} of {self._next} decoded frames carry no timestamp or one out of "
            "display order (B-frames packed in AVI); each was given its place in the sorted packet times, so the "
            "output plays as the input does"
        ]

    def close(self) -> None:
        self._container.close()


# -- writing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodeSettings:
    """What the user chose for the output video (``jobs/infer.py --codec/--crf/--preset/--pix-fmt``)."""

    codec: str | None = None  # None: the suffix's default (DEFAULT_CODEC)
    crf: int | None = None
    preset: str | None = None
    pix_fmt: str | None = None
    keep_audio: bool = True  # False: --no-audio (audio and subtitles dropped)
    fps: Fraction | None = None  # --fps: a constant output rate (frames repeated / dropped to keep time)


def choose_encoder(suffix: str, settings: EncodeSettings, high_bit_depth: bool) -> tuple[str, str, list[str]]:
    """``(encoder, pixel format, notes)`` for an output suffix, the user's choices and the input's depth."""
    import av

    name = settings.codec or DEFAULT_CODEC.get(suffix)
    if name is None:
        raise VideoError(f"no default codec for {suffix!r} outputs; pass --codec {'|'.join(CODECS)}")
    encoder, pix_fmt, deep = CODECS.get(name, (name, None, None))
    try:
        formats = [f.name for f in av.codec.Codec(encoder, "w").video_formats or []]
    except av.FFmpegError:
        raise ConfigError(
            f"--codec {name}: no such encoder in this FFmpeg; use one of {', '.join(CODECS)}"
        ) from None
    notes = []
    if settings.pix_fmt:
        if formats and settings.pix_fmt not in formats:
            raise ConfigError(
                f"--pix-fmt {settings.pix_fmt} is not one {encoder} writes: {', '.join(formats)}"
            )
        return encoder, settings.pix_fmt, notes
    pix_fmt = pix_fmt or (formats[0] if formats else "yuv420p")
    if high_bit_depth:
        if deep and deep in formats:
            pix_fmt = deep
        else:
            notes.append(
                f"the input has more than 8 bits per sample but {encoder} here writes 8 bits: reduced to 8-bit "
                "(use --codec h265, h264 or ffv1 to keep 10 bits)"
            )
    return encoder, pix_fmt, notes


class VideoFileWriter:
    """Encodes RGB frames at given times into a video file, copying the source's other streams beside them."""

    def __init__(
        self,
        path: str | os.PathLike,
        source: Source,
        settings: EncodeSettings,
        *,
        overwrite: bool = False,
        notes: list[str] | None = None,
    ):
        self.path = Path(path)
        check_replaceable(self.path, False, overwrite)
        self.source, self.settings = source, settings
        self.notes = notes if notes is not None else []
        self.encoder, self.pix_fmt, more = choose_encoder(
            self.path.suffix.lower(), settings, source.colour.high_bit_depth
        )
        self.notes.extend(more)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(f".{self.path.stem}{TEMP_MARKER}{os.getpid()}{self.path.suffix}")
        self.partial.unlink(missing_ok=True)
        import av

        depth = max(component.bits for component in av.VideoFormat(self.pix_fmt).components)
        self.tags = output_tags(source.colour, depth)
        self.num_frames = self.slots = 0
        self._container = self._video = None
        self._side: dict[int, tuple] = {}  # input stream index -> (output stream, transcoder or None)
        self._side_packets: Iterator | None = None
        self._pending = None  # the next side packet, held until the video reaches its time
        self._side_input = None

    # -- opening -----------------------------------------------------------------------------------

    def _open(self, height: int, width: int) -> None:
        import av

        if self.pix_fmt.startswith(("yuv420", "yuv422", "nv")) and (height % 2 or width % 2):
            raise VideoError(
                f"{self.pix_fmt} needs an even frame size, got {width}x{height}; write .mkv (FFV1)"
            )
        self._container = av.open(str(self.partial), mode="w", format=_format_name(self.path))
        if self.encoder not in self._container.supported_codecs:
            raise ConfigError(
                f"{self.path.suffix} files cannot hold {self.encoder}; use .mkv or another --codec"
            )
        rate = self.settings.fps or self.source.rate
        stream = self._container.add_stream(self.encoder, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, self.pix_fmt
        # Frames keep the input's clock; with --fps, a constant one.
        stream.codec_context.time_base = 1 / self.settings.fps if self.settings.fps else self.source.time_base
        rgb_pixels = self.pix_fmt.startswith(("bgr", "gbr", "rgb"))
        tag_codec_context(stream.codec_context, self.tags, rgb_pixels)
        options = {}
        crf = self.settings.crf if self.settings.crf is not None else DEFAULT_CRF.get(self.encoder)
        if crf is not None and self.encoder != "ffv1":
            options["crf"] = str(crf)
            if self.encoder == "libvpx-vp9":
                options["b:v"] = "0"  # constant quality
        if self.settings.preset and self.encoder in ("libx264", "libx265", "libsvtav1"):
            options["preset"] = self.settings.preset
        elif self.encoder in ("libx264", "libx265"):
            options["preset"] = "medium"
        if self.encoder == "libx265":
            options["x265-params"] = "log-level=error"
        stream.options = options
        self._video = stream
        if self.settings.keep_audio and self.source.side_streams:
            self._open_side_streams()

    def _open_side_streams(self) -> None:
        import av

        self._side_input = av.open(str(self.source.path))
        streams = [s for s in self._side_input.streams if s.index in self.source.side_streams]
        for stream in streams:
            name = stream.codec_context.name
            if name in self._container.supported_codecs and not _unnamed_layout_in_mp4(stream, self.path):
                self._side[stream.index] = (self._container.add_stream_from_template(stream), None)
            elif stream.type == "audio":
                codec = "libopus" if self.path.suffix.lower() == ".webm" else "aac"
                rate = 48000 if codec == "libopus" else (stream.codec_context.sample_rate or 48000)
                # The standard layout of its channel count ("2 channels" of PCM is not one MP4 can hold).
                channels = stream.codec_context.channels or 2
                layout = {1: "mono", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 8: "7.1"}.get(
                    channels, "stereo"
                )
                out = self._container.add_stream(codec, rate=rate, layout=layout)
                # Both encoders take fixed-size frames: AAC 1024 samples, Opus 20 ms.
                frame_size = 1024 if codec == "aac" else 960
                resampler = av.AudioResampler(
                    format=out.format, layout=layout, rate=rate, frame_size=frame_size
                )
                self._side[stream.index] = (out, resampler)
                self.notes.append(
                    f"audio stream {stream.index} ({name}) cannot go into {self.path.suffix} as is: re-encoded to "
                    f"{'Opus' if codec == 'libopus' else 'AAC'}"
                )
            else:
                self.notes.append(
                    f"subtitle stream {stream.index} ({name}) cannot go into {self.path.suffix}: dropped "
                    "(write .mkv to keep it)"
                )
        if self._side:
            self._side_packets = self._side_input.demux([s for s in streams if s.index in self._side])

    # -- side streams ------------------------------------------------------------------------------

    def _mux_side_until(self, seconds: float | None) -> None:
        """Mux the side packets that play before ``seconds`` of the input's clock (None: all that remain)."""
        if self._side_packets is None:
            return
        while True:
            if self._pending is None:
                self._pending = next(self._side_packets, None)
                if self._pending is None:
                    self._side_packets = None
                    return
            packet = self._pending
            if packet.dts is None and packet.pts is None:
                self._pending = None
                continue
            stamp = packet.pts if packet.pts is not None else packet.dts
            at = float(stamp * packet.time_base)
            if seconds is not None and at > seconds:
                return
            self._pending = None
            end = self.source.end_seconds
            # Before the selection (an untrimmed file keeps all: AAC's priming packet starts before zero).
            early = self.source.first > 0 and at < self.source.start_seconds - 1e-6
            if early or (end is not None and at >= end):
                continue
            self._mux_side(packet)

    def _mux_side(self, packet) -> None:
        out, resampler = self._side[packet.stream.index]
        shift = round(self.source.start_seconds / packet.time_base)
        if resampler is None:
            packet.pts = None if packet.pts is None else packet.pts - shift
            packet.dts = None if packet.dts is None else packet.dts - shift
            packet.stream = out
            self._container.mux(packet)
            return
        for frame in packet.decode():
            frame.pts = (
                None if frame.pts is None else frame.pts - round(self.source.start_seconds / frame.time_base)
            )
            for resampled in resampler.resample(frame):
                self._container.mux(out.encode(resampled))

    # -- video -------------------------------------------------------------------------------------

    def write(self, frames: np.ndarray, indices: list[int], size: tuple[int, int] | None = None) -> None:
        """Encode RGB ``(t, h, w, 3)`` frames that are the source's selected frames ``indices``.

        ``size``: ``(height, width)`` to resize to (``--outscale``), with ``settings``' filter.
        """
        try:
            self._write(frames, indices, size)
        except OSError as error:  # PyAV's av.error.OSError names the hidden partial file, not the output
            self._raise_if_disk_full(error)
            raise

    def _raise_if_disk_full(self, error: OSError) -> None:
        if is_disk_full(error):
            self.abort()
            raise disk_full_error(self.path) from None

    def _write(self, frames: np.ndarray, indices: list[int], size: tuple[int, int] | None) -> None:
        height, width = size or frames.shape[1:3]
        if self._container is None:
            self._open(height, width)
        for rgb, index in zip(frames, indices, strict=True):
            frame = rgb_to_frame(rgb, self.pix_fmt, self.tags, size=size, interpolation=self.interpolation)
            self._encode(frame, self.source.first + index)
            self.num_frames += 1

    interpolation: str = "lanczos"

    def _encode(self, frame, index: int) -> None:
        source = self.source
        shift = round(source.start_seconds / source.time_base)
        if self.settings.fps is None:
            frame.pts = source.times[index] - shift
            frame.time_base = source.time_base
            frame.duration = source.frame_duration(index)
            self._mux_video(frame, source.seconds(index))
            return
        # A constant rate: the frame fills every output slot that starts while it is shown.
        slot = 1 / self.settings.fps
        until = float((source.times[index] - shift + source.frame_duration(index)) * source.time_base)
        while self.slots * slot < until - 1e-9:
            frame.pts, frame.time_base, frame.duration = self.slots, slot, 1
            self._mux_video(frame, source.start_seconds + float(self.slots * slot))
            self.slots += 1

    def _mux_video(self, frame, seconds: float) -> None:
        self._mux_side_until(seconds)
        self._container.mux(self._video.encode(frame))

    def close(self) -> None:
        """Flush the encoders, mux the remaining side packets and move the file into place."""
        if self._container is None:
            raise VideoError(f"no frames were written to {self.path}")
        try:
            self._close()
        except OSError as error:
            self._raise_if_disk_full(error)
            raise

    def _close(self) -> None:
        self._container.mux(self._video.encode())
        self._mux_side_until(None)
        for out, resampler in self._side.values():
            if resampler is not None:
                for resampled in resampler.resample(None) or []:
                    self._container.mux(out.encode(resampled))
                self._container.mux(out.encode())
        self._container.close()
        if self._side_input is not None:
            self._side_input.close()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        """Delete the partial output."""
        for container in (self._container, self._side_input):
            if container is not None:
                with contextlib.suppress(Exception):  # already failing; the partial file goes anyway
                    container.close()
        self._container = self._side_input = None
        self.partial.unlink(missing_ok=True)


def _unnamed_layout_in_mp4(stream, path: Path) -> bool:
    """MP4 / MOV refuse audio whose channels have no standard layout ("2 channels" of raw PCM) at the end."""
    layout = getattr(stream.codec_context, "layout", None) if stream.type == "audio" else None
    return (
        path.suffix.lower() in (".mp4", ".mov", ".m4v")
        and layout is not None
        and layout.name.endswith("channels")
    )


def _format_name(path: Path) -> str | None:
    """The muxer for a suffix PyAV would otherwise guess from the partial file's name (same suffix)."""
    return {".mkv": "matroska", ".webm": "webm", ".mov": "mov", ".mp4": "mp4", ".m4v": "mp4"}.get(
        path.suffix.lower()
    )
