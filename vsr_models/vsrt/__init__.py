"""VSR-Transformer (Cao et al., arXiv 2106.06847, 2021): one package, one family.

- :mod:`~vsr_models.vsrt.network`: :class:`VSRTConfig`, the positional encoding, STCSA, BOFF and
  :class:`VSRTransformer` with its reference forward, as the released code computes them;
- :mod:`~vsr_models.vsrt.fast`: the fast path, the same function in channels_last;
- :mod:`~vsr_models.vsrt.official`: the released checkpoints' tensor names and layout.

The imports point one way, ``fast -> network``: the network never imports its fast path.
:data:`FAMILY`, registered here, lists both paths in its ``implementations`` table and
:meth:`VSRTransformer.forward` runs the one ``VSRTConfig.implementation`` names
(``docs/models.md#code-layout``).
"""

from vsr_models.registry import ModelFamily, register_family
from vsr_models.vsrt.fast import forward_fast
from vsr_models.vsrt.network import (
    BidirectionalFlowFeedForward,
    SpatialTemporalConvSelfAttention,
    SpatialTemporalPositionalEncoding,
    VSRTConfig,
    VSRTransformer,
    VSRTransformerLayer,
)
from vsr_models.vsrt.official import (
    RELEASE,
    convert_official_state_dict,
    infer_official_config,
    to_official_state_dict,
)

FAMILY = register_family(
    ModelFamily(
        name="vsrt",
        model_class=VSRTransformer,
        config_class=VSRTConfig,
        from_official=convert_official_state_dict,
        to_official=to_official_state_dict,
        infer_config=infer_official_config,
        release=RELEASE,
        init_only_fields=("spynet_pretrained",),
        runtime_fields=("implementation",),
        implementations={"reference": VSRTransformer.forward_reference, "fast": forward_fast},
    )
)

__all__ = [
    "FAMILY",
    "BidirectionalFlowFeedForward",
    "SpatialTemporalConvSelfAttention",
    "SpatialTemporalPositionalEncoding",
    "VSRTConfig",
    "VSRTransformer",
    "VSRTransformerLayer",
    "convert_official_state_dict",
    "infer_official_config",
    "to_official_state_dict",
]
