"""The fast paths (``implementation="fast"``, the default) compute what the reference paths compute.

Float32, random weights and inputs: outputs and the gradients of every parameter and of the input
agree within 1e-5 (max abs difference) for both networks, at several sizes and lengths, mirrored and
not, batch 2 (the fast TTVSR stacks both directions in the batch). Float64: the same to 1e-10, so the
fast path is a reorganisation, not an approximation (for TTVSR, ``test_ttvsr.py`` compares both paths
with the released computation in float64). Plus: bf16 autocast within 0.05 dB PSNR of float32
on photographs, the bounded key-frame memory, the compile fallback, activation checkpointing, and
checkpoints loading with either path.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from test_ttvsr import ShiftOracle, translating_clip
from test_vsrt import TINY as VSRT_TINY
from torch import Tensor, nn

from vsr_models import get_family, load_checkpoint, save_checkpoint
from vsr_models.losses import charbonnier_loss
from vsr_models.ttvsr import TTVSR, TTVSRConfig
from vsr_models.ttvsr import fast as ttvsr_fast
from vsr_models.ttvsr.trajectory import cross_scale_tokens
from vsr_models.vsrt import VSRTConfig, VSRTransformer

TTVSR_SMALL = TTVSRConfig(mid_channels=8, num_extract_blocks=1, num_propagation_blocks=2)
VSRT_SMALL = VSRT_TINY  # the small VSR-Transformer the other tests use


def _perturb(model: nn.Module, seed: int) -> nn.Module:
    """Random non-zero biases and layer-norm affines, so that no branch is an identity by construction."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
    return model


