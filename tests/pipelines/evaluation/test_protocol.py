"""The validation protocol: one object for the scoring settings, its lineage tag, and the evaluation config
built from it or giving it back."""

from __future__ import annotations

import json

import pytest

from pipelines.common.errors import ConfigError
from pipelines.evaluation.config import EvaluationConfig
from pipelines.evaluation.protocol import ValidationProtocol


def test_lineage_is_the_val_protocol_tag_of_a_registered_version():
    protocol = ValidationProtocol(
        split="val4", channel="y", crop_border=4, max_clips=2, max_frames=5, chunk=10
    )
    expected = {
        "split": "val4",
        "channel": "y",
        "crop_border": 4,
        "centre_frame_only": False,
        "mirror_times": 0,
        "max_clips": 2,
        "max_frames": 5,
    }
    assert protocol.lineage() == json.dumps(expected, sort_keys=True)  # chunk changes memory, not scores
    assert ValidationProtocol(chunk=3).lineage() == ValidationProtocol().lineage()


def test_an_evaluation_config_holds_a_protocol_of_whole_clips():
    protocol = ValidationProtocol(
        split="test", channel="y", crop_border=4, mirror_times=2, max_clips=3, chunk=8
    )
    cfg = EvaluationConfig.of(protocol, model="m.pt", data="data/vid4")
    assert (cfg.model, cfg.data, cfg.split, cfg.channel, cfg.chunk) == ("m.pt", "data/vid4", "test", "y", 8)
    assert cfg.protocol == protocol
    with pytest.raises(ConfigError, match="whole clips"):
        EvaluationConfig.of(ValidationProtocol(max_frames=4), model="m.pt")


def test_the_model_ref_of_an_evaluation_names_its_source_and_store():
    ref = EvaluationConfig(official="x.pth", arch="vsrt", tracking_uri="sqlite:///a.db").model_ref()
    assert (ref.spec, ref.arch, ref.tracking_uri, ref.official) == ("x.pth", "vsrt", "sqlite:///a.db", True)
    ref = EvaluationConfig().model_ref("sqlite:///b.db")
    assert (ref.spec, ref.arch, ref.tracking_uri, ref.official) == (
        "models:/ttvsr@champion",
        None,
        "sqlite:///b.db",
        False,
    )
