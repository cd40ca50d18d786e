"""TTVSR's fast path: the computation of :meth:`vsr_models.ttvsr.network.TTVSR.forward_reference`, reorganised.

Same function, same weights, same trajectories (float32 outputs and gradients within 1e-5 of the
reference; ``tests/vsr_models/test_fast_paths.py``). What differs, each kept because it measurably
pays on CPU (``BENCHMARKS.md``, "Model speed: fast vs reference path"):

- **Both directions as one batch.** The backward and forward propagations share their weights and
  never read each other's features, and step k of each is a key frame under the same rule
  (``k % key_frame_stride == 0``, not the last step), so their location maps and token memories grow
  in step: they run as one batch of 2n (backward first), halving the number of convolution calls.
- **channels_last** for every convolution after SPyNet (oneDNN's fastest layout here). It also makes
  tokenising free: a channels_last (n, c*s*s, h/s, w/s) map *is* the (n, P, c*s*s) token matrix.
- **SPyNet once over all frame pairs of both directions**, in batches bounded in memory. SPyNet stays
  in the reference's layout: its flows place the nearest-neighbour location maps, so they are computed
  bit for bit as the reference computes them and every trajectory is the same.
- **One gather per lookup.** The three value scales sit side by side in one memory, so the selected
  values of all scales are one ``index_select``; the similarity over all key frames on the trajectory
  is a gather of each token's keys side by side and one batched matrix-vector product, in chunks of
  at most ``_GATHER_BUDGET`` elements (memory stays bounded at 180x320 x 100 frames).
- **Inference memory**: the token memory is allocated once and filled in place (the reference
  concatenates, copying it at every key frame); a frame is reconstructed as soon as both directions
  have passed it, so propagated features do not pile up; the output is written in place.

Options (``TTVSRConfig``): ``compile`` (``torch.compile`` of the per-frame propagation step, eager
fallback with one warning), ``checkpoint_propagation`` (activation checkpointing of that step in
training) and ``max_key_frames`` (bounded token memory, shared with the reference path).

This module uses the network's modules and methods; the network never imports it: the family
(:data:`vsr_models.ttvsr.FAMILY`) lists :func:`forward_fast` as the ``"fast"`` implementation.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vsr_models.blocks import at_least_float32, flow_warp, upsample_base, without_autocast
from vsr_models.ttvsr.network import TTVSR
from vsr_models.ttvsr.trajectory import (
    cross_scale_tokens,
    identity_location_map,
    trajectory_rows,
    update_location_maps,
)

CHANNELS_LAST = torch.channels_last

_GATHER_BUDGET = 1 << 22
"""Most key-token elements gathered at once for the similarity search (16 MiB of float32: 8 key frames
of a 64x64 batch of 2). Larger gathers are no faster, and past glibc's 32 MiB mmap threshold every one
is fresh memory, page-faulted in: 5x slower at 17 key frames of 64x64 in float32."""
_SPYNET_BUDGET = 1 << 18
"""Most pixels (pairs x padded height x width) SPyNet runs on at once (64 pairs of 64x64, 4 of
180x320): bounds its activations, which at 180x320 x 100 frames would otherwise take gigabytes."""


# ---------------------------------------------------------------------------------------------------
# Flows
# ---------------------------------------------------------------------------------------------------


def compute_flows(model: TTVSR, lrs: Tensor, mirrored: bool | None = None) -> tuple[Tensor, Tensor]:
    """Same as :meth:`TTVSR.compute_flows`, bit for bit: lrs (n, t, 3, h, w) -> two (n, t-1, 2, h, w).

    Both directions' pairs go through SPyNet together, in batches of at most ``_SPYNET_BUDGET``
    pixels and of no more pairs than one direction has (SPyNet's convolutions give every pair the same
    bits whatever the batch). In float32 under autocast too, as the reference.
    """
    n, t, c, h, w = lrs.shape
    if t < 2:
        empty = at_least_float32(lrs.new_zeros(n, 0, 2, h, w))
        return empty, empty
    earlier, later = at_least_float32(lrs[:, :-1].flatten(0, 1)), at_least_float32(lrs[:, 1:].flatten(0, 1))
    mirrored = model.reuses_mirror_flows(lrs, mirrored)
    refs, supports = (
        (earlier, later) if mirrored else (torch.cat([earlier, later]), torch.cat([later, earlier]))
    )
    # never more pairs per call than the reference's one direction, so SPyNet's peak memory is no higher
    padded_pixels = -(-h // 32) * 32 * (-(-w // 32) * 32)
    batch = max(1, min(_SPYNET_BUDGET // padded_pixels, n * (t - 1)))
    with without_autocast(lrs.device):
        flows = torch.cat(
            [model.spynet(r, s) for r, s in zip(refs.split(batch), supports.split(batch), strict=True)]
        )
    backward = flows[: n * (t - 1)].view(n, t - 1, 2, h, w)
    if mirrored:
        return backward, backward.flip(1)
    return backward, flows[n * (t - 1) :].view(n, t - 1, 2, h, w)


# ---------------------------------------------------------------------------------------------------
# Tokens laid out (y, x, c): what channels_last maps hold contiguously
# ---------------------------------------------------------------------------------------------------


def tokens(feat: Tensor, s: int) -> Tensor:
    """:func:`vsr_models.ttvsr.trajectory.tokenize`, each token laid out (y, x, c) instead of (c, y, x).

    feat: (n, c, h, w), best channels_last -> (n, h/s * w/s, s*s*c). The order inside a token is the
    fast path's own (dot products and the inverse :func:`untokens` do not depend on it); it is the one
    a channels_last map stores in runs of c, so cutting and folding tokens are plain copies.
    """
    n, c, h, w = feat.shape
    grid = feat.permute(0, 2, 3, 1).reshape(n, h // s, s, w // s, s, c)
    return grid.transpose(2, 3).reshape(n, (h // s) * (w // s), s * s * c)


def untokens(tokens_: Tensor, size: tuple[int, int], s: int) -> Tensor:
    """Inverse of :func:`tokens`: (n, h/s * w/s, s*s*c) -> (n, c, h, w) channels_last."""
    n = tokens_.shape[0]
    h, w = size
    grid = tokens_.view(n, h // s, w // s, s, s, -1).transpose(2, 3)
    return grid.reshape(n, h, w, -1).permute(0, 3, 1, 2)


def cross_scale_token_grid(feat: Tensor, s: int, scale: int) -> Tensor:
    """:func:`vsr_models.ttvsr.trajectory.cross_scale_tokens` as (n, P, s, s, c), each token laid out (y, x, c).

    Cell (i, j) of the adaptive average pooling of a ``scale`` window covers rows [a_i, b_i) and
    columns [a_j, b_j) of the window. Where all cells have one size m (every scale the released model
    uses), that is an m x m average pool of the zero-padded map, read at row s*Y + a_i and column
    s*X + a_j: one pooling over the map and one gather, instead of cutting out every window.
    """
    n, c, h, w = feat.shape
    if scale == s:
        return tokens(feat, s).view(n, -1, s, s, c)
    starts = [i * scale // s for i in range(s)]
    sizes = {-(-(i + 1) * scale // s) - start for i, start in enumerate(starts)}
    if len(sizes) != 1:  # cells of different sizes: pool every window (the reference's way)
        reference = cross_scale_tokens(feat, s, scale)  # (n, P, c*s*s), laid out (c, y, x)
        return reference.view(n, -1, c, s, s).permute(0, 1, 3, 4, 2)
    pad = (scale - s) // 2
    pooled = F.avg_pool2d(F.pad(feat, (pad, pad, pad, pad)), sizes.pop(), stride=1).permute(0, 2, 3, 1)
    # ``starts`` made on the device (a tensor of the list would be a host-to-device copy per key frame)
    offsets = torch.arange(s, device=feat.device).mul_(scale).div_(s, rounding_mode="floor")
    rows = torch.arange(h // s, device=feat.device).view(-1, 1) * s + offsets  # (h/s, s)
    cols = torch.arange(w // s, device=feat.device).view(-1, 1) * s + offsets  # (w/s, s)
    picked = pooled[:, rows[:, None, :, None], cols[None, :, None, :]]  # (n, h/s, w/s, s, s, c)
    return picked.flatten(1, 2)


# ---------------------------------------------------------------------------------------------------
# Token memory and trajectory-aware attention
# ---------------------------------------------------------------------------------------------------


class TokenMemory:
    """The key frames' tokens of one propagation batch: keys (b, C*P, d), values (b, C*P, D).

    Values hold every token scale of a pixel side by side, (y, x, scale, c), so one gather reads all
    scales and folds back into the fusion conv's input channels. ``slots`` lists the slots (of room
    for C key frames) holding key frames, oldest first: the order of the location maps. Without
    autograd the buffers are allocated once and written in place, a full memory overwriting its oldest
    slot. With autograd they grow by concatenation, as in the reference: in-place writes would put a
    copy of the whole buffer into backward for every key frame.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.in_place = not torch.is_grad_enabled()
        self.keys: Tensor | None = None
        self.values: Tensor | None = None
        self.slots: list[int] = []
        self._slot_index: dict[tuple[int, int], Tensor] = {}  # (K, oldest slot) -> slots, on the device

    def append(self, keys: Tensor, values: Tensor) -> None:
        """Add one key frame: keys (b, P, d), values (b, P, D); drop the oldest beyond the capacity."""
        b, p, _ = keys.shape
        full = len(self.slots) == self.capacity
        if self.in_place:
            if self.keys is None:
                self.keys = keys.new_empty(b, self.capacity * p, keys.shape[-1])
                self.values = values.new_empty(b, self.capacity * p, values.shape[-1])
            slot = self.slots.pop(0) if full else len(self.slots)
            self.slots.append(slot)
            self.keys[:, slot * p : (slot + 1) * p] = keys
            self.values[:, slot * p : (slot + 1) * p] = values
            return
        if self.keys is None:
            self.keys, self.values = keys, values
        else:
            start = p if full else 0
            self.keys = torch.cat([self.keys[:, start:], keys], dim=1)
            self.values = torch.cat([self.values[:, start:], values], dim=1)
        self.slots = list(range(self.keys.shape[1] // p))

    def rows(self, location_maps: Tensor) -> tuple[Tensor, Tensor]:
        """Rows of each trajectory position in the flattened memory: (b, K, P) int64 and inside (b, K, P)."""
        room = self.keys.shape[1] // (location_maps.shape[-2] * location_maps.shape[-1])
        # The slots are always consecutive from the oldest, modulo the room (filled in order, then
        # the oldest overwritten): made on the device once per layout, not copied from the list at
        # every frame (docs/models.md#no-host-traffic-per-frame).
        layout = (len(self.slots), self.slots[0])
        if layout not in self._slot_index:
            slots = torch.arange(layout[0], device=location_maps.device).add_(layout[1]).remainder_(room)
            self._slot_index[layout] = slots
        return trajectory_rows(location_maps, self._slot_index[layout], room)


@torch.no_grad()
def hard_attention_index(keys: Tensor, query: Tensor, rows: Tensor, inside: Tensor) -> Tensor:
    """Eq. 4's argmax: for each query token the trajectory position (of K) whose key is most similar.

    keys: (b, R, d) L2-normalised memory; query: (b, P, d) L2-normalised; rows, inside: (b, K, P).
    The keys of each token's K positions are gathered side by side, (b, P, K, d), and multiplied with
    its query in one batched product, in chunks of key frames of at most ``_GATHER_BUDGET`` elements.
    Off-map positions read zero keys (similarity 0); ties go to the oldest key frame, as in the
    reference. In float32 under autocast too (see :func:`vsr_models.ttvsr.network.trajectory_hard_attention`).
    Returns (b, P) int64 in [0, K).
    """
    b, _, p = rows.shape
    flat_keys = keys.flatten(0, 1)
    per_token = rows.transpose(1, 2)  # (b, P, K)
    chunk = max(1, _GATHER_BUDGET // (b * p * keys.shape[-1]))
    with without_autocast(query.device):
        similarity = torch.cat(
            [
                torch.matmul(
                    at_least_float32(
                        flat_keys.index_select(0, part.reshape(-1)).view(b, p, part.shape[-1], -1)
                    ),
                    at_least_float32(query).unsqueeze(-1),
                ).squeeze(-1)
                for part in per_token.split(chunk, dim=-1)
            ],
            dim=-1,
        )  # (b, P, K)
    return similarity.masked_fill_(~inside.transpose(1, 2), 0.0).max(dim=-1).indices


def trajectory_attention(
    fusion: nn.Conv2d, query: Tensor, anchor: Tensor, memory: TokenMemory, location_maps: Tensor, s: int
) -> Tensor:
    """:class:`vsr_models.ttvsr.network.TrajectoryAttention` on a :class:`TokenMemory`.

    query: (b, P, d) L2-normalised tokens of the current extractor feature; anchor: (b, c, h, w)
    warped propagated feature; location_maps: (b, 2K, h/s, w/s). Returns (b, c, h, w) channels_last.
    """
    b, c, h, w = anchor.shape
    rows, inside = memory.rows(location_maps)
    hard_index = hard_attention_index(memory.keys, query, rows, inside).unsqueeze(1)
    selected_rows = rows.gather(1, hard_index).view(-1)
    outside = ~inside.gather(1, hard_index).view(b, -1, 1)
    # the soft weight from the selected key alone: the max's value and gradient (see the reference)
    selected_keys = memory.keys.flatten(0, 1).index_select(0, selected_rows).view(query.shape)
    soft_weight = (selected_keys * query).sum(-1, keepdim=True).masked_fill_(outside, 0.0)  # (b, P, 1)
    values = memory.values.flatten(0, 1).index_select(0, selected_rows).view(b, query.shape[1], -1)
    attended = fusion(untokens(values.masked_fill_(outside, 0.0), (h, w), s))
    # the soft weight is constant over each s x s token: broadcast it there instead of upsampling
    weight = soft_weight.view(b, 1, h // s, 1, w // s, 1)
    weighted = attended.unflatten(2, (h // s, s)).unflatten(4, (w // s, s)) * weight
    return weighted.flatten(4).flatten(2, 3).add_(anchor)


# ---------------------------------------------------------------------------------------------------
# The per-frame propagation step: plain, compiled, checkpointed
# ---------------------------------------------------------------------------------------------------


def _step(propagation: nn.Module, current: Tensor, feat_prop: Tensor) -> Tensor:
    """The propagation blocks on (current extractor feature, attended feature): 2 x (b, c, h, w) -> (b, c, h, w)."""
    return propagation(torch.cat([current, feat_prop], dim=1).contiguous(memory_format=CHANNELS_LAST))


_COMPILED: weakref.WeakKeyDictionary[nn.Module, Callable[[Tensor, Tensor], Tensor]] = (
    weakref.WeakKeyDictionary()
)
"""Propagation module -> its compiled step (kept off the module, so its state dict is unchanged)."""


def _eager_step(propagation: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda current, feat_prop: _step(propagation, current, feat_prop)


class _CompiledStep:
    """The step through ``torch.compile``, or eagerly from the first failure on (one warning).

    ``torch.compile`` compiles at the first call, so the calls are guarded, not only its creation; an
    error of the step itself then surfaces from the eager run.
    """

    def __init__(self, propagation: nn.Module):
        self.eager = _eager_step(propagation)
        self.compiled: Callable[[Tensor, Tensor], Tensor] | None = None
        try:
            self.compiled = torch.compile(self.eager, dynamic=False)
        except Exception as error:  # e.g. no compiler support on this platform / Python
            self._fall_back(error)

    def _fall_back(self, error: BaseException) -> None:
        self.compiled = None
        first_line = str(error).splitlines()[0] if str(error) else ""
        warnings.warn(
            f"TTVSR: torch.compile of the propagation step is unavailable ({type(error).__name__}: "
            f"{first_line}); running it eagerly",
            RuntimeWarning,
            stacklevel=4,
        )

    def __call__(self, current: Tensor, feat_prop: Tensor) -> Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(current, feat_prop)
            except Exception as error:  # the backend could not compile (no C++ toolchain, unsupported op)
                self._fall_back(error)
        return self.eager(current, feat_prop)


def compiled_step(propagation: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    """The step of ``propagation`` through ``torch.compile`` (made once per module), see :class:`_CompiledStep`."""
    if propagation not in _COMPILED:
        _COMPILED[propagation] = _CompiledStep(propagation)
    return _COMPILED[propagation]


def step_function(model: TTVSR) -> Callable[[Tensor, Tensor], Tensor]:
    """The per-frame step the config asks for: compiled or not, checkpointed in training or not."""
    step = compiled_step(model.propagation) if model.config.compile else _eager_step(model.propagation)
    if model.config.checkpoint_propagation and torch.is_grad_enabled():
        return lambda current, feat_prop: checkpoint(step, current, feat_prop, use_reentrant=False)
    return step


# ---------------------------------------------------------------------------------------------------
# Propagation of both directions at once, and the whole forward pass
# ---------------------------------------------------------------------------------------------------


def propagate_both(
    model: TTVSR, feats: Tensor, flows_backward: Tensor, flows_forward: Tensor
) -> Iterator[tuple[int, Tensor]]:
    """Both propagation directions as one batch of 2n; yields (step k, propagated features (2n, c, h, w)).

    feats: (n, t, c, h, w) extractor features; flows: (n, t-1, 2, h, w) as from :func:`compute_flows`.
    At step k the first n samples are the backward direction at frame t-1-k, the last n the forward
    direction at frame k; each follows :meth:`TTVSR.propagate`.
    """
    config = model.config
    s = config.token_size
    n, t, c, h, w = feats.shape
    step_flows = torch.cat([flows_backward.flip(1), flows_forward])  # (2n, t-1, 2, h, w), visiting order
    num_key_frames = len(range(0, t - 1, config.key_frame_stride))
    kept = config.max_key_frames or num_key_frames
    memory = TokenMemory(max(1, min(kept, num_key_frames)))
    new_location_map = identity_location_map(2 * n, (h // s, w // s), feats.device)
    location_maps = new_location_map[:, :0]
    feat_prop = feats.new_zeros(2 * n, c, h, w).contiguous(memory_format=CHANNELS_LAST)
    step_fn = step_function(model)
    for step in range(t):
        current = torch.cat([feats[:, t - 1 - step], feats[:, step]])
        is_key_frame = step < t - 1 and step % config.key_frame_stride == 0
        # this frame's query, later maybe its keys; float32 under autocast too (the search compares them)
        query = F.normalize(at_least_float32(tokens(current, s)), dim=-1)
        if step > 0:
            flow = step_flows[:, step - 1]
            feat_prop = flow_warp(feat_prop, flow, padding_mode="border")
            location_maps = update_location_maps(location_maps, flow, s)
            feat_prop = trajectory_attention(
                model.trajectory_attention.fusion, query, feat_prop, memory, location_maps, s
            )
        if is_key_frame:
            location_maps = torch.cat([location_maps, new_location_map], dim=1)[:, -2 * kept :]
        feat_prop = step_fn(current, feat_prop)
        yield step, feat_prop
        if is_key_frame:
            values = torch.stack(
                [cross_scale_token_grid(feat_prop, s, k) for k in config.token_scales], dim=-2
            )  # (2n, P, s, s, scales, c)
            memory.append(query, values.flatten(2))


def reconstruct(model: TTVSR, backward: Tensor, feat: Tensor, forward: Tensor, lr: Tensor) -> Tensor:
    """Fusion and x4 head of frames: features (m, c, h, w), lr (m, 3, h, w) -> (m, 3, 4h, 4w)."""
    fused = F.leaky_relu(model.fusion(torch.cat([backward, feat, forward], dim=1)), 0.1)
    return model.upsample.forward_channels_last(fused) + upsample_base(lr)


def forward_fast(model: TTVSR, lrs: Tensor, mirrored: bool | None = None) -> Tensor:
    """The fast forward pass: lrs (n, t, 3, h, w) in [0, 1] -> (n, t, 3, 4h, 4w), as the reference.

    Frame i is reconstructed at step max(i, t-1-i), when both directions have passed it. ``mirrored``:
    see :meth:`TTVSR.reuses_mirror_flows`.
    """
    n, t, _, h, w = lrs.shape
    flows_backward, flows_forward = compute_flows(model, lrs, mirrored)
    frames = lrs.flatten(0, 1).contiguous(memory_format=CHANNELS_LAST)
    feats = model.feature_extractor(frames).unflatten(0, (n, t))
    in_place = not torch.is_grad_enabled()
    output = lrs.new_empty(n, t, 3, 4 * h, 4 * w) if in_place else None
    outputs: list[Tensor] = [lrs] * t  # placeholders, all replaced
    backward: dict[int, Tensor] = {}
    forward: dict[int, Tensor] = {}
    for step, feat_prop in propagate_both(model, feats, flows_backward, flows_forward):
        backward[t - 1 - step], forward[step] = feat_prop[:n], feat_prop[n:]
        # one frame at a time: batching frames here makes the x4 maps larger, not the head faster
        for i in sorted({i for i in (step, t - 1 - step) if i in backward and i in forward}):
            frame = reconstruct(model, backward.pop(i), feats[:, i], forward.pop(i), lrs[:, i])
            if output is not None:
                output[:, i] = frame
            else:
                outputs[i] = frame
    return output if output is not None else torch.stack(outputs, dim=1)