def _run(model: nn.Module, lrs: Tensor, implementation: str) -> tuple[Tensor, list[Tensor]]:
    """Output of ``model`` on ``lrs`` through one path, and the gradients of a Charbonnier loss with
    respect to every parameter and to the input (the same random target for both paths)."""
    model.config.implementation = implementation
    model.zero_grad()
    lrs = lrs.detach().clone().requires_grad_(True)
    out = model(lrs)
    target = torch.rand(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    charbonnier_loss(out, target).backward()
    return out.detach(), [p.grad for p in model.parameters()] + [lrs.grad]


def _assert_paths_agree(model: nn.Module, lrs: Tensor, atol: float) -> None:
    ref_out, ref_grads = _run(model, lrs, "reference")
    fast_out, fast_grads = _run(model, lrs, "fast")
    assert fast_out.shape == ref_out.shape
    assert (fast_out - ref_out).abs().max() <= atol
    names = [name for name, _ in model.named_parameters()] + ["input"]
    for name, a, b in zip(names, fast_grads, ref_grads, strict=True):
        if a is None or b is None:  # SPyNet on a single frame: no flow, no gradient in either path
            assert a is None and b is None and lrs.shape[1] == 1, name
            continue
        assert (a - b).abs().max() <= atol, f"{name}: {(a - b).abs().max():.3g}"
    with torch.no_grad():  # inference: the fast path fills its memory in place, reconstructs on the way
        model.config.implementation = "fast"
        assert (model(lrs) - ref_out).abs().max() <= atol


# --------------------------------------------------------------------------------------------------
# Same results
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "size", "frames", "mirrored", "overrides"),
    [
        (2, (64, 64), 5, False, {"key_frame_stride": 2}),
        (1, (64, 96), 6, True, {}),  # mirrored: backward flows reused, reversed
        (1, (96, 64), 5, False, {"key_frame_stride": 1, "max_key_frames": 2}),  # bounded memory, wraps
        (2, (64, 64), 2, False, {}),
        (1, (64, 64), 1, False, {}),
    ],
)
def test_ttvsr_fast_path_equals_the_reference_in_float32(batch, size, frames, mirrored, overrides):
    torch.manual_seed(frames)
    model = _perturb(TTVSR(dataclasses.replace(TTVSR_SMALL, **overrides)), frames)
    lrs = torch.rand(batch, frames, 3, *size)
    if mirrored:
        lrs = torch.cat([lrs[:, : frames // 2], lrs[:, : frames // 2].flip(1)], 1)
    _assert_paths_agree(model, lrs, atol=1e-5)


def test_ttvsr_fast_path_follows_known_trajectories_like_the_reference():
    # content translating by whole tokens, exact flows: attention finds the same tokens along them
    model = TTVSR(TTVSR_SMALL).eval()
    model.spynet = ShiftOracle()
    lrs = translating_clip(7, (4, -4))
    with torch.no_grad():
        model.config.implementation = "reference"
        reference = model(lrs)
        model.config.implementation = "fast"
        assert (model(lrs) - reference).abs().max() <= 1e-5


@pytest.mark.parametrize(
    ("overrides", "batch", "frames"),
    [({}, 2, 3), ({}, 1, 2), ({"spatial_size": 32, "patch_size": 8, "num_frames": 5, "depth": 1}, 2, 5)],
)
def test_vsrt_fast_path_equals_the_reference_in_float32(overrides, batch, frames):
    torch.manual_seed(batch + frames)
    config = dataclasses.replace(VSRT_SMALL, **overrides)
    model = _perturb(VSRTransformer(config), frames)
    s = config.spatial_size
    _assert_paths_agree(model, torch.rand(batch, frames, 3, s, s), atol=1e-5)


def test_vsrt_fast_path_is_the_same_function_in_float64():
    torch.manual_seed(0)
    model = _perturb(VSRTransformer(VSRT_SMALL), 0).double()
    _assert_paths_agree(model, torch.rand(2, 3, 3, 16, 16, dtype=torch.float64), atol=1e-10)


# --------------------------------------------------------------------------------------------------
# bf16 autocast on photographs
# --------------------------------------------------------------------------------------------------


def photo_clip(name: str, frames: int = 5, size: int = 256) -> tuple[Tensor, Tensor]:
    """A scikit-image photograph as a clip panning one HR pixel per frame: LR (1, t, 3, s/4, s/4), HR."""
    image = torch.from_numpy(np.ascontiguousarray(getattr(skimage.data, name)())).permute(2, 0, 1) / 255.0
    hr = torch.stack([image[:, i : i + size, i : i + size] for i in range(frames)]).unsqueeze(0)
    lr = F.interpolate(hr.flatten(0, 1), scale_factor=0.25, mode="bicubic", antialias=True)
    return lr.clamp(0, 1).unflatten(0, (1, frames)), hr


def _psnr(x: Tensor, y: Tensor) -> float:
    return float(10 * torch.log10(1 / ((x.float().clamp(0, 1) - y) ** 2).mean()))


@pytest.mark.parametrize("arch", ["ttvsr", "vsrt"])
def test_bf16_autocast_costs_at_most_0_05_db_on_photographs(arch):
    torch.manual_seed(0)
    if arch == "ttvsr":
        model = TTVSR(TTVSRConfig(mid_channels=16, num_extract_blocks=1, num_propagation_blocks=2))
        last, frames = model.upsample.conv_last, 4
    else:
        config = VSRTConfig(num_frames=3, mid_channels=16, depth=1, num_extract_blocks=1)
        model = VSRTransformer(dataclasses.replace(config, num_reconstruct_blocks=1, num_ffn_blocks=1))
        last, frames = model.upsample_head.conv_last, 3
    model.eval()
    lr, hr = photo_clip("astronaut", frames)
    with torch.no_grad():  # a residual of the size a trained model adds (std ~0.03), not the init's
        base = F.interpolate(lr[0], scale_factor=4, mode="bilinear", align_corners=False)
        last.weight.mul_(0.03 / float((model(lr)[0] - base).std()))
    for name in ("astronaut", "chelsea", "coffee"):
        lr, hr = photo_clip(name, frames)
        with torch.no_grad():
            fp32 = model(lr)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = model(lr)
        assert abs(_psnr(bf16, hr) - _psnr(fp32, hr)) <= 0.05, name
        assert _psnr(bf16, fp32.clamp(0, 1)) > 45, name


# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------


def test_bounded_key_frame_memory():
    torch.manual_seed(0)
    lrs = torch.rand(1, 7, 3, 64, 64)  # stride 3: key frames at steps 0 and 3 in each direction
    outputs = {}
    for kept in (None, 2, 1):
        model = TTVSR(dataclasses.replace(TTVSR_SMALL, max_key_frames=kept)).eval()
        model.load_state_dict(TTVSR(TTVSR_SMALL).state_dict() if kept is None else outputs["weights"])
        outputs.setdefault("weights", model.state_dict())
        with torch.no_grad():
            outputs[kept] = model(lrs)
    assert torch.equal(outputs[2], outputs[None])  # room for every key frame: unbounded
    assert not torch.allclose(outputs[1], outputs[None])  # the dropped key frames are missed
    with pytest.raises(ValueError, match="max_key_frames"):
        TTVSRConfig(max_key_frames=0)
    with pytest.raises(ValueError, match="implementation"):
        TTVSRConfig(implementation="fastest")
    with pytest.raises(ValueError, match="implementation"):
        VSRTConfig(implementation="fastest")


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = _perturb(TTVSR(TTVSR_SMALL), 0)
    lrs = torch.rand(1, 4, 3, 64, 64)
    plain_out, plain_grads = _run(model, lrs, "fast")
    model.config.checkpoint_propagation = True
    ckpt_out, ckpt_grads = _run(model, lrs, "fast")
    assert torch.equal(plain_out, ckpt_out)
    for a, b in zip(plain_grads, ckpt_grads, strict=True):
        assert (a - b).abs().max() <= 1e-6


def test_compile_falls_back_to_eager_with_one_warning(monkeypatch):
    torch.manual_seed(0)
    model = TTVSR(dataclasses.replace(TTVSR_SMALL, compile=True)).eval()
    lrs = torch.rand(1, 3, 3, 64, 64)
    with torch.no_grad():
        model.config.compile = False
        eager = model(lrs)
        model.config.compile = True

        def broken_compile(fn, **kwargs):  # compiles "fine", fails when first run (as a backend would)
            def fail(*args):
                raise RuntimeError("no C++ compiler\nmore detail")

            return fail

        monkeypatch.setattr(torch, "compile", broken_compile)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first, second = model(lrs), model(lrs)
    messages = [str(w.message) for w in caught if "torch.compile" in str(w.message)]
    assert len(messages) == 1 and "no C++ compiler" in messages[0] and "eagerly" in messages[0]
    assert torch.equal(first, eager) and torch.equal(second, eager)
    assert ttvsr_fast._COMPILED[model.propagation] is not None


def test_compile_unavailable_falls_back_too(monkeypatch):
    def unavailable(fn, **kwargs):
        raise RuntimeError("Python 3.99 is not supported by torch.compile")

    monkeypatch.setattr(torch, "compile", unavailable)
    model = TTVSR(dataclasses.replace(TTVSR_SMALL, compile=True)).eval()
    with pytest.warns(RuntimeWarning, match="not supported"), torch.no_grad():
        assert model(torch.rand(1, 2, 3, 64, 64)).shape == (1, 2, 3, 256, 256)


@pytest.mark.parametrize(
    ("arch", "config"), [("ttvsr", TTVSR_SMALL), ("vsrt", VSRT_SMALL)], ids=["ttvsr", "vsrt"]
)
def test_a_checkpoint_written_by_one_path_loads_with_the_other(tmp_path, arch, config):
    family = get_family(arch)
    assert "implementation" in family.runtime_fields
    model = family.model_class(dataclasses.replace(config, implementation="reference"))
    path = save_checkpoint(model, tmp_path / "model.pt")
    stored = load_checkpoint(path)
    fast = load_checkpoint(path, implementation="fast")
    assert stored.config.implementation == "reference" and fast.config.implementation == "fast"
    assert stored.state_dict().keys() == fast.state_dict().keys() == model.state_dict().keys()
    for name, value in model.state_dict().items():
        assert torch.equal(fast.state_dict()[name], value), name
    s = getattr(config, "spatial_size", 64)
    lrs = torch.rand(1, 3, 3, s, s)
    with torch.no_grad():
        assert (fast(lrs) - stored(lrs)).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="only, not \\['mid_channels'\\]"):
        load_checkpoint(path, mid_channels=4)


@pytest.mark.parametrize(("token_size", "scale"), [(4, 4), (4, 6), (4, 8), (4, 10), (3, 5), (2, 4)])
def test_cross_scale_tokens_of_the_fast_path_are_the_reference_tokens_reordered(token_size, scale):
    # (3, 5): pooling cells of different sizes (2, 3, 2), which the fast path hands to the reference way
    feat = torch.randn(2, 5, 6 * token_size, 4 * token_size, dtype=torch.float64)
    expected = cross_scale_tokens(feat, token_size, scale)  # (n, P, c*s*s), laid out (c, y, x)
    expected = expected.unflatten(2, (5, token_size, token_size)).permute(0, 1, 3, 4, 2)
    got = ttvsr_fast.cross_scale_token_grid(
        feat.contiguous(memory_format=torch.channels_last), token_size, scale
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    tokens = ttvsr_fast.tokens(feat, token_size)
    torch.testing.assert_close(ttvsr_fast.untokens(tokens, feat.shape[-2:], token_size), feat, rtol=0, atol=0)
