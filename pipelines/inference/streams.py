"""A video file in with PyAV: frame times from the packets and the colour it was encoded with.

The writing half, which keeps every other stream, is :mod:`pipelines.inference.encode`.

- :func:`open_source` demuxes the video stream once (no decoding) for the time of every frame: a header
  that disagrees with the packets (tree.avi: 444 frames at 15 fps declared, 68 frames stored over 29.6 s)
  or packets without timestamps (Megamind_bugy.avi) are corrected from the packets, and each correction
  is a line of the job's summary. ``--start`` / ``--end`` select frames by time or index.
- :class:`SourceReader` decodes forward only, converting to RGB with the input's own colour matrix and
  range (:mod:`pipelines.inference.colour`).
``docs/video.md`` describes what is kept and how.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from pipelines.common.errors import ConfigError, VideoError
from pipelines.data.containers import Truncation, check_container
from pipelines.data.video_io import VideoInfo
from pipelines.inference.colour import (
    ColourTags,
    frame_to_rgb,
    read_tags,
)

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
