"""Tiled / chunked inference, checked with small stand-in networks whose behaviour is known exactly."""

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vsr_models import registry
from vsr_models.inference import (
    InputConstraints,
    blend_profile,
    centred_window,
    chunked_forward,
    input_constraints,
    most_central_windows,
    pad_to_multiple,
    super_resolve,
    tiled_forward,
)
from vsr_models.profile import HostSyncCounter

SCALE = 4


class ConvSR(nn.Module):
    """Per-frame, translation-equivariant x4 network: ``num_convs`` 3x3 convs (receptive radius
    ``num_convs`` LR pixels, zero padding like the real networks) and a pixel shuffle."""

    def __init__(self, num_convs: int = 2, channels: int = 8):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1), nn.ReLU()]
        for _ in range(num_convs - 2):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
        layers += [nn.Conv2d(channels, 3 * SCALE**2, 3, padding=1), nn.PixelShuffle(SCALE)]
        self.body = nn.Sequential(*layers)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(lr.shape))
        n, t = lr.shape[:2]
        return self.body(lr.flatten(0, 1)).unflatten(0, (n, t))


class PaddedConvSR(ConvSR):
    """ConvSR that declares, as TTVSR does for its token grid, LR sizes in multiples of 4."""

    def input_constraints(self) -> InputConstraints:
        return InputConstraints(multiple=4)


class TileMean(nn.Module):
    """Not translation-equivariant: every output pixel is the mean of its LR tile (worst case for seams)."""

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        mean = lr.mean(dim=(-3, -2, -1), keepdim=True)
        return mean.expand(*lr.shape[:2], 3, lr.shape[-2] * SCALE, lr.shape[-1] * SCALE)


@dataclass
class FixedConfig:
    spatial_size: int = 16
    num_frames: int = 3


class FixedSizeSR(nn.Module):
    """Stands in for VSR-Transformer: accepts only (b, 3, 3, 16, 16) and marks each output frame with its
    position in the window (nearest-upsampled frame + position), so tests can tell which window made it."""

    def __init__(self):
        super().__init__()
        self.config = FixedConfig()
        self.anchor = nn.Parameter(torch.zeros(()))  # a parameter, so the device is discoverable

    def input_constraints(self) -> InputConstraints:
        return InputConstraints(spatial_size=self.config.spatial_size, num_frames=self.config.num_frames)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        size, frames = self.config.spatial_size, self.config.num_frames
        if lr.shape[1:] != (frames, 3, size, size):
            raise ValueError(f"FixedSizeSR got {tuple(lr.shape)}")
        position = torch.arange(frames, dtype=lr.dtype).view(1, frames, 1, 1, 1)
        return F.interpolate(lr.flatten(0, 1), scale_factor=SCALE).unflatten(0, lr.shape[:2]) + position


