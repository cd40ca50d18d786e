"""TTVSR's released checkpoints: the authors' tensor names <-> ours, and what a released state dict tells.

The released generator (mmediting, ``docs/models.md#released-checkpoint-files``) names its modules
``feat_extractor``, ``LTAM``, ``resblocks`` ...; :mod:`vsr_models.ttvsr.network` uses the paper's words.
These converters map one onto the other (timm's ``checkpoint_filter_fn``), kept beside the network
they serve; :data:`vsr_models.ttvsr.FAMILY` hands them to :mod:`vsr_models.checkpoint`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

from vsr_models.registry import count_indices
from vsr_models.spynet import spynet_official_to_ours, spynet_ours_to_official

RELEASE = "mmediting: {'state_dict': {'generator.<name>': tensor}, 'meta': ...}"
"""The released file layout, quoted in error messages."""

# Official prefix -> ours (official names with the ``generator.`` prefix already stripped).
_OFFICIAL_TO_OURS = (
    ("feat_extractor.", "feature_extractor."),
    ("LTAM.", "trajectory_attention."),
    ("resblocks.", "propagation."),
    ("upsample1.upsample_conv.", "upsample.upsample1."),
    ("upsample2.upsample_conv.", "upsample.upsample2."),
    ("conv_hr.", "upsample.conv_hr."),
    ("conv_last.", "upsample.conv_last."),
)


def _renamed(
    sd: Mapping[str, Tensor], table: Sequence[tuple[str, str]], spynet_rename: Callable[[str], str]
) -> dict[str, Tensor]:
    """``sd`` with each name's first matching ``table`` prefix replaced (others kept), SPyNet's by ``spynet_rename``."""

    def rename(key: str) -> str:
        if key.startswith("spynet."):
            return "spynet." + spynet_rename(key[len("spynet.") :])
        for old, new in table:
            if key.startswith(old):
                return new + key[len(old) :]
        return key

    return {rename(key): value for key, value in sd.items()}


def convert_official_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Released TTVSR generator state dict (``generator.`` stripped) -> this module's names."""
    return _renamed(sd, _OFFICIAL_TO_OURS, spynet_official_to_ours)


def to_official_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """This module's state dict -> the released generator's names (without ``generator.``)."""
    return _renamed(sd, [(ours, official) for official, ours in _OFFICIAL_TO_OURS], spynet_ours_to_official)


def infer_official_config(official: Mapping[str, Tensor]) -> dict[str, Any]:
    """Config fields readable from released TTVSR tensor names and shapes (block counts, channels)."""
    found: dict[str, Any] = {
        "num_extract_blocks": count_indices(official, r"^feat_extractor\.main\.2\.(\d+)\."),
        "num_propagation_blocks": count_indices(official, r"^resblocks\.main\.2\.(\d+)\."),
    }
    if "feat_extractor.main.0.weight" in official:
        found["mid_channels"] = official["feat_extractor.main.0.weight"].shape[0]
    return {key: value for key, value in found.items() if value is not None}
