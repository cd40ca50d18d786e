"""PSNR and SSIM as the video super-resolution benchmarks compute them.

Conventions (``docs/benchmarks.md#evaluation-conventions``):

- Inputs are float frames ``(..., 3, h, w)`` RGB in [0, 1]. They are first **quantised to uint8
  levels** (``round(clamp(x, 0, 1) * 255)``), because the benchmark scripts score the 8-bit PNGs a
  model writes, not its float output. All arithmetic after that is float64.
- ``channel='rgb'``: the three channels on the 0..255 scale (REDS4). ``channel='y'``: MATLAB's
  ``rgb2ycbcr`` luma ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` (RGB in [0, 1], Y in [16, 235]),
  computed from the quantised RGB and *not* rounded again (as in the BasicSR / mmediting scripts).
  Used for Vid4, UDM10 and Vimeo-90K-T.
- ``crop_border`` pixels are removed from every side before scoring.
- PSNR ``= 10 log10(255^2 / MSE)`` per frame (``inf`` for identical frames).
- SSIM (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5), ``C1 = (0.01 * 255)^2``,
  ``C2 = (0.03 * 255)^2``, 'valid' filtering (the map is 10 pixels smaller than the frame in each
  direction) and no downsampling, as in the MATLAB-derived implementation the benchmark scripts use;
  computed per channel and averaged for RGB.
- Aggregation: a clip's value is the mean of its frames' values; the dataset value is the mean of
  the clip means (:class:`MetricAggregator`).

Every function is vectorised over all leading dimensions; frames are processed in groups to bound
memory on long high-resolution clips.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Channel = Literal["rgb", "y"]

# MATLAB rgb2ycbcr, luma row, for RGB in [0, 1] and Y on the 0..255 scale
_Y_OFFSET = 16.0
_Y_WEIGHTS = (65.481, 128.553, 24.966)

_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_C1 = (0.01 * 255) ** 2
_SSIM_C2 = (0.03 * 255) ** 2

# frames per vectorised group: bounds float64 temporaries (~10 copies of a group) for 720p HR frames
_FRAMES_PER_GROUP = 8


def quantize(x: Tensor) -> Tensor:
    """Float frames in [0, 1] -> float64 uint8 levels ``round(clamp(x, 0, 1) * 255)`` in [0, 255]."""
    return torch.round(x.detach().to(torch.float64).clamp(0, 1) * 255)


def rgb_to_y(x: Tensor) -> Tensor:
    """MATLAB ``rgb2ycbcr`` luma of RGB frames.

    Args:
        x: ``(..., 3, h, w)`` RGB in [0, 1].

    Returns:
        ``(..., 1, h, w)`` Y in [16/255, 235/255] (the [0, 1] scale of ``x``), same dtype as ``x``.
    """
    if x.shape[-3] != 3:
        raise ValueError(f"rgb_to_y expects (..., 3, h, w) RGB frames, got shape {tuple(x.shape)}")
    weights = torch.tensor(_Y_WEIGHTS, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return ((x * weights).sum(dim=-3, keepdim=True) + _Y_OFFSET) / 255


def _prepare(pred: Tensor, target: Tensor, crop_border: int, channel: Channel) -> tuple[Tensor, Tensor]:
    """Quantise, convert to the scored channel(s) on the 0..255 scale and crop -> ``(f, c, h, w)``."""
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if pred.dim() < 3 or pred.shape[-3] != 3:
        raise ValueError(f"expected (..., 3, h, w) RGB frames, got shape {tuple(pred.shape)}")
    if channel not in ("rgb", "y"):
        raise ValueError(f"channel must be 'rgb' or 'y', got {channel!r}")
    h, w = pred.shape[-2:]
    if crop_border < 0 or 2 * crop_border >= min(h, w):
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {h}x{w} frame")
    frames = []
    for image in (pred, target):
        image = quantize(image).reshape(-1, 3, h, w)
        if channel == "y":
            image = rgb_to_y(image / 255) * 255
        if crop_border:
            image = image[..., crop_border:-crop_border, crop_border:-crop_border]
        frames.append(image)
    return frames[0], frames[1]


def _frame_groups(pred: Tensor, target: Tensor) -> Iterable[tuple[Tensor, Tensor]]:
    for start in range(0, pred.shape[0], _FRAMES_PER_GROUP):
        yield pred[start : start + _FRAMES_PER_GROUP], target[start : start + _FRAMES_PER_GROUP]


def psnr(pred: Tensor, target: Tensor, crop_border: int = 0, channel: Channel = "rgb") -> Tensor:
    """Peak signal-to-noise ratio of every frame, on 8-bit levels.

    Args:
        pred: ``(..., 3, h, w)`` RGB in [0, 1], e.g. ``(n, t, 3, H, W)``.
        target: ground truth of the same shape.
        crop_border: pixels removed from each side before scoring.
        channel: ``'rgb'`` or ``'y'`` (MATLAB luma).

    Returns:
        float64 tensor of shape ``(...)`` (one value per frame), ``inf`` where a frame is exact.
    """
    leading = pred.shape[:-3]
    a, b = _prepare(pred, target, crop_border, channel)
    mse = torch.cat([((x - y) ** 2).mean(dim=(1, 2, 3)) for x, y in _frame_groups(a, b)])
    return (10 * torch.log10(255.0**2 / mse)).reshape(leading)


def gaussian_window(size: int = _SSIM_WINDOW, sigma: float = _SSIM_SIGMA) -> Tensor:
    """Normalised 1-D Gaussian (MATLAB ``fspecial('gaussian')`` / OpenCV ``getGaussianKernel``), float64."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    window = torch.exp(-(offsets**2) / (2 * sigma**2))
    return window / window.sum()


