"""Resuming on another cluster layout (``docs/cluster.md#resuming-on-another-layout``): a checkpoint
written by workers on 8-GPU nodes restores on 4-GPU nodes and with another number of workers.

There is no GPU here. Where a test needs CUDA to be present, :class:`FakeCudaNode` stands in for the
``torch.cuda`` generator functions of a node with N GPUs (a mock: the real ones need a GPU). Setting a
device's state past the node's last GPU raises ``IndexError``, as ``torch.cuda.default_generators[i]``
does on a real node with fewer devices.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from pipelines.training.config import OptimSection, ScheduleSection
from pipelines.training.recipe import build_optimizer, lr_schedule
from pipelines.training.state import (
    RNG_FILE,
    TrainingState,
    restore_training_checkpoint,
    rng_state,
    save_training_checkpoint,
)
from vsr_models import build_model

TINY = {"mid_channels": 8, "num_extract_blocks": 1, "num_propagation_blocks": 1}


class FakeCudaNode:
    """``torch.cuda``'s generator API on a node with ``devices`` GPUs, this process on ``current``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, devices: int, current: int, fill: int) -> None:
        self.current = current
        # a CUDA generator state is 16 bytes (seed, offset); each device's differs
        self.generators = [torch.full((16,), fill + i, dtype=torch.uint8) for i in range(devices)]
        for name in ("is_available", "is_initialized"):
            monkeypatch.setattr(torch.cuda, name, lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", self.get_rng_state)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set_rng_state)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [g.clone() for g in self.generators])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self.set_rng_state_all)

    def _index(self, device: int | str | torch.device) -> int:
        if isinstance(device, int):
            return device
        index = torch.device(device).index
        return self.current if index is None else index

    def get_rng_state(self, device: int | str | torch.device = "cuda") -> torch.Tensor:
        return self.generators[self._index(device)].clone()

    def set_rng_state(self, state: torch.Tensor, device: int | str | torch.device = "cuda") -> None:
        self.generators[self._index(device)] = state.clone()  # IndexError past the last GPU

    def set_rng_state_all(self, states: list[torch.Tensor]) -> None:
        for index, state in enumerate(states):
            self.set_rng_state(state, index)


def _training_objects(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("ttvsr", **TINY)
    optimizer = build_optimizer(model, OptimSection(lr=1e-3))
    return model, optimizer, lr_schedule(optimizer, ScheduleSection(periods=[10], restart_weights=[1.0]))


def _save(folder, rank: int, seed: int = 0) -> torch.Tensor:
    """Write rank ``rank``'s part of a checkpoint with torch's generator at ``seed``; its next draws."""
    model, optimizer, scheduler = _training_objects()
    torch.manual_seed(seed)
    save_training_checkpoint(folder, rank, model, optimizer, scheduler, TrainingState(iteration=4))
    return torch.rand(3)


def _restore(folder, rank: int) -> TrainingState:
    return restore_training_checkpoint(folder, rank, *_training_objects(seed=1))


def test_a_worker_saves_only_its_own_gpus_generator_not_the_whole_nodes(monkeypatch):
    node = FakeCudaNode(monkeypatch, devices=8, current=5, fill=100)
    state = rng_state()
    assert "cuda" not in state
    assert torch.equal(state["cuda_device"], node.generators[5])


def test_a_checkpoint_from_an_8_gpu_node_resumes_on_a_4_gpu_node(monkeypatch, tmp_path):
    with monkeypatch.context() as patch:  # rank 5 of a node with 8 GPUs writes the checkpoint
        FakeCudaNode(patch, devices=8, current=5, fill=100)
        _save(tmp_path, rank=0)  # the weights and training state
        _save(tmp_path, rank=5)
    saved_device_state = torch.full((16,), 105, dtype=torch.uint8)

    # rank 5 again, now on its node's second GPU of four (another placement after a node loss)
    node = FakeCudaNode(monkeypatch, devices=4, current=1, fill=200)
    assert _restore(tmp_path, rank=5).iteration == 4
    assert torch.equal(node.generators[1], saved_device_state)  # its own generator continues
    assert [int(g[0]) for g in node.generators] == [200, 105, 202, 203]  # the others' are untouched


@pytest.mark.parametrize("gpus_here", [None, 4], ids=["cpu", "simulated-4-gpu-node"])
def test_an_rng_file_listing_every_gpu_of_an_8_gpu_node_still_restores(tmp_path, monkeypatch, gpus_here):
    """A file written the old way (``get_rng_state_all`` on an 8-GPU node) loads; its CUDA list is unused."""
    model, optimizer, scheduler = _training_objects()
    save_training_checkpoint(tmp_path, 0, model, optimizer, scheduler, TrainingState(iteration=4))
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    old_format = rng_state() | {"cuda": [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]}
    torch.save(old_format, tmp_path / RNG_FILE.format(rank=0))
    expected = (random.random(), np.random.rand(), torch.rand(()))
    node = FakeCudaNode(monkeypatch, devices=gpus_here, current=0, fill=50) if gpus_here else None

    assert _restore(tmp_path, rank=0).iteration == 4
    assert (random.random(), np.random.rand(), torch.rand(())) == expected
    if node is not None:
        assert [int(g[0]) for g in node.generators] == [50, 51, 52, 53]


def test_resuming_with_fewer_or_more_workers_restores_the_ranks_it_has(tmp_path):
    """4 workers wrote the checkpoint: 2 workers continue ranks 0's and 1's streams; a 6th starts seeded."""
    draws = {rank: _save(tmp_path, rank, seed=100 + rank) for rank in range(4)}
    for rank in (1, 0):
        _restore(tmp_path, rank)
        assert torch.equal(torch.rand(3), draws[rank])
    assert _restore(tmp_path, rank=5).iteration == 4  # no rng_rank5.pt: keeps its own seeded stream
