"""Activation memory of one TTVSR training forward pass: ray-vsr against the released computation.

Counts the bytes of the unique storages autograd keeps for backward (saved-tensor hooks) while a small
TTVSR (mid 16, 2 + 2 blocks, 64x64 LR, SPyNet frozen) runs 10, 20 and 40 frames, through our model and
through the line-by-line transcription of the released forward pass that the tests compare against
(``bench/released_ttvsr.py: released_forward``).

    python bench/bench_ttvsr_memory.py
"""

import time

import torch
from released_ttvsr import released_forward  # bench/, beside this script

from vsr_models.ttvsr import TTVSR, TTVSRConfig


def saved_bytes(forward) -> tuple[int, float]:
    """Bytes kept for backward by ``forward()`` (each storage once) and its CPU seconds."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        start = time.process_time()
        forward()
        seconds = time.process_time() - start
    return sum(storages.values()), seconds


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TTVSR(TTVSRConfig(mid_channels=16, num_extract_blocks=2, num_propagation_blocks=2))
    model.spynet.requires_grad_(False)
    print("frames  ray-vsr MiB  released MiB  ratio  forward CPU s (ray-vsr / released)")
    for frames in (10, 20, 40):
        lrs = torch.rand(1, frames, 3, 64, 64)
        ours, ours_s = saved_bytes(lambda lrs=lrs: model(lrs))
        released, released_s = saved_bytes(lambda lrs=lrs: released_forward(model, lrs))
        print(
            f"{frames:6d}  {ours / 2**20:11.1f}  {released / 2**20:12.1f}  {released / ours:4.1f}x"
            f"  {ours_s:.2f} / {released_s:.2f}"
        )


if __name__ == "__main__":
    main()
