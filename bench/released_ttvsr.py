"""A plain transcription of TTVSR's released forward pass: the yardstick of the tests and of the memory bench.

Written from the facts in ``docs/models.md#ttvsr`` (grid_sample on stacked token buffers, unfold/fold,
every buffer sampled at every trajectory position), independently of :mod:`vsr_models.ttvsr`:
``tests/vsr_models/test_ttvsr.py`` checks that the model reproduces it, value and gradient, and
``bench/bench_ttvsr_memory.py`` measures what it keeps for backward against the model.

It lives in ``bench/`` because both use it and ``bench/`` is the one place both may import: the
library (``vsr_models``) must not carry a second, slow copy of the network that nothing in the
pipelines runs, and ``bench/`` must not import from ``tests/`` (``tests/test_layers.py``). The tests
import it as ``bench.released_ttvsr``; the bench scripts, run as ``python bench/<script>.py``, as
``released_ttvsr``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vsr_models.ttvsr import TTVSR


def released_flow_warp(x: Tensor, flow: Tensor, interpolation: str = "bilinear") -> Tensor:
    n, _, h, w = x.shape
    gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    grid = torch.stack((gx, gy), 2).to(x) + flow.permute(0, 2, 3, 1)
    grid = torch.stack(
        (2.0 * grid[..., 0] / max(w - 1, 1) - 1.0, 2.0 * grid[..., 1] / max(h - 1, 1) - 1.0), 3
    )
    return F.grid_sample(x, grid, mode=interpolation, padding_mode="border", align_corners=True)


def released_tokens(feat: Tensor, s: int = 4) -> list[Tensor]:
    """Token maps (n, c*s*s, h/s, w/s) at window sizes s, 1.5s, 2s."""
    n, c, h, w = feat.shape
    out = [F.fold(F.unfold(feat, s, stride=s), (h // s, w // s), kernel_size=1)]
    for factor, pad in ((1.5, 0.25), (2, 0.5)):
        k = int(factor * s)
        tiled = F.fold(
            F.unfold(feat, k, padding=int(pad * s), stride=s),
            (int(factor * h), int(factor * w)),
            kernel_size=k,
            stride=k,
        )
        pooled = F.adaptive_avg_pool2d(tiled, (h, w))
        out.append(F.fold(F.unfold(pooled, s, stride=s), (h // s, w // s), kernel_size=1))
    return out


def released_ltam(
    fusion: nn.Module,
    curr: Tensor,
    index_set: Tensor,
    anchor: Tensor,
    sparse_sets: list[Tensor],
    loc: Tensor,
    s=4,
):
    n, c, h, w = anchor.shape
    t = index_set.shape[1]
    length, num = c * s * s, (h // s) * (w // s)
    grid = loc.view(n, t, 2, h // s, w // s).permute(0, 1, 3, 4, 2)
    gx = 2.0 * grid[..., 0] / max(w // s - 1, 1) - 1.0
    gy = 2.0 * grid[..., 1] / max(h // s - 1, 1) - 1.0
    grid = torch.stack((gx, gy), 4).view(-1, h // s, w // s, 2)

    def sample(buffer: Tensor) -> Tensor:  # -> n, t, (c*s*s), tokens
        out = F.grid_sample(
            buffer.reshape(-1, length, h // s, w // s),
            grid,
            mode="nearest",
            padding_mode="zeros",
            align_corners=True,
        )
        return out.view(n, t, length, num)

    query = F.normalize(F.unfold(curr, s, stride=s).permute(0, 2, 1), dim=2).unsqueeze(3)
    keys = F.normalize(sample(index_set).permute(0, 3, 1, 2), dim=3)
    soft, index = torch.max(torch.matmul(keys, query).squeeze(3), dim=2)
    soft = F.fold(soft.unsqueeze(1).expand(-1, length, -1), (h, w), kernel_size=s, stride=s)
    folded = []
    for buffer in sparse_sets:
        picked = torch.gather(sample(buffer), 1, index.view(n, 1, 1, num).expand(-1, -1, length, -1))
        folded.append(F.fold(picked.squeeze(1), (h, w), kernel_size=s, stride=s))
    return fusion(torch.cat(folded, 1)) * soft + anchor


def released_forward(model: TTVSR, lrs: Tensor, key_stride: int = 3) -> Tensor:
    n, t, c, h, w = lrs.shape
    half = t // 2
    mirror = t % 2 == 0 and torch.norm(lrs[:, :half] - lrs[:, half:].flip(1)) == 0
    lrs_1, lrs_2 = lrs[:, :-1].reshape(-1, c, h, w), lrs[:, 1:].reshape(-1, c, h, w)
    flows_backward = model.spynet(lrs_1, lrs_2).view(n, t - 1, 2, h, w)
    flows_forward = None if mirror else model.spynet(lrs_2, lrs_1).view(n, t - 1, 2, h, w)
    feats = model.feature_extractor(lrs.view(-1, c, h, w)).view(n, t, -1, h, w).unbind(1)
    gy, gx = torch.meshgrid(torch.arange(h // 4), torch.arange(w // 4), indexing="ij")
    identity = torch.stack([gx, gy], 0).to(lrs).expand(n, -1, -1, -1)

    def run(order, flow_at, key_frames):
        feat_prop, location = torch.zeros_like(feats[0]), identity
        buffers: list[list[Tensor]] = [[], [], [], []]  # index (keys), values at 3 scales
        out = {}
        for i in order:
            if i != order[0]:
                flow = flow_at(i)
                feat_prop = released_flow_warp(feat_prop, flow)
                location = released_flow_warp(
                    location, F.adaptive_avg_pool2d(flow, (h // 4, w // 4)) / 4.0, "nearest"
                )
                stacked = [torch.stack(b, 1) for b in buffers]
                fusion = model.trajectory_attention.fusion
                feat_prop = released_ltam(fusion, feats[i], stacked[0], feat_prop, stacked[1:], location)
                if i in key_frames:
                    location = torch.cat([location, identity], 1)
            feat_prop = model.propagation(torch.cat([feats[i], feat_prop], 1))
            out[i] = feat_prop
            if i in key_frames:
                buffers[0].append(released_tokens(feats[i])[0])
                for buffer, tokens in zip(buffers[1:], released_tokens(feat_prop), strict=True):
                    buffer.append(tokens)
        return out

    backward = run(range(t - 1, -1, -1), lambda i: flows_backward[:, i], range(t - 1, 0, -key_stride))
    forward = run(
        range(t),
        lambda i: flows_backward[:, -i] if flows_forward is None else flows_forward[:, i - 1],
        range(0, t, key_stride),
    )
    frames = []
    for i in range(t):
        fused = F.leaky_relu(model.fusion(torch.cat([backward[i], feats[i], forward[i]], 1)), 0.1)
        base = F.interpolate(lrs[:, i], scale_factor=4, mode="bilinear", align_corners=False)
        frames.append(model.upsample(fused) + base)
    return torch.stack(frames, 1)
