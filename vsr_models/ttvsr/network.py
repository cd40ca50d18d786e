"""TTVSR: Learning Trajectory-Aware Transformer for Video Super-Resolution (Liu et al., CVPR 2022).

The network follows the authors' released implementation (``docs/models.md#ttvsr``), which is what
the released checkpoints were trained with:

- Flows (SPyNet) between neighbouring LR frames; a mirror-extended input reuses the backward flows,
  reversed, as forward flows.
- A feature extractor (the embedding ``phi`` of Sec. 3.1) gives queries and keys; the features of a
  propagation module shared by both directions give the values.
- Location maps (Sec. 3.2, Eq. 6-8) hold, for every token of the current frame, its position in each
  earlier key frame (every ``key_frame_stride``-th frame). They are moved along with the
  average-pooled backward flow at every step and a new map starts at every key frame.
- Trajectory-aware attention (Sec. 3.1, Eq. 4-5): each query token is compared (cosine similarity)
  with the key tokens along its trajectory only; the value tokens at the best match (hard attention)
  are fused, weighted by the best similarity (soft attention) and added to the propagated feature.
- Cross-scale feature tokenization (Sec. 3.1): values are also cut from larger windows (6x6, 8x8
  around each 4x4 token) pooled down to the token size.
- Backward, then forward propagation; per frame, the two directions and the extractor feature are
  fused and upsampled x4 by pixel shuffle, plus a bilinear x4 of the LR frame.

Memory: the released code stacks every token buffer at every frame and samples all of them at all
trajectory positions, so training memory grows with the square of the sequence length. Here the
buffers grow only at key frames, the similarity over the trajectory is computed without autograd
(its argmax is not differentiable and the gradient of the max reaches only the selected key), and
only the selected key and value tokens are gathered with autograd. Outputs and gradients equal the
released computation.

Two code paths compute this network (``TTVSRConfig.implementation``): :meth:`TTVSR.forward_reference`,
the straightforward one, each direction frame by frame and every frame reconstructed at the end; and
the default :func:`vsr_models.ttvsr.fast.forward_fast`, the same computation reorganised for speed
and memory (both directions as one batch, channels_last, one gather per lookup). This module does not
import the fast path: the family (:data:`vsr_models.ttvsr.FAMILY`) lists both paths and
:meth:`TTVSR.forward` runs the one the config names (``docs/models.md#code-layout``). Tokens and
location maps are :mod:`vsr_models.ttvsr.trajectory`'s, shared by both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vsr_models.blocks import (
    ResidualBlocksWithInputConv,
    UpsampleHead,
    at_least_float32,
    flow_warp,
    upsample_base,
    without_autocast,
)
from vsr_models.frames import is_mirror_extended
from vsr_models.registry import InputConstraints, model_family
from vsr_models.spynet import SpyNet, load_spynet_weights
from vsr_models.ttvsr.trajectory import (
    cross_scale_tokens,
    gather_tokens,
    identity_location_map,
    tokenize,
    trajectory_rows,
    untokenize,
    update_location_maps,
)

MIN_INPUT_MULTIPLE = 4
"""LR height and width must be multiples of the token size (4 in the released model)."""
MIN_INPUT_SIZE = 64
"""The released model asserts LR height and width of at least 64 (for SPyNet's 6-level pyramid)."""

# Key frames compared at once when searching a trajectory; bounds the transient memory of the
# similarity search to this many feature maps, whatever the sequence length.
_KEY_FRAMES_PER_CHUNK = 8


@dataclass
class TTVSRConfig:
    """Hyperparameters of TTVSR; the defaults are the released REDS model (6,773,615 parameters).

    token_scales: window sizes of the cross-scale feature tokenization; each window is centred on a
    ``token_size`` token, so ``scale - token_size`` must be even and non-negative.
    reuse_mirror_flows: on a mirror-extended input, take the forward flows from the backward ones
    (as released) instead of running SPyNet again.
    spynet_pretrained: optional path of SPyNet weights (official or our names) loaded at construction.

    The last four fields choose how the network computes, not its weights (``FAMILY.runtime_fields``):
    a checkpoint written with any of their values loads with any other.

    implementation: ``"fast"`` (:mod:`vsr_models.ttvsr.fast`) or ``"reference"``
    (:meth:`TTVSR.forward_reference`, the straightforward transcription of the released forward);
    both compute the same function (float32 outputs and gradients within 1e-5).
    compile: ``torch.compile`` the fast path's per-frame propagation step; falls back to eager, with
    one warning, where compilation is unavailable or fails.
    checkpoint_propagation: in training, recompute the propagation blocks' activations in backward
    instead of keeping them (activation checkpointing; fast path): memory for time, long sequences.
    max_key_frames: keep only the tokens of the last K key frames in each direction (bounded memory
    for long videos, a limitation the paper itself states); ``None`` keeps all, as released.
    """

    mid_channels: int = 64
    num_extract_blocks: int = 5
    num_propagation_blocks: int = 60
    token_size: int = 4
    token_scales: tuple[int, ...] = (4, 6, 8)
    key_frame_stride: int = 3
    spynet_pretrained: str | None = None
    reuse_mirror_flows: bool = True
    implementation: Literal["fast", "reference"] = "fast"
    compile: bool = False
    checkpoint_propagation: bool = False
    max_key_frames: int | None = None

    def __post_init__(self) -> None:
        self.token_scales = tuple(self.token_scales)
        if self.implementation not in ("fast", "reference"):
            raise ValueError(
                f"TTVSRConfig: implementation must be 'fast' or 'reference', got {self.implementation!r}"
            )
        if self.max_key_frames is not None and self.max_key_frames < 1:
            raise ValueError(f"TTVSRConfig: max_key_frames must be None or >= 1, got {self.max_key_frames}")
        if self.mid_channels < 1 or self.token_size < 1 or self.key_frame_stride < 1:
            raise ValueError("TTVSRConfig: mid_channels, token_size and key_frame_stride must be >= 1")
        if self.num_extract_blocks < 0 or self.num_propagation_blocks < 0:
            raise ValueError("TTVSRConfig: num_extract_blocks and num_propagation_blocks must be >= 0")
        if not self.token_scales:
            raise ValueError("TTVSRConfig: token_scales must name at least one window size")
        for scale in self.token_scales:
            if scale < self.token_size or (scale - self.token_size) % 2:
                raise ValueError(
                    f"TTVSRConfig: token scale {scale} must be >= token_size {self.token_size} and differ "
                    f"from it by an even number, so that the window is centred on the token"
                )

    def input_constraints(self) -> InputConstraints:
        """LR height and width: multiples of the token size (and of 4), at least 64; any length."""
        return InputConstraints(
            multiple=math.lcm(MIN_INPUT_MULTIPLE, self.token_size),
            min_size=MIN_INPUT_SIZE,
            why=f"TTVSR cuts frames into model.token_size x model.token_size ({self.token_size}x{self.token_size}) tokens",
        )


# ---------------------------------------------------------------------------------------------------
# Trajectory-aware attention (Sec. 3.1, Eq. 4-5)
# ---------------------------------------------------------------------------------------------------


def trajectory_hard_attention(
    query: Tensor, keys: Tensor, location_maps: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Hard and soft attention along each query token's trajectory (Eq. 4).

    h = argmax_t <q / |q|, k_t / |k_t|> over the K trajectory positions, s = the maximum itself.
    The search runs without autograd; the soft weight is then recomputed from the selected key
    alone, which gives the same value and the same gradient (the gradient of a max reaches only the
    maximising element). The search runs in float32 under autocast too: in bf16 (spacing 2^-8 near 1)
    near ties would collapse and ``max`` pick the oldest key frame, another token than float32 picks
    (``docs/models.md#bf16-autocast-and-the-trajectories``).

    query: (n, P, d) L2-normalised query tokens; keys: (n, K*P, d) L2-normalised key tokens of the
    K key frames; location_maps: (n, 2K, h', w') with h'w' = P.
    Returns hard_index (n, P) int64 in [0, K), soft_weight (n, P), rows (n, P) (the selected
    position in the flattened token memory, see :func:`trajectory_rows`) and inside (n, P) bool.
    """
    rows, inside = trajectory_rows(location_maps)
    with torch.no_grad(), without_autocast(query.device):
        similarity = torch.cat(
            [
                torch.einsum(
                    "nkpd,npd->nkp", at_least_float32(gather_tokens(keys, chunk)), at_least_float32(query)
                )
                for chunk in rows.split(_KEY_FRAMES_PER_CHUNK, dim=1)
            ],
            dim=1,
        )
        similarity = similarity.masked_fill(~inside, 0.0)  # positions off the map read zero keys
        hard_index = similarity.max(dim=1).indices
    selected_rows = rows.gather(1, hard_index.unsqueeze(1)).squeeze(1)
    selected_inside = inside.gather(1, hard_index.unsqueeze(1)).squeeze(1)
    soft_weight = (gather_tokens(keys, selected_rows) * query).sum(-1) * selected_inside
    return hard_index, soft_weight, selected_rows, selected_inside


class TrajectoryAttention(nn.Module):
    """Trajectory-aware attention over the cross-scale value tokens (Eq. 5), released as ``LTAM``.

    The value tokens at the hard index, one set per token scale, are folded back into feature maps,
    fused by a 3x3 conv, weighted by the soft attention (constant over each token) and added to the
    warped propagated feature. (Eq. 5's concatenation with the query is the propagation module's
    input, which joins the result with the current extractor feature.)
    """

    def __init__(self, mid_channels: int = 64, num_scales: int = 3, token_size: int = 4):
        super().__init__()
        self.token_size = token_size
        self.fusion = nn.Conv2d(num_scales * mid_channels, mid_channels, 3, 1, 1)

    def forward(
        self,
        query_feat: Tensor,
        anchor_feat: Tensor,
        keys: Tensor,
        values: Sequence[Tensor],
        location_maps: Tensor,
    ) -> Tensor:
        """query_feat: (n, c, h, w) extractor feature of the current frame; anchor_feat: (n, c, h, w)
        propagated feature warped onto it; keys: (n, K*P, c*s*s) L2-normalised key tokens; values:
        per token scale (n, K*P, c*s*s); location_maps: (n, 2K, h/s, w/s). Returns (n, c, h, w).
        """
        n, _, h, w = anchor_feat.shape
        s = self.token_size
        query = F.normalize(
            at_least_float32(tokenize(query_feat, s)), dim=-1
        )  # float32: see trajectory_hard_attention
        _, soft_weight, rows, inside = trajectory_hard_attention(query, keys, location_maps)
        inside = inside.unsqueeze(-1)
        attended = [untokenize(gather_tokens(v, rows) * inside, (h, w), s) for v in values]
        soft_weight = F.interpolate(soft_weight.view(n, 1, h // s, w // s), scale_factor=s, mode="nearest")
        return anchor_feat + self.fusion(torch.cat(attended, dim=1)) * soft_weight


# ---------------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------------


class TTVSR(nn.Module):
    """Trajectory-aware Transformer for video super-resolution (x4), as released."""

    def __init__(self, config: TTVSRConfig | None = None):
        super().__init__()
        self.config = config = config or TTVSRConfig()
        mid = config.mid_channels
        # alignment
        self.spynet = SpyNet()
        if config.spynet_pretrained:
            load_spynet_weights(self.spynet, config.spynet_pretrained)
        # embedding of queries and keys (phi in Sec. 3.1)
        self.feature_extractor = ResidualBlocksWithInputConv(3, mid, config.num_extract_blocks)
        # attention and propagation, one module shared by both directions
        self.trajectory_attention = TrajectoryAttention(mid, len(config.token_scales), config.token_size)
        self.propagation = ResidualBlocksWithInputConv(2 * mid, mid, config.num_propagation_blocks)
        # reconstruction: backward, extractor and forward features -> x4 residual image
        self.fusion = nn.Conv2d(3 * mid, mid, 1, 1, 0)
        self.upsample = UpsampleHead(mid)

    def input_constraints(self) -> InputConstraints:
        """The LR inputs this network accepts (:meth:`TTVSRConfig.input_constraints`)."""
        return self.config.input_constraints()

    def check_input_size(self, lrs: Tensor) -> None:
        """Raise ValueError unless lrs is (n, t, 3, h, w) with h, w >= 64 and multiples of the token size."""
        if lrs.ndim != 5 or lrs.shape[2] != 3:
            raise ValueError(f"TTVSR expects LR frames (n, t, 3, h, w), got shape {tuple(lrs.shape)}")
        h, w = lrs.shape[-2:]
        s = self.config.token_size
        if h < MIN_INPUT_SIZE or w < MIN_INPUT_SIZE or h % s or w % s:
            raise ValueError(
                f"TTVSR needs LR frames of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} whose height and width "
                f"are divisible by the token size {s}; got {h}x{w}. Pad the frames (reflect) to a valid "
                f"size, or run the model through vsr_models.inference.super_resolve, which pads and crops."
            )

    def reuses_mirror_flows(self, lrs: Tensor, mirrored: bool | None) -> bool:
        """Whether the forward flows of ``lrs`` are its backward flows reversed (``reuse_mirror_flows``).

        ``mirrored`` is the caller's word that the clip is mirror-extended (the data pipeline that
        built it knows; training passes it); ``None`` reads it from the frames
        (:func:`is_mirror_extended`: one comparison of the two halves, a host sync on a GPU, once per
        forward).
        """
        if not self.config.reuse_mirror_flows:
            return False
        if mirrored is None:
            return is_mirror_extended(lrs)
        if mirrored and lrs.shape[1] % 2:
            raise ValueError(f"mirrored=True but the clip has an odd number of frames ({lrs.shape[1]})")
        return mirrored

    def compute_flows(self, lrs: Tensor, mirrored: bool | None = None) -> tuple[Tensor, Tensor]:
        """lrs: (n, t, 3, h, w) -> (backward, forward) flows, each (n, t-1, 2, h, w), float32.

        backward[:, i] warps frame i+1 onto frame i; forward[:, i] warps frame i onto frame i+1.
        ``mirrored``: see :meth:`reuses_mirror_flows`. SPyNet runs in float32 under autocast too: its
        flows place the location maps (nearest token), and bf16 flows would move trajectories.
        """
        n, t, c, h, w = lrs.shape
        if t < 2:
            empty = at_least_float32(lrs.new_zeros(n, 0, 2, h, w))
            return empty, empty
        earlier, later = (
            at_least_float32(lrs[:, :-1].flatten(0, 1)),
            at_least_float32(lrs[:, 1:].flatten(0, 1)),
        )
        with without_autocast(lrs.device):
            backward = self.spynet(earlier, later).view(n, t - 1, 2, h, w)
            if self.reuses_mirror_flows(lrs, mirrored):
                # frame i+1 -> i of the second half is frame t-2-i -> t-1-i of the first half, reversed
                return backward, backward.flip(1)
            return backward, self.spynet(later, earlier).view(n, t - 1, 2, h, w)

    def forward(self, lrs: Tensor, mirrored: bool | None = None) -> Tensor:
        """lrs: (n, t, 3, h, w) LR frames in [0, 1] -> (n, t, 3, 4h, 4w) SR frames.

        Runs the path ``config.implementation`` names (it may be changed on a built model), as the
        family's ``implementations`` table maps it. ``mirrored``: whether the clip is mirror-extended,
        when the caller knows (see :meth:`reuses_mirror_flows`); ``None`` reads it from the frames.
        """
        self.check_input_size(lrs)
        return model_family(self).implementations[self.config.implementation](self, lrs, mirrored)

    def forward_reference(self, lrs: Tensor, mirrored: bool | None = None) -> Tensor:
        """The straightforward forward pass, step by step as released; lrs: (n, t, 3, h, w) -> (n, t, 3, 4h, 4w).

        Each direction is propagated on its own, frame by frame, and every frame reconstructed at the
        end; :func:`vsr_models.ttvsr.fast.forward_fast` computes the same, reorganised for speed.
        """
        self.check_input_size(lrs)
        n, t = lrs.shape[:2]
        flows_backward, flows_forward = self.compute_flows(lrs, mirrored)
        feats = self.feature_extractor(lrs.flatten(0, 1)).unflatten(0, (n, t)).unbind(1)

        # flows are handed over in processing order: step k uses the flow onto the k-th frame visited
        backward_feats = self.propagate(feats, flows_backward.flip(1), range(t - 1, -1, -1))
        forward_feats = self.propagate(feats, flows_forward, range(t))

        outputs = []
        for i in range(t):
            fused = F.leaky_relu(
                self.fusion(torch.cat([backward_feats[i], feats[i], forward_feats[i]], dim=1)), 0.1
            )
            outputs.append(self.upsample(fused) + upsample_base(lrs[:, i]))
        return torch.stack(outputs, dim=1)

    def propagate(self, feats: Sequence[Tensor], flows: Tensor, frame_order: Sequence[int]) -> list[Tensor]:
        """One direction of propagation with trajectory-aware attention.

        feats: t extractor features (n, c, h, w); flows: (n, t-1, 2, h, w), flows[:, k] warps the
        frame visited at step k onto the one visited at step k+1; frame_order: frames in the order
        visited. Every ``key_frame_stride``-th frame visited is a key frame: a trajectory starts there
        and its tokens join the memory (the last frame visited is never used as one). With
        ``max_key_frames`` = K, only the last K key frames' maps and tokens are kept, oldest dropped.
        Returns the propagated features (n, c, h, w), indexed by frame.
        """
        s = self.config.token_size
        kept = self.config.max_key_frames
        n, c, h, w = feats[0].shape
        frame_order = list(frame_order)
        key_frames = set(frame_order[:-1][:: self.config.key_frame_stride])
        new_location_map = identity_location_map(n, (h // s, w // s), feats[0].device)

        feat_prop = feats[0].new_zeros(n, c, h, w)
        location_maps = new_location_map[:, :0]
        keys = values = None
        propagated: dict[int, Tensor] = {}
        for step, i in enumerate(frame_order):
            if step > 0:
                flow = flows[:, step - 1]
                feat_prop = flow_warp(feat_prop, flow, padding_mode="border")
                location_maps = update_location_maps(location_maps, flow, s)
                feat_prop = self.trajectory_attention(feats[i], feat_prop, keys, values, location_maps)
            if i in key_frames:
                location_maps = torch.cat([location_maps, new_location_map], dim=1)
                if kept is not None:
                    location_maps = location_maps[:, -2 * kept :]

            feat_prop = self.propagation(torch.cat([feats[i], feat_prop], dim=1))
            propagated[i] = feat_prop

            if i in key_frames:
                new_keys = F.normalize(
                    at_least_float32(tokenize(feats[i], s)), dim=-1
                )  # float32, as the query
                new_values = [cross_scale_tokens(feat_prop, s, k) for k in self.config.token_scales]
                if keys is None:
                    keys, values = new_keys, new_values
                else:
                    keys = torch.cat([keys, new_keys], dim=1)
                    values = [torch.cat(pair, dim=1) for pair in zip(values, new_values, strict=True)]
                if kept is not None:  # tokens of the last ``kept`` key frames, P = new_keys.shape[1] each
                    keys = keys[:, -kept * new_keys.shape[1] :]
                    values = [v[:, -kept * new_keys.shape[1] :] for v in values]
        return [propagated[i] for i in range(len(feats))]
