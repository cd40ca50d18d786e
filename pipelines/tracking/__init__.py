"""Experiment tracking and the model registry: every MLflow call of the project lives in this package.

- :mod:`~pipelines.tracking.runs`: where runs are stored (``--mlflow-uri``, ``$MLFLOW_TRACKING_URI`` or
  the embedded ``sqlite:///mlflow.db``) and :class:`RunTracker`, one run found or created by its name;
- :mod:`~pipelines.tracking.flavor`: the ``ray_vsr`` model format, which holds weights and config as plain
  data and no code (``docs/security.md``), and :func:`load_registered_model` for ``models:/ttvsr@champion``;
- :mod:`~pipelines.tracking.registry`: versions, their tags, and the ``champion`` alias rule.
"""

from pipelines.tracking.flavor import (
    FLAVOR_NAME,
    example_input,
    load_pyfunc_model,
    load_registered_model,
    save_model,
)
from pipelines.tracking.registry import (
    VAL_PSNR_TAG,
    RegisteredVersion,
    promote_champion,
    register_checkpoint,
    register_model,
    set_alias,
)
from pipelines.tracking.runs import (
    RunTracker,
    artifact_root,
    find_run,
    find_run_by_tag,
    mlflow_client,
    resolve_tracking_uri,
)

__all__ = [
    "FLAVOR_NAME",
    "VAL_PSNR_TAG",
    "RegisteredVersion",
    "RunTracker",
    "artifact_root",
    "example_input",
    "find_run",
    "find_run_by_tag",
    "load_pyfunc_model",
    "load_registered_model",
    "mlflow_client",
    "promote_champion",
    "register_checkpoint",
    "register_model",
    "resolve_tracking_uri",
    "save_model",
    "set_alias",
]
