"""VSR-Transformer's released checkpoints: the authors' tensor names <-> ours, and what a state dict tells.

The released BasicSR model (``docs/models.md#released-checkpoint-files``) nests its layers as
``transformer.layers.<i>.<0|1>.fn.fn.to_q`` ...; :mod:`vsr_models.vsrt.network` uses the paper's words.
These converters map one onto the other (timm's ``checkpoint_filter_fn``), kept beside the network
they serve; :data:`vsr_models.vsrt.FAMILY` hands them to :mod:`vsr_models.checkpoint`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from vsr_models.registry import count_indices
from vsr_models.spynet import spynet_official_to_ours, spynet_ours_to_official
from vsr_models.vsrt.network import VSRTConfig

RELEASE = "BasicSR: {'params': {<name>: tensor}} (and maybe 'params_ema')"
"""The released file layout, quoted in error messages."""

# Official tensor-name prefixes -> ours; "{}" stands for a block or layer index. The released
# Transformer nests every sub-layer as Residual(PreNorm(fn)), hence ".0.fn.fn." and ".1.fn.norm.".
_NAME_MAP: tuple[tuple[str, str], ...] = (
    ("conv_first.", "feature_extractor.main.0."),
    ("feature_extraction.{}.", "feature_extractor.main.2.{}."),
    ("pos_embedding.penc.inv_freq", "positional_encoding.inv_freq"),
    ("transformer.layers.{}.0.fn.norm.", "layers.{}.attention_norm."),
    ("transformer.layers.{}.0.fn.fn.to_q.", "layers.{}.attention.query_conv."),
    ("transformer.layers.{}.0.fn.fn.to_k.", "layers.{}.attention.key_conv."),
    ("transformer.layers.{}.0.fn.fn.to_v.", "layers.{}.attention.value_conv."),
    ("transformer.layers.{}.0.fn.fn.conv.", "layers.{}.attention.output_conv."),
    ("transformer.layers.{}.1.fn.norm.", "layers.{}.feed_forward_norm."),
    ("transformer.layers.{}.1.fn.fn.backward_resblocks.", "layers.{}.feed_forward.backward_propagation."),
    ("transformer.layers.{}.1.fn.fn.forward_resblocks.", "layers.{}.feed_forward.forward_propagation."),
    ("transformer.layers.{}.1.fn.fn.fusion.", "layers.{}.feed_forward.fusion."),
    ("reconstruction.", "reconstruction."),
    ("upconv1.", "upsample_head.upsample1."),
    ("upconv2.", "upsample_head.upsample2."),
    ("conv_hr.", "upsample_head.conv_hr."),
    ("conv_last.", "upsample_head.conv_last."),
)


def _prefix_pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + r"(\d+)".join(re.escape(part) for part in template.split("{}")))


def _renamer(
    name_map: Iterable[tuple[str, str]], spynet_prefixes: tuple[str, str], spynet_rename: Callable[[str], str]
) -> Callable[[str], str]:
    """Key renaming by ``name_map`` prefixes, SPyNet keys by ``spynet_rename`` under their prefix."""
    rules = [(_prefix_pattern(source), target) for source, target in name_map]
    spynet_source, spynet_target = spynet_prefixes

    def rename(key: str) -> str:
        if key.startswith(spynet_source):
            return spynet_target + spynet_rename(key.removeprefix(spynet_source))
        for pattern, target in rules:
            if m := pattern.match(key):
                return target.format(*m.groups()) + key[m.end() :]
        raise ValueError(
            f"unknown VSR-Transformer tensor name {key!r}; expected one starting with "
            f"{spynet_source!r} or one of {[source for source, _ in name_map]}"
        )

    return rename


_official_to_ours = _renamer(_NAME_MAP, ("spynet.spynet.", "spynet."), spynet_official_to_ours)
_ours_to_official = _renamer(
    [(ours, official) for official, ours in _NAME_MAP], ("spynet.", "spynet.spynet."), spynet_ours_to_official
)


def convert_official_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released BasicSR state dict (``params``, no prefix) -> this module's names; unknown names raise."""
    return {_official_to_ours(key): value for key, value in sd.items()}


def to_official_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_official_state_dict`: this module's names -> the released names."""
    return {_ours_to_official(key): value for key, value in sd.items()}


def infer_official_config(official: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Config fields readable from released VSR-Transformer tensor names and shapes.

    ``num_frames`` is not stored: the positional encoding's ``inv_freq`` only gives
    ``ceil(num_frames / 6)``. Both released models use ``num_frames == depth`` (5/5 REDS, 7/7 Vimeo),
    so ``depth`` is taken when it is consistent with ``inv_freq``, else the default when that is.
    """
    found: dict[str, Any] = {
        "depth": count_indices(official, r"^transformer\.layers\.(\d+)\."),
        "num_extract_blocks": count_indices(official, r"^feature_extraction\.(\d+)\."),
        "num_reconstruct_blocks": count_indices(official, r"^reconstruction\.(\d+)\."),
        "num_ffn_blocks": count_indices(
            official, r"^transformer\.layers\.0\.1\.fn\.fn\.backward_resblocks\.main\.2\.(\d+)\."
        ),
    }
    if "conv_first.weight" in official:
        found["mid_channels"] = official["conv_first.weight"].shape[0]
    if (norm := official.get("transformer.layers.0.0.fn.norm.weight")) is not None and norm.dim() == 3:
        found["spatial_size"] = norm.shape[-1]
    if (inv_freq := official.get("pos_embedding.penc.inv_freq")) is not None:
        frequencies = inv_freq.numel()
        for candidate in (found["depth"], VSRTConfig.num_frames):
            if candidate is not None and -(-candidate // 6) == frequencies:
                found["num_frames"] = candidate
                break
    return {key: value for key, value in found.items() if value is not None}
