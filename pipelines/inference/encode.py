"""The x4 video out with PyAV: the input's timestamps and colour tags, and every other stream kept.

:class:`VideoFileWriter` encodes the x4 frames at the input's timestamps and colour tags and copies the
audio and subtitle packets beside them, interleaved as they go (memory stays bounded), transcoding
audio the container cannot hold. Written to a hidden partial file, renamed into place at the end.

``docs/video.md`` describes what is kept and how.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from pipelines.common.errors import ConfigError, VideoError
from pipelines.common.files import TEMP_MARKER
from pipelines.data.video_io import check_replaceable, disk_full_as_one_line
from pipelines.inference.colour import output_tags, rgb_to_frame, tag_codec_context
from pipelines.inference.streams import Source

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
        with disk_full_as_one_line(self.path, self.abort):
            self._write(frames, indices, size)

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
        with disk_full_as_one_line(self.path, self.abort):
            self._close()

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
