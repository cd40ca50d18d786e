"""Host-sync-like operations per training forward and backward of TTVSR and VSR-Transformer, by clip length.

Each operation :class:`vsr_models.profile.HostSyncCounter` counts (a tensor value read by the host,
an output sized by the data, a tensor made from host data, a host<->device copy) is a stream
synchronisation or a pageable host-to-device copy on CUDA; in the per-frame path they stall the GPU
at every frame (``docs/models.md#no-host-traffic-per-frame``). The count is the same on any device
and does not depend on the width of the network, so tiny models on the CPU give the GPU's figures.

The model is called as the training loop calls it (``mirrored`` from the data: here clips that are
not mirror-extended, as the REDS recipe trains on); code without that argument is called plainly.

    .venv/bin/python bench/bench_host_syncs.py [--frames 12 24 50] [--paths fast reference]
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time

import torch

from vsr_models.profile import HostSyncCounter
from vsr_models.registry import build_model

TTVSR_TINY = {"mid_channels": 4, "num_extract_blocks": 1, "num_propagation_blocks": 1}
VSRT_TINY = {
    "mid_channels": 4,
    "depth": 1,
    "patch_size": 4,
    "spatial_size": 16,
    "num_extract_blocks": 1,
    "num_reconstruct_blocks": 1,
    "num_ffn_blocks": 1,
}
LR_SIZE = {"ttvsr": 64, "vsrt": 16}  # TTVSR's smallest input; VSR-Transformer's tiny patch


def count(arch: str, path: str, frames: int) -> tuple[HostSyncCounter, HostSyncCounter]:
    """One training forward, then its backward, each under its own counter."""
    torch.manual_seed(0)
    overrides = dict(TTVSR_TINY) if arch == "ttvsr" else {**VSRT_TINY, "num_frames": frames}
    model = build_model(arch, **overrides, implementation=path).train()
    size = LR_SIZE[arch]
    lrs = torch.rand(1, frames, 3, size, size)
    kwargs = {"mirrored": False} if "mirrored" in inspect.signature(model.forward).parameters else {}
    with HostSyncCounter() as forward:
        loss = model(lrs, **kwargs).mean()
    with HostSyncCounter() as backward:
        loss.backward()
    return forward, backward


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, nargs="+", default=[12, 24, 50], help="clip lengths")
    parser.add_argument("--paths", nargs="+", default=["fast", "reference"], choices=["fast", "reference"])
    parser.add_argument("--archs", nargs="+", default=["ttvsr", "vsrt"], choices=["ttvsr", "vsrt"])
    args = parser.parse_args(argv)
    print("| model | path | frames | forward | backward | operations (forward + backward) |")
    print("|---|---|---:|---:|---:|---|")
    for arch in args.archs:
        for path in args.paths:
            for frames in args.frames:
                started = time.perf_counter()
                forward, backward = count(arch, path, frames)
                ops = ", ".join(
                    f"{kind}: {n}" for kind, n in sorted((forward.counts + backward.counts).items())
                )
                print(
                    f"| {arch} | {path} | {frames} | {forward.total} | {backward.total} | {ops or '-'} |",
                    flush=True,
                )
                print(f"({arch} {path} {frames}: {time.perf_counter() - started:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
