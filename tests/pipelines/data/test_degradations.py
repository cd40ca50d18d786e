"""BI and BD against straightforward re-implementations of the authors' MATLAB scripts, plus closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch

from bench.reference_degradations import (
    degrade_bd_reference,
    degrade_bi_reference,
    fspecial_gaussian_reference,
    imresize_reference,
)
from pipelines.data.degradations import (
    bicubic_weight_matrix,
    crop_to_multiple,
    degrade,
    degrade_bd,
    degrade_bi,
    gaussian_kernel_1d,
    gaussian_sampling_matrix,
    imresize_bicubic,
    round_to_uint8,
)


def to_torch(img: np.ndarray) -> torch.Tensor:
    """(h, w, c) -> (1, c, h, w)."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """(1, c, h, w) -> (h, w, c)."""
    return x[0].permute(1, 2, 0).cpu().numpy()


@pytest.fixture(scope="module")
def random_frames() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size, dtype=np.uint8) for size in [(48, 64, 3), (37, 53, 3), (60, 36, 1)]]


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


# BD


def test_bd_equals_script_exactly_on_random_frames(random_frames):
    for img in random_frames:
        ours = to_numpy(degrade_bd(to_torch(img)))
        np.testing.assert_array_equal(ours, degrade_bd_reference(img))


def test_bd_equals_script_exactly_on_a_photograph(astronaut):
    ours = to_numpy(degrade_bd(to_torch(astronaut)))
    assert ours.shape == (128, 128, 3)
    np.testing.assert_array_equal(ours, degrade_bd_reference(astronaut))


def test_bd_kernel_is_fspecial_with_even_size_12():
    taps, first_offset = gaussian_kernel_1d(1.6)
    assert len(taps) == 12 and first_offset == -5  # offsets -5 .. +6
    np.testing.assert_allclose(np.outer(taps, taps), fspecial_gaussian_reference(12, 1.6), rtol=1e-12)


def test_bd_keeps_rows_2_6_10_up_to_end_minus_2():
    # An impulse at HR row/col 5 (0-based) sits at offset 0 from the 2nd kept pixel (1 + 4 * 1).
    hr = np.zeros((32, 32, 1), dtype=np.uint8)
    hr[5, 5] = 255
    low = to_numpy(degrade_bd(to_torch(hr)))[..., 0]
    taps, _ = gaussian_kernel_1d(1.6)
    centre_tap = taps[5]  # offset 0
    assert low[1, 1] == np.floor(255 * centre_tap * centre_tap + 0.5)
    assert low.argmax() == 1 * 8 + 1


@pytest.mark.parametrize(("size", "expected"), [(16, 4), (17, 4), (18, 4), (19, 4), (20, 5), (4, 1)])
def test_bd_output_is_floor_of_a_quarter(size, expected):
    # 2:4:end-2 keeps floor(h / 4) rows for any h >= 4: h / 4 when 4 divides h.
    assert gaussian_sampling_matrix(size).shape == (expected, size)
    hr = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    assert degrade_bd(hr).shape == (1, 3, expected, expected)


def test_bd_rejects_other_scales():
    with pytest.raises(ValueError, match="x4 only"):
        degrade_bd(torch.zeros(1, 3, 12, 12, dtype=torch.uint8), scale=2)


# BI


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bi_matches_matlab_imresize_reference(random_frames, astronaut, scale):
    exact, total = 0, 0
    for img in [*random_frames, astronaut]:
        ours = to_numpy(degrade_bi(to_torch(img), scale)).astype(int)
        reference = degrade_bi_reference(img, scale).astype(int)
        assert ours.shape == reference.shape
        assert np.abs(ours - reference).max() <= 1
        exact += int((ours == reference).sum())
        total += reference.size
    share = exact / total
    print(f"BI x{scale}: {share:.6%} of {total} pixels equal the per-pixel MATLAB reference")
    assert share >= 0.999


def test_imresize_float_matches_reference_on_upscaling_and_fractional_scales(astronaut):
    img = astronaut[:40, :56] / 255.0
    for scale in [4, 1.5, 0.4]:
        ours = to_numpy(imresize_bicubic(to_torch(img), scale))
        np.testing.assert_allclose(ours, imresize_reference(img, scale), atol=1e-12)


def test_bicubic_x2_kernel_has_matlab_weights():
    # Interior rows of the x1/2 matrix hold the antialiased cubic at distances +-0.5 .. +-3.5 (halved).
    matrix = bicubic_weight_matrix(32, 16, 0.5)
    expected = np.array([-0.0234375, -0.0703125, 0.2265625, 0.8671875]) / 2
    np.testing.assert_allclose(
        matrix[8, 13:21], np.concatenate([expected, expected[::-1]]), rtol=0, atol=1e-15
    )
    np.testing.assert_allclose(matrix.sum(axis=1), 1, atol=1e-15)


def test_bicubic_reproduces_a_linear_ramp_away_from_borders():
    # Keys' cubic reproduces linear functions; output pixel i sits at input position (i + 0.5) s - 0.5.
    width, scale = 64, 4
    ramp = torch.arange(width, dtype=torch.float64).expand(1, 1, 8, width)
    out = imresize_bicubic(ramp, 1 / scale)[0, 0, 0]
    positions = (torch.arange(width // scale, dtype=torch.float64) + 0.5) * scale - 0.5
    torch.testing.assert_close(out[3:-3], positions[3:-3], rtol=0, atol=1e-12)


def test_output_size_ignores_float_noise_in_scale():
    assert imresize_bicubic(torch.zeros(1, 1, 720, 1080, dtype=torch.float64), 1 / 3).shape[-2:] == (240, 360)


# both


@pytest.mark.parametrize("kind", ["BI", "BD"])
def test_constant_frames_stay_constant(kind):
    for value in [0, 1, 128, 254, 255]:
        hr = torch.full((2, 3, 24, 32), value, dtype=torch.uint8)
        low = degrade(hr, kind, 4)
        assert low.shape == (2, 3, 6, 8)
        assert (low == value).all()


def test_batched_frames_are_degraded_independently(random_frames):
    rng = np.random.default_rng(1)
    clip = torch.from_numpy(rng.integers(0, 256, (2, 3, 3, 24, 32), dtype=np.uint8))  # (n, t, c, h, w)
    for kind in ["BI", "BD"]:
        batched = degrade(clip, kind, 4)
        assert batched.shape == (2, 3, 3, 6, 8) and batched.dtype == torch.uint8
        torch.testing.assert_close(batched[1, 2], degrade(clip[1, 2], kind, 4), rtol=0, atol=0)


def test_rounding_is_matlabs_half_away_from_zero_with_saturation():
    values = torch.tensor([0.5, 1.5, 2.5, 2.4999, 254.5, -3.0, 300.0], dtype=torch.float64)
    assert round_to_uint8(values).tolist() == [1, 2, 3, 2, 255, 0, 255]


def test_crop_to_multiple():
    hr = torch.zeros(1, 3, 18, 20, dtype=torch.uint8)
    cropped, was_cropped = crop_to_multiple(hr, 4)
    assert cropped.shape == (1, 3, 16, 20) and was_cropped
    same, was_cropped = crop_to_multiple(cropped, 4)
    assert same.shape == (1, 3, 16, 20) and not was_cropped
    with pytest.raises(ValueError, match="smaller than the scale"):
        crop_to_multiple(torch.zeros(3, 3, 3), 4)


def test_rejects_wrong_inputs():
    with pytest.raises(TypeError, match="uint8"):
        degrade_bi(torch.zeros(1, 3, 8, 8), 4)
    with pytest.raises(ValueError, match="'BI' or 'BD'"):
        degrade(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "bicubic", 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu(astronaut):
    hr = to_torch(astronaut)
    for kind in ["BI", "BD"]:
        on_gpu = degrade(hr.cuda(), kind, 4)
        assert on_gpu.device.type == "cuda"
        torch.testing.assert_close(on_gpu.cpu(), degrade(hr, kind, 4), rtol=0, atol=0)
