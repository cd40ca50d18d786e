"""Colour of a video kept through super-resolution: range, matrix, primaries, transfer and bit depth.

The networks see RGB. A YUV video becomes RGB with the matrix and range it was encoded with (BT.601 and
BT.709 differ by up to 7 levels on saturated colours), and the x4 output goes back to YUV with the same
matrix and range and carries the same tags, so a player shows the same colours (``docs/video.md``).
Untagged inputs are read the way players read them: BT.601 below 720 lines, BT.709 from 720 lines up,
limited range for YUV; the output is then tagged with what was assumed, since at 4x the size a player
would otherwise switch to BT.709. 10-bit (and deeper) inputs are decoded to 16-bit RGB, never to 8 bits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

# FFmpeg's enum values (AVColorSpace, AVColorPrimaries, AVColorTransferCharacteristic, AVColorRange).
MATRIX_NAMES = {0: "rgb", 1: "bt709", 2: "unknown", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m"}
MATRIX_NAMES |= {9: "bt2020nc", 10: "bt2020c"}
PRIMARIES_NAMES = {1: "bt709", 2: "unknown", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 9: "bt2020"}
TRANSFER_NAMES = {1: "bt709", 2: "unknown", 6: "smpte170m", 13: "iec61966-2-1", 14: "bt2020-10"}
TRANSFER_NAMES |= {16: "smpte2084", 18: "arib-std-b67"}
RANGE_NAMES = {0: "unknown", 1: "tv", 2: "pc"}
UNSPECIFIED = 2
RANGE_TV, RANGE_PC = 1, 2
# swscale's coefficient tables for each YUV matrix (SWS_CS_*): BT.601's serves BT.470BG and SMPTE 170M.
_SWS_MATRIX = {1: "itu709", 4: "fcc", 5: "itu601", 6: "itu601", 7: "smpte240m", 9: "bt2020", 10: "bt2020"}
# Accurate rounding in both directions: without it swscale's fast paths drift by 2 levels on a round trip.
_EXACT = "BICUBIC|ACCURATE_RND|FULL_CHR_H_INT|FULL_CHR_H_INP"
HD_LINES = 720
"""Players read untagged video of this height or more as BT.709, below it as BT.601."""


@dataclass(frozen=True)
class ColourTags:
    """How a video's samples map to colours (FFmpeg enum values) and its bits per sample.

    ``assumed`` names the tags the input did not carry and were filled in (see the module docstring).
    """

    matrix: int
    primaries: int
    transfer: int
    range: int
    bit_depth: int = 8
    rgb: bool = False  # the input's pixels are RGB (no matrix)
    assumed: tuple[str, ...] = ()

    @property
    def high_bit_depth(self) -> bool:
        return self.bit_depth > 8

    def describe(self) -> str:
        """``bt709/bt709/bt709 tv 10-bit``: matrix/primaries/transfer, range, depth."""
        names = (
            MATRIX_NAMES.get(self.matrix, str(self.matrix)),
            PRIMARIES_NAMES.get(self.primaries, str(self.primaries)),
            TRANSFER_NAMES.get(self.transfer, str(self.transfer)),
        )
        text = f"{'/'.join(names)} {RANGE_NAMES.get(self.range, self.range)} {self.bit_depth}-bit"
        return text + (f" (assumed {', '.join(self.assumed)})" if self.assumed else "")


def read_tags(codec_context, frame) -> ColourTags:
    """The colour of a decoded video: its stream's tags, the first frame's where the stream has none.

    Unspecified tags are filled the way players fill them (module docstring) and listed in ``assumed``.
    """
    fmt = frame.format
    rgb = fmt.name.startswith(("rgb", "bgr", "gbr", "argb", "abgr", "0rgb", "0bgr")) or fmt.name.startswith(
        "pal"
    )
    depth = max(component.bits for component in fmt.components) if not fmt.name.startswith("pal") else 8

    def tag(name: str) -> int:
        value = int(getattr(codec_context, name, UNSPECIFIED) or UNSPECIFIED)
        return value if value != UNSPECIFIED else int(getattr(frame, name, UNSPECIFIED) or UNSPECIFIED)

    matrix, primaries, transfer = tag("colorspace"), tag("color_primaries"), tag("color_trc")
    colour_range = int(getattr(codec_context, "color_range", 0) or getattr(frame, "color_range", 0) or 0)
    assumed = []
    hd = frame.height >= HD_LINES
    if matrix in (UNSPECIFIED, 0) and not rgb:
        matrix = 1 if hd else 6
        assumed.append("matrix")
    if rgb:
        matrix = 0
    # Primaries and transfer follow the matrix's standard where missing (BT.709 or BT.601 / SMPTE 170M).
    standard = {1: 1, 5: 5, 6: 6, 7: 7, 9: 9, 10: 9}.get(matrix, 1)
    if primaries == UNSPECIFIED:
        primaries = standard
        assumed.append("primaries")
    if transfer == UNSPECIFIED:
        transfer = {5: 6, 9: 14}.get(standard, standard)
        assumed.append("transfer")
    if colour_range == 0:
        # JPEG-style pixel formats (yuvj420p) are full range by definition.
        colour_range = RANGE_PC if rgb or fmt.name.startswith("yuvj") else RANGE_TV
        assumed.append("range")
    return ColourTags(matrix, primaries, transfer, colour_range, depth, rgb, tuple(assumed))


def output_tags(tags: ColourTags, bit_depth: int) -> ColourTags:
    """Tags of a YUV output of ``tags``'s colours: an RGB input is written with BT.709's matrix (HD-sized)."""
    matrix = 1 if tags.matrix == 0 else tags.matrix
    colour_range = RANGE_TV if tags.rgb else tags.range
    return replace(tags, matrix=matrix, range=colour_range, bit_depth=bit_depth, rgb=False, assumed=())


def rgb_format(high_bit_depth: bool) -> str:
    """The RGB pixel format frames cross the model boundary in: 8 or 16 bits per sample."""
    return "rgb48le" if high_bit_depth else "rgb24"


def _interpolation(filter_name: str = "bicubic"):
    """swscale flags: the resampling filter (used when the size changes) and accurate rounding."""
    from av.video.reformatter import Interpolation

    flags = Interpolation[filter_name.upper()]
    for name in _EXACT.split("|")[1:]:
        flags |= Interpolation[name]
    return flags


def frame_to_rgb(frame, tags: ColourTags) -> np.ndarray:
    """A decoded frame as ``(h, w, 3)`` RGB: uint8, or uint16 for a high bit depth input."""
    target = rgb_format(tags.high_bit_depth)
    if tags.rgb:
        return frame.reformat(format=target).to_ndarray()
    converted = frame.reformat(
        format=target,
        interpolation=_interpolation(),
        src_colorspace=_SWS_MATRIX.get(tags.matrix, "itu601"),
        src_color_range=tags.range,
        dst_color_range=RANGE_PC,
    )
    return converted.to_ndarray()


def rgb_to_frame(
    rgb: np.ndarray,
    pix_fmt: str,
    tags: ColourTags,
    size: tuple[int, int] | None = None,
    interpolation: str = "lanczos",
):
    """An ``av.VideoFrame`` in ``pix_fmt`` from ``(h, w, 3)`` uint8 / uint16 RGB, converted and tagged.

    ``size``: ``(height, width)`` to resample to with the named swscale filter (``--outscale``).
    """
    import av

    frame = av.VideoFrame.from_ndarray(rgb, format="rgb48le" if rgb.dtype == np.uint16 else "rgb24")
    height, width = size or rgb.shape[:2]
    if pix_fmt.startswith(("bgr", "gbr", "rgb")):
        frame = frame.reformat(width, height, format=pix_fmt, interpolation=_interpolation(interpolation))
        frame.color_range = RANGE_PC
        frame.colorspace = 0
    else:
        frame = frame.reformat(
            width,
            height,
            format=pix_fmt,
            interpolation=_interpolation(interpolation),
            src_colorspace=_SWS_MATRIX.get(tags.matrix, "itu709"),
            dst_colorspace=_SWS_MATRIX.get(tags.matrix, "itu709"),
            src_color_range=RANGE_PC,
            dst_color_range=tags.range,
        )
        frame.color_range = tags.range
        frame.colorspace = tags.matrix
    frame.color_primaries = tags.primaries
    frame.color_trc = tags.transfer
    return frame


def tag_codec_context(codec_context, tags: ColourTags, rgb_pixels: bool) -> None:
    """Write ``tags`` into an encoder's settings so the container and bitstream carry them."""
    codec_context.color_primaries = tags.primaries
    codec_context.color_trc = tags.transfer
    codec_context.colorspace = 0 if rgb_pixels else tags.matrix
    codec_context.color_range = RANGE_PC if rgb_pixels else tags.range


def to_unit_float(frames: np.ndarray):
    """uint8 / uint16 ``(t, h, w, 3)`` RGB -> float32 ``(1, t, 3, h, w)`` in [0, 1] (the networks' layout)."""
    import torch

    scale = 65535.0 if frames.dtype == np.uint16 else 255.0
    tensor = torch.from_numpy(frames.astype(np.float32) if frames.dtype == np.uint16 else frames)
    return (tensor.permute(0, 3, 1, 2).float() / scale)[None]


def from_unit_float(sr, high_bit_depth: bool) -> np.ndarray:
    """float ``(t, 3, h, w)`` in [0, 1] -> uint8 / uint16 ``(t, h, w, 3)``, rounded and clipped."""
    peak = 65535.0 if high_bit_depth else 255.0
    values = sr.float().clamp(0, 1).mul(peak).round().permute(0, 2, 3, 1).cpu().numpy()
    return values.astype(np.uint16 if high_bit_depth else np.uint8)
