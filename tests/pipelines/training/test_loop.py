"""The per-worker loop's collectives: every tensor handed to one lives on the worker's device.

NCCL, the backend of GPU workers, serves CUDA tensors only; a CPU tensor in an all-reduce fails there
("No backend type associated with device type cpu") although gloo on CPU accepts it. CPU CI cannot run
NCCL, so the loop refuses a tensor on another device than the worker's on every backend, and keeps
its loss accumulator on the worker's device: the ``meta`` device stands in for ``cuda`` below.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipelines.training.loop import LossWindow, mean_over_workers

META = torch.device("meta")


def test_the_loss_is_accumulated_on_the_workers_device_without_a_host_sync():
    window = LossWindow(META)
    window.add(torch.ones((), device=META))
    assert window.loss_sum.device == META and window.steps == 1  # never copied to the host per step


def test_a_collective_on_a_tensor_of_another_device_is_refused():
    with pytest.raises(RuntimeError, match="collective on a cpu tensor in a worker on meta"):
        mean_over_workers(torch.zeros(()), META)
    assert mean_over_workers(torch.ones((), device=META), META).device == META


def _average(rank: int, world_size: int, port: int, results) -> None:
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        results[rank] = float(mean_over_workers(torch.tensor(float(rank + 1)), torch.device("cpu")))
    finally:
        dist.destroy_process_group()


def test_the_loss_is_the_mean_over_two_real_workers():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_average, args=(2, port, results), nprocs=2, join=True)
    assert dict(results) == {0: 1.5, 1: 1.5}
