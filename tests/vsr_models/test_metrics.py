import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from vsr_models.metrics import (
    MetricAggregator,
    frame_metrics,
    gaussian_window,
    psnr,
    quantize,
    rgb_to_y,
    ssim,
)


def _random_frames(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# -- independent reference: per-image loops in numpy / scipy on uint8 levels -----------------------


def _reference_y(rgb255: np.ndarray) -> np.ndarray:
    r, g, b = rgb255 / 255.0
    return 16.0 + 65.481 * r + 128.553 * g + 24.966 * b


def _reference_ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    # 2-D 11x11 Gaussian, full-size correlation then the 5-pixel border dropped ("valid")
    x = np.arange(11) - 5.0
    g = np.exp(-(x**2) / (2 * 1.5**2))
    g /= g.sum()
    window = np.outer(g, g)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def filt(image):
        return ndimage.correlate(image, window, mode="constant")[5:-5, 5:-5]

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def _reference_metrics(pred: torch.Tensor, target: torch.Tensor, crop: int, channel: str):
    """Loop over frames of (f, 3, h, w) float tensors; returns lists of PSNR and SSIM."""
    psnrs, ssims = [], []
    for p, t in zip(pred.numpy().astype(np.float64), target.numpy().astype(np.float64)):
        p = np.round(np.clip(p, 0, 1) * 255)
        t = np.round(np.clip(t, 0, 1) * 255)
        if channel == "y":
            p, t = _reference_y(p)[None], _reference_y(t)[None]
        if crop:
            p, t = p[:, crop:-crop, crop:-crop], t[:, crop:-crop, crop:-crop]
        mse = np.mean((p - t) ** 2)
        psnrs.append(10 * math.log10(255.0**2 / mse))
        ssims.append(np.mean([_reference_ssim_channel(pc, tc) for pc, tc in zip(p, t)]))
    return psnrs, ssims


# -- closed-form cases ------------------------------------------------------------------------------


def test_identical_frames_give_infinite_psnr_and_unit_ssim():
    frames = _random_frames(2, 3, 3, 24, 24)
    for channel in ("rgb", "y"):
        assert torch.isinf(psnr(frames, frames, channel=channel)).all()
        assert torch.allclose(ssim(frames, frames, channel=channel), torch.ones(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("offset", [1, 5, 40])
def test_constant_offset_of_d_levels_gives_20_log10_255_over_d(offset):
    target = torch.full((4, 3, 16, 16), 100 / 255)
    pred = target + offset / 255
    expected = 20 * math.log10(255 / offset)
    assert torch.allclose(psnr(pred, target), torch.full((4,), expected, dtype=torch.float64))


def test_psnr_output_has_one_value_per_frame_in_the_leading_shape():
    pred, target = _random_frames(2, 5, 3, 20, 20, seed=1), _random_frames(2, 5, 3, 20, 20, seed=2)
    assert psnr(pred, target).shape == (2, 5)
    assert ssim(pred, target).shape == (2, 5)
    assert psnr(pred[0, 0], target[0, 0]).shape == ()


def test_y_channel_of_pure_colours_matches_matlab_rgb2ycbcr():
    colours = torch.tensor([[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    y255 = rgb_to_y(colours.view(5, 3, 1, 1)).flatten() * 255
    expected = torch.tensor([16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966], dtype=torch.float64)
    assert torch.allclose(y255, expected, atol=1e-9)


def test_inputs_are_quantised_to_uint8_levels_before_scoring():
    target = torch.full((1, 3, 16, 16), 0.5)
    # a shift below half a level rounds away; values outside [0, 1] are clipped
    assert torch.isinf(psnr(target + 0.4 / 255, target)).all()
    assert quantize(torch.tensor([-0.2, 0.5, 1.7])).tolist() == [0.0, 128.0, 255.0]


def test_crop_border_ignores_differences_in_the_border():
    target = torch.full((1, 3, 32, 32), 0.5)
    pred = target.clone()
    pred[..., :4, :] = 0.0
    assert torch.isinf(psnr(pred, target, crop_border=4)).all()
    assert torch.isfinite(psnr(pred, target, crop_border=3)).all()
    assert ssim(pred, target, crop_border=4).item() == pytest.approx(1.0)


# -- against the independent implementation --------------------------------------------------------


@pytest.mark.parametrize(("channel", "crop"), [("rgb", 0), ("y", 0), ("y", 4), ("rgb", 2)])
def test_psnr_and_ssim_agree_with_an_independent_numpy_implementation(channel, crop):
    target = _random_frames(3, 3, 40, 48, seed=3)
    noise = (_random_frames(3, 3, 40, 48, seed=4) - 0.5) * 0.2
    # smooth structure + noise so SSIM is far from 0 and 1
    target = torch.nn.functional.avg_pool2d(target, 5, stride=1, padding=2)
    pred = target + noise
    ref_psnr, ref_ssim = _reference_metrics(pred, target, crop, channel)
    got_psnr, got_ssim = frame_metrics(pred, target, crop_border=crop, channel=channel)
    assert got_psnr.tolist() == pytest.approx(ref_psnr, abs=1e-6)
    assert got_ssim.tolist() == pytest.approx(ref_ssim, abs=1e-4)
    assert all(0.1 < s < 0.95 for s in ref_ssim)


def test_ssim_on_more_frames_than_one_group_matches_per_frame_calls():
    pred, target = _random_frames(19, 3, 16, 16, seed=5), _random_frames(19, 3, 16, 16, seed=6)
    batched = ssim(pred, target)
    single = torch.stack([ssim(p, t) for p, t in zip(pred, target)])
    assert torch.allclose(batched, single, atol=1e-12)


def test_gaussian_window_is_normalised_and_symmetric():
    window = gaussian_window()
    assert window.shape == (11,)
    assert window.sum().item() == pytest.approx(1.0)
    assert torch.equal(window, window.flip(0))
    assert (window[5] / window[6]).item() == pytest.approx(math.exp(1 / (2 * 1.5**2)))


def test_metric_functions_reject_mismatched_or_non_rgb_inputs():
    with pytest.raises(ValueError, match="shape"):
        psnr(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 17))
    with pytest.raises(ValueError, match="RGB"):
        ssim(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="crop_border"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), crop_border=4)
    with pytest.raises(ValueError, match="channel"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), channel="ycbcr")


# -- aggregation -----------------------------------------------------------------------------------


def test_dataset_mean_is_the_mean_of_clip_means_not_of_frames():
    agg = MetricAggregator()
    agg.add("a", torch.tensor([30.0, 32.0]), torch.tensor([0.8, 0.9]))
    agg.add("b", [20.0, 22.0, 24.0, 26.0], [0.5, 0.5, 0.5, 0.5])
    summary = agg.summary()
    assert summary.clips["a"].psnr == pytest.approx(31.0)
    assert summary.clips["a"].ssim == pytest.approx(0.85)
    assert summary.clips["b"].num_frames == 4
    assert summary.psnr == pytest.approx((31.0 + 23.0) / 2)  # frame mean would be 25.67
    assert summary.ssim == pytest.approx((0.85 + 0.5) / 2)
    assert summary.num_frames == 6
    assert summary.as_dict(prefix="val/")["val/b/psnr"] == pytest.approx(23.0)


def test_clip_added_in_parts_pools_its_frames():
    agg = MetricAggregator()
    agg.add("a", [30.0], [0.8])
    agg.add("a", torch.tensor([[33.0, 33.0]]), torch.tensor([[0.9, 1.0]]))
    assert len(agg) == 1
    clip = agg.summary().clips["a"]
    assert (clip.psnr, clip.num_frames) == (32.0, 3)
    assert clip.ssim == pytest.approx(0.9)


def test_aggregator_rejects_unequal_lengths_and_empty_summary():
    agg = MetricAggregator()
    with pytest.raises(ValueError, match="no clips"):
        agg.summary()
    with pytest.raises(ValueError, match="2 PSNR values but 1 SSIM"):
        agg.add("a", [1.0, 2.0], [0.5])
