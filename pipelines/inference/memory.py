"""A spatial tile that fits the device, chosen before anything large is allocated.

Without ``--tile`` a network sees whole frames, and a 1080p window of 30 frames needs far more memory
than any device has. :func:`choose_tile` estimates the bytes a model call needs from the network's width
and the window's pixels, and returns the largest tile (or whole frames) that fits in a fraction of the
device's free memory; where even the smallest tile does not fit it stops with one line naming ``--tile``
and ``--chunk``, before the first allocation (``docs/video.md#memory``).

The estimate. In a forward pass without gradients a recurrent network keeps a few feature maps of its
widest layer per frame of the window for the propagation in the other direction, and one frame at a
time goes through the x4 reconstruction, whose upsampling holds about 16 feature maps per LR pixel:

    bytes(call) ~= 4 * width * pixels * (2 * frames + 16)

with ``width`` the most output channels of any convolution. Measured peak resident memory of the full
TTVSR (mid 64, widest conv 256) at 128x128 LR on the CPU was 4.4 KB per pixel and frame for 4 frames and
2.9 KB for 8 frames; the formula gives 6.1 KB and 4.1 KB, about 1.4x conservative.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipelines.common.errors import ConfigError
from vsr_models.inference import input_constraints

BUDGET = 0.6
"""Fraction of the device's free memory a model call may take (the allocator fragments; other jobs run)."""
TILE_BATCH = 4
"""Tiles per model call (:func:`vsr_models.inference.super_resolve`'s default)."""


def network_width(network: nn.Module) -> int:
    """The most output channels of any convolution or linear layer (64 when there is none)."""
    widths = [m.out_channels for m in network.modules() if isinstance(m, nn.Conv2d | nn.Conv3d)]
    widths += [m.out_features for m in network.modules() if isinstance(m, nn.Linear)]
    return max(widths, default=64)


def call_bytes(width: int, pixels: int, frames: int, scale: int = 4, bytes_per_value: int = 4) -> int:
    """Estimated peak bytes of one forward pass over ``frames`` frames of ``pixels`` LR pixels."""
    activations = bytes_per_value * width * pixels * (2 * frames + 4 * scale)
    output = 4 * 3 * scale * scale * pixels * frames  # the float32 SR frames of the call
    return activations + output


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: CUDA's free memory, or the host's available memory for the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


@dataclass(frozen=True)
class TileChoice:
    tile: int | None  # None: whole frames
    needed: int  # estimated bytes of one call
    free: int  # bytes free on the device
    note: str | None = None  # a line for the summary when a tile was chosen


def choose_tile(
    network: nn.Module,
    frame_size: tuple[int, int],
    frames: int,
    device: torch.device,
    free: int | None = None,
) -> TileChoice:
    """The largest tile (or ``None``, whole frames) whose model call fits ``BUDGET`` of the free memory.

    Args:
        network: the network (its width and input constraints are read).
        frame_size: LR ``(height, width)``.
        frames: frames per model call (the temporal window).
        free: free bytes (default: measured on ``device``).

    Raises:
        ConfigError: not even the smallest tile fits; names ``--tile`` and ``--chunk``.
    """
    constraints = input_constraints(network)
    free = free_memory(device) if free is None else free
    budget, width = int(BUDGET * free), network_width(network)
    height, frame_width = frame_size
    whole = call_bytes(width, height * frame_width, frames)
    if constraints.spatial_size is not None or whole <= budget:
        return TileChoice(None, whole, free)  # a fixed-size model tiles itself (VSR-Transformer: 64)
    multiple, smallest = constraints.multiple, max(constraints.min_size, constraints.multiple, 16)
    tile = (min(height, frame_width) // multiple) * multiple
    while tile >= smallest:
        needed = call_bytes(width, TILE_BATCH * tile * tile, frames)
        if needed <= budget:
            note = (
                f"{frame_width}x{height} frames in windows of {frames} need about {whole / 2**30:.1f} GiB on {device} "
                f"({free / 2**30:.1f} GiB free): tiles of {tile}x{tile} chosen (--tile sets another)"
            )
            return TileChoice(tile, needed, free, note)
        tile -= multiple
    needed = call_bytes(width, TILE_BATCH * smallest * smallest, frames)
    raise ConfigError(
        f"{frame_width}x{height} frames do not fit {device}: even {smallest}x{smallest} tiles in windows of {frames} "
        f"frames need about {needed / 2**30:.1f} GiB of the {free / 2**30:.1f} GiB free; pass a smaller --chunk "
        f"(and --tile {smallest}) or run on a device with more memory"
    )
