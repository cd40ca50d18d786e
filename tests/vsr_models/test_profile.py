import pytest
import torch
from test_checkpoint import TTVSR_SMALL, VSRT_SMALL
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vsr_models import build_model
from vsr_models.profile import HostSyncCounter, count_parameters, flops_per_frame


class PerFrameConv(nn.Module):
    """x4 by one 3x3 conv (3 -> 48) and a pixel shuffle: 48 * 3 * 9 multiply-adds per LR pixel."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 48, 3, padding=1)

    def forward(self, lr):
        return nn.functional.pixel_shuffle(self.conv(lr.flatten(0, 1)), 4).unflatten(0, lr.shape[:2])


def test_flops_per_frame_counts_two_flops_per_multiply_add():
    assert flops_per_frame(PerFrameConv(), (12, 20), frames=3) == 2 * 48 * 3 * 9 * 12 * 20


def test_count_parameters_matches_the_released_ttvsr():
    with torch.device("meta"):
        model = build_model("ttvsr")
    assert count_parameters(model) == 6_773_615
    model.spynet.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 6_773_615 - count_parameters(model.spynet)


def test_meta_device_count_equals_the_count_of_a_real_run():
    cpu_model = build_model("ttvsr", **TTVSR_SMALL)
    with torch.device("meta"):
        meta_model = build_model("ttvsr", **TTVSR_SMALL, reuse_mirror_flows=False)
    cpu = flops_per_frame(cpu_model, (64, 64), frames=3)
    assert cpu > 0
    assert flops_per_frame(meta_model, (64, 64), frames=3) == cpu


def test_vsrt_is_profiled_through_tiles_and_sliding_windows():
    with torch.device("meta"):
        model = build_model("vsrt", **VSRT_SMALL)
    with FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, 3, 16, 16, device="meta"))
    window = counter.get_total_flops()
    # 28x40 LR with 16x16 tiles, overlap 4: 2 x 3 tiles; 5 frames in windows of 3 with overlap 0: 2 windows
    assert flops_per_frame(model, (28, 40), frames=5, chunk_overlap=0) == pytest.approx(6 * 2 * window / 5)
    # by default every frame is the centre of its own window: 5 windows
    assert flops_per_frame(model, (28, 40), frames=5) == pytest.approx(6 * 5 * window / 5)


def test_host_sync_counter_counts_what_would_stall_a_cuda_stream_and_nothing_else():
    x = torch.rand(6, requires_grad=True)
    with HostSyncCounter() as syncs:
        y = (x * 2.0 + torch.arange(6)).exp()  # device work only: not counted
        y.sum().backward()
        y.sum().item()  # the host reads a value
        bool(y[0] > 0)
        torch.equal(y, y)
        y.nonzero()
        y[y > 1]  # output sized by the mask
        torch.tensor([1.0, 2.0])  # from host data: a host-to-device copy on a GPU
        y.new_tensor([0.5, 0.5])
        y.detach().to("meta")  # host -> another device
    assert syncs.counts == {
        "_local_scalar_dense (.item(), bool(), float() of a tensor)": 2,
        "equal": 1,
        "nonzero": 1,
        "boolean mask indexing": 1,
        "lift_fresh (tensor from host data)": 2,
        "copy cpu -> meta": 1,
    }
    assert syncs.total == 8
