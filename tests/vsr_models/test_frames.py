"""Frame conversions between uint8 video and float network frames, and mirror extension."""

import numpy as np
import pytest
import torch

from vsr_models.frames import float_to_uint8, is_mirror_extended, mirror_extend, uint8_to_float
from vsr_models.ttvsr import network as ttvsr_network


def _random_uint8(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)


def test_uint8_frames_round_trip_exactly_through_float():
    frames = _random_uint8(2, 5, 9, 13, 3)  # (n, t, h, w, 3)
    floats = uint8_to_float(frames)
    assert floats.shape == (2, 5, 3, 9, 13) and floats.dtype == torch.float32
    assert floats.is_contiguous()
    assert floats.min() >= 0 and floats.max() <= 1
    torch.testing.assert_close(floats[1, 2, 0], torch.from_numpy(frames[1, 2, :, :, 0]).float() / 255)
    back = float_to_uint8(floats)
    assert back.dtype == np.uint8 and back.shape == frames.shape
    np.testing.assert_array_equal(back, frames)


def test_tensor_and_read_only_inputs_convert_like_numpy():
    frames = _random_uint8(4, 6, 7, 3)  # (t, h, w, 3)
    frames.flags.writeable = False  # as frames decoded into a shared buffer arrive
    from_numpy = uint8_to_float(frames)
    assert from_numpy.shape == (4, 3, 6, 7)
    assert torch.equal(uint8_to_float(torch.from_numpy(frames.copy())), from_numpy)
    assert uint8_to_float(frames[0]).shape == (3, 6, 7)  # a single frame
    np.testing.assert_array_equal(float_to_uint8(from_numpy.double()), frames)


def test_float_to_uint8_clamps_and_rounds_to_the_nearest_level():
    levels = torch.tensor([-0.5, 0.0, 127.4 / 255, 127.6 / 255, 1.0, 3.0])
    frames = levels.view(1, 6, 1).expand(3, 6, 1)  # (3, h=6, w=1)
    out = float_to_uint8(frames)
    assert out.shape == (6, 1, 3)
    assert out[:, 0, 0].tolist() == [0, 0, 127, 128, 255, 255]
    assert (out == out[..., :1]).all()  # every channel alike


def test_conversions_refuse_wrong_dtypes_and_layouts():
    with pytest.raises(TypeError, match="uint8"):
        uint8_to_float(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(\.\.\., h, w, 3\)"):
        uint8_to_float(np.zeros((3, 2, 2), np.uint8))  # channels first
    with pytest.raises(TypeError, match="float"):
        float_to_uint8(torch.zeros(3, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, h, w\)"):
        float_to_uint8(torch.zeros(2, 2, 3))  # channels last


def test_mirror_extension_appends_the_reversed_sequence():
    x = torch.arange(7.0).view(1, 7, 1, 1, 1)
    once = mirror_extend(x)
    assert once.flatten().tolist() == [0, 1, 2, 3, 4, 5, 6, 6, 5, 4, 3, 2, 1, 0]
    twice = mirror_extend(x, times=2)  # TTVSR's 28 frames for a Vimeo-90K septuplet
    assert twice.shape == (1, 28, 1, 1, 1) and torch.equal(twice[:, 14:], once)
    assert torch.equal(mirror_extend(x, times=0), x)


def test_mirror_extended_sequences_are_detected_and_others_are_not():
    clip = torch.rand(2, 7, 3, 4, 4)
    twice = mirror_extend(clip, times=2)
    assert twice.shape == (2, 28, 3, 4, 4)
    assert is_mirror_extended(mirror_extend(clip)) and is_mirror_extended(twice)
    assert not is_mirror_extended(clip)  # odd length
    assert not is_mirror_extended(clip[:, :6])  # even length, not a palindrome
    almost = mirror_extend(clip).clone()
    almost[1, -1, 0, 0, 0] += 1e-3  # one sample of the batch differs
    assert not is_mirror_extended(almost)
    assert ttvsr_network.is_mirror_extended is is_mirror_extended  # TTVSR's flow reuse uses this very test
