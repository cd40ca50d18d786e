"""ModelRef: a network named without loading it; load() is the one loader, runtime fields included."""

from __future__ import annotations

import pytest
import torch

import vsr_models
from pipelines.common.errors import MissingInputError
from pipelines.inference.loading import ModelRef, load_model

TINY_TTVSR = {"mid_channels": 8, "num_extract_blocks": 1, "num_propagation_blocks": 1}


def test_load_sets_runtime_fields_and_keeps_the_weights(tmp_path):
    torch.manual_seed(0)
    network = vsr_models.build_model("ttvsr", **TINY_TTVSR).eval()
    checkpoint = str(vsr_models.save_checkpoint(network, tmp_path / "tiny.pt"))

    strided = ModelRef(checkpoint).load("cpu", key_frame_stride=5)

    assert vsr_models.model_config(strided)["key_frame_stride"] == 5
    for key, value in network.state_dict().items():
        assert torch.equal(strided.state_dict()[key], value)
    with torch.no_grad():
        assert strided(torch.rand(1, 6, 3, 64, 64)).shape == (1, 6, 3, 256, 256)
    assert vsr_models.model_config(load_model(checkpoint)) == vsr_models.model_config(network)


def test_a_released_file_is_official_and_a_missing_one_says_check_official(tmp_path):
    released = ModelRef(str(tmp_path / "TTVSR_REDS.pth"), arch="ttvsr")
    assert released.official and not ModelRef("models:/ttvsr@champion").official
    with pytest.raises(MissingInputError, match="check --official"):
        released.load()
