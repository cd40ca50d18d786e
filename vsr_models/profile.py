"""Parameters and FLOPs per frame of the networks, as the papers' efficiency tables report them.

TTVSR's Table 5 gives 6.8M parameters and 0.61 TFLOPs per 180x320 LR frame (x4). FLOPs are
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

Usage::

    python -m vsr_models.profile --arch ttvsr --size 180x320 --frames 10
    python -m vsr_models.profile --arch vsrt --size 180x320 --set depth=3 --chunk-overlap 0
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vsr_models.checkpoint import ARCHITECTURES, build_model, model_config
from vsr_models.inference import super_resolve

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


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 180x320, got {text!r}") from None
    return h, w


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set takes key=value, got {text!r}")
    return key, yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vsr_models.profile",
        description="Print the parameters and FLOPs per frame (FlopCounterMode) of a network.",
    )
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), required=True)
    parser.add_argument("--size", type=_parse_size, default=(180, 320), help="LR frame HxW (default 180x320)")
    parser.add_argument("--frames", type=int, default=10, help="LR frames in the sequence (default 10)")
    parser.add_argument(
        "--set",
        dest="overrides",
        type=_parse_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model config override (repeatable), e.g. --set num_propagation_blocks=30",
    )
    parser.add_argument("--chunk-overlap", type=int, default=None, help="temporal window overlap (vsrt)")
    parser.add_argument(
        "--device", default="meta", help="meta (count only, default), cpu or cuda (also times the run)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    overrides = dict(args.overrides)
    device = torch.device(args.device)
    if device.type == "meta":
        fields = {f.name for f in dataclasses.fields(ARCHITECTURES[args.arch].config_class)}
        overrides = {**{k: v for k, v in _META_OVERRIDES.items() if k in fields}, **overrides}
    with device:
        model = build_model(args.arch, **overrides)
    inference = {} if args.chunk_overlap is None else {"chunk_overlap": args.chunk_overlap}

    start = time.perf_counter()
    flops = flops_per_frame(model, args.size, args.frames, **inference)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start

    h, w = args.size
    print(f"arch: {args.arch}")
    print(f"config: {model_config(model)}")
    print(f"parameters: {count_parameters(model):,}")
    print(f"input: {args.frames} LR frames of {h}x{w} -> {4 * h}x{4 * w}")
    print(f"FLOPs per frame: {flops / 1e12:.4f} T ({flops:.4g}; FlopCounterMode, 2 per multiply-add)")
    print(f"MACs per frame: {flops / 2e12:.4f} T (what papers' 'FLOPs' usually count, e.g. mmcv get_flops)")
    if device.type != "meta":
        print(f"time per frame on {device}: {elapsed / args.frames * 1e3:.1f} ms (includes FLOP counting)")


if __name__ == "__main__":
    main()
