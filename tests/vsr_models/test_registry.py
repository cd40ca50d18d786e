"""The model registry: every family fulfils the same contract, and names resolve to families or fail clearly."""

import dataclasses
import typing
from pathlib import Path

import pytest
import torch
from test_checkpoint import TTVSR_SMALL
from torch import nn

from vsr_models import (
    ARCHITECTURES,
    InputConstraints,
    ModelFamily,
    build_model,
    get_family,
    model_arch,
    model_config,
    register_family,
    registry,
)

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference"  # the released tensor lists
# every released layout, with the whole config it was released with as far as the tensors tell
RELEASES = [
    (
        "ttvsr",
        "ttvsr_official_state_dict.tsv",
        {"mid_channels": 64, "num_extract_blocks": 5, "num_propagation_blocks": 60},
    ),
    *(
        (
            "vsrt",
            f"vsrt_official_state_dict_{frames}frames.tsv",
            {
                "depth": frames,
                "num_frames": frames,
                "mid_channels": 64,
                "spatial_size": 64,
                "num_extract_blocks": 5,
                "num_reconstruct_blocks": 30,
                "num_ffn_blocks": 30,
            },
        )
        for frames in (5, 7)
    ),
]


def _meta_state_dict(name):
    """Shape-only tensors with the names and shapes of a released checkpoint (reference TSV)."""
    sd = {}
    for line in (REFERENCE / name).read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            sd[key] = torch.empty(*map(int, shape.split("x")), device="meta")
    return sd


@dataclasses.dataclass
class ToyConfig:
    channels: int = 3
    sizes: tuple[int, ...] = (1, 2)

    def input_constraints(self) -> InputConstraints:
        return InputConstraints(multiple=2)


class Toy(nn.Module):
    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.conv = nn.Conv2d(config.channels, config.channels, 1)

    def input_constraints(self) -> InputConstraints:
        return self.config.input_constraints()


def _toy_family(**changes) -> ModelFamily:
    fields = {
        "name": "toy",
        "model_class": Toy,
        "config_class": ToyConfig,
        "from_official": lambda sd: {k.removeprefix("official."): v for k, v in sd.items()},
        "to_official": lambda sd: {f"official.{k}": v for k, v in sd.items()},
        "infer_config": lambda sd: {},
        "release": "a bare state dict",
    }
    return ModelFamily(**{**fields, **changes})


@pytest.fixture
def scratch_registry():
    """Families registered in the test are gone afterwards."""
    saved = dict(registry._FAMILIES)
    yield
    registry._FAMILIES.clear()
    registry._FAMILIES.update(saved)


# -- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "params"), [("ttvsr", 6_773_615), ("vsrt", 32_564_335)])
def test_default_models_are_the_released_reds_configurations(arch, params):
    model = build_model(arch)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model_arch(model) == arch


def test_unknown_override_names_the_key_and_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown ttvsr config key.*num_blocks") as info:
        build_model("ttvsr", num_blocks=3)
    assert "num_propagation_blocks" in str(info.value) and "token_scales" in str(info.value)
    with pytest.raises(ValueError, match="unknown architecture 'basicvsr'.*'ttvsr', 'vsrt'"):
        build_model("basicvsr")


def test_unknown_arch_is_one_error_naming_the_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown architecture 'basicvsr'; choose one of \['ttvsr', 'vsrt'\]"
    ):
        get_family("basicvsr")
    assert sorted(ARCHITECTURES) == ["ttvsr", "vsrt"]
    assert get_family("vsrt") is ARCHITECTURES["vsrt"]
    with pytest.raises(TypeError):
        ARCHITECTURES["toy"] = _toy_family()  # read-only: families join through register_family


def test_model_config_rebuilds_the_same_model_and_lists_become_tuples():
    model = build_model("ttvsr", **TTVSR_SMALL, token_scales=[4, 8])
    config = model_config(model)
    assert config["token_scales"] == (4, 8)
    assert config["num_propagation_blocks"] == 2
    assert model_config(build_model("ttvsr", **config)) == config
    with pytest.raises(ValueError, match="not a registered architecture"):
        model_config(torch.nn.Linear(2, 2))


# -- the contract ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "tsv", "released"), RELEASES)
def test_each_family_reads_the_released_config_and_converts_names_both_ways(arch, tsv, released):
    family = get_family(arch)
    official = _meta_state_dict(tsv)
    assert family.infer_config(official) == released
    ours = family.from_official(official)
    with torch.device("meta"):
        model = build_model(arch, **released)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in model.state_dict().items()}
    back = family.to_official(ours)
    assert list(back) == list(official)
    assert all(back[k] is official[k] for k in official)  # renamed, never copied


