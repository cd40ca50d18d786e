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

:class:`HostSyncCounter` counts what would stall a CUDA stream: operations that make the host wait for
the device or copy host data to it (``docs/models.md#no-host-traffic-per-frame``).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
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


# ---------------------------------------------------------------------------------------------------
# Host-sync-like operations
# ---------------------------------------------------------------------------------------------------

_aten = torch.ops.aten
_WAITS_FOR_DEVICE = {
    _aten._local_scalar_dense.default: "_local_scalar_dense (.item(), bool(), float() of a tensor)",
    _aten.equal.default: "equal",
    _aten.is_nonzero.default: "is_nonzero",
    _aten.nonzero.default: "nonzero",
    _aten.masked_select.default: "masked_select",
    _aten._unique2.default: "unique",
    _aten.unique_consecutive.default: "unique_consecutive",
    _aten.unique_dim.default: "unique",
}
"""Operations whose result the host must read (a value, or an output size) before it can go on."""
_FROM_HOST_DATA = {_aten.lift_fresh.default, _aten.lift_fresh_copy.default}
"""A tensor made from Python or numpy data (``torch.tensor(list)``, ``new_tensor``, ``as_tensor``,
indexing by a list): built on the host, so a host-to-device copy wherever the computation is not on
the CPU. (With a ``device=`` argument the copy happens before dispatch, out of sight: the CPU run,
where this operation is seen, stands for every device.)"""
_COPIES = {_aten._to_copy.default, _aten.copy_.default}
_BOOLEAN_INDEXING = {_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default}


def _device_of(value: Any) -> torch.device | None:
    return value.device if isinstance(value, torch.Tensor) else None


def _host_sync_kind(func: Any, args: tuple, kwargs: dict) -> str | None:
    """What host traffic ``func(*args, **kwargs)`` stands for, or None."""
    if func in _WAITS_FOR_DEVICE:
        return _WAITS_FOR_DEVICE[func]
    if func in _FROM_HOST_DATA:
        return "lift_fresh (tensor from host data)"
    if func in _COPIES:
        source = _device_of(args[1] if func is _aten.copy_.default else args[0])
        target = _device_of(args[0]) if func is _aten.copy_.default else kwargs.get("device")
        if source is not None and target is not None and (source.type == "cpu") != (target.type == "cpu"):
            return f"copy {source.type} -> {torch.device(target).type}"
        return None
    if func in _BOOLEAN_INDEXING:  # a mask's selected count sizes the output: nonzero underneath
        indices = args[1] if len(args) > 1 else ()
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return "boolean mask indexing"
    if func is _aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
        return "repeat_interleave without output_size"
    return None


class HostSyncCounter(TorchDispatchMode):
    """Counts host-sync-like operations run inside it (forward and, run inside too, backward).

    On CUDA each is a stream synchronisation or a host-to-device copy from pageable memory: reading a
    tensor's value (``.item()``, ``bool()``, ``torch.equal``), an output sized by the data
    (``nonzero``, boolean masks, ``unique``), a tensor made from host data (``torch.tensor(list)``,
    ``new_tensor``) and copies between the host and a device. It runs anywhere, the CPU included, so a
    CPU test sees what ``torch.cuda.set_sync_debug_mode("error")`` would refuse on a GPU.

        with HostSyncCounter() as syncs:
            model(lr).mean().backward()
        assert syncs.total == 0, syncs.counts
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    @property
    def total(self) -> int:
        """All operations counted."""
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (kind := _host_sync_kind(func, args, kwargs)) is not None:
            self.counts[kind] += 1
        return func(*args, **kwargs)
