"""SPyNet optical flow (Ranjan & Black, CVPR 2017) as used inside TTVSR and VSR-Transformer.

Both released models embed the same 6-level spatial pyramid network (``docs/models.md#spynet``):
ImageNet-normalised inputs resized up to a multiple of 32, an average-pool pyramid, and at each
level a five-conv basic module that predicts a residual to the upsampled flow.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from vsr_models.blocks import flow_warp

NUM_LEVELS = 6
_LEVEL_CHANNELS = (8, 32, 64, 32, 16, 2)


class SpyNetLevel(nn.Module):
    """One pyramid level: five 7x7 convs 8 -> 32 -> 64 -> 32 -> 16 -> 2, ReLU between (none after the last).

    Input channels: reference frame (3) + warped support frame (3) + upsampled flow (2).
    """

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(_LEVEL_CHANNELS[:-1], _LEVEL_CHANNELS[1:], strict=True)):
            layers.append(nn.Conv2d(cin, cout, 7, 1, 3))
            if i < len(_LEVEL_CHANNELS) - 2:
                layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (n, 8, h, w) -> flow residual (n, 2, h, w)."""
        return self.layers(x)


class SpyNet(nn.Module):
    """Spatial pyramid flow network; ``forward(ref, supp)`` gives the flow that warps ``supp`` onto ``ref``."""

    def __init__(self):
        super().__init__()
        self.basic_module = nn.ModuleList(SpyNetLevel() for _ in range(NUM_LEVELS))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    @torch.no_grad()
    def start_from_zero_flow(self) -> None:
        """Zero each level's last conv so the untrained network predicts no motion.

        The released recipes start from pretrained SPyNet weights. Without them, a randomly initialised
        SPyNet warps features by arbitrary flows, which the rest of the network must first learn to ignore;
        starting from zero flow means "no alignment yet", and the flow is learned from there.
        """
        for level in self.basic_module:
            last = level.layers[-1]
            last.weight.zero_()
            last.bias.zero_()

    def _pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normalised image pyramid, coarsest level first."""
        levels = [(x - self.mean) / self.std]
        for _ in range(NUM_LEVELS - 1):
            levels.append(F.avg_pool2d(levels[-1], kernel_size=2, stride=2, count_include_pad=False))
        return levels[::-1]

    def compute_flow(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        """ref, supp: (n, 3, h, w) with h, w multiples of 32 -> flow (n, 2, h, w)."""
        refs, supps = self._pyramid(ref), self._pyramid(supp)
        n, _, h, w = refs[0].shape
        flow = refs[0].new_zeros(n, 2, h, w)
        for level, (ref_l, supp_l) in enumerate(zip(refs, supps, strict=True)):
            if level > 0:
                # Flow values are in pixels, so doubling the resolution doubles them.
                flow = F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True) * 2.0
            warped = flow_warp(supp_l, flow, padding_mode="border")
            flow = flow + self.basic_module[level](torch.cat([ref_l, warped, flow], dim=1))
        return flow

    def forward(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        """ref, supp: (n, 3, h, w) in [0, 1], any size -> flow (n, 2, h, w) in pixels of the input."""
        h, w = ref.shape[-2:]
        h_up, w_up = -(-h // 32) * 32, -(-w // 32) * 32
        ref_up = F.interpolate(ref, size=(h_up, w_up), mode="bilinear", align_corners=False)
        supp_up = F.interpolate(supp, size=(h_up, w_up), mode="bilinear", align_corners=False)
        flow = F.interpolate(
            self.compute_flow(ref_up, supp_up), size=(h, w), mode="bilinear", align_corners=False
        )
        if (h, w) == (h_up, w_up):
            return flow
        # scaled by Python numbers, not by a tensor made from them: that would be a host-to-device
        # copy at every call (docs/models.md#no-host-traffic-per-frame); the same float32 products
        return torch.stack((flow[:, 0] * (w / w_up), flow[:, 1] * (h / h_up)), dim=1)


_OFFICIAL_KEY = re.compile(r"^basic_module\.(\d+)\.basic_module\.(\d+)\.conv\.(weight|bias)$")
_OUR_KEY = re.compile(r"^basic_module\.(\d+)\.layers\.(\d+)\.(weight|bias)$")


def spynet_official_to_ours(key: str) -> str:
    """``basic_module.{l}.basic_module.{k}.conv.w`` -> ``basic_module.{l}.layers.{2k}.w``; others unchanged."""
    m = _OFFICIAL_KEY.match(key)
    return f"basic_module.{m[1]}.layers.{2 * int(m[2])}.{m[3]}" if m else key


def spynet_ours_to_official(key: str) -> str:
    """Inverse of :func:`spynet_official_to_ours`."""
    m = _OUR_KEY.match(key)
    return f"basic_module.{m[1]}.basic_module.{int(m[2]) // 2}.conv.{m[3]}" if m else key


def load_spynet_weights(spynet: SpyNet, path: str) -> None:
    """Load SPyNet weights from a file with official (``basic_module.l.basic_module.k.conv``) or our names.

    Accepts a bare state dict or one under ``state_dict``, with or without a ``spynet.`` prefix.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    state = {spynet_official_to_ours(k.removeprefix("spynet.")): v for k, v in state.items()}
    spynet.load_state_dict(state)