def _ssim_frames(a: Tensor, b: Tensor) -> Tensor:
    """Mean SSIM of each frame of ``a``, ``b``: ``(f, c, h, w)`` on 0..255 -> ``(f,)``."""
    channels = a.shape[1]
    window = gaussian_window().to(a.device)
    # separable Gaussian, 'valid' (no padding): rows then columns, one depthwise conv per axis
    rows = window.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    cols = window.view(1, 1, 1, -1).expand(channels, 1, 1, -1)

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(x, rows, groups=channels), cols, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov_ab = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + _SSIM_C1) * (2 * cov_ab + _SSIM_C2)) / (
        (mu_a**2 + mu_b**2 + _SSIM_C1) * (var_a + var_b + _SSIM_C2)
    )
    # every channel's map has the same size, so the mean over (c, h, w) is the mean of channel means
    return ssim_map.mean(dim=(1, 2, 3))


def ssim(pred: Tensor, target: Tensor, crop_border: int = 0, channel: Channel = "rgb") -> Tensor:
    """Structural similarity of every frame (Gaussian window, 'valid', on 8-bit levels).

    Args:
        pred: ``(..., 3, h, w)`` RGB in [0, 1]; ``h``, ``w`` after cropping must be at least 11.
        target: ground truth of the same shape.
        crop_border: pixels removed from each side before scoring.
        channel: ``'rgb'`` (mean over the three channels) or ``'y'`` (MATLAB luma).

    Returns:
        float64 tensor of shape ``(...)``, one value per frame; 1 for identical frames.
    """
    leading = pred.shape[:-3]
    a, b = _prepare(pred, target, crop_border, channel)
    if min(a.shape[-2:]) < _SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs frames of at least {_SSIM_WINDOW}x{_SSIM_WINDOW}, got {tuple(a.shape[-2:])}"
        )
    return torch.cat([_ssim_frames(x, y) for x, y in _frame_groups(a, b)]).reshape(leading)


def frame_metrics(
    pred: Tensor, target: Tensor, crop_border: int = 0, channel: Channel = "rgb"
) -> tuple[Tensor, Tensor]:
    """``(psnr, ssim)`` per frame of ``(..., 3, h, w)`` frames; see :func:`psnr` and :func:`ssim`."""
    return psnr(pred, target, crop_border, channel), ssim(pred, target, crop_border, channel)


@dataclass(frozen=True)
class ClipMetrics:
    """Mean PSNR / SSIM of one clip over its ``num_frames`` scored frames."""

    psnr: float
    ssim: float
    num_frames: int


@dataclass(frozen=True)
class MetricSummary:
    """Dataset means (mean over clips of the clip means) and the per-clip means."""

    psnr: float
    ssim: float
    num_frames: int
    clips: dict[str, ClipMetrics] = field(default_factory=dict)

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat ``{name: value}`` for logging: ``psnr``, ``ssim`` and ``<clip>/psnr``, ``<clip>/ssim``."""
        values = {f"{prefix}psnr": self.psnr, f"{prefix}ssim": self.ssim}
        for clip_id, clip in self.clips.items():
            values[f"{prefix}{clip_id}/psnr"] = clip.psnr
            values[f"{prefix}{clip_id}/ssim"] = clip.ssim
        return values


class MetricAggregator:
    """Collects per-frame PSNR / SSIM by clip and averages them like the benchmark tables.

    A clip may be added in several parts (e.g. temporal chunks); its frames are pooled.

    Example::

        agg = MetricAggregator()
        for clip_id, sr, gt in clips:
            agg.add(clip_id, *frame_metrics(sr, gt, channel="y"))
        summary = agg.summary()  # summary.psnr, summary.clips["calendar"].ssim
    """

    def __init__(self) -> None:
        self._psnr: dict[str, list[float]] = {}
        self._ssim: dict[str, list[float]] = {}

    def add(
        self, clip_id: str, per_frame_psnr: Tensor | Iterable[float], per_frame_ssim: Tensor | Iterable[float]
    ) -> None:
        """Record the frames of ``clip_id``: two equally long sequences (any shape; flattened)."""
        psnr_values = _as_floats(per_frame_psnr)
        ssim_values = _as_floats(per_frame_ssim)
        if len(psnr_values) != len(ssim_values):
            raise ValueError(
                f"clip {clip_id!r}: {len(psnr_values)} PSNR values but {len(ssim_values)} SSIM values"
            )
        self._psnr.setdefault(clip_id, []).extend(psnr_values)
        self._ssim.setdefault(clip_id, []).extend(ssim_values)

    def __len__(self) -> int:
        return len(self._psnr)

    def summary(self) -> MetricSummary:
        """Per-clip means and the dataset mean of the clip means."""
        if not self._psnr:
            raise ValueError("MetricAggregator.summary(): no clips were added")
        clips = {
            clip_id: ClipMetrics(
                psnr=_mean(self._psnr[clip_id]),
                ssim=_mean(self._ssim[clip_id]),
                num_frames=len(self._psnr[clip_id]),
            )
            for clip_id in self._psnr
        }
        return MetricSummary(
            psnr=_mean([c.psnr for c in clips.values()]),
            ssim=_mean([c.ssim for c in clips.values()]),
            num_frames=sum(c.num_frames for c in clips.values()),
            clips=clips,
        )


def _as_floats(values: Tensor | Iterable[float]) -> list[float]:
    if isinstance(values, Tensor):
        return values.detach().to("cpu", torch.float64).flatten().tolist()
    return [float(v) for v in values]


def _mean(values: list[float]) -> float:
    # math.fsum: exact sum, and inf (a perfectly reconstructed frame) propagates as inf
    return math.fsum(values) / len(values) if values else math.nan
