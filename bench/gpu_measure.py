"""What the GPU check (``bench/gpu_check.py``) measures itself, beside what the jobs log.

**One training step of the TTVSR recipe**, in this process, on the first GPU (the check runs this
script before the training job):

- the step (forward, backward, optimizer) runs under ``torch.cuda.set_sync_debug_mode("error")``:
  a stream synchronisation or a pageable host-to-device copy anywhere in it raises, and the check
  fails naming it (``docs/models.md#no-host-traffic-per-frame``);
- peak memory from ``torch.cuda.max_memory_allocated`` over that step: what the tensors take, one
  worker's share of the recipe, without the allocator's cache and the CUDA context that
  ``nvidia-smi`` adds;
- the step's wall time.

It runs the training loop's own ``train_step`` (bf16 autocast as the recipe trains) on a batch of
random crops of the recipe's shape, after one warm-up step (cuDNN's algorithm search, the optimizer's
state). ``--cpu-smoke`` (no GPU): the same on the CPU, where there is no stream to synchronise, so the
forward and backward run under :class:`vsr_models.profile.HostSyncCounter` instead (the
optimizer's step counters are CPU tensors on a GPU too, so its step is left out of the count);
no memory figure. Prints one JSON line; exit status 1 if a host sync was found.

**GPU utilisation and memory during the training job**: :class:`GpuSampler` (NVML).

    .venv/bin/python bench/gpu_measure.py [--cpu-smoke] [--set key=value ...] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = "configs/ttvsr_reds4.yaml"
SCALE = 4
SAMPLE_EVERY_MS = 500


def step_check(overrides: list[str], use_gpu: bool) -> dict[str, Any]:
    """Build the recipe's model and optimizer, run a warm-up step and the checked one; the figures."""
    import torch

    from pipelines.training.config import load_experiment
    from pipelines.training.loop import train_step
    from pipelines.training.recipe import build_optimizer, lr_schedule
    from pipelines.training.state import TrainingState
    from vsr_models import build_model
    from vsr_models.frames import mirror_extend
    from vsr_models.losses import charbonnier_loss
    from vsr_models.profile import HostSyncCounter

    cfg = load_experiment(str(REPO_ROOT / TRAIN_CONFIG), overrides)
    device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
    if use_gpu:
        torch.cuda.set_device(device)
    torch.manual_seed(0)
    model = build_model(cfg.arch, **cfg.model_overrides()).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    # train_step reads these fields of the loop's Worker; the iteration past fix_spynet_iters trains
    # SPyNet too, the larger step
    worker = types.SimpleNamespace(
        cfg=cfg, device=device, model=model, network=None, world_size=1, optimizer=optimizer,
        scheduler=lr_schedule(optimizer, cfg.schedule), spynet_trainable=None,
        state=TrainingState(iteration=cfg.optim.fix_spynet_iters),
    )  # fmt: skip
    data, p = cfg.data, cfg.data.lr_patch
    lr = torch.rand(data.batch_size, data.num_frames, 3, p, p, device=device)
    gt = torch.rand(data.batch_size, data.num_frames, 3, SCALE * p, SCALE * p, device=device)
    batch = {"lr": mirror_extend(lr, data.mirror_times), "gt": mirror_extend(gt, data.mirror_times)}
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if use_gpu else "cpu",
        "frames": batch["lr"].shape[1],
        "batch": data.batch_size,
        "lr_patch": p,
        "precision": cfg.train.precision if use_gpu else "fp32",
    }
    train_step(worker, batch)  # warm-up
    if not use_gpu:
        with HostSyncCounter() as syncs:  # the forward and backward as train_step runs them
            sr = worker.network(batch["lr"], mirrored=data.mirror_times > 0)
            charbonnier_loss(
                sr.float(), batch["gt"], eps=cfg.loss.eps, reduction=cfg.loss.reduction
            ).backward()
        return result | {"host_syncs": dict(syncs.counts), "ok": syncs.total == 0}

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    torch.cuda.set_sync_debug_mode("error")
    try:
        train_step(worker, batch)
        error = None
    except RuntimeError as failure:  # the synchronising call raises; the message names it
        error = f"{type(failure).__name__}: {str(failure).splitlines()[0] if str(failure) else ''}"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    return result | {
        "sync_debug_error": error,
        "step_s": time.perf_counter() - started,
        "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        "total_gib": torch.cuda.get_device_properties(device).total_memory / 2**30,
        "ok": error is None,
    }


