"""VSR-Transformer: released tensor layout, positional encoding, STCSA, BOFF flows, training contract."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vsr_models.profile import HostSyncCounter
from vsr_models.spynet import spynet_ours_to_official
from vsr_models.vsrt import (
    SpatialTemporalConvSelfAttention,
    SpatialTemporalPositionalEncoding,
    VSRTConfig,
    VSRTransformer,
    convert_official_state_dict,
    to_official_state_dict,
)

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "data" / "reference"  # the released tensor lists
TINY = VSRTConfig(
    num_frames=3,
    mid_channels=8,
    depth=2,
    patch_size=4,
    spatial_size=16,
    num_extract_blocks=1,
    num_reconstruct_blocks=1,
    num_ffn_blocks=1,
)


@pytest.fixture
def tiny_model() -> VSRTransformer:
    torch.manual_seed(0)
    model = VSRTransformer(TINY)
    with torch.no_grad():  # non-trivial norms and biases, so no branch is an identity by construction
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def official_vsrt_shapes(num_frames: int, depth: int) -> dict[str, tuple[int, ...]]:
    """Every tensor of the released model as the reference tsv lists it (64 channels, 64x64, patch 8)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cin: int, cout: int, k: int = 3, groups: int = 1) -> None:
        shapes[f"{name}.weight"] = (cout, cin // groups, k, k)
        shapes[f"{name}.bias"] = (cout,)

    def residual_blocks(prefix: str, num_blocks: int) -> None:
        for i in range(num_blocks):
            conv(f"{prefix}.{i}.conv1", 64, 64)
            conv(f"{prefix}.{i}.conv2", 64, 64)

    conv("conv_first", 3, 64)
    residual_blocks("feature_extraction", 5)
    shapes["spynet.spynet.mean"] = shapes["spynet.spynet.std"] = (1, 3, 1, 1)
    for level in range(6):
        for k, (cin, cout) in enumerate([(8, 32), (32, 64), (64, 32), (32, 16), (16, 2)]):
            conv(f"spynet.spynet.basic_module.{level}.basic_module.{k}.conv", cin, cout, k=7)
    shapes["pos_embedding.penc.inv_freq"] = (math.ceil(num_frames / 6),)
    for i in range(depth):
        attention, feed_forward = f"transformer.layers.{i}.0.fn", f"transformer.layers.{i}.1.fn"
        for sub_layer in (attention, feed_forward):
            shapes[f"{sub_layer}.norm.weight"] = shapes[f"{sub_layer}.norm.bias"] = (64, 64, 64)
        conv(f"{attention}.fn.to_q", 64, 64, groups=64)
        conv(f"{attention}.fn.to_k", 64, 64, groups=64)
        conv(f"{attention}.fn.to_v", 64, 64)
        conv(f"{attention}.fn.conv", 64, 64)
        for branch in ("backward_resblocks", "forward_resblocks"):
            conv(f"{feed_forward}.fn.{branch}.main.0", 67, 64)
            residual_blocks(f"{feed_forward}.fn.{branch}.main.2", 30)
        conv(f"{feed_forward}.fn.fusion", 128, 64, k=1)
    residual_blocks("reconstruction", 30)
    conv("upconv1", 64, 256)
    conv("upconv2", 64, 256)
    conv("conv_hr", 64, 64)
    conv("conv_last", 64, 3)
    return shapes


@pytest.mark.parametrize(
    ("num_frames", "depth", "num_tensors", "num_parameters"),
    [(5, 5, 1503, 32_564_335), (7, 7, 2019, 43_845_615)],
)
def test_released_configs_have_the_released_tensors(num_frames, depth, num_tensors, num_parameters):
    official = official_vsrt_shapes(num_frames, depth)
    tsv = REFERENCE_DIR / f"vsrt_official_state_dict_{num_frames}frames.tsv"
    rows = [line.split("\t") for line in tsv.read_text().splitlines() if not line.startswith("#")]
    assert {key: tuple(int(s) for s in shape.split("x")) for key, shape in rows} == official
    assert len(official) == num_tensors

    model = VSRTransformer(VSRTConfig(num_frames=num_frames, depth=depth))
    assert sum(p.numel() for p in model.parameters()) == num_parameters
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    as_official = to_official_state_dict(model.state_dict())
    assert {key: tuple(value.shape) for key, value in as_official.items()} == official
    from_official = convert_official_state_dict({key: torch.empty(shape) for key, shape in official.items()})
    assert {key: tuple(value.shape) for key, value in from_official.items()} == ours
    assert model.load_state_dict(from_official, strict=True)


def test_spynet_pretrained_path_loads_official_names(tmp_path):
    torch.manual_seed(0)
    donor = VSRTransformer(TINY).spynet
    path = tmp_path / "spynet.pth"
    torch.save({"state_dict": {spynet_ours_to_official(k): v for k, v in donor.state_dict().items()}}, path)
    model = VSRTransformer(dataclasses.replace(TINY, spynet_pretrained=str(path)))
    for name, value in donor.state_dict().items():
        assert torch.equal(model.spynet.state_dict()[name], value), name


def test_converter_uses_readable_names_and_rejects_unknown_ones():
    converted = convert_official_state_dict(
        {
            "transformer.layers.3.0.fn.fn.to_q.weight": torch.zeros(1),
            "transformer.layers.3.1.fn.fn.backward_resblocks.main.2.29.conv2.bias": torch.zeros(1),
            "spynet.spynet.basic_module.5.basic_module.4.conv.weight": torch.zeros(1),
            "upconv2.bias": torch.zeros(1),
        }
    )
    assert list(converted) == [
        "layers.3.attention.query_conv.weight",
        "layers.3.feed_forward.backward_propagation.main.2.29.conv2.bias",
        "spynet.basic_module.5.layers.8.weight",
        "upsample_head.upsample2.bias",
    ]
    with pytest.raises(ValueError, match="generator.conv_first.weight"):
        convert_official_state_dict({"generator.conv_first.weight": torch.zeros(1)})


@pytest.mark.parametrize(
    ("num_frames", "inv_freq"),
    [(5, [1.0]), (7, [1.0, 0.01]), (13, [1.0, 10000 ** (-1 / 3), 10000 ** (-2 / 3)])],
)
def test_positional_encoding_matches_the_described_formula(num_frames, inv_freq):
    encoding = SpatialTemporalPositionalEncoding(num_frames)
    torch.testing.assert_close(encoding.inv_freq, torch.tensor(inv_freq))
    k = 2 * len(inv_freq)  # per axis: sin of every frequency, then cos of every frequency
    c, h, w = 4, 3, 5
    got = encoding(torch.zeros(2, num_frames, c, h, w))
    assert got.shape == (num_frames, c, h, w)
    expected = torch.empty(num_frames, c, h, w)
    for slot in range(num_frames):
        axis, j = divmod(slot, k)
        trig, freq = (math.sin, math.cos)[j // len(inv_freq)], inv_freq[j % len(inv_freq)]
        for ci in range(c):
            for hi in range(h):
                for wi in range(w):
                    expected[slot, ci, hi, wi] = trig((ci, hi, wi)[axis] * freq)
    torch.testing.assert_close(got, expected)


def _identity_conv_(conv: torch.nn.Conv2d) -> None:
    """Single-channel 3x3 conv -> identity (centre tap 1, no bias)."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1
        conv.bias.zero_()


def test_attention_is_one_softmax_over_the_patches_of_all_frames():
    attention = SpatialTemporalConvSelfAttention(mid_channels=1, patch_size=2)
    for conv in (attention.query_conv, attention.key_conv, attention.value_conv, attention.output_conv):
        _identity_conv_(conv)
    # 3 frames of 4x4, 4 patches each; all zero except patch (0, 0) of frame 0 and patch (1, 1) of frame 2.
    pattern = torch.tensor([[4.0, -4.0], [-4.0, 4.0]])
    x = torch.zeros(1, 3, 1, 4, 4)
    x[0, 0, 0, :2, :2] = pattern
    x[0, 2, 0, 2:, 2:] = 2 * pattern
    out = attention(x)
    # Frame 0's patch matches frame 2's (logit 2 * 64 / sqrt(4) = 64) far better than itself (32) or the
    # zero patches (0), so it takes frame 2's value; the attention block also adds its input.
    torch.testing.assert_close(out[0, 0, 0, :2, :2], 2 * pattern + pattern)
    # Zero queries attend uniformly to all 12 patches of all frames: (pattern + 2 pattern) / 12 everywhere.
    uniform = (3 * pattern / 12).repeat(2, 2)
    torch.testing.assert_close(out[0, 1, 0], uniform)
    torch.testing.assert_close(out[0, 2, 0, :2, :2], uniform[:2, :2])


def test_flows_pair_each_frame_with_its_neighbours_and_itself_at_the_ends(tiny_model, monkeypatch):
    t = 4
    lr = torch.arange(t, dtype=torch.float32).view(1, t, 1, 1, 1).expand(2, t, 3, 16, 16) / 10

    def frame_ids(ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        # A fake flow that records which frames SPyNet was asked about: x = ref index, y = support index.
        return torch.cat([ref[:, :1] * 10, supp[:, :1] * 10], dim=1)

    monkeypatch.setattr(tiny_model.spynet, "forward", frame_ids)
    flows_backward, flows_forward = tiny_model.compute_flows(lr)
    assert flows_backward.shape == flows_forward.shape == (2, t, 2, 16, 16)

    def pairs(flows: torch.Tensor) -> list[tuple[int, int]]:
        return [tuple(round(v) for v in flows[1, i, :, 5, 7].tolist()) for i in range(t)]

    assert pairs(flows_backward) == [(0, 1), (1, 2), (2, 3), (3, 3)]
    assert pairs(flows_forward) == [(0, 0), (1, 0), (2, 1), (3, 2)]


def released_forward(
    sd: dict[str, torch.Tensor], lr: torch.Tensor, config: VSRTConfig, spynet
) -> torch.Tensor:
    """The released network's forward written out step by step on its own tensor names (heads = 1)."""
    b, t, c, h, w = lr.shape
    p, mid = config.patch_size, config.mid_channels

    def conv(x, name, **kwargs):
        return F.conv2d(
            x, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=sd[f"{name}.weight"].shape[-1] // 2, **kwargs
        )

    def res_blocks(x, prefix, n):
        for i in range(n):
            x = x + conv(F.relu(conv(x, f"{prefix}.{i}.conv1")), f"{prefix}.{i}.conv2")
        return x

    def warp(x, flow):  # flow (n, 2, h, w); grid normalised with align_corners True
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        gx = 2 * (xs + flow[:, 0]) / (w - 1) - 1
        gy = 2 * (ys + flow[:, 1]) / (h - 1) - 1
        return F.grid_sample(x, torch.stack([gx, gy], -1), "bilinear", "zeros", align_corners=True)

    feat = F.leaky_relu(conv(lr.view(-1, c, h, w), "conv_first"), 0.1)
    feat = res_blocks(feat, "feature_extraction", config.num_extract_blocks).view(b, t, -1, h, w)

    # t + 1 pairs in each direction, as released, then the unused end dropped
    lrs_1 = torch.cat([lr[:, :1], lr], 1).reshape(-1, c, h, w)
    lrs_2 = torch.cat([lr, lr[:, -1:]], 1).reshape(-1, c, h, w)
    flows_backward = spynet(lrs_1, lrs_2).view(b, t + 1, 2, h, w)[:, 1:]
    flows_forward = spynet(lrs_2, lrs_1).view(b, t + 1, 2, h, w)[:, :-1]

    inv_freq = sd["pos_embedding.penc.inv_freq"]
    k = 2 * inv_freq.numel()
    emb = torch.zeros(mid, h, w, 3 * k)
    for axis, size in enumerate((mid, h, w)):
        angles = torch.arange(size).float()[:, None] * inv_freq
        shape = [1, 1, 1, k]
        shape[axis] = size
        emb[..., axis * k : (axis + 1) * k] = torch.cat([angles.sin(), angles.cos()], -1).view(shape)
    feat = feat + emb[..., :t].permute(3, 0, 1, 2)[None]

    for i in range(config.depth):
        pre = f"transformer.layers.{i}"
        # Residual(PreNorm(globalAttention))
        normed = F.layer_norm(
            feat, feat.shape[2:], sd[f"{pre}.0.fn.norm.weight"], sd[f"{pre}.0.fn.norm.bias"]
        )
        frames = normed.reshape(-1, mid, h, w)
        q, k_, v = (
            F.unfold(conv(frames, f"{pre}.0.fn.fn.{name}", groups=groups), p, stride=p)
            for name, groups in (("to_q", mid), ("to_k", mid), ("to_v", 1))
        )
        d, n = q.shape[1], q.shape[2]
        q, k_, v = (z.view(b, t, d, n).permute(0, 2, 1, 3).reshape(b, d, t * n) for z in (q, k_, v))
        attn = torch.softmax(q.transpose(1, 2) @ k_ * d**-0.5, dim=-1)
        attended = (attn @ v.transpose(1, 2)).view(b, t, n, d).permute(0, 1, 3, 2).reshape(b * t, d, n)
        folded = F.fold(attended, (h, w), p, stride=p)
        feat = conv(folded, f"{pre}.0.fn.fn.conv").view(normed.shape) + normed + feat
        # Residual(PreNorm(FeedForward))
        normed = F.layer_norm(
            feat, feat.shape[2:], sd[f"{pre}.1.fn.norm.weight"], sd[f"{pre}.1.fn.norm.bias"]
        )
        branches = []
        for name, neighbours, flows in (
            ("backward_resblocks", torch.cat([normed[:, 1:], normed[:, -1:]], 1), flows_backward),
            ("forward_resblocks", torch.cat([normed[:, :1], normed[:, :-1]], 1), flows_forward),
        ):
            x = warp(neighbours.reshape(-1, mid, h, w), flows.reshape(-1, 2, h, w))
            x = F.leaky_relu(
                conv(torch.cat([lr.reshape(b * t, -1, h, w), x], 1), f"{pre}.1.fn.fn.{name}.main.0"), 0.1
            )
            branches.append(res_blocks(x, f"{pre}.1.fn.fn.{name}.main.2", config.num_ffn_blocks))
        fused = F.leaky_relu(conv(torch.cat(branches, 1), f"{pre}.1.fn.fn.fusion"), 0.1)
        feat = fused.view(normed.shape) + feat

    out = res_blocks(feat.view(b * t, -1, h, w), "reconstruction", config.num_reconstruct_blocks)
    out = F.leaky_relu(F.pixel_shuffle(conv(out, "upconv1"), 2), 0.1)
    out = F.leaky_relu(F.pixel_shuffle(conv(out, "upconv2"), 2), 0.1)
    out = conv(F.leaky_relu(conv(out, "conv_hr"), 0.1), "conv_last")
    out = out + F.interpolate(lr.view(-1, c, h, w), scale_factor=4, mode="bilinear", align_corners=False)
    return out.view(b, t, c, 4 * h, 4 * w)


def test_forward_matches_the_released_computation(tiny_model):
    torch.manual_seed(1)
    lr = torch.rand(2, TINY.num_frames, 3, 16, 16)
    with torch.no_grad():
        expected = released_forward(
            to_official_state_dict(tiny_model.state_dict()), lr, TINY, tiny_model.spynet
        )
        got = tiny_model(lr)
    assert got.shape == (2, TINY.num_frames, 3, 64, 64)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_output_is_every_frame_x4_and_shorter_clips_run(tiny_model):
    for t in (TINY.num_frames, 1, 2 * 3):  # the 3-frame encoding has 2 * ceil(3 / 6) * 3 = 6 slots
        assert tiny_model(torch.rand(1, t, 3, 16, 16)).shape == (1, t, 3, 64, 64)


def test_wrong_input_size_or_length_is_a_clear_error(tiny_model):
    with pytest.raises(
        ValueError, match=r"16x16 LR patches.*got 16x32.*vsr_models\.inference\.tiled_forward"
    ):
        tiny_model(torch.rand(1, 3, 3, 16, 32))
    with pytest.raises(ValueError, match="at most 6 frames, got 7"):
        tiny_model(torch.rand(1, 7, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(n, t, 3, h, w\)"):
        tiny_model(torch.rand(3, 3, 16, 16))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        VSRTConfig(spatial_size=60, patch_size=8)


def _loss(model: VSRTransformer) -> torch.Tensor:
    torch.manual_seed(2)
    lr, gt = torch.rand(1, 3, 3, 16, 16), torch.rand(1, 3, 3, 64, 64)
    return (model(lr) - gt).abs().mean()


def test_gradients_reach_every_trainable_parameter(tiny_model):
    _loss(tiny_model).backward()
    no_grad = [
        name for name, p in tiny_model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert no_grad == []


def test_frozen_spynet_receives_no_gradient(tiny_model):
    tiny_model.spynet.requires_grad_(False)
    _loss(tiny_model).backward()
    assert all(p.grad is None for p in tiny_model.spynet.parameters())
    assert all(
        p.grad is not None for name, p in tiny_model.named_parameters() if not name.startswith("spynet.")
    )


def test_runs_under_bf16_autocast_on_cpu(tiny_model):
    lr = torch.rand(1, 3, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny_model(lr)
    assert out.shape == (1, 3, 3, 64, 64)
    assert torch.isfinite(out.float()).all()
    torch.testing.assert_close(out.float(), tiny_model(lr).detach(), atol=0.1, rtol=0)


@pytest.mark.parametrize("implementation", ["fast", "reference"])
def test_training_forward_and_backward_make_no_host_traffic_whatever_the_length(implementation):
    # on CUDA each counted operation is a stream synchronisation or a host-to-device copy
    torch.manual_seed(0)
    model = VSRTransformer(dataclasses.replace(TINY, num_frames=24, implementation=implementation))
    counts = {}
    for frames in (12, 24):
        with HostSyncCounter() as syncs:
            model(torch.rand(1, frames, 3, 16, 16)).mean().backward()
        counts[frames] = dict(syncs.counts)
    assert counts == {12: {}, 24: {}}
