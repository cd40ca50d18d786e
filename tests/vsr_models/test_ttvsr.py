"""TTVSR: names and size of the released model, its building blocks in isolation, and the whole network
against a plain transcription of the released forward pass (``docs/models.md#ttvsr``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.released_ttvsr import released_forward, released_ltam, released_tokens
from vsr_models.profile import HostSyncCounter
from vsr_models.spynet import spynet_ours_to_official
from vsr_models.ttvsr import (
    TTVSR,
    TrajectoryAttention,
    TTVSRConfig,
    convert_official_state_dict,
    to_official_state_dict,
    trajectory_hard_attention,
)
from vsr_models.ttvsr import fast as ttvsr_fast
from vsr_models.ttvsr.trajectory import (
    cross_scale_tokens,
    identity_location_map,
    tokenize,
    trajectory_rows,
    untokenize,
    update_location_maps,
)

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference" / "ttvsr_official_state_dict.tsv"
TINY = TTVSRConfig(mid_channels=8, num_extract_blocks=1, num_propagation_blocks=1)


def official_shapes() -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of the released generator (mid 64, 60 blocks), as listed in REFERENCE."""
    shapes: dict[str, tuple[int, ...]] = {"spynet.mean": (1, 3, 1, 1), "spynet.std": (1, 3, 1, 1)}
    channels = (8, 32, 64, 32, 16, 2)
    for level in range(6):
        for k in range(5):
            prefix = f"spynet.basic_module.{level}.basic_module.{k}.conv"
            shapes[f"{prefix}.weight"] = (channels[k + 1], channels[k], 7, 7)
            shapes[f"{prefix}.bias"] = (channels[k + 1],)

    def conv(name: str, cout: int, cin: int, k: int = 3) -> None:
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        shapes[f"{name}.bias"] = (cout,)

    for name, cin, blocks in (("feat_extractor", 3, 5), ("resblocks", 128, 60)):
        conv(f"{name}.main.0", 64, cin)
        for b in range(blocks):
            conv(f"{name}.main.2.{b}.conv1", 64, 64)
            conv(f"{name}.main.2.{b}.conv2", 64, 64)
    conv("LTAM.fusion", 64, 192)
    conv("fusion", 64, 192, k=1)
    conv("upsample1.upsample_conv", 256, 64)
    conv("upsample2.upsample_conv", 256, 64)
    conv("conv_hr", 64, 64)
    conv("conv_last", 3, 64)
    return shapes


class ShiftOracle(nn.Module):
    """Stands in for SPyNet (no trained weights here): exact flow of frames that translate globally.

    Returns the constant integer flow f (in steps of 4 pixels, |f| <= 8) with ref(p) = supp(p + f).
    """

    def forward(self, ref: Tensor, supp: Tensor) -> Tensor:
        candidates = torch.tensor(
            [(dx, dy) for dx in range(-8, 9, 4) for dy in range(-8, 9, 4)], dtype=ref.dtype
        )
        errors = torch.stack(
            [
                (ref - supp.roll((-int(dy), -int(dx)), (-2, -1))).abs().flatten(1).mean(1)
                for dx, dy in candidates
            ]
        )
        flow = candidates[errors.argmin(0)]
        return flow.view(-1, 2, 1, 1).expand(-1, -1, *ref.shape[-2:])


def translating_clip(t: int, step: tuple[int, int], size: int = 64) -> Tensor:
    """(1, t, 3, size, size) random texture moved by step = (dx, dy) pixels per frame (circularly)."""
    base = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    return torch.stack([base.roll((i * step[1], i * step[0]), (-2, -1)) for i in range(t)], 1)


# --------------------------------------------------------------------------------------------------
# Released names and size
# --------------------------------------------------------------------------------------------------


def test_default_config_has_released_parameter_count():
    model = TTVSR()
    assert sum(p.numel() for p in model.parameters()) == 6_773_615
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("spynet.")) == 1_440_300


def test_official_names_convert_to_ours_and_back():
    official = official_shapes()
    listed = {
        key: tuple(int(d) for d in shape.split("x"))
        for key, shape in (line.split("\t") for line in REFERENCE.read_text().splitlines()[1:] if line)
    }
    assert listed == official
    assert len(official) == 338

    ours = {k: tuple(v.shape) for k, v in TTVSR().state_dict().items()}
    converted = convert_official_state_dict({k: torch.empty(s, device="meta") for k, s in official.items()})
    assert {k: tuple(v.shape) for k, v in converted.items()} == ours
    assert "trajectory_attention.fusion.weight" in ours and "propagation.main.2.59.conv2.bias" in ours
    back = to_official_state_dict({k: torch.empty(s, device="meta") for k, s in ours.items()})
    assert {k: tuple(v.shape) for k, v in back.items()} == official


