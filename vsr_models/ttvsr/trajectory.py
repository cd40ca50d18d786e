"""TTVSR's trajectory machinery: tokens and location maps (Secs. 3.1-3.2), shared by both code paths.

The reference forward (:meth:`vsr_models.ttvsr.network.TTVSR.forward_reference`) and the fast one
(:mod:`vsr_models.ttvsr.fast`) cut features into tokens, move location maps along the flow and look
tokens up at trajectory positions with these same functions, so the trajectories they follow are the
same bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vsr_models.blocks import flow_warp, pixel_grid

# ---------------------------------------------------------------------------------------------------
# Cross-scale feature tokenization (Sec. 3.1)
# ---------------------------------------------------------------------------------------------------


def tokenize(feat: Tensor, token_size: int) -> Tensor:
    """Cut a feature map into non-overlapping ``token_size`` x ``token_size`` tokens.

    feat: (n, c, h, w) -> tokens (n, h/s * w/s, c*s*s), row-major over the token grid, each token
    laid out (c, y, x) like ``F.unfold``.
    """
    return F.pixel_unshuffle(feat, token_size).flatten(2).transpose(1, 2)


def untokenize(tokens: Tensor, size: tuple[int, int], token_size: int) -> Tensor:
    """Fold tokens back into a feature map: (n, h/s * w/s, c*s*s) -> (n, c, h, w); inverse of tokenize."""
    h, w = size
    grid = tokens.transpose(1, 2).unflatten(2, (h // token_size, w // token_size))
    return F.pixel_shuffle(grid, token_size)


def cross_scale_tokens(feat: Tensor, token_size: int, scale: int) -> Tensor:
    """Tokens of size ``token_size`` cut from ``scale`` x ``scale`` windows (cross-scale tokenization).

    The windows are centred on the ``token_size`` tokens (stride ``token_size``, zero padding
    ``(scale - token_size) / 2``) and average-pooled down to the token size. The released code tiles
    the windows side by side into an (h*scale/s, w*scale/s) map, adaptive-average-pools it back to
    (h, w) and cuts that into tokens; the pooling cells never straddle two windows, so pooling each
    window on its own gives the same numbers without the tiled map.

    feat: (n, c, h, w) -> tokens (n, h/s * w/s, c*s*s).
    """
    if scale == token_size:
        return tokenize(feat, token_size)
    n, c = feat.shape[:2]
    windows = F.unfold(feat, scale, padding=(scale - token_size) // 2, stride=token_size)
    windows = windows.unflatten(1, (c, scale, scale)).permute(0, 4, 1, 2, 3)  # (n, tokens, c, k, k)
    pooled = F.adaptive_avg_pool2d(windows.flatten(0, 1), token_size)
    return pooled.unflatten(0, (n, -1)).flatten(2)


# ---------------------------------------------------------------------------------------------------
# Location maps (Sec. 3.2)
# ---------------------------------------------------------------------------------------------------


def identity_location_map(n: int, token_grid: tuple[int, int], device: torch.device) -> Tensor:
    """A new location map (Eq. 6 at the key frame itself): every token at its own position.

    Returns (n, 2, h', w') float32 coordinates in token units, channel 0 = x, channel 1 = y.
    """
    return pixel_grid(*token_grid, device, torch.float32).expand(n, -1, -1, -1)


def update_location_maps(location_maps: Tensor, flow: Tensor, token_size: int) -> Tensor:
    """Move every trajectory one frame on (Eq. 8: *L^t = S(L^t, O^{T+1})).

    The pixel flow is average-pooled to the token grid and divided by the token size (the motion of
    a token is the mean motion of its pixels), then every location map is sampled at the positions
    the flow points to: nearest sampling, so the maps keep integer token coordinates, and border
    padding, so they stay on the map.

    location_maps: (n, 2K, h/s, w/s), K maps of (x, y) token coordinates; flow: (n, 2, h, w) pixel
    flow warping the previous frame onto the current one. Returns (n, 2K, h/s, w/s) float32.
    """
    token_flow = F.adaptive_avg_pool2d(flow.float(), location_maps.shape[-2:]) / token_size
    return flow_warp(location_maps.float(), token_flow, interpolation="nearest", padding_mode="border")


def trajectory_rows(
    location_maps: Tensor, slots: Tensor | None = None, capacity: int | None = None
) -> tuple[Tensor, Tensor]:
    """Where each trajectory position lies in a token memory of shape (n, K * h'w', d).

    The released code samples the token maps at the location maps with ``grid_sample`` (nearest,
    zero padding, align_corners True); this is the same lookup as an index: the rounded (x, y) of
    map k of sample b is row ``(b*K + k) * h'w' + y*w' + x`` of the memory flattened to (n*K*h'w', d),
    and positions off the map read zeros. A memory with room for ``capacity`` key frames that keeps
    map k's tokens in slot ``slots[k]`` (the fast path's) has them at ``(b*capacity + slots[k]) * h'w'``.

    location_maps: (n, 2K, h', w'); slots: (K,) int64 -> rows (n, K, h'w') int64, inside (n, K, h'w') bool.
    """
    n, _, gh, gw = location_maps.shape
    coords = location_maps.unflatten(1, (-1, 2)).round()  # (n, K, 2, h', w'), round half to even
    x, y = coords[:, :, 0], coords[:, :, 1]
    inside = (x >= 0) & (x <= gw - 1) & (y >= 0) & (y <= gh - 1)
    position = y.clamp(0, gh - 1) * gw + x.clamp(0, gw - 1)
    num_maps = coords.shape[1]
    if slots is None:
        first_row = torch.arange(n * num_maps, device=coords.device).view(n, num_maps, 1) * (gh * gw)
    else:
        samples = torch.arange(n, device=coords.device).view(n, 1, 1) * capacity
        first_row = (samples + slots.view(1, num_maps, 1)) * (gh * gw)
    return position.flatten(2).long() + first_row, inside.flatten(2)


def gather_tokens(memory: Tensor, rows: Tensor) -> Tensor:
    """Tokens at ``rows`` of the memory flattened to (n*K*P, d): memory (n, K*P, d), rows (n, ...) -> (n, ..., d).

    ``index_select`` keeps only the index for backward (not the whole memory, as ``gather`` would).
    """
    return memory.flatten(0, 1).index_select(0, rows.flatten()).view(*rows.shape, memory.shape[-1])
