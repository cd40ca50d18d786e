from pathlib import Path

import pytest
import torch

from vsr_models.spynet import SpyNet, spynet_official_to_ours, spynet_ours_to_official

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference" / "ttvsr_official_state_dict.tsv"


def _constant_flow_spynet(bias_x: float) -> SpyNet:
    """Every conv zero except the last bias of each level: each level adds (bias_x, 0)."""
    net = SpyNet()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for level in net.basic_module:
            level.layers[-1].bias.copy_(torch.tensor([bias_x, 0.0]))
    return net


@pytest.mark.parametrize(("width", "expected"), [(64, 63.0), (48, 63.0 * 48 / 64)])
def test_pyramid_doubles_flow_per_level_and_rescales_to_input_size(width, expected):
    # 6 levels: f0 = b, f_{l+1} = 2 f_l + b  ->  63 b at the padded size, then scaled by w / w_up.
    net = _constant_flow_spynet(1.0)
    ref = torch.rand(1, 3, 32, width)
    flow = net(ref, ref)
    assert flow.shape == (1, 2, 32, width)
    torch.testing.assert_close(flow[:, 0], torch.full((1, 32, width), expected))
    assert flow[:, 1].abs().max() == 0


def test_zero_network_gives_zero_flow_on_any_size():
    net = _constant_flow_spynet(0.0)
    assert net(torch.rand(2, 3, 50, 70), torch.rand(2, 3, 50, 70)).abs().max() == 0


def test_parameter_count_and_official_names_round_trip():
    net = SpyNet()
    assert sum(p.numel() for p in net.parameters()) == 1_440_300
    ours = set(net.state_dict())
    official = {
        line.split("\t")[0][len("spynet.") :]
        for line in REFERENCE.read_text().splitlines()
        if line.startswith("spynet.")
    }
    assert {spynet_official_to_ours(k) for k in official} == ours
    assert {spynet_official_to_ours(spynet_ours_to_official(k)) for k in ours} == ours


def test_start_from_zero_flow_predicts_no_motion_but_still_learns():
    net = SpyNet()
    ref, supp = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    assert net(ref, supp).abs().max() > 0  # random weights: arbitrary flow
    net.start_from_zero_flow()
    flow = net(ref, supp)
    assert flow.abs().max() == 0
    flow.sum().backward()  # a dummy objective: the last convs still receive gradient
    assert all(level.layers[-1].bias.grad is not None for level in net.basic_module)
    assert net.basic_module[-1].layers[-1].weight.grad.abs().sum() > 0