def test_converted_weights_load_and_keep_values():
    model = TTVSR(TINY)
    official = to_official_state_dict(model.state_dict())
    assert torch.equal(official["LTAM.fusion.weight"], model.trajectory_attention.fusion.weight)
    other = TTVSR(TINY)
    other.load_state_dict(convert_official_state_dict(official), strict=True)
    for (name, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_spynet_pretrained_path_loads_official_names(tmp_path):
    donor = TTVSR(TINY).spynet
    path = tmp_path / "spynet.pth"
    torch.save({"state_dict": {spynet_ours_to_official(k): v for k, v in donor.state_dict().items()}}, path)
    model = TTVSR(
        TTVSRConfig(
            mid_channels=8, num_extract_blocks=1, num_propagation_blocks=1, spynet_pretrained=str(path)
        )
    )
    for name, value in donor.state_dict().items():
        assert torch.equal(model.spynet.state_dict()[name], value), name


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale_index", [0, 1, 2])
def test_cross_scale_tokens_match_released_tiling_and_pooling(scale_index):
    feat = torch.randn(2, 5, 16, 24, dtype=torch.float64)
    expected = released_tokens(feat)[scale_index].flatten(2).transpose(1, 2)
    torch.testing.assert_close(
        cross_scale_tokens(feat, 4, (4, 6, 8)[scale_index]), expected, rtol=0, atol=1e-12
    )


def test_tokenize_lays_tokens_out_like_unfold_and_untokenize_inverts_it():
    feat = torch.randn(2, 3, 8, 12)
    tokens = tokenize(feat, 4)
    torch.testing.assert_close(tokens, F.unfold(feat, 4, stride=4).transpose(1, 2), rtol=0, atol=0)
    torch.testing.assert_close(untokenize(tokens, (8, 12), 4), feat, rtol=0, atol=0)


def test_wider_token_windows_see_beyond_the_token():
    # A feature that is zero except one pixel just outside token (0, 0): only the 6x6 and 8x8 windows see it.
    feat = torch.zeros(1, 1, 16, 16)
    feat[0, 0, 4, 4] = 1.0
    assert cross_scale_tokens(feat, 4, 4)[0, 0].abs().sum() == 0
    assert cross_scale_tokens(feat, 4, 6)[0, 0].abs().sum() > 0
    assert cross_scale_tokens(feat, 4, 8)[0, 0].abs().sum() > 0


def test_location_maps_follow_the_average_pooled_flow():
    # Token units: the flow moves every 4x4 token by (+1, -2) tokens on average, with pixel-level
    # variation inside each token that the average pooling must remove.
    h, w = 32, 48
    wiggle = torch.tensor([[-2.0, 2.0], [2.0, -2.0]]).repeat(h // 2, w // 2)
    flow = torch.stack([4.0 + wiggle, -8.0 - wiggle]).unsqueeze(0)
    maps = identity_location_map(1, (h // 4, w // 4), torch.device("cpu")).repeat(1, 2, 1, 1)
    for steps in (1, 2, 3):
        maps = update_location_maps(maps, flow, 4)
        gy, gx = torch.meshgrid(torch.arange(h // 4.0), torch.arange(w // 4.0), indexing="ij")
        expected = torch.stack([(gx + steps).clamp(0, w // 4 - 1), (gy - 2 * steps).clamp(0, h // 4 - 1)])
        torch.testing.assert_close(maps[0, :2], expected, rtol=0, atol=0)
        torch.testing.assert_close(maps[0, 2:], expected, rtol=0, atol=0)


def _attention_case(num_keys=3, grid=(4, 5), dim=32, seed=0):
    """Key memory where exactly one trajectory position per query token holds (a multiple of) that query.

    Map k sends token p to the circularly shifted position p + (k + 1) tokens, so reading keys at the
    identity position instead would find no match.
    """
    g = torch.Generator().manual_seed(seed)
    gh, gw = grid
    num = gh * gw
    query = F.normalize(torch.randn(1, num, dim, generator=g), dim=-1)
    keys = F.normalize(torch.randn(1, num_keys, num, dim, generator=g), dim=-1)
    gy, gx = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    maps = torch.cat([torch.stack([(gx + k + 1) % gw, (gy + k + 1) % gh]) for k in range(num_keys)]).float()
    match = torch.randint(0, num_keys, (num,), generator=g)
    for p in range(num):
        k = int(match[p])
        x, y = int(maps[2 * k, p // gw, p % gw]), int(maps[2 * k + 1, p // gw, p % gw])
        keys[0, k, y * gw + x] = query[0, p] * 2.5
    return query, F.normalize(keys, dim=-1).flatten(1, 2), maps.unsqueeze(0), match


def _near_tie_case(num_keys=4, num_tokens=40, dim=128, seed=0):
    """Keys whose cosine similarities to the query differ by 2e-4 near 0.993, the best at a random position.

    Closer than bf16 can tell apart (its spacing there is 2^-8): in bf16 every similarity rounds to the
    same number. Identity location maps: position k of token p is row k * P + p of the memory.
    """
    g = torch.Generator().manual_seed(seed)
    query = F.normalize(torch.randn(1, num_tokens, dim, generator=g), dim=-1)
    across = torch.randn(num_keys, num_tokens, dim, generator=g)  # made orthogonal to the query
    across = F.normalize(across - (across * query[0]).sum(-1, keepdim=True) * query[0], dim=-1)
    ranks = torch.stack([torch.randperm(num_keys, generator=g) for _ in range(num_tokens)], dim=1)
    cosine = 0.9925 + 2e-4 * ranks.double()  # (K, P)
    keys = cosine[..., None] * query[0].double() + (1 - cosine**2).sqrt()[..., None] * across.double()
    grid = identity_location_map(1, (4, num_tokens // 4), torch.device("cpu"))
    return query, keys.float().flatten(0, 1)[None], grid.repeat(1, num_keys, 1, 1), ranks.argmax(0)


@pytest.mark.parametrize("implementation", ["reference", "fast"])
def test_bf16_autocast_selects_the_trajectory_tokens_float32_selects(implementation):
    # GPU training runs under bf16 autocast, inference in float32: both must follow the same tokens
    query, keys, maps, best = _near_tie_case()
    assert len(torch.unique((keys[0, :40] * query[0]).sum(-1).bfloat16())) == 1  # a tie in bf16

    def select() -> Tensor:
        if implementation == "reference":
            return trajectory_hard_attention(query, keys, maps)[0]
        rows, inside = trajectory_rows(maps)
        return ttvsr_fast.hard_attention_index(keys, query, rows, inside)

    in_float32 = select()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_bf16 = select()
    assert torch.equal(in_float32[0], best)
    assert torch.equal(in_bf16, in_float32)


@pytest.mark.parametrize("implementation", ["reference", "fast"])
def test_flows_placing_the_location_maps_stay_float32_under_bf16_autocast(implementation):
    torch.manual_seed(0)
    model = TTVSR(TINY)
    lrs = torch.rand(1, 3, 3, 64, 64)

    def flows() -> tuple[Tensor, Tensor]:
        if implementation == "reference":
            return model.compute_flows(lrs)
        return ttvsr_fast.compute_flows(model, lrs)

    with torch.no_grad():
        in_float32 = flows()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            in_bf16 = flows()
    for expected, got in zip(in_float32, in_bf16, strict=True):
        assert got.dtype == torch.float32
        assert torch.equal(got, expected)


@pytest.mark.parametrize("implementation", ["fast", "reference"])
def test_training_forward_and_backward_make_no_host_traffic_whatever_the_length(implementation):
    # on CUDA each counted operation is a stream synchronisation or a host-to-device copy
    torch.manual_seed(0)
    model = TTVSR(TTVSRConfig(**{**TINY.__dict__, "implementation": implementation}))
    counts = {}
    for frames in (12, 24):
        with HostSyncCounter() as syncs:
            model(torch.rand(1, frames, 3, 64, 64)).mean().backward()
        counts[frames] = dict(syncs.counts)
    # told nothing, the model compares the clip's two halves once: is it mirror-extended?
    assert counts == {12: {"equal": 1}, 24: {"equal": 1}}
    # told by the caller who built the clip, as training does: not even that
    with HostSyncCounter() as syncs:
        model(torch.rand(1, 12, 3, 64, 64), mirrored=False).mean().backward()
    assert syncs.total == 0, syncs.counts


def test_hard_attention_picks_the_key_frame_holding_the_matching_texture():
    query, keys, maps, match = _attention_case()
    hard_index, soft_weight, _, inside = trajectory_hard_attention(query, keys, maps)
    assert torch.equal(hard_index[0], match)
    torch.testing.assert_close(soft_weight, torch.ones_like(soft_weight))
    assert bool(inside.all())


def test_trajectory_attention_adds_the_selected_values_weighted_by_soft_attention():
    c, s, (gh, gw) = 2, 4, (4, 5)
    query, keys, maps, match = _attention_case(dim=c * s * s)
    values = [torch.randn(1, keys.shape[1], c * s * s) for _ in range(3)]
    attention = TrajectoryAttention(mid_channels=c, num_scales=3, token_size=s)
    with torch.no_grad():  # fusion passes the first scale's values through unchanged
        attention.fusion.weight.zero_()
        attention.fusion.bias.zero_()
        attention.fusion.weight[:, :c, 1, 1] = torch.eye(c)
    # A query feature whose tokens are exactly the constructed queries.
    query_feat = untokenize(query, (gh * s, gw * s), s)
    anchor = torch.randn(1, c, gh * s, gw * s)
    out = attention(query_feat, anchor, keys, values, maps)

    rows = []
    for p, k in enumerate(match.tolist()):  # row of (key frame k, position on its map) in the memory
        x, y = maps[0, 2 * k].flatten()[p], maps[0, 2 * k + 1].flatten()[p]
        rows.append(k * gh * gw + int(y) * gw + int(x))
    expected_tokens = values[0][:, rows]
    torch.testing.assert_close(out, anchor + untokenize(expected_tokens, (gh * s, gw * s), s))


def test_trajectory_attention_matches_released_ltam_in_value_and_gradient():
    # integer positions, a few of them off the map (zero padding in the released grid_sample)
    g = torch.Generator().manual_seed(1)
    n, c, h, w, num_keys = 2, 4, 16, 20, 5
    attention = TrajectoryAttention(c, 3, 4).double()
    inputs = [torch.randn(n, c, h, w, generator=g, dtype=torch.float64) for _ in range(2)]
    inputs += [
        torch.randn(n, num_keys, c * 16, h // 4, w // 4, generator=g, dtype=torch.float64) for _ in range(4)
    ]
    for x in inputs:
        x.requires_grad_(True)
    curr, anchor, index_set, *sparse = inputs
    size = (n, num_keys, h // 4, w // 4)
    loc = torch.stack(
        [torch.randint(-1, w // 4 + 1, size, generator=g), torch.randint(-1, h // 4 + 1, size, generator=g)],
        2,
    )
    loc = loc.flatten(1, 2).double()
    assert (loc < 0).any()

    def memory(buffer: Tensor) -> Tensor:  # (n, K, c*16, h', w') -> (n, K*P, c*16)
        return buffer.flatten(3).transpose(2, 3).flatten(1, 2)

    ours = attention(curr, anchor, F.normalize(memory(index_set), dim=-1), [memory(b) for b in sparse], loc)
    released = released_ltam(attention.fusion, curr, index_set, anchor, sparse, loc)
    torch.testing.assert_close(ours, released, rtol=1e-10, atol=1e-10)

    weights = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    leaves = [*inputs, *attention.parameters()]
    ours_grads = torch.autograd.grad((ours * weights).sum(), leaves)
    released_grads = torch.autograd.grad((released * weights).sum(), leaves)
    for a, b in zip(ours_grads, released_grads, strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# The whole network
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["reference", "fast"])
@pytest.mark.parametrize("mirrored", [False, True])
def test_forward_reproduces_the_released_computation(mirrored, implementation):
    # key frame stride 2 over 5 frames: backward keys 4, 2 and forward keys 0, 2, so trajectories of
    # two key frames compete in both directions
    torch.manual_seed(0)
    config = TTVSRConfig(
        mid_channels=8,
        num_extract_blocks=1,
        num_propagation_blocks=1,
        key_frame_stride=2,
        implementation=implementation,
    )
    model = TTVSR(config).double().eval()
    lrs = torch.rand(1, 5, 3, 64, 64, dtype=torch.float64)
    if mirrored:  # the released code then reuses the backward flows
        lrs = torch.cat([lrs[:, :2], lrs[:, :2].flip(1)], 1)
    with torch.no_grad():
        ours, released = model(lrs), released_forward(model, lrs, key_stride=2)
    assert ours.shape == (1, lrs.shape[1], 3, 256, 256)
    torch.testing.assert_close(ours, released, rtol=1e-9, atol=1e-9)


def test_location_maps_follow_content_translating_by_a_known_offset():
    # the maps are read where the reference path hands them to the attention module; the fast path
    # follows the same trajectories (tests/vsr_models/test_fast_paths.py compares the two on this clip)
    model = TTVSR(TTVSRConfig(**{**TINY.__dict__, "implementation": "reference"})).eval()
    model.spynet = ShiftOracle()
    step = (4, -4)  # pixels per frame = (+1, -1) tokens
    t = 7
    seen: list[Tensor] = []
    model.trajectory_attention.register_forward_pre_hook(lambda module, args: seen.append(args[4].clone()))
    with torch.no_grad():
        model(translating_clip(t, step))

    # Backward pass visits 5..0 with key frames 6, 3; forward pass 1..6 with key frames 0, 3.
    visits = [(i, [6] if i >= 3 else [6, 3]) for i in range(5, -1, -1)]
    visits += [(i, [0] if i <= 3 else [0, 3]) for i in range(1, t)]
    assert len(seen) == len(visits)
    gy, gx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    for maps, (i, key_frames) in zip(seen, visits, strict=True):
        assert maps.shape == (1, 2 * len(key_frames), 16, 16)
        for k, key in enumerate(key_frames):
            # content at token p of frame i sits at p + (key - i) * step in frame `key`
            expected = torch.stack([gx + (key - i), gy - (key - i)]).clamp(0, 15)
            torch.testing.assert_close(maps[0, 2 * k : 2 * k + 2], expected, rtol=0, atol=0)


@pytest.mark.parametrize("implementation", ["reference", "fast"])
def test_mirror_extended_input_reuses_backward_flows(implementation):
    torch.manual_seed(0)
    config = TTVSRConfig(**{**TINY.__dict__, "implementation": implementation})
    reuse = TTVSR(config).eval()
    recompute = TTVSR(TTVSRConfig(**{**config.__dict__, "reuse_mirror_flows": False})).eval()
    recompute.load_state_dict(reuse.state_dict())
    pairs = {"reuse": 0, "recompute": 0}  # frame pairs SPyNet is run on (the fast path batches them)

    def count(name: str):
        return lambda module, args, out: pairs.__setitem__(name, pairs[name] + args[0].shape[0])

    for name, model in (("reuse", reuse), ("recompute", recompute)):
        model.spynet.register_forward_hook(count(name))
    half = torch.rand(1, 2, 3, 64, 64)
    lrs = torch.cat([half, half.flip(1)], 1)
    with torch.no_grad():
        out_reuse, out_recompute = reuse(lrs), recompute(lrs)
        assert pairs == {"reuse": 3, "recompute": 6}
        # the caller's word instead of the comparison: the same flows, or all of them recomputed
        assert torch.equal(reuse(lrs, mirrored=True), out_reuse)
        assert pairs == {"reuse": 6, "recompute": 6}
        assert torch.equal(reuse(lrs, mirrored=False), out_recompute)
        assert pairs == {"reuse": 12, "recompute": 6}
        with pytest.raises(ValueError, match="odd number of frames"):
            reuse(lrs[:, :3], mirrored=True)
    torch.testing.assert_close(out_reuse, out_recompute, rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_trainable_parameter_and_not_a_frozen_spynet():
    torch.manual_seed(0)
    # key frame stride 1: frame 2 (forward) and frame 0 (backward) attend over two key frames
    config = TTVSRConfig(mid_channels=8, num_extract_blocks=1, num_propagation_blocks=1, key_frame_stride=1)
    lrs, target = torch.rand(1, 3, 3, 64, 64), torch.rand(1, 3, 3, 256, 256)
    for frozen in (False, True):
        model = TTVSR(config)
        model.spynet.requires_grad_(not frozen)
        F.mse_loss(model(lrs), target).backward()
        for name, p in model.named_parameters():
            if frozen and name.startswith("spynet."):
                assert p.grad is None, name
            else:
                assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_runs_under_bfloat16_autocast():
    torch.manual_seed(0)
    model = TTVSR(TINY).eval()
    lrs = torch.rand(1, 3, 3, 64, 64)
    with torch.no_grad():
        reference = model(lrs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(lrs)
    assert out.shape == (1, 3, 3, 256, 256)
    assert torch.isfinite(out).all()
    assert (out.float() - reference).abs().mean() < 0.05


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 2, 3, 64, 66), "divisible by the token size 4"),
        ((1, 2, 3, 60, 64), "at least 64x64"),
        ((1, 2, 1, 64, 64), r"\(n, t, 3, h, w\)"),
        ((2, 3, 64, 64), r"\(n, t, 3, h, w\)"),
    ],
)
def test_rejects_frames_it_cannot_process(shape, message):
    with pytest.raises(ValueError, match=message) as error:
        TTVSR(TINY)(torch.rand(shape))
    if "token size" in message:
        assert "vsr_models.inference" in str(error.value)


@pytest.mark.parametrize("scales", [(4, 5), (2, 4)])
def test_config_rejects_token_scales_not_centred_on_the_token(scales):
    with pytest.raises(ValueError, match="token scale"):
        TTVSRConfig(token_scales=scales)
