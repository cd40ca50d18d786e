"""Inference on frames of any size and sequences of any length.

Both networks were trained on small crops of short sequences; this module runs them on whole videos:

- :func:`tiled_forward` cuts the LR frames into overlapping ``tile x tile`` patches, runs them in
  batches and blends the x``scale`` outputs with a cross-fade window. VSR-Transformer needs it: its
  layer norms carry learned ``(c, 64, 64)`` affine weights, so it only accepts 64x64 LR patches
  (VSR-Transformer Sec. 3; ``docs/models.md#vsr-transformer``). Tiles never shrink at the border: the last
  tile of a row or column is shifted back to end at the border.
- :func:`chunked_forward` cuts a long sequence into overlapping temporal windows and takes every
  output frame from the window in which it is most central, so a recurrent model (TTVSR) sees
  context on both sides and memory stays bounded.
- :func:`centred_forward` gives every output frame its own window of a fixed-length model's
  ``num_frames`` frames, centred on it and padded past the sequence ends as the released
  VSR-Transformer test pads them (:func:`centred_window`); the centre output is kept.
- :func:`pad_to_multiple` pads frames (reflect, or replicate where the frame is too small to
  reflect) to a size the model accepts (TTVSR: multiples of its 4x4 token size, at least 64x64)
  and the output is cropped back.
- :func:`super_resolve` reads the model's constraints (:func:`input_constraints`, an
  :class:`~vsr_models.registry.InputConstraints`) and combines them.

Blending window (per axis, at a tile edge that is not the frame border): the outer
``overlap // 4`` LR pixels get weight 0 and the next ``overlap - 2 * (overlap // 4)`` pixels ramp
linearly up to 1. Two neighbours that overlap by exactly ``overlap`` pixels therefore cross-fade with
weights summing to 1, and a translation-equivariant model whose receptive radius is at most
``overlap // 4`` LR pixels gives exactly the result of one full-frame forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vsr_models.registry import DeclaresInputConstraints, InputConstraints

Forward = Callable[[Tensor], Tensor]
"""Anything mapping LR frames ``(n, t, c, h, w)`` to SR frames ``(n, t, c', s*h, s*w)``."""
Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each model call (tile batch or temporal window)."""


def input_constraints(model: Forward) -> InputConstraints:
    """The input constraints a model declares with ``input_constraints()``; none for anything else.

    Both networks declare theirs (TTVSR: multiples of 4 and of its token size, at least 64x64;
    VSR-Transformer: ``spatial_size`` x ``spatial_size`` patches in windows of ``num_frames``). A plain
    callable, or a module without the method, is unconstrained.
    """
    if isinstance(model, DeclaresInputConstraints):
        return model.input_constraints()
    return InputConstraints()


# -- padding ---------------------------------------------------------------------------------------


def _pad_bottom_right(lr: Tensor, pad_h: int, pad_w: int) -> Tensor:
    """Pad ``(n, t, c, h, w)`` at the bottom / right; reflect along an axis long enough, else replicate."""
    n, t, c, h, w = lr.shape
    frames = lr.reshape(n * t, c, h, w)
    for pad, size, padding in ((pad_h, h, (0, 0, 0, pad_h)), (pad_w, w, (0, pad_w, 0, 0))):
        if pad:
            frames = F.pad(frames, padding, mode="reflect" if pad < size else "replicate")
    return frames.reshape(n, t, c, h + pad_h, w + pad_w)


def pad_to_multiple(lr: Tensor, multiple: int, min_size: int = 0) -> tuple[Tensor, tuple[int, int]]:
    """Pad frames at the bottom / right to multiples of ``multiple`` that are at least ``min_size``.

    Args:
        lr: ``(n, t, c, h, w)``.
        multiple: required divisor of the padded height and width.
        min_size: smallest padded height and width.

    Returns:
        The padded ``(n, t, c, h', w')`` frames and the original ``(h, w)``; crop the model's output
        to ``(scale * h, scale * w)`` (see :func:`crop_output`).
    """
    h, w = lr.shape[-2:]

    def target(size: int) -> int:
        size = max(size, min_size)
        return -(-size // multiple) * multiple

    return _pad_bottom_right(lr, target(h) - h, target(w) - w), (h, w)


def crop_output(sr: Tensor, size: tuple[int, int], scale: int) -> Tensor:
    """Crop ``(..., H', W')`` output of padded input back to ``(scale * h, scale * w)``."""
    return sr[..., : scale * size[0], : scale * size[1]]


# -- running the model -----------------------------------------------------------------------------


def _model_device(model: Forward, fallback: torch.device) -> torch.device:
    if isinstance(model, nn.Module):
        for tensor in model.parameters():
            return tensor.device
    return fallback


def _call(model: Forward, lr: Tensor) -> Tensor:
    """Run ``model`` on its own device and bring the result back to ``lr``'s device."""
    return model(lr.to(_model_device(model, lr.device))).to(lr.device)


@contextmanager
def _evaluating(model: Forward) -> Iterator[None]:
    """``torch.no_grad`` and eval mode for the call, restoring the model's training flag after."""
    was_training = isinstance(model, nn.Module) and model.training
    if was_training:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train()


def _window_starts(length: int, window: int, overlap: int) -> list[int]:
    """Starts of ``window``-long windows covering ``length``, stride ``window - overlap``, last flush."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, window - overlap))
    starts.append(length - window)
    return starts


# -- spatial tiles ---------------------------------------------------------------------------------


def blend_profile(
    size: int, overlap: int, scale: int, first: bool, last: bool, device: torch.device | None = None
) -> Tensor:
    """1-D blending weights of one tile along one axis, on the output (x ``scale``) grid.

    Args:
        size: tile length in LR pixels.
        overlap: nominal overlap with the neighbouring tiles in LR pixels.
        scale: upscaling factor.
        first: the tile starts at the frame border (no fade-in).
        last: the tile ends at the frame border (no fade-out).
        device: where the weights are made (default: the CPU).

    Returns:
        ``(scale * size,)`` float32 weights in [0, 1].
    """
    margin = overlap // 4  # discarded: the pixels that see least context
    ramp = overlap - 2 * margin
    rising = torch.cat(
        [
            torch.zeros(margin * scale, device=device),
            (torch.arange(ramp * scale, dtype=torch.float32, device=device) + 0.5) / (ramp * scale),
        ]
    )
    weights = torch.ones(size * scale, device=device)
    if not first:
        weights[: rising.numel()] = rising
    if not last:
        weights[weights.numel() - rising.numel() :] = torch.minimum(
            weights[weights.numel() - rising.numel() :], rising.flip(0)
        )
    return weights


def tiled_forward(
    model: Forward,
    lr: Tensor,
    tile: int = 64,
    overlap: int = 16,
    scale: int = 4,
    tile_batch: int = 4,
    progress: Progress | None = None,
) -> Tensor:
    """Super-resolve frames tile by tile and blend the tiles.

    Every tile is exactly ``tile x tile`` (frames smaller than a tile are padded first, and the
    output cropped); tiles start every ``tile - overlap`` pixels and the last one ends at the border.
    ``tile_batch`` tiles are stacked along the batch axis per model call, so the model must treat
    batch entries independently (true for both networks: no batch norm). Runs the model on its own
    device and accumulates the output on ``lr``'s device.

    Args:
        model: maps ``(b, t, c, tile, tile)`` to ``(b, t, c', scale*tile, scale*tile)``.
        lr: ``(n, t, c, h, w)`` LR frames.
        tile: LR tile size.
        overlap: LR pixels shared by neighbouring tiles, ``0 <= overlap < tile``.
        scale: upscaling factor of the model.
        tile_batch: tiles per model call.
        progress: called with (tiles done, tiles total).

    Returns:
        ``(n, t, c', scale*h, scale*w)`` float32.
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"tiled_forward needs 0 <= overlap < tile, got overlap={overlap}, tile={tile}")
    if tile_batch < 1:
        raise ValueError(f"tile_batch must be >= 1, got {tile_batch}")
    lr, size = pad_to_multiple(lr, 1, min_size=tile)
    n, t, _, h, w = lr.shape
    ys, xs = _window_starts(h, tile, overlap), _window_starts(w, tile, overlap)
    tiles = [(y, x) for y in ys for x in xs]
    out_tile = tile * scale
    output: Tensor | None = None
    weight = torch.zeros(scale * h, scale * w, device=lr.device)
    # Every tile's window is one of at most 3 x 3 (first, middle or last along each axis): each is
    # made once, on the device, not copied there per tile (docs/models.md#no-host-traffic-per-frame).
    windows: dict[tuple[bool, bool, bool, bool], Tensor] = {}

    def window_of(y: int, x: int) -> Tensor:
        edges = (y == 0, y == ys[-1], x == 0, x == xs[-1])
        if edges not in windows:
            windows[edges] = torch.outer(
                blend_profile(tile, overlap, scale, edges[0], edges[1], lr.device),
                blend_profile(tile, overlap, scale, edges[2], edges[3], lr.device),
            )
        return windows[edges]

    with _evaluating(model):
        for batch_start in range(0, len(tiles), tile_batch):
            batch = tiles[batch_start : batch_start + tile_batch]
            patches = torch.cat(
                [lr[..., y : y + tile, x : x + tile] for y, x in batch]
            )  # (b*n, t, c, tile, tile)
            sr = _call(model, patches)
            if sr.shape[-2:] != (out_tile, out_tile) or sr.shape[:2] != (len(batch) * n, t):
                raise ValueError(
                    f"tiled_forward: model output {tuple(sr.shape)} for tiles {tuple(patches.shape)}; "
                    "expected "
                    f"({len(batch) * n}, {t}, c, {out_tile}, {out_tile}) for scale={scale}"
                )
            if output is None:
                output = torch.zeros(n, t, sr.shape[2], scale * h, scale * w, device=lr.device)
            for (y, x), sr_tile in zip(batch, sr.split(n)):
                window = window_of(y, x)
                region = (..., slice(y * scale, y * scale + out_tile), slice(x * scale, x * scale + out_tile))
                output[region] += sr_tile.float() * window
                weight[region[1:]] += window
            if progress is not None:
                progress(batch_start + len(batch), len(tiles))
    return crop_output(output / weight, size, scale)


# -- temporal chunks -------------------------------------------------------------------------------


def most_central_windows(length: int, window: int, overlap: int) -> list[tuple[int, list[int]]]:
    """Temporal windows and the frames each one outputs.

    Windows of ``window`` frames start every ``window - overlap`` frames (the last ends at the
    sequence end); each frame is taken from the window where its distance to the nearer window end
    is largest (the earlier window on ties). Windows that output no frame are dropped.

    Returns:
        ``[(start, [frame indices kept from this window]), ...]``.
    """
    if not 0 <= overlap < window:
        raise ValueError(f"need 0 <= overlap < chunk, got overlap={overlap}, chunk={window}")
    starts = _window_starts(length, window, overlap)
    kept: dict[int, list[int]] = {start: [] for start in starts}
    for frame in range(length):
        candidates = [s for s in starts if s <= frame < s + window]
        best = max(candidates, key=lambda s: (min(frame - s, s + window - 1 - frame), -s))
        kept[best].append(frame)
    return [(start, frames) for start, frames in kept.items() if frames]


def chunked_forward(
    model: Forward, lr: Tensor, chunk: int, overlap: int = 0, progress: Progress | None = None
) -> Tensor:
    """Super-resolve a long sequence in overlapping temporal windows (:func:`most_central_windows`).

    Overlapping frames are computed in two windows and kept from the one where they are more
    central (more context on both sides for a recurrent model); the other copy is discarded.

    Args:
        model: maps ``(n, chunk, c, h, w)`` to ``(n, chunk, c', H, W)`` (any per-frame output size).
        lr: ``(n, t, c, h, w)``; if ``t <= chunk`` the model runs once on all of it.
        chunk: frames per window.
        overlap: frames shared by consecutive windows, ``0 <= overlap < chunk``.
        progress: called with (windows done, windows total).

    Returns:
        ``(n, t, c', H, W)`` float32 on ``lr``'s device.
    """
    t = lr.shape[1]
    windows = [
        (list(range(start, min(start + chunk, t))), [(frame, frame - start) for frame in frames])
        for start, frames in most_central_windows(t, chunk, overlap)
    ]
    return _run_windows(model, lr, windows, progress)


def centred_window(frame: int, length: int, window: int) -> list[int]:
    """The ``window`` frame indices fed to a fixed-length model for output ``frame`` (at ``window // 2``).

    Inside the sequence these are the frame's neighbours. Past an end, an odd window is padded like
    BasicSR's ``reflection_circle`` (the released VSR-Transformer test for REDS4 and Vid4): output 0
    of a 5-frame window is fed ``[4, 3, 0, 1, 2]``, output ``t-1`` is fed
    ``[t-3, t-2, t-1, t-4, t-5]``. Where that has too few frames (even windows, sequences shorter than
    the window) the sequence is mirrored at its ends instead (``[1, 0, 1]`` for output 0 of 2 frames).
    """
    half, last = window // 2, length - 1
    circle = window % 2 == 1 and length >= window
    period = max(2 * last, 1)

    def index(i: int) -> int:
        if not circle:  # mirror: ..., 2, 1, [0, 1, ..., last], last - 1, ...
            i %= period
            return i if i <= last else period - i
        if i < 0:
            return frame + half - i
        if i > last:
            return frame - half - (i - last)
        return i

    return [index(i) for i in range(frame - half, frame - half + window)]


def centred_forward(model: Forward, lr: Tensor, window: int, progress: Progress | None = None) -> Tensor:
    """Super-resolve every frame as the centre of its own ``window``-frame input (:func:`centred_window`).

    How the released VSR-Transformer test runs its fixed-length model: one call per output frame,
    keeping only the centre frame's output.

    Args:
        model: maps ``(n, window, c, h, w)`` to ``(n, window, c', H, W)``.
        lr: ``(n, t, c, h, w)``, any ``t >= 1``.
        window: frames per model call.
        progress: called with (frames done, frames total).

    Returns:
        ``(n, t, c', H, W)`` float32 on ``lr``'s device.
    """
    t = lr.shape[1]
    windows = [(centred_window(frame, t, window), [(frame, window // 2)]) for frame in range(t)]
    return _run_windows(model, lr, windows, progress)


def _run_windows(
    model: Forward,
    lr: Tensor,
    windows: list[tuple[list[int], list[tuple[int, int]]]],
    progress: Progress | None,
) -> Tensor:
    """Run ``model`` on ``lr[:, indices]`` per window; output frame ``f`` is window position ``p`` for (f, p) kept."""
    output: Tensor | None = None
    with _evaluating(model):
        for done, (indices, kept) in enumerate(windows, 1):
            start = indices[0]
            if indices == list(range(start, start + len(indices))):
                frames = lr[:, start : start + len(indices)]  # a view: no index tensor from host data
            else:  # a window padded past the ends (centred windows), at most window - 1 of them
                frames = lr[:, indices]
            sr = _call(model, frames)
            if output is None:
                output = torch.zeros(lr.shape[0], lr.shape[1], *sr.shape[2:], device=lr.device)
            for frame, position in kept:  # integer indices: a list would be copied to the device
                output[:, frame] = sr[:, position]
            if progress is not None:
                progress(done, len(windows))
    return output


# -- everything together ---------------------------------------------------------------------------


def super_resolve(
    model: Forward,
    lr: Tensor,
    *,
    tile: int | None = None,
    overlap: int | None = None,
    chunk: int | None = None,
    chunk_overlap: int | None = None,
    scale: int = 4,
    tile_batch: int = 4,
    progress: Progress | None = None,
) -> Tensor:
    """Super-resolve LR frames of any size and length with whatever the model needs.

    - Frames are padded (reflect) to the model's :func:`input_constraints` (TTVSR: multiples of 4,
      at least 64x64) and the output cropped back.
    - ``tile``: spatial tiling (:func:`tiled_forward`); forced to the constraints' ``spatial_size`` for a
      fixed-size model (VSR-Transformer: 64), where passing another value is an error. ``overlap``
      defaults to ``tile // 4`` (16 for 64x64 tiles).
    - ``chunk``: temporal windows (:func:`chunked_forward`) with ``chunk_overlap`` frames shared
      (default ``chunk // 4``). For a fixed-length model (the constraints' ``num_frames``) the chunk is
      ``num_frames`` (passing another is an error) and, unless ``chunk_overlap`` is given, every
      output frame is the centre of its own window (:func:`centred_forward`), as the released
      VSR-Transformer test runs it.
    - Runs under ``torch.no_grad`` in eval mode on the model's device; returns on ``lr``'s device.

    Args:
        model: the network (or any :data:`Forward`).
        lr: ``(n, t, 3, h, w)`` LR frames in [0, 1].
        progress: called with (done, total) per temporal window when windowing, else per tile batch.

    Returns:
        ``(n, t, 3, scale*h, scale*w)``.
    """
    constraints = input_constraints(model)
    size = constraints.spatial_size
    tile = _fixed_by_model(model, "tile", tile, size, f"only accepts {size}x{size} LR patches")
    chunk = _fixed_by_model(
        model,
        "chunk",
        chunk,
        constraints.num_frames,
        f"runs on windows of num_frames={constraints.num_frames}",
    )
    if tile is not None and overlap is None:
        overlap = tile // 4
    if tile is not None and constraints.problems(tile, tile):
        raise ValueError(
            f"tile={tile} must be a multiple of {constraints.multiple} and at least {constraints.min_size} "
            f"for {type(model).__name__}"
        )

    def spatial(frames: Tensor, report: Progress | None) -> Tensor:
        frames, size = pad_to_multiple(frames, constraints.multiple, constraints.min_size)
        if tile is None:
            sr = _call(model, frames)
            if report is not None:
                report(1, 1)
        else:
            sr = tiled_forward(model, frames, tile, overlap, scale, tile_batch, report)
        return crop_output(sr, size, scale)

    with _evaluating(model):
        if chunk is None:
            return spatial(lr, progress)
        if constraints.num_frames is not None and (chunk_overlap is None or lr.shape[1] < chunk):
            return centred_forward(lambda x: spatial(x, None), lr, chunk, progress)
        chunk_overlap = chunk // 4 if chunk_overlap is None else chunk_overlap
        return chunked_forward(lambda x: spatial(x, None), lr, chunk, chunk_overlap, progress)


def _fixed_by_model(
    model: Forward, name: str, requested: int | None, required: int | None, why: str
) -> int | None:
    """``required`` where the model fixes the value (``requested`` must then be None or equal), else ``requested``."""
    if required is None:
        return requested
    if requested not in (None, required):
        raise ValueError(f"{type(model).__name__} {why}, so {name} must be {required} (got {requested})")
    return required
