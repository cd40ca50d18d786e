"""Building blocks shared by TTVSR and VSR-Transformer.

Both released implementations build on the same pieces (``docs/models.md#shared-blocks``):
residual blocks without batch norm, a stack of them behind an input convolution, backward
warping by optical flow, and a x4 pixel-shuffle reconstruction head added to a bilinear base.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


class ResidualBlockNoBN(nn.Module):
    """conv3x3 -> ReLU -> conv3x3, added to the input (residual scale 1, no batch norm)."""

    def __init__(self, mid_channels: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(mid_channels, mid_channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (n, c, h, w) -> (n, c, h, w)."""
        return x + self.conv2(F.relu(self.conv1(x)))


def make_layer(num_blocks: int, mid_channels: int) -> nn.Sequential:
    """A plain stack of ``num_blocks`` residual blocks."""
    return nn.Sequential(*(ResidualBlockNoBN(mid_channels) for _ in range(num_blocks)))


class ResidualBlocksWithInputConv(nn.Module):
    """conv3x3 (in -> out) and LeakyReLU(0.1), then ``num_blocks`` residual blocks.

    The layout ``main = [conv, activation, blocks]`` matches the released checkpoints' tensor names.
    """

    def __init__(self, in_channels: int, out_channels: int = 64, num_blocks: int = 30):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            make_layer(num_blocks, out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (n, in_channels, h, w) -> (n, out_channels, h, w)."""
        return self.main(x)


def without_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``device`` where it is on (nothing to do elsewhere, the meta device included).

    For the computations that must stay in float32 under bf16 autocast: bf16's spacing near 1 is
    2^-8, so comparisons of similarities or placements by flow would no longer match float32's. The
    caller passes float32 inputs (:func:`at_least_float32`).
    """
    try:
        enabled = torch.is_autocast_enabled(device.type)
    except RuntimeError:  # a device type autocast does not know (meta): it cannot be on there
        enabled = False
    return torch.autocast(device.type, enabled=False) if enabled else contextlib.nullcontext()


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or as it is if wider (float64 stays float64): what :func:`without_autocast` regions take."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def pixel_grid(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Pixel coordinates as a (1, 2, h, w) tensor, channel 0 = x, channel 1 = y."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=dtype),
        torch.arange(w, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack((xs, ys)).unsqueeze(0)


def flow_warp(
    x: torch.Tensor,
    flow: torch.Tensor,
    interpolation: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = True,
) -> torch.Tensor:
    """Backward-warp ``x`` by ``flow``: output(p) = x(p + flow(p)).

    x: (n, c, h, w); flow: (n, 2, h, w) in pixels, channel 0 = x displacement, 1 = y.
    Returns (n, c, h, w).
    """
    if x.shape[-2:] != flow.shape[-2:]:
        raise ValueError(f"flow_warp: image size {tuple(x.shape[-2:])} != flow size {tuple(flow.shape[-2:])}")
    h, w = x.shape[-2:]
    # Build the grid and sample in at least float32, whatever x and flow hold (bf16 autocast, a bf16
    # model): bf16 stores integers exactly only up to 256, so a bf16 grid moves pixels of wider frames.
    dtype = torch.promote_types(torch.promote_types(x.dtype, flow.dtype), torch.float32)
    coords = pixel_grid(h, w, flow.device, dtype) + flow.to(dtype)
    # grid_sample wants (n, h, w, 2) in [-1, 1]; align_corners=True maps pixel 0 -> -1, w-1 -> 1.
    grid_x = 2.0 * coords[:, 0] / max(w - 1, 1) - 1.0
    grid_y = 2.0 * coords[:, 1] / max(h - 1, 1) - 1.0
    grid = torch.stack((grid_x, grid_y), dim=-1)
    warped = F.grid_sample(
        x.to(dtype),
        grid,
        mode=interpolation,
        padding_mode=padding_mode,
        align_corners=align_corners,
    )
    return warped.to(x.dtype)


class UpsampleHead(nn.Module):
    """x4 reconstruction head: (conv3x3 c -> 4c, pixel shuffle x2, LeakyReLU) twice, conv_hr, conv_last.

    Returns the residual image; the caller adds :func:`upsample_base` of the LR frame (both released
    implementations use bilinear, although both papers say bicubic).
    """

    def __init__(self, mid_channels: int = 64, out_channels: int = 3):
        super().__init__()
        self.upsample1 = nn.Conv2d(mid_channels, mid_channels * 4, 3, 1, 1)
        self.upsample2 = nn.Conv2d(mid_channels, mid_channels * 4, 3, 1, 1)
        self.conv_hr = nn.Conv2d(mid_channels, mid_channels, 3, 1, 1)
        self.conv_last = nn.Conv2d(mid_channels, out_channels, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.1, inplace=True)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """feat: (n, c, h, w) -> residual (n, 3, 4h, 4w)."""
        x = self.lrelu(F.pixel_shuffle(self.upsample1(feat), 2))
        x = self.lrelu(F.pixel_shuffle(self.upsample2(x), 2))
        x = self.lrelu(self.conv_hr(x))
        return self.conv_last(x)

    def forward_channels_last(self, feat: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` for channels_last features (the fast paths'), the same numbers.

        feat: (n, c, h, w) channels_last -> residual (n, 3, 4h, 4w) channels_last. With autograd it is
        :meth:`forward`: the backward of :func:`conv_pixel_shuffle`'s copies costs more than it saves.
        """
        if torch.is_grad_enabled():
            return self.forward(feat)
        x = self.lrelu(conv_pixel_shuffle(self.upsample1, feat, 2))
        x = self.lrelu(conv_pixel_shuffle(self.upsample2, x, 2))
        x = self.lrelu(self.conv_hr(x))
        return self.conv_last(x)


def conv_pixel_shuffle(conv: nn.Conv2d, x: torch.Tensor, r: int) -> torch.Tensor:
    """``F.pixel_shuffle(conv(x), r)`` for channels_last ``x``: (n, c_in, h, w) -> (n, c, r*h, r*w).

    The conv's output channels are reordered (r, r, c) instead of (c, r, r), so that each output pixel's
    c channels lie side by side in its (h, w, r*r*c) output and the shuffle copies whole runs of them
    (``pixel_shuffle`` on channels_last moves single values). Same products and sums, same numbers.
    """
    c = conv.out_channels // (r * r)
    weight = conv.weight.unflatten(0, (c, r * r)).transpose(0, 1).flatten(0, 1)
    bias = conv.bias.view(c, r * r).t().flatten() if conv.bias is not None else None
    y = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    n, _, h, w = y.shape
    shuffled = y.permute(0, 2, 3, 1).reshape(n, h, w, r, r, c).transpose(2, 3)
    return shuffled.reshape(n, h * r, w * r, c).permute(0, 3, 1, 2)


def upsample_base(lr: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """Bilinear x``scale`` upsampling (align_corners False) of (n, c, h, w) frames."""
    return F.interpolate(lr, scale_factor=scale, mode="bilinear", align_corners=False)
