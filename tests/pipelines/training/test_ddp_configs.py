"""Configurations DDP cannot run are refused when the config loads, before Ray starts
(``docs/cluster.md#configurations-ddp-cannot-run``).

DDP all-reduces the gradient of every trainable parameter at every step; a parameter the forward never
used has none, and the next step fails in every worker (and every retry). The rule the configs enforce
is checked here against the networks themselves: a config is accepted on several workers exactly when
one training forward and backward of its network leaves no parameter without a gradient.
"""

from __future__ import annotations

import pytest
import torch

from jobs._training import main
from pipelines.common.config import load_config
from pipelines.common.errors import ConfigError
from pipelines.training.config import Experiment, default_recipe
from tests.conftest import REPO_ROOT
from vsr_models import build_model

TEST_CONFIG = REPO_ROOT / "configs" / "ttvsr_test.yaml"
TINY_VSRT = [
    "model.mid_channels=8", "model.depth=1", "model.num_extract_blocks=1", "model.num_reconstruct_blocks=1",
    "model.num_ffn_blocks=1", "model.patch_size=8", "model.spatial_size=16", "data.lr_patch=16",
]  # fmt: skip


def test_a_one_frame_ttvsr_on_several_workers_is_refused_before_ray_with_the_fix(capsys):
    import ray

    started = ray.is_initialized()
    code = main("ttvsr", ["--config", str(TEST_CONFIG), "--set", "data.num_frames=1", "--gpus", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "data.num_frames is 1 with scaling.num_workers 2: " in err
    assert "set data.num_frames to 2 or more" in err
    assert ray.is_initialized() == started  # refused before Ray


def _unused_parameters(arch: str, overrides: list[str]) -> list[str]:
    """Parameters without a gradient after one training forward and backward of the config's network."""
    cfg = load_config(Experiment, TEST_CONFIG if arch == "ttvsr" else default_recipe(arch), overrides)
    torch.manual_seed(0)
    model = build_model(arch, **cfg.model_overrides()).train()
    frames = torch.rand(1, cfg.data.num_frames, 3, cfg.data.lr_patch, cfg.data.lr_patch)
    for _ in range(cfg.data.mirror_times):  # as the ingestion appends the reversed sequence
        frames = torch.cat([frames, frames.flip(1)], dim=1)
    model(frames).mean().backward()
    return [name for name, p in model.named_parameters() if p.grad is None]


@pytest.mark.parametrize(
    ("arch", "overrides"),
    [
        ("ttvsr", ["data.num_frames=1"]),
        ("ttvsr", ["data.num_frames=1", "data.mirror_times=1"]),
        ("ttvsr", ["data.num_frames=2"]),
        ("ttvsr", ["data.num_frames=3", "model.key_frame_stride=1"]),
        ("vsrt", ["data.num_frames=1", "model.num_frames=1", *TINY_VSRT]),
        ("vsrt", ["data.num_frames=2", "model.num_frames=2", *TINY_VSRT]),
    ],
    ids=["ttvsr-1", "ttvsr-1-mirrored", "ttvsr-2", "ttvsr-3-stride-1", "vsrt-1", "vsrt-2"],
)
def test_several_workers_are_accepted_exactly_when_every_parameter_gets_a_gradient(arch, overrides):
    unused = _unused_parameters(arch, overrides)
    try:
        load_config(
            Experiment,
            TEST_CONFIG if arch == "ttvsr" else default_recipe(arch),
            [*overrides, "scaling.num_workers=2"],
        )
        accepted = True
    except ConfigError as error:
        assert "DDP refuses" in str(error)
        accepted = False
    assert accepted == (not unused), unused
    if unused:  # the one case: nothing to align or attend to in a one-frame sequence
        assert {name.split(".")[0] for name in unused} == {"spynet", "trajectory_attention"}
