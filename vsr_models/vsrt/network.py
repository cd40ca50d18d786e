"""VSR-Transformer (Cao et al., "Video Super-Resolution Transformer", arXiv 2106.06847, 2021).

Reproduces the authors' released implementation tensor for tensor (``docs/models.md#vsr-transformer``),
so the released REDS (5 frames, depth 5) and Vimeo-90K (7 frames, depth 7) checkpoints load through
:func:`vsr_models.vsrt.official.convert_official_state_dict`. The network (Fig. 1):

1. a feature extractor (input conv + residual blocks) applied to every LR frame;
2. the spatial-temporal positional encoding (Sec. 4.1, Eq. 10) added to the features;
3. ``depth`` pre-norm Transformer layers, each a spatial-temporal convolutional self-attention
   (STCSA, Sec. 4.1, Eqs. 7-8) and a bidirectional optical flow-based feed-forward (BOFF, Sec. 4.2,
   Eqs. 11-14), with the flows of Eq. 12 estimated once by SPyNet on the LR frames;
4. reconstruction residual blocks and the x4 pixel-shuffle head plus a bilinear base, for every frame.

Where the paper and the released code differ, the released code is followed:

- the value projection is a full 3x3 conv (the paper's Table 4 says depthwise);
- the layers are pre-norm, ``x = x + A(LN(x))`` and ``x = x + F(LN(x))`` (Eqs. 8 and 13 put the norm
  after the residual), and ``A`` itself adds its normalised input, so each attention sub-layer adds both
  ``x`` and ``LN(x)``;
- the layer norms carry learned affine weights of shape ``(c, h, w)``: the network only runs on
  ``spatial_size`` x ``spatial_size`` LR patches, and whole frames go through
  :func:`vsr_models.inference.tiled_forward`;
- the positional encoding is the ``positional-encodings`` package's 3-D encoding applied to the
  ``(n, t, c, h, w)`` feature tensor with ``t`` in the role of channels (see
  :class:`SpatialTemporalPositionalEncoding`);
- all LeakyReLUs have slope 0.1 and the base image is upsampled bilinearly (the paper says 0.01 and
  bicubic).

Two code paths compute it (``VSRTConfig.implementation``): :meth:`VSRTransformer.forward_reference`,
module by module in (c, h, w) layout, and the default :func:`vsr_models.vsrt.fast.forward_fast`, the
same computation in channels_last. This module does not import the fast path: the family
(:data:`vsr_models.vsrt.FAMILY`) lists both paths and :meth:`VSRTransformer.forward` runs the one the
config names (``docs/models.md#code-layout``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vsr_models.blocks import ResidualBlocksWithInputConv, UpsampleHead, flow_warp, make_layer, upsample_base
from vsr_models.registry import InputConstraints, model_family
from vsr_models.spynet import SpyNet, load_spynet_weights

LR_CHANNELS = 3  # RGB


@dataclass
class VSRTConfig:
    """Hyperparameters of :class:`VSRTransformer`; the defaults are the released REDS model.

    The released Vimeo-90K model is ``VSRTConfig(num_frames=7, depth=7)``.
    """

    num_frames: int = 5  # T the positional encoding is built for (Sec. 4.1)
    mid_channels: int = 64  # C, feature channels
    depth: int = 5  # number of Transformer layers (the paper sets it to T)
    patch_size: int = 8  # W_p = H_p of the STCSA unfold, non-overlapping (stride = patch size)
    spatial_size: int = 64  # LR h == w the layer norms are built for
    num_extract_blocks: int = 5  # residual blocks of the feature extractor
    num_reconstruct_blocks: int = 30  # residual blocks of the reconstruction network
    num_ffn_blocks: int = 30  # residual blocks of each BOFF propagation network (R_1, R_2 of Eq. 14)
    spynet_pretrained: str | None = None  # SPyNet weights file (official or our names) loaded at construction
    # the code path, not the weights (FAMILY.runtime_fields): "fast" (vsr_models.vsrt.fast) or "reference"
    # (VSRTransformer.forward_reference); both compute the same function (float32 within 1e-5)
    implementation: Literal["fast", "reference"] = "fast"

    def __post_init__(self) -> None:
        if self.implementation not in ("fast", "reference"):
            raise ValueError(
                f"VSRTConfig.implementation must be 'fast' or 'reference', got {self.implementation!r}"
            )
        positive = {
            "num_frames": self.num_frames,
            "mid_channels": self.mid_channels,
            "depth": self.depth,
            "patch_size": self.patch_size,
            "spatial_size": self.spatial_size,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"VSRTConfig.{name} must be positive, got {value}")
        if self.spatial_size % self.patch_size:
            raise ValueError(
                f"VSRTConfig.spatial_size ({self.spatial_size}) must be a multiple of "
                f"patch_size ({self.patch_size}): the STCSA cuts every frame into non-overlapping patches"
            )

    def input_constraints(self) -> InputConstraints:
        """LR patches of exactly ``spatial_size`` x ``spatial_size``, in windows of ``num_frames`` frames."""
        return InputConstraints(spatial_size=self.spatial_size, num_frames=self.num_frames)


def next_frames(x: torch.Tensor) -> torch.Tensor:
    """Frame i+1 at position i, the last frame repeated: (n, t, ...) -> (n, t, ...)."""
    return torch.cat([x[:, 1:], x[:, -1:]], dim=1)


def previous_frames(x: torch.Tensor) -> torch.Tensor:
    """Frame i-1 at position i, the first frame repeated: (n, t, ...) -> (n, t, ...)."""
    return torch.cat([x[:, :1], x[:, :-1]], dim=1)


class SpatialTemporalPositionalEncoding(nn.Module):
    """Fixed sinusoidal 3-D positional encoding (Sec. 4.1, Eq. 10) as the released code applies it.

    The released model calls ``PositionalEncodingPermute3D(num_frames)`` of the ``positional-encodings``
    package on the ``(n, t, c, h, w)`` features, so ``t`` plays the role of the encoding's channels and
    ``(c, h, w)`` are its three position axes. With ``k = 2 * ceil(num_frames / 6)`` and the
    ``k / 2`` frequencies ``inv_freq[j] = 1 / 10000^(2j / k)``, the encoding of frame slot ``s`` at
    ``(c, h, w)`` is entry ``s`` of

        [sin(c * inv_freq), cos(c * inv_freq), sin(h * inv_freq), cos(h * inv_freq),
         sin(w * inv_freq), cos(w * inv_freq)]

    (all sines of an axis before its cosines, the package's layout before its June 2022 change to
    interleaving; with the single frequency of the 5-frame model both layouts coincide), truncated to
    the input's ``t`` slots. ``inv_freq`` is a buffer because the released checkpoints carry it.
    """

    def __init__(self, num_frames: int):
        super().__init__()
        encodings_per_axis = 2 * math.ceil(num_frames / 6)  # k: sin and cos of k/2 frequencies
        exponents = torch.arange(0, encodings_per_axis, 2, dtype=torch.float32) / encodings_per_axis
        self.register_buffer("inv_freq", 1.0 / 10000**exponents)

    @property
    def max_frames(self) -> int:
        """Most frame slots the encoding covers (3 axes x k); longer inputs have no encoding."""
        return 3 * 2 * self.inv_freq.numel()

    def _axis_encoding(self, size: int) -> torch.Tensor:
        """(size, k): sines then cosines of position x frequency along one axis."""
        positions = torch.arange(size, device=self.inv_freq.device, dtype=self.inv_freq.dtype)
        angles = positions[:, None] * self.inv_freq[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """feat: (n, t, c, h, w) -> encoding (t, c, h, w) in feat's dtype, to be broadcast-added."""
        _, t, c, h, w = feat.shape
        if t > self.max_frames:
            raise ValueError(f"the positional encoding covers at most {self.max_frames} frames, got {t}")
        k = 2 * self.inv_freq.numel()
        encoding = torch.cat(
            [
                self._axis_encoding(c)[:, None, None, :].expand(c, h, w, k),
                self._axis_encoding(h)[None, :, None, :].expand(c, h, w, k),
                self._axis_encoding(w)[None, None, :, :].expand(c, h, w, k),
            ],
            dim=-1,
        )  # (c, h, w, 3k)
        return rearrange(encoding[..., :t], "c h w t -> t c h w").to(feat.dtype)


