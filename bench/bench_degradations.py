"""Throughput of the BI and BD degradations on 720x1280 frames, one CPU core.

Compares ``pipelines.data.degradations`` (two dense matmuls per frame, float64) with the straightforward
NumPy oracles the test suite checks it against (``bench/reference_degradations.py``: a per-output-pixel
loop for BI, a loop over the 144 kernel taps for BD), in the same run. The oracles are written for clarity, not
speed, so the ratio says how much the vectorised form buys over the literal transcription of the scripts.

    .venv/bin/python bench/bench_degradations.py [--batch 4] [--repeats 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import time

# one core for the NumPy oracle too (its BLAS would otherwise spread the per-pixel dot products)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from reference_degradations import degrade_bd_reference, degrade_bi_reference  # noqa: E402  (bench/, beside this script)

from pipelines.data.degradations import degrade  # noqa: E402

HEIGHT, WIDTH = 720, 1280


def time_torch(kind: str, frames: torch.Tensor, repeats: int) -> float:
    """Seconds per frame of ``degrade(frames, kind, 4)``, best of ``repeats`` after a warm-up."""
    degrade(frames, kind, 4)
    best = float("inf")
    for _ in range(repeats):
        if frames.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        degrade(frames, kind, 4)
        if frames.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best / frames.shape[0]


def time_reference(kind: str, frame: np.ndarray, reference_rows: int) -> tuple[float, str]:
    """Seconds per frame of the NumPy oracle; BI runs on the top ``reference_rows`` rows and is scaled up."""
    if kind == "BD":
        start = time.perf_counter()
        degrade_bd_reference(frame)
        return time.perf_counter() - start, "full frame"
    rows = min(reference_rows, HEIGHT)
    start = time.perf_counter()
    degrade_bi_reference(frame[:rows], 4)
    # The per-pixel loop's cost is proportional to the output pixels, i.e. to the rows kept.
    return (time.perf_counter() - start) * HEIGHT / rows, f"{rows} of {HEIGHT} rows timed, extrapolated"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=4, help="frames per degrade() call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--reference-rows", type=int, default=144, help="rows of the frame the BI oracle runs on"
    )
    args = parser.parse_args()

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    frames = torch.from_numpy(frame).permute(2, 0, 1).expand(args.batch, 3, HEIGHT, WIDTH).contiguous()
    frames = frames.to(args.device)

    print(f"720x1280 RGB frames, x4, torch threads = {torch.get_num_threads()}, device = {args.device}")
    for kind in ["BI", "BD"]:
        ours = time_torch(kind, frames, args.repeats)
        reference, how = time_reference(kind, frame, args.reference_rows)
        print(
            f"{kind}: torch {1 / ours:8.2f} frames/s ({ours * 1e3:7.1f} ms/frame, batch {args.batch})   "
            f"numpy reference {1 / reference:7.3f} frames/s ({how})   speed-up {reference / ours:6.1f}x"
        )


if __name__ == "__main__":
    main()