def step_check_lines(result: dict) -> list[str]:
    """What the step check measured, as report lines."""
    if not result:
        return []
    shape = f"{result['frames']} frames of {result['lr_patch']}x{result['lr_patch']}, batch {result['batch']}"
    if "host_syncs" in result:  # --cpu-smoke
        found = result["host_syncs"] or "none"
        return [f"one training step on the CPU ({shape}): host-sync-like operations: {found}"]
    syncs = result["sync_debug_error"] or "none (torch.cuda.set_sync_debug_mode('error'))"
    return [
        f"one training step on {result['device']} ({shape}, {result['precision']}): {result['step_s']:.2f} s",
        f"   host syncs: {syncs}",
        f"   peak memory allocated (torch.cuda.max_memory_allocated): {result['peak_allocated_gib']:.2f} GiB "
        f"of {result['total_gib']:.1f} GiB",
    ]


class GpuSampler:
    """Every GPU's utilisation and memory used, sampled through NVML every 500 ms in a background thread.

    Utilisation is the share of the last sample period in which a kernel ran: a training job whose
    GPUs wait for data, the host or each other shows it here, not in frames/s alone.
    """

    def __init__(self, path: Path) -> None:
        self.path = path  # the samples, as CSV: seconds, gpu, utilisation %, MiB used, MiB total
        self.samples: list[tuple[float, int, int, float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        import pynvml  # nvidia-ml-py, a dependency of the project

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        started = time.monotonic()

        def sample() -> None:
            while not self._stop.wait(SAMPLE_EVERY_MS / 1000):
                now = time.monotonic() - started
                for index, handle in enumerate(handles):
                    busy = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
                    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                    self.samples.append((now, index, busy, memory.used / 2**20, memory.total / 2**20))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import pynvml

        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        pynvml.nvmlShutdown()
        self.path.write_text(
            "seconds,gpu,utilisation_percent,used_mib,total_mib\n"
            + "".join(f"{t:.1f},{i},{u},{m:.0f},{total:.0f}\n" for t, i, u, m, total in self.samples)
        )

    def summary(self) -> dict[str, dict[str, float]]:
        """Per GPU index: memory (first, peak, total MiB) and :func:`utilisation_summary` of its samples."""
        gpus: dict[str, dict[str, float]] = {}
        for index in sorted({i for _, i, _, _, _ in self.samples}):
            mine = [(u, m, total) for _, i, u, m, total in self.samples if i == index]
            gpus[str(index)] = {
                "first_mib": mine[0][1],
                "peak_mib": max(m for _, m, _ in mine),
                "total_mib": mine[0][2],
                **utilisation_summary([u for u, _, _ in mine]),
            }
        return gpus


def utilisation_summary(percentages: list[int]) -> dict[str, float]:
    """Utilisation over the training job from its first busy sample on (before it: Ray and data start up).

    Returns the median and mean percent, the share of samples under 50 % (waiting for something) and
    the number of samples; empty if no sample was busy.
    """
    busy_from = next((i for i, u in enumerate(percentages) if u > 0), None)
    if busy_from is None:
        return {}
    kept = percentages[busy_from:]
    return {
        "utilisation_median": statistics.median(kept),
        "utilisation_mean": statistics.mean(kept),
        "utilisation_under_50_share": sum(u < 50 for u in kept) / len(kept),
        "utilisation_samples": len(kept),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="no GPU: count host syncs on the CPU instead"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="recipe override key=value"
    )
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    args = parser.parse_args(argv)
    result = step_check(args.overrides, use_gpu=not args.cpu_smoke)
    line = json.dumps(result)
    print(line, flush=True)
    if args.json:
        args.json.write_text(line + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