def _frames(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# -- spatial tiles -------------------------------------------------------------------------------


def test_tile_equal_to_the_frame_is_one_direct_forward():
    model, lr = TileMean(), _frames(2, 3, 3, 24, 24)
    assert torch.equal(tiled_forward(model, lr, tile=24, overlap=8), model(lr))


def test_tiles_of_an_equivariant_model_with_small_receptive_field_reproduce_the_full_forward():
    model = ConvSR(num_convs=2)  # receptive radius 2 <= overlap // 4
    lr = _frames(2, 2, 3, 45, 70)
    with torch.no_grad():
        expected = model(lr)
    tiled = tiled_forward(model, lr, tile=24, overlap=8, tile_batch=3)
    assert tiled.shape == (2, 2, 3, 180, 280)
    torch.testing.assert_close(tiled, expected, atol=1e-5, rtol=0)


def _near_inner_tile_edges(length: int, tile: int, overlap: int, radius: int) -> torch.Tensor:
    starts = list(range(0, length - tile, tile - overlap)) + [length - tile]
    edges = [s for s in starts if s > 0] + [s + tile for s in starts if s + tile < length]
    positions = torch.arange(length)
    near = torch.zeros(length, dtype=torch.bool)
    for edge in edges:
        near |= (positions >= edge - radius) & (positions < edge + radius)
    return near.repeat_interleave(SCALE)


def test_tiles_of_a_wide_receptive_field_differ_only_next_to_inner_tile_edges():
    model = ConvSR(num_convs=5)  # radius 5 > overlap // 4 = 2
    lr = _frames(1, 1, 3, 40, 60, seed=1)
    tile, overlap = 24, 8
    with torch.no_grad():
        expected = model(lr)
    tiled = tiled_forward(model, lr, tile=tile, overlap=overlap)
    near_rows = _near_inner_tile_edges(40, tile, overlap, radius=5)
    near_cols = _near_inner_tile_edges(60, tile, overlap, radius=5)
    far = ~near_rows[:, None] & ~near_cols[None, :]
    error = (tiled - expected).abs()[0, 0].amax(dim=0)
    assert error[far].max() < 1e-5
    assert error[~far].max() > 1e-4  # the test can fail: seams do change pixels next to them


def test_blending_cross_fades_so_tile_seams_have_no_jump():
    lr = torch.linspace(0, 1, 80).view(1, 1, 1, 1, 80).expand(1, 1, 3, 32, 80).contiguous()
    hard = tiled_forward(TileMean(), lr, tile=32, overlap=0)
    soft = tiled_forward(TileMean(), lr, tile=32, overlap=16)
    spread = soft.max() - soft.min()
    hard_step = hard.diff(dim=-1).abs().max()
    soft_step = soft.diff(dim=-1).abs().max()
    ramp = (16 - 2 * 4) * SCALE
    assert hard_step > 0.3 * spread
    assert soft_step <= spread / ramp + 1e-6


def test_blend_profiles_of_neighbours_sum_to_one_in_their_overlap():
    tile, overlap = 24, 8
    left = blend_profile(tile, overlap, SCALE, first=True, last=False)
    right = blend_profile(tile, overlap, SCALE, first=False, last=True)
    shared = overlap * SCALE
    assert torch.allclose(left[-shared:] + right[:shared], torch.ones(shared))
    assert torch.equal(left[-2 * SCALE :], torch.zeros(2 * SCALE))  # margin overlap // 4 is discarded
    assert torch.equal(left[:-shared], torch.ones(tile * SCALE - shared))


def test_last_tile_is_flush_with_the_border_and_all_tiles_have_the_tile_size():
    model = FixedSizeSR()
    lr = _frames(1, 3, 3, 21, 37)
    sr = tiled_forward(model, lr, tile=16, overlap=4, tile_batch=1)
    assert sr.shape == (1, 3, 3, 84, 148)
    expected = F.interpolate(lr.flatten(0, 1), scale_factor=SCALE).unflatten(0, (1, 3))
    expected = expected + torch.arange(3.0).view(1, 3, 1, 1, 1)
    torch.testing.assert_close(sr, expected)


def test_frames_smaller_than_a_tile_are_padded_and_cropped_back():
    sr = tiled_forward(FixedSizeSR(), _frames(2, 3, 3, 10, 16), tile=16, overlap=4)
    assert sr.shape == (2, 3, 3, 40, 64)


def test_tile_batches_report_progress_and_stack_tiles_along_the_batch_axis():
    model, calls = ConvSR(), []
    tiled_forward(
        model, _frames(2, 1, 3, 40, 40), tile=24, overlap=8, tile_batch=3, progress=lambda *a: calls.append(a)
    )
    assert calls == [(3, 4), (4, 4)]
    assert model.calls == [(6, 1, 3, 24, 24), (2, 1, 3, 24, 24)]


def test_tiled_forward_rejects_bad_overlap_and_wrong_scale():
    with pytest.raises(ValueError, match="overlap"):
        tiled_forward(ConvSR(), _frames(1, 1, 3, 32, 32), tile=16, overlap=16)
    with pytest.raises(ValueError, match="scale=2"):
        tiled_forward(ConvSR(), _frames(1, 1, 3, 32, 32), tile=16, overlap=4, scale=2)


# -- temporal chunks -----------------------------------------------------------------------------


def test_most_central_windows_assign_each_frame_to_the_window_where_it_is_most_central():
    assert most_central_windows(10, 4, 2) == [(0, [0, 1, 2]), (2, [3, 4]), (4, [5, 6]), (6, [7, 8, 9])]
    assert most_central_windows(3, 5, 4) == [(0, [0, 1, 2])]
    sliding = most_central_windows(8, 5, 4)
    assert sliding == [(0, [0, 1, 2]), (1, [3]), (2, [4]), (3, [5, 6, 7])]


def test_chunked_forward_of_a_per_frame_model_equals_the_direct_forward():
    model, lr = ConvSR(), _frames(1, 11, 3, 12, 12)
    with torch.no_grad():
        expected = model(lr)
    torch.testing.assert_close(chunked_forward(model, lr, chunk=4, overlap=1), expected, atol=1e-6, rtol=0)
    assert {shape[1] for shape in model.calls[1:]} == {4}


def test_chunked_forward_of_a_sequence_shorter_than_a_chunk_runs_once_on_all_of_it():
    model, lr = ConvSR(), _frames(1, 3, 3, 12, 12)
    with torch.no_grad():
        expected = model(lr)
    torch.testing.assert_close(chunked_forward(model, lr, chunk=5, overlap=1), expected)
    assert [shape[1] for shape in model.calls] == [3, 3]


def test_chunked_forward_keeps_overlap_frames_from_the_window_where_they_are_central():
    # output of a window = position of the frame in that window, so the result shows which window was used
    def position(lr):
        return torch.arange(lr.shape[1], dtype=lr.dtype).view(1, -1, 1, 1, 1).expand_as(lr)

    out = chunked_forward(position, torch.zeros(1, 10, 1, 1, 1), chunk=4, overlap=2)
    assert out.flatten().tolist() == [0, 1, 2, 1, 2, 1, 2, 1, 2, 3]


# -- the combination -----------------------------------------------------------------------------


def test_models_without_declared_constraints_are_unconstrained():
    assert input_constraints(ConvSR()) == InputConstraints()
    assert input_constraints(lambda lr: lr) == InputConstraints(1, 1, None, None)
    assert input_constraints(PaddedConvSR()) == InputConstraints(multiple=4)
    assert InputConstraints is registry.InputConstraints  # one class, re-exported here


def test_super_resolve_pads_to_the_model_multiple_and_crops_back():
    model = PaddedConvSR()
    lr = _frames(1, 2, 3, 30, 45)
    sr = super_resolve(model, lr)
    assert model.calls == [(1, 2, 3, 32, 48)]
    assert sr.shape == (1, 2, 3, 120, 180)
    with torch.no_grad():
        expected = model(lr)
    # identical except next to the padded bottom / right border (receptive radius 2)
    torch.testing.assert_close(
        sr[..., : 4 * 28, : 4 * 43], expected[..., : 4 * 28, : 4 * 43], atol=1e-5, rtol=0
    )


def test_pad_to_multiple_reflects_and_keeps_the_original_size():
    lr = torch.arange(6.0).view(1, 1, 1, 1, 6).expand(1, 1, 1, 2, 6)
    padded, size = pad_to_multiple(lr, 4)
    assert size == (2, 6)
    assert padded.shape == (1, 1, 1, 4, 8)
    assert padded[0, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5, 4, 3]
    tiny, _ = pad_to_multiple(torch.ones(1, 1, 1, 1, 1), 4)  # too small to reflect: replicate
    assert torch.equal(tiny, torch.ones(1, 1, 1, 4, 4))


def test_centred_windows_pad_the_ends_like_the_released_reflection_circle():
    # BasicSR generate_frame_indices(..., padding='reflection_circle'), used by the released VSRT test
    assert centred_window(50, 100, 5) == [48, 49, 50, 51, 52]
    assert centred_window(0, 100, 5) == [4, 3, 0, 1, 2]
    assert centred_window(1, 100, 5) == [4, 0, 1, 2, 3]
    assert centred_window(98, 100, 5) == [96, 97, 98, 99, 95]
    assert centred_window(99, 100, 5) == [97, 98, 99, 96, 95]
    assert centred_window(0, 7, 7) == [6, 5, 4, 0, 1, 2, 3]
    # too few frames for the circle: mirrored at the ends
    assert centred_window(0, 2, 3) == [1, 0, 1]
    assert centred_window(1, 2, 3) == [0, 1, 0]
    assert centred_window(0, 1, 3) == [0, 0, 0]


def test_fixed_size_model_is_tiled_automatically_and_every_frame_is_a_window_centre():
    model = FixedSizeSR()
    assert input_constraints(model).spatial_size == 16
    lr = _frames(1, 6, 3, 20, 30)
    sr = super_resolve(model, lr, overlap=4)
    assert sr.shape == (1, 6, 3, 80, 120)
    position = (sr - F.interpolate(lr.flatten(0, 1), scale_factor=SCALE).unflatten(0, (1, 6))).mean(
        dim=(2, 3, 4)
    )
    # window of 3: every frame, the first and last included, comes from the centre position (1)
    torch.testing.assert_close(position.flatten(), torch.ones(6))
    with pytest.raises(ValueError, match="tile must be 16"):
        super_resolve(model, lr, tile=32)
    with pytest.raises(ValueError, match="chunk must be 3"):
        super_resolve(model, lr, chunk=4)


@pytest.mark.parametrize(("num_frames", "positions"), [(2, [1.0, 1.0]), (1, [1.0])])
def test_sequences_shorter_than_a_fixed_window_are_padded_by_reflection_in_time(num_frames, positions):
    # 2 frames are fed as [1, 0, 1] and [0, 1, 0], 1 frame as [0, 0, 0]: each output is a window centre
    model = FixedSizeSR()
    lr = _frames(1, num_frames, 3, 16, 16)
    sr = super_resolve(model, lr)
    assert sr.shape == (1, num_frames, 3, 64, 64)
    base = F.interpolate(lr.flatten(0, 1), scale_factor=SCALE).unflatten(0, (1, num_frames))
    torch.testing.assert_close((sr - base).mean(dim=(2, 3, 4)).flatten(), torch.tensor(positions))


def test_super_resolve_runs_without_grad_in_eval_mode_and_restores_training():
    model = ConvSR()
    model.train()
    modes = []
    model.register_forward_pre_hook(lambda m, _: modes.append((m.training, torch.is_grad_enabled())))
    sr = super_resolve(model, _frames(1, 5, 3, 16, 16), chunk=2, chunk_overlap=0)
    assert modes == [(False, False)] * 3
    assert model.training
    assert not sr.requires_grad


# -- with the real networks (tiny configurations) --------------------------------------------------


def test_super_resolve_pads_small_ttvsr_frames_to_its_minimum_size_and_token_multiple():
    from vsr_models import build_model

    model = build_model("ttvsr", mid_channels=8, num_extract_blocks=1, num_propagation_blocks=1)
    constraints = input_constraints(model)
    assert (constraints.multiple, constraints.min_size, constraints.spatial_size) == (4, 64, None)
    sr = super_resolve(model, _frames(1, 3, 3, 50, 70))
    assert sr.shape == (1, 3, 3, 200, 280)
    assert torch.isfinite(sr).all()


def test_super_resolve_tiles_vsrt_frames_and_windows_long_sequences():
    from vsr_models import build_model

    model = build_model(
        "vsrt", num_frames=3, depth=1, mid_channels=8, spatial_size=16, patch_size=4,
        num_extract_blocks=1, num_reconstruct_blocks=1, num_ffn_blocks=1,
    )  # fmt: skip
    calls = []
    model.register_forward_pre_hook(lambda _, args: calls.append(tuple(args[0].shape)))
    lr = _frames(1, 4, 3, 20, 28)
    sr = super_resolve(model, lr, tile_batch=8)
    assert sr.shape == (1, 4, 3, 80, 112)
    assert set(calls) == {(4, 3, 3, 16, 16)}  # 2x2 tiles per call, one call per window
    assert len(calls) == 4  # one window centred on each frame
    with torch.no_grad():
        first = tiled_forward(model, lr[:, [2, 0, 1]], tile=16, overlap=4)  # reflection_circle at the start
        second = tiled_forward(model, lr[:, :3], tile=16, overlap=4)
    torch.testing.assert_close(sr[:, 0], first[:, 1])
    torch.testing.assert_close(sr[:, 1], second[:, 1])


def test_tiled_forward_makes_its_blend_windows_on_the_models_device_not_per_tile():
    # the meta device stands in for a GPU: a window made on the CPU would be a copy per tile
    def upscale(x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(4, -1).repeat_interleave(4, -2)

    for size in (64, 160):  # 9 and 36 tiles
        lr = torch.rand(1, 2, 3, size, size, device="meta")
        with HostSyncCounter() as syncs:
            out = tiled_forward(upscale, lr, tile=32, overlap=8)
        assert out.shape == (1, 2, 3, 4 * size, 4 * size)
        assert syncs.total == 0, syncs.counts


def test_windows_copy_their_output_frames_without_host_traffic():
    lr = torch.rand(1, 9, 3, 4, 4)
    with HostSyncCounter() as syncs:
        out = chunked_forward(lambda x: x * 2, lr, chunk=4, overlap=2)
    torch.testing.assert_close(out, lr * 2)
    assert syncs.total == 0, syncs.counts
