"""Frame conversions between decoded video and the networks, and mirror extension of sequences.

Decoded frames are uint8 ``(..., h, w, 3)`` RGB (numpy, as decoders and image writers hold them);
the networks take float32 ``(..., 3, h, w)`` in [0, 1]. :func:`float_to_uint8` quantises outputs
the way the benchmarks score them (``docs/benchmarks.md#evaluation-conventions``).

Mirror extension appends a sequence's reverse to it, as TTVSR is fed Vimeo-90K septuplets (twice:
7 -> 28 frames); :func:`is_mirror_extended` lets TTVSR reuse its backward flows on such an input.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def uint8_to_float(frames: np.ndarray | Tensor) -> Tensor:
    """uint8 frames ``(..., h, w, 3)`` (numpy or tensor) -> float32 ``(..., 3, h, w)`` in [0, 1].

    The result is contiguous, on the input tensor's device (the CPU for numpy).
    """
    if frames.dtype not in (np.uint8, torch.uint8):
        raise TypeError(f"uint8_to_float expects uint8 frames (..., h, w, 3), got dtype {frames.dtype}")
    if frames.ndim < 3 or frames.shape[-1] != 3:
        raise ValueError(f"uint8_to_float expects frames (..., h, w, 3), got shape {tuple(frames.shape)}")
    if isinstance(frames, np.ndarray):
        # a copy: decoded arrays may be read-only, which torch.from_numpy does not accept silently
        tensor = torch.from_numpy(np.moveaxis(frames, -1, -3).copy())
    else:
        tensor = frames.movedim(-1, -3).contiguous()
    return tensor.float().div_(255)


def float_to_uint8(frames: Tensor) -> np.ndarray:
    """float frames ``(..., 3, h, w)`` -> uint8 numpy ``(..., h, w, 3)``: ``round(clamp(x, 0, 1) * 255)``.

    Computed in float32 (rounding half to even), whatever the input's float dtype and device.
    """
    if not frames.is_floating_point():
        raise TypeError(f"float_to_uint8 expects float frames (..., 3, h, w), got dtype {frames.dtype}")
    if frames.ndim < 3 or frames.shape[-3] != 3:
        raise ValueError(f"float_to_uint8 expects frames (..., 3, h, w), got shape {tuple(frames.shape)}")
    levels = frames.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return levels.movedim(-3, -1).cpu().contiguous().numpy()


def mirror_extend(frames: Tensor, times: int = 1) -> Tensor:
    """``(n, t, ...)`` -> ``(n, 2**times t, ...)`` by appending the reversed sequence ``times`` times.

    Once gives ``[x, reversed x]``; twice gives the 28 frames TTVSR is fed for a Vimeo-90K septuplet.
    """
    for _ in range(times):
        frames = torch.cat([frames, frames.flip(1)], dim=1)
    return frames


def is_mirror_extended(frames: Tensor) -> bool:
    """Whether ``(n, t, ...)`` frames are a sequence followed by its reverse (``t`` even)."""
    t = frames.shape[1]
    return t % 2 == 0 and torch.equal(frames[:, : t // 2], frames[:, t // 2 :].flip(1))
