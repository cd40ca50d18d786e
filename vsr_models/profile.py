"""Parameters and FLOPs per frame of the networks, as the papers' efficiency tables report them.

TTVSR's Table 3 gives 6.8M parameters and 0.61 TFLOPs per 180x320 LR frame (x4). FLOPs are
counted with :class:`torch.utils.flop_counter.FlopCounterMode`, which counts 2 FLOPs per
multiply-add of convolutions and matrix products (including attention); element-wise operations,
``grid_sample`` warps and interpolation are not counted. Video super-resolution papers usually
report multiply-adds (MACs) as "FLOPs", so both are printed.

The network runs through :func:`vsr_models.inference.super_resolve`, i.e. exactly as for a real
video: TTVSR on the whole frames; VSR-Transformer, whose layer norms fix the LR patch at 64x64, on
overlapping tiles and one ``num_frames`` window centred on every output frame, as its released test
runs it (pass ``chunk_overlap=0`` to count non-overlapping windows instead). The count is the total
divided by the number of output frames, so it includes the cost of tile overlap and window
recomputation.

By default everything runs on the ``meta`` device: shapes only, no arithmetic, so even a
VSR-Transformer profile at 180x320 takes seconds on a laptop.

Command line: ``python jobs/profile_model.py --arch ttvsr --size 180x320 --frames 10``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vsr_models.inference import super_resolve
from vsr_models.registry import build_model, get_family, model_config

# TTVSR compares frame values to detect a mirror-extended input; the meta device has no values.
# The profiled input is random (never mirrored), so the switch does not change the count.
_META_OVERRIDES = {"reuse_mirror_flows": False}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as SPyNet's mean / std are not parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def flops_per_frame(model: nn.Module, size: tuple[int, int], frames: int = 10, **inference: Any) -> float:
    """FLOPs per output frame of super-resolving ``frames`` LR frames of ``size`` = (h, w).

    Runs ``super_resolve(model, lr, **inference)`` on a random input on the model's device (the
    meta device counts without computing) under ``FlopCounterMode``; see the module docstring for
    what is counted.
    """
    device = next(model.parameters()).device
    lr = torch.rand(1, frames, 3, *size, device=device)
    with FlopCounterMode(display=False) as counter:
        super_resolve(model, lr, **inference)
    return counter.get_total_flops() / frames


def profile_report(
    arch: str,
    size: tuple[int, int] = (180, 320),
    frames: int = 10,
    overrides: dict[str, Any] | None = None,
    device: str = "meta",
    chunk_overlap: int | None = None,
) -> str:
    """Parameters and FLOPs / MACs per frame of ``build_model(arch, **overrides)`` as printable lines.

    ``device='meta'`` counts shapes only (seconds even at 180x320); ``cpu`` / ``cuda`` also time the run.
    """
    overrides = dict(overrides or {})
    target = torch.device(device)
    if target.type == "meta":
        fields = get_family(arch).field_names
        overrides = {**{k: v for k, v in _META_OVERRIDES.items() if k in fields}, **overrides}
    with target:
        model = build_model(arch, **overrides)
    inference = {} if chunk_overlap is None else {"chunk_overlap": chunk_overlap}

    start = time.perf_counter()
    flops = flops_per_frame(model, size, frames, **inference)
    if target.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start

    h, w = size
    lines = [
        f"arch: {arch}",
        f"config: {model_config(model)}",
        f"parameters: {count_parameters(model):,}",
        f"input: {frames} LR frames of {h}x{w} -> {4 * h}x{4 * w}",
        f"FLOPs per frame: {flops / 1e12:.4f} T ({flops:.4g}; FlopCounterMode, 2 per multiply-add)",
        f"MACs per frame: {flops / 2e12:.4f} T (what papers' 'FLOPs' usually count, e.g. mmcv get_flops)",
    ]
    if target.type != "meta":
        lines.append(f"time per frame on {target}: {elapsed / frames * 1e3:.1f} ms (includes FLOP counting)")
    return "\n".join(lines)
