"""VSR-Transformer's fast path: :meth:`vsr_models.vsrt.network.VSRTransformer.forward_reference`, in channels_last.

Same function, same weights (float32 outputs and gradients within 1e-5 of the reference;
``tests/vsr_models/test_fast_paths.py``). Every feature map after SPyNet is kept channels_last, the
layout oneDNN's convolutions are fastest in (and, in bf16, the one its AMX kernels need), so:

- the layer norms over (c, h, w) normalise the (h, w, c) view of the map, with their affine weights
  permuted to match, instead of copying the map back to (c, h, w);
- STCSA cuts patches laid out (y, x, c) rather than (c, y, x), a plain copy from a channels_last map;
  on the CPU the attention over all patches of all frames is a plain product, softmax and product,
  faster there than the reference's ``scaled_dot_product_attention`` (kept on GPUs);
- the BOFF inputs (LR frame + warped neighbour) are assembled once per branch in that layout.

SPyNet runs once over both directions' pairs, as in the reference. Results differ from the reference's
only by float rounding (sums taken in another order).

This module uses the network's modules; the network never imports it: the family
(:data:`vsr_models.vsrt.FAMILY`) lists :func:`forward_fast` as the ``"fast"`` implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vsr_models.blocks import flow_warp, upsample_base
from vsr_models.vsrt.network import (
    BidirectionalFlowFeedForward,
    SpatialTemporalConvSelfAttention,
    VSRTransformer,
)

CHANNELS_LAST = torch.channels_last


def layer_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    """``norm`` over (c, h, w) of channels_last frames (m, c, h, w), without leaving channels_last.

    The (m, h, w, c) view of the map is normalised with the affine weights permuted to (h, w, c) (made
    contiguous here: the kernel is slower on strided weights): 2.4x faster than copying the map to
    (c, h, w) and back.
    """
    hwc = x.permute(0, 2, 3, 1)  # a contiguous (m, h, w, c) view of a channels_last map
    weight = norm.weight.permute(1, 2, 0).contiguous() if norm.weight is not None else None
    bias = norm.bias.permute(1, 2, 0).contiguous() if norm.bias is not None else None
    return F.layer_norm(hwc, hwc.shape[1:], weight, bias, norm.eps).permute(0, 3, 1, 2)


def attention(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d)) v over (n, L, d) tokens.

    ``scaled_dot_product_attention`` (the reference's) on GPUs. On the CPU its kernel is slower for
    these few (t * 64) long (64 * 8 * 8) tokens than the plain product, softmax and product: 1.2x in
    float32, 7x in bf16 at the released size (``bench/bench_models.py --candidates``).
    """
    scale = query.shape[-1] ** -0.5
    if query.device.type != "cpu":
        return F.scaled_dot_product_attention(query, key, value, scale=scale)
    n, length, _ = query.shape
    logits = torch.baddbmm(
        query.new_empty(n, length, key.shape[1]), query, key.transpose(1, 2), beta=0, alpha=scale
    )
    return torch.bmm(torch.softmax(logits, dim=-1).to(value.dtype), value)


def to_patches(x: Tensor, n: int, p: int) -> Tensor:
    """Frames (n*t, c, h, w) channels_last -> patch tokens (n, t*h/p*w/p, p*p*c), each laid out (y, x, c)."""
    nt, c, h, w = x.shape
    grid = x.permute(0, 2, 3, 1).reshape(n, nt // n, h // p, p, w // p, p, c)
    return grid.transpose(3, 4).reshape(n, -1, p * p * c)


def from_patches(tokens: Tensor, size: tuple[int, int], p: int) -> Tensor:
    """Inverse of :func:`to_patches`: (n, t*h/p*w/p, p*p*c) -> (n*t, c, h, w) channels_last."""
    h, w = size
    n, c = tokens.shape[0], tokens.shape[-1] // (p * p)
    grid = tokens.view(n, -1, h // p, w // p, p, p, c).transpose(3, 4)
    return grid.reshape(-1, h, w, c).permute(0, 3, 1, 2)


def self_attention(stcsa: SpatialTemporalConvSelfAttention, x: Tensor, n: int) -> Tensor:
    """STCSA of layer-normed frames x (n*t, c, h, w) channels_last -> (n*t, c, h, w), its input included."""
    p = stcsa.patch_size
    query = to_patches(stcsa.query_conv(x), n, p)
    key = to_patches(stcsa.key_conv(x), n, p)
    value = to_patches(stcsa.value_conv(x), n, p)
    attended = attention(query, key, value)
    return stcsa.output_conv(from_patches(attended, x.shape[-2:], p)) + x


def feed_forward(
    ffn: BidirectionalFlowFeedForward, x: Tensor, lr: Tensor, flows_backward: Tensor, flows_forward: Tensor
) -> Tensor:
    """BOFF of layer-normed frames x (n, t, c, h, w) -> (n*t, c, h, w) channels_last.

    lr: (n*t, 3, h, w) LR frames (channels_last); flows: (n*t, 2, h, w).
    """

    def aligned(neighbours: Tensor, flows: Tensor) -> Tensor:
        warped = flow_warp(neighbours.flatten(0, 1), flows)
        return torch.cat([lr, warped], dim=1).contiguous(memory_format=CHANNELS_LAST)

    next_frames = torch.cat([x[:, 1:], x[:, -1:]], dim=1)
    previous_frames = torch.cat([x[:, :1], x[:, :-1]], dim=1)
    backward = ffn.backward_propagation(aligned(next_frames, flows_backward))
    forward = ffn.forward_propagation(aligned(previous_frames, flows_forward))
    return ffn.lrelu(ffn.fusion(torch.cat([backward, forward], dim=1)))


def forward_fast(model: VSRTransformer, lr: Tensor) -> Tensor:
    """lr: (n, t, 3, s, s) in [0, 1] -> (n, t, 3, 4s, 4s), as :meth:`VSRTransformer.forward_reference`."""
    n, t, _, h, w = lr.shape
    lr_frames = lr.flatten(0, 1)
    lr_cl = lr_frames.contiguous(memory_format=CHANNELS_LAST)
    flows_backward, flows_forward = (f.flatten(0, 1) for f in model.compute_flows(lr))

    feat = model.feature_extractor(lr_cl)  # (n*t, c, h, w)
    feat = (feat.unflatten(0, (n, t)) + model.positional_encoding(feat.unflatten(0, (n, t)))).flatten(0, 1)
    for layer in model.layers:
        feat = self_attention(layer.attention, layer_norm(feat, layer.attention_norm), n) + feat
        normed = layer_norm(feat, layer.feed_forward_norm).unflatten(0, (n, t))
        feat = feed_forward(layer.feed_forward, normed, lr_cl, flows_backward, flows_forward) + feat

    out = model.upsample_head.forward_channels_last(model.reconstruction(feat)) + upsample_base(lr_frames)
    return out.unflatten(0, (n, t)).contiguous()
