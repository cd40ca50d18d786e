"""Test media written with PyAV: small clips with audio, subtitles, exact rates, colour tags, 10 bits."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NTSC = Fraction(30000, 1001)


class NearestUpscaler(nn.Module):
    """A x4 'network' that repeats every pixel 4x4: flat colours stay exactly the same values."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))  # a parameter, so the model has a device

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """(n, t, 3, h, w) -> (n, t, 3, 4h, 4w)."""
        n, t = lr.shape[:2]
        return (F.interpolate(lr.flatten(0, 1), scale_factor=4, mode="nearest") * self.scale).unflatten(
            0, (n, t)
        )


def flat_yuv_frame(size: tuple[int, int], yuv: tuple[int, int, int], pix_fmt: str) -> av.VideoFrame:
    """A frame of one colour given as Y, U, V sample values (10-bit values for ``*10le`` formats)."""
    height, width = size
    frame = av.VideoFrame(width, height, pix_fmt)
    dtype = np.uint16 if pix_fmt.endswith("le") else np.uint8
    for plane, value in zip(frame.planes, yuv):
        plane.update(np.full(plane.buffer_size // np.dtype(dtype).itemsize, value, dtype).tobytes())
    return frame


def write_clip(
    path: Path,
    num_frames: int = 12,
    size: tuple[int, int] = (64, 64),
    rate: Fraction = NTSC,
    pix_fmt: str = "yuv420p",
    codec: str = "ffv1",
    yuv: tuple[int, int, int] | None = None,
    matrix: int | None = None,
    audio: str | None = "aac",
    subtitles: bool = False,
) -> Path:
    """A clip of ``num_frames`` frames at ``rate`` (time base ``1/rate``), optionally with a tone in
    ``audio`` covering the same time and a subtitle line; ``matrix`` tags colorspace / primaries / trc."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=rate)
        video.width, video.height, video.pix_fmt = size[1], size[0], pix_fmt
        video.codec_context.time_base = 1 / rate
        if matrix is not None:
            context = video.codec_context
            context.colorspace, context.color_primaries, context.color_trc = matrix, matrix, matrix
            context.color_range = 1
        sound = out.add_stream(audio, rate=48000, layout="stereo") if audio else None
        text = out.add_mux_stream("subrip") if subtitles else None
        for index in range(num_frames):
            if yuv is not None:
                frame = flat_yuv_frame(size, yuv, pix_fmt)
            else:
                rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
            if matrix is not None:
                frame.colorspace, frame.color_range = matrix, 1
            frame.pts, frame.time_base = index, 1 / rate
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if sound is not None:
            samples = int(48000 * num_frames / rate)
            tone = (0.2 * np.sin(np.arange(samples) / 48000 * 2 * np.pi * 440)).astype(np.float32)
            for start in range(0, samples, 1024):
                chunk = np.stack([tone[start : start + 1024]] * 2)
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = 48000, start
                out.mux(sound.encode(frame))
            out.mux(sound.encode())
        if text is not None:
            packet = av.Packet(b"a line of subtitles")
            packet.stream, packet.pts, packet.dts, packet.duration = text, 0, 0, 200
            packet.time_base = text.time_base
            out.mux(packet)
    return path


def duration(path: Path) -> float:
    """The container's duration in seconds (what players show)."""
    with av.open(str(path)) as container:
        return container.duration / av.time_base


def stream_codecs(path: Path) -> list[tuple[str, str]]:
    with av.open(str(path)) as container:
        return [(stream.type, stream.codec_context.name) for stream in container.streams]


def packet_count(path: Path, kind: str) -> int:
    with av.open(str(path)) as container:
        streams = [s for s in container.streams if s.type == kind]
        return sum(1 for packet in container.demux(streams) if packet.size)


def first_frame_planes(path: Path) -> tuple[av.VideoFrame, list[np.ndarray]]:
    """The first decoded frame and its planes' sample values."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        dtype = np.uint16 if frame.format.name.endswith("le") else np.uint8
        planes = [np.frombuffer(bytes(plane), dtype) for plane in frame.planes]
        return frame, planes