def test_every_registered_family_is_covered_by_a_released_layout():
    assert {arch for arch, _, _ in RELEASES} == set(ARCHITECTURES)


@pytest.mark.parametrize(
    ("arch", "overrides", "expected"),
    [
        ("ttvsr", {}, InputConstraints(multiple=4, min_size=64)),
        ("ttvsr", {"token_size": 8, "token_scales": (8, 10)}, InputConstraints(multiple=8, min_size=64)),
        ("ttvsr", {"token_size": 2, "token_scales": (2,)}, InputConstraints(multiple=4, min_size=64)),
        ("vsrt", {}, InputConstraints(spatial_size=64, num_frames=5)),
        ("vsrt", {"num_frames": 7, "depth": 7}, InputConstraints(spatial_size=64, num_frames=7)),
        ("vsrt", {"spatial_size": 16, "patch_size": 4}, InputConstraints(spatial_size=16, num_frames=5)),
    ],
)
def test_networks_declare_their_input_constraints_through_their_config(arch, overrides, expected):
    with torch.device("meta"):
        model = build_model(arch, **overrides)
    assert model.input_constraints() == expected
    assert model.config.input_constraints() == expected


@pytest.mark.parametrize(
    ("constraints", "size", "num_frames", "expected"),
    [
        (InputConstraints(multiple=4, min_size=64), (64, 128), None, []),
        (InputConstraints(multiple=4, min_size=64), (64, 66), 50, ["multiple"]),
        (InputConstraints(multiple=4, min_size=64), (60, 64), 50, ["min_size"]),
        (InputConstraints(multiple=4, min_size=64), (50, 64), 1, ["min_size", "multiple"]),
        (InputConstraints(spatial_size=64, num_frames=5), (64, 64), 5, []),
        (InputConstraints(spatial_size=64, num_frames=5), (64, 64), None, []),  # any length asked
        (InputConstraints(spatial_size=64, num_frames=5), (32, 64), 3, ["spatial_size", "num_frames"]),
    ],
)
def test_input_constraints_name_every_constraint_an_input_breaks_in_order(
    constraints, size, num_frames, expected
):
    assert constraints.problems(*size, num_frames) == expected


def test_only_ttvsr_leaves_parameters_without_a_gradient_on_one_frame():
    # what the training config names when it refuses one-frame sequences on several workers (DDP)
    assert get_family("ttvsr").one_frame_unused == "SPyNet and the trajectory attention"
    assert get_family("vsrt").one_frame_unused == ""


def test_both_families_mark_the_spynet_weights_path_as_initialisation_only():
    for family in ARCHITECTURES.values():
        assert family.init_only_fields == ("spynet_pretrained",)
        assert "spynet_pretrained" in family.field_names


def test_each_family_lists_every_code_path_its_config_can_name():
    """The network runs the path its config names through the family's table (docs/models.md#code-layout)."""
    for family in ARCHITECTURES.values():
        named = typing.get_args(typing.get_type_hints(family.config_class)["implementation"])
        assert sorted(family.implementations) == sorted(named) == ["fast", "reference"], family.name
        assert family.implementations["reference"] is family.model_class.forward_reference


# -- registering -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("scratch_registry")
def test_a_registered_family_is_built_and_named_like_the_released_ones():
    family = register_family(_toy_family())
    assert register_family(family) is family  # registering the same family again is harmless
    model = build_model("toy", sizes=[3])
    assert model_arch(model) == "toy" and get_family("toy") is family
    assert model_config(model) == {"channels": 3, "sizes": (3,)}
    assert family.to_official(family.from_official({"official.conv.bias": 1})) == {"official.conv.bias": 1}
    with pytest.raises(ValueError, match=r"choose one of \['toy', 'ttvsr', 'vsrt'\]"):
        get_family("basicvsr")
    with pytest.raises(ValueError, match="'toy' is already registered"):
        register_family(_toy_family(release="another layout"))
    assert get_family("toy") is family


def test_a_family_that_breaks_the_contract_is_refused():
    class Unconstrained(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config

    with pytest.raises(TypeError, match="Unconstrained has no input_constraints"):
        _toy_family(model_class=Unconstrained)
    with pytest.raises(ValueError, match=r"init_only_fields \['weights_path'\] are not config fields"):
        _toy_family(init_only_fields=("weights_path",))
    with pytest.raises(TypeError, match="is not a dataclass"):
        _toy_family(config_class=dict)