class SpatialTemporalConvSelfAttention(nn.Module):
    """Spatial-temporal convolutional self-attention, STCSA (Sec. 4.1, Eqs. 7-8), single head.

    Query and key come from depthwise 3x3 convs, the value from a full 3x3 conv (``W_q``, ``W_k``,
    ``W_v``). Each frame is cut into non-overlapping ``patch_size`` x ``patch_size`` patches
    (``kappa_1``) of dimension ``d = c * patch_size^2``; one softmax over the patches of *all* frames,
    scaled by ``1 / sqrt(d)``, weights the value patches, which are folded back (``kappa_2``) and
    passed through the output conv ``W_o``.
    """

    def __init__(self, mid_channels: int = 64, patch_size: int = 8):
        super().__init__()
        self.patch_size = patch_size
        self.query_conv = nn.Conv2d(mid_channels, mid_channels, 3, 1, 1, groups=mid_channels)
        self.key_conv = nn.Conv2d(mid_channels, mid_channels, 3, 1, 1, groups=mid_channels)
        self.value_conv = nn.Conv2d(mid_channels, mid_channels, 3, 1, 1)
        self.output_conv = nn.Conv2d(mid_channels, mid_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: layer-normed features (n, t, c, h, w) -> (n, t, c, h, w).

        As released, the result includes ``x`` itself (on top of the layer's own residual).
        """
        n, t, c, h, w = x.shape
        p = self.patch_size
        frames = rearrange(x, "n t c h w -> (n t) c h w")
        to_patches = "(n t) c (ph p1) (pw p2) -> n (t ph pw) (c p1 p2)"  # tokens: every patch of every frame
        query = rearrange(self.query_conv(frames), to_patches, n=n, p1=p, p2=p)
        key = rearrange(self.key_conv(frames), to_patches, n=n, p1=p, p2=p)
        value = rearrange(self.value_conv(frames), to_patches, n=n, p1=p, p2=p)
        attended = F.scaled_dot_product_attention(query, key, value, scale=query.shape[-1] ** -0.5)
        feat = rearrange(
            attended, "n (t ph pw) (c p1 p2) -> (n t) c (ph p1) (pw p2)", t=t, ph=h // p, p1=p, p2=p
        )
        out = rearrange(self.output_conv(feat), "(n t) c h w -> n t c h w", n=n)
        return out + x


class BidirectionalFlowFeedForward(nn.Module):
    """Bidirectional optical flow-based feed-forward, BOFF (Sec. 4.2, Eqs. 11-14).

    The backward branch warps each frame's successor features onto it with the backward flows, the
    forward branch its predecessor's with the forward flows (bilinear, zero padding; the edge frame is
    its own neighbour). Each branch concatenates the LR frame (first) with the warped features and runs
    its propagation network (``R_1``, ``R_2``: input conv + residual blocks); a 1x1 conv ``rho`` and a
    LeakyReLU fuse the two.
    """

    def __init__(self, mid_channels: int = 64, num_blocks: int = 30):
        super().__init__()
        self.backward_propagation = ResidualBlocksWithInputConv(
            mid_channels + LR_CHANNELS, mid_channels, num_blocks
        )
        self.forward_propagation = ResidualBlocksWithInputConv(
            mid_channels + LR_CHANNELS, mid_channels, num_blocks
        )
        self.fusion = nn.Conv2d(2 * mid_channels, mid_channels, 1, 1, 0)
        self.lrelu = nn.LeakyReLU(negative_slope=0.1)

    def forward(
        self, x: torch.Tensor, lr: torch.Tensor, flows_backward: torch.Tensor, flows_forward: torch.Tensor
    ) -> torch.Tensor:
        """x: (n, t, c, h, w); lr: (n, t, 3, h, w); flows: (n, t, 2, h, w) -> (n, t, c, h, w)."""
        n = x.shape[0]
        lr_frames = rearrange(lr, "n t c h w -> (n t) c h w")

        def aligned(neighbours: torch.Tensor, flows: torch.Tensor) -> torch.Tensor:
            warped = flow_warp(
                rearrange(neighbours, "n t c h w -> (n t) c h w"),
                rearrange(flows, "n t c h w -> (n t) c h w"),
            )
            return torch.cat([lr_frames, warped], dim=1)  # (n t, 3 + c, h, w), LR first as released

        backward = self.backward_propagation(aligned(next_frames(x), flows_backward))
        forward = self.forward_propagation(aligned(previous_frames(x), flows_forward))
        out = self.lrelu(self.fusion(torch.cat([backward, forward], dim=1)))
        return rearrange(out, "(n t) c h w -> n t c h w", n=n)


class VSRTransformerLayer(nn.Module):
    """One pre-norm Transformer layer: ``x = x + STCSA(LN(x))``, then ``x = x + BOFF(LN(x))``.

    Each layer norm normalises over ``(c, h, w)`` with a learned affine of that shape, as released.
    """

    def __init__(self, config: VSRTConfig):
        super().__init__()
        feature_shape = (config.mid_channels, config.spatial_size, config.spatial_size)
        self.attention_norm = nn.LayerNorm(feature_shape)
        self.attention = SpatialTemporalConvSelfAttention(config.mid_channels, config.patch_size)
        self.feed_forward_norm = nn.LayerNorm(feature_shape)
        self.feed_forward = BidirectionalFlowFeedForward(config.mid_channels, config.num_ffn_blocks)

    def forward(
        self, x: torch.Tensor, lr: torch.Tensor, flows_backward: torch.Tensor, flows_forward: torch.Tensor
    ) -> torch.Tensor:
        """x: (n, t, c, h, w); lr: (n, t, 3, h, w); flows: (n, t, 2, h, w) -> (n, t, c, h, w)."""
        x = self.attention(self.attention_norm(x)) + x
        return self.feed_forward(self.feed_forward_norm(x), lr, flows_backward, flows_forward) + x


class VSRTransformer(nn.Module):
    """VSR-Transformer (Fig. 1): x4 super-resolution of every frame of a (n, t, 3, s, s) LR clip.

    ``s`` is ``config.spatial_size`` (64 as released); ``t`` may be any number of frames up to what the
    positional encoding covers (6 for the 5-frame model, 12 for the 7-frame one), as in the released
    code, although the models were trained on ``config.num_frames``.
    """

    def __init__(self, config: VSRTConfig | None = None):
        super().__init__()
        self.config = config = config or VSRTConfig()
        mid = config.mid_channels
        # feature extraction
        self.feature_extractor = ResidualBlocksWithInputConv(LR_CHANNELS, mid, config.num_extract_blocks)
        # optical flow (Eq. 12)
        self.spynet = SpyNet()
        if config.spynet_pretrained:
            load_spynet_weights(self.spynet, config.spynet_pretrained)
        # transformer
        self.positional_encoding = SpatialTemporalPositionalEncoding(config.num_frames)
        self.layers = nn.ModuleList(VSRTransformerLayer(config) for _ in range(config.depth))
        # reconstruction
        self.reconstruction = make_layer(config.num_reconstruct_blocks, mid)
        self.upsample_head = UpsampleHead(mid, LR_CHANNELS)

    def input_constraints(self) -> InputConstraints:
        """The LR inputs this network accepts (:meth:`VSRTConfig.input_constraints`)."""
        return self.config.input_constraints()

    def check_input(self, lr: torch.Tensor) -> None:
        """Raise ValueError unless ``lr`` is (n, t, 3, s, s) with s = spatial_size and t encodable."""
        s = self.config.spatial_size
        if lr.dim() != 5 or lr.shape[2] != LR_CHANNELS:
            raise ValueError(f"VSRTransformer expects LR frames (n, t, 3, h, w), got shape {tuple(lr.shape)}")
        h, w = lr.shape[-2:]
        if (h, w) != (s, s):
            raise ValueError(
                f"VSRTransformer only runs on {s}x{s} LR patches (its layer norms have learned "
                f"({self.config.mid_channels}, {s}, {s}) affine weights), got {h}x{w}; super-resolve larger "
                f"frames with vsr_models.inference.tiled_forward(model, lr, tile={s})"
            )
        t, max_frames = lr.shape[1], self.positional_encoding.max_frames
        if t > max_frames:
            raise ValueError(
                f"VSRTransformer built for num_frames={self.config.num_frames} has a positional encoding "
                f"for at most {max_frames} frames, got {t}; feed clips of {self.config.num_frames} frames "
                f"(e.g. vsr_models.inference.chunked_forward)"
            )

    def compute_flows(self, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bidirectional flows of Eq. 12 on the LR frames, each (n, t, 2, h, w).

        ``flows_backward[:, i]`` = SPyNet(frame i, frame i+1) warps frame i+1 onto frame i;
        ``flows_forward[:, i]`` = SPyNet(frame i, frame i-1) warps frame i-1 onto frame i. At the sequence
        ends the flow of a frame to itself is estimated (not assumed zero), as released.
        """
        n = lr.shape[0]
        refs = torch.cat([lr, lr], dim=1)
        supports = torch.cat([next_frames(lr), previous_frames(lr)], dim=1)
        flows = self.spynet(
            rearrange(refs, "n t c h w -> (n t) c h w"), rearrange(supports, "n t c h w -> (n t) c h w")
        )
        flows_backward, flows_forward = rearrange(flows, "(n t) c h w -> n t c h w", n=n).chunk(2, dim=1)
        return flows_backward, flows_forward

    def forward(self, lr: torch.Tensor, mirrored: bool | None = None) -> torch.Tensor:
        """lr: (n, t, 3, s, s) in [0, 1] -> (n, t, 3, 4s, 4s), by the path ``config.implementation`` names.

        ``mirrored`` (whether the clip is mirror-extended) is accepted so that training calls both
        networks alike (:meth:`vsr_models.ttvsr.TTVSR.forward`); VSR-Transformer estimates every flow.
        The family's ``implementations`` table maps the path's name to its function.
        """
        self.check_input(lr)
        return model_family(self).implementations[self.config.implementation](self, lr)

    def forward_reference(self, lr: torch.Tensor) -> torch.Tensor:
        """The straightforward forward pass, module by module in (c, h, w) layout: (n, t, 3, s, s) -> (n, t, 3, 4s, 4s)."""
        self.check_input(lr)
        n = lr.shape[0]
        lr_frames = rearrange(lr, "n t c h w -> (n t) c h w")

        feat = rearrange(self.feature_extractor(lr_frames), "(n t) c h w -> n t c h w", n=n)
        flows_backward, flows_forward = self.compute_flows(lr)

        feat = feat + self.positional_encoding(feat)
        for layer in self.layers:
            feat = layer(feat, lr, flows_backward, flows_forward)

        feat = self.reconstruction(rearrange(feat, "n t c h w -> (n t) c h w"))
        out = self.upsample_head(feat) + upsample_base(lr_frames)
        return rearrange(out, "(n t) c h w -> n t c h w", n=n)
