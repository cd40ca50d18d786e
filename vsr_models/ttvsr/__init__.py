"""TTVSR, the trajectory-aware Transformer (Liu et al., CVPR 2022): one package, one family.

- :mod:`~vsr_models.ttvsr.trajectory`: tokens and location maps (Secs. 3.1-3.2), shared by both paths
  (``from vsr_models.ttvsr.trajectory import tokenize, update_location_maps, ...``);
- :mod:`~vsr_models.ttvsr.network`: :class:`TTVSRConfig`, trajectory-aware attention and :class:`TTVSR`
  with its reference forward, read top to bottom like the paper's method section;
- :mod:`~vsr_models.ttvsr.fast`: the fast path, the same function reorganised for speed and memory;
- :mod:`~vsr_models.ttvsr.official`: the released checkpoints' tensor names and layout.

The imports point one way, ``fast -> network -> trajectory``: the network never imports its fast path.
:data:`FAMILY`, registered here, lists both paths in its ``implementations`` table and
:meth:`TTVSR.forward` runs the one ``TTVSRConfig.implementation`` names (``docs/models.md#code-layout``).
"""

from vsr_models.registry import ModelFamily, register_family
from vsr_models.ttvsr.fast import forward_fast
from vsr_models.ttvsr.network import (
    MIN_INPUT_MULTIPLE,
    MIN_INPUT_SIZE,
    TTVSR,
    TrajectoryAttention,
    TTVSRConfig,
    trajectory_hard_attention,
)
from vsr_models.ttvsr.official import (
    RELEASE,
    convert_official_state_dict,
    infer_official_config,
    to_official_state_dict,
)

FAMILY = register_family(
    ModelFamily(
        name="ttvsr",
        model_class=TTVSR,
        config_class=TTVSRConfig,
        from_official=convert_official_state_dict,
        to_official=to_official_state_dict,
        infer_config=infer_official_config,
        release=RELEASE,
        init_only_fields=("spynet_pretrained",),
        runtime_fields=("implementation", "compile", "checkpoint_propagation", "max_key_frames"),
        one_frame_unused="SPyNet and the trajectory attention",
        implementations={"reference": TTVSR.forward_reference, "fast": forward_fast},
    )
)

__all__ = [
    "FAMILY",
    "MIN_INPUT_MULTIPLE",
    "MIN_INPUT_SIZE",
    "TTVSR",
    "TTVSRConfig",
    "TrajectoryAttention",
    "convert_official_state_dict",
    "infer_official_config",
    "to_official_state_dict",
    "trajectory_hard_attention",
]
