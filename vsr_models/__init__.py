"""Pure-PyTorch video super-resolution: TTVSR and VSR-Transformer, their checkpoints, losses and metrics.

``build_model('ttvsr' | 'vsrt', **overrides)`` makes a network with the released REDS configuration;
every network family is a package (:mod:`vsr_models.ttvsr`, :mod:`vsr_models.vsrt`: network, fast
path, released names) registering a :class:`ModelFamily` (:mod:`vsr_models.registry`, :func:`get_family`). ``import_official`` loads the authors' released weights; ``save_checkpoint`` /
``load_checkpoint`` handle this project's own files. Inference on whole videos is in
:mod:`vsr_models.inference`, frame conversions in :mod:`vsr_models.frames`, metrics in
:mod:`vsr_models.metrics`. This package imports neither Ray nor MLflow.
"""

# importing the family packages registers their families
from vsr_models import ttvsr, vsrt
from vsr_models.checkpoint import (
    IncompatibleCheckpointError,
    import_official,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from vsr_models.frames import float_to_uint8, is_mirror_extended, mirror_extend, uint8_to_float
from vsr_models.registry import (
    ARCHITECTURES,
    InputConstraints,
    ModelFamily,
    build_model,
    get_family,
    model_arch,
    model_config,
    register_family,
)

__all__ = [
    "ARCHITECTURES",
    "IncompatibleCheckpointError",
    "InputConstraints",
    "ModelFamily",
    "build_model",
    "float_to_uint8",
    "get_family",
    "import_official",
    "is_mirror_extended",
    "load_checkpoint",
    "mirror_extend",
    "model_arch",
    "model_config",
    "read_checkpoint",
    "register_family",
    "save_checkpoint",
    "ttvsr",
    "uint8_to_float",
    "vsrt",
]
