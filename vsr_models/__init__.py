"""Pure-PyTorch video super-resolution: TTVSR and VSR-Transformer, their checkpoints, losses and metrics.

``build_model('ttvsr' | 'vsrt', **overrides)`` makes a network with the released REDS configuration;
``import_official`` loads the authors' released weights; ``save_checkpoint`` / ``load_checkpoint``
handle this project's own files. Inference on whole videos is in :mod:`vsr_models.inference`,
metrics in :mod:`vsr_models.metrics`. This package imports neither Ray nor MLflow.
"""

from vsr_models.checkpoint import (
    ARCHITECTURES,
    IncompatibleCheckpointError,
    build_model,
    import_official,
    load_checkpoint,
    model_arch,
    model_config,
    read_checkpoint,
    save_checkpoint,
)

__all__ = [
    "ARCHITECTURES",
    "IncompatibleCheckpointError",
    "build_model",
    "import_official",
    "load_checkpoint",
    "model_arch",
    "model_config",
    "read_checkpoint",
    "save_checkpoint",
]
