"""The one way a network is loaded from what a user names: own checkpoints, MLflow URIs, released weights.

:func:`load_model` takes an ``nn.Module``; a checkpoint of this project (``vsr_models.save_checkpoint``)
or a training checkpoint folder holding one (``model.pt``); with ``arch``, an authors' released
checkpoint (``vsr_models.import_official``); or an MLflow model URI (``models:/ttvsr@champion``,
loaded by :func:`pipelines.tracking.load_registered_model`). Every file is read as tensors and plain values only
(``docs/security.md``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

import vsr_models
from pipelines.common.errors import MissingInputError, ModelLoadError
from pipelines.common.files import CHECKPOINT_MODEL_FILE

ModelSpec = nn.Module | str | os.PathLike
"""A network, a checkpoint path, or an MLflow model URI."""

# ``models:/name@alias``, ``runs:/id/model``, ``s3://...``: a scheme of two or more characters.
MODEL_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> the first CUDA device if there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ModelLoadError(f"--device {device}: not a device; use auto, cpu, cuda or cuda:<index>")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {parsed} requested but CUDA is not available; use --device cpu or auto")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise ModelLoadError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices (cuda:0 ...)"
        )
    return parsed


def _load_mlflow_model(uri: str, tracking_uri: str | None) -> nn.Module:
    """An MLflow-logged network; turns MLflow's lookup failures into one message naming the URI.

    Only models in this project's ``ray_vsr`` format load (weights and config, no code); anything else,
    such as a pickled ``mlflow.pytorch`` version of an earlier release, is refused by
    :func:`pipelines.tracking.load_registered_model` with a :class:`ModelLoadError` saying how to re-register it.
    """
    from mlflow.exceptions import MlflowException

    from pipelines.tracking import load_registered_model, resolve_tracking_uri

    try:
        return load_registered_model(uri, tracking_uri)
    except (MlflowException, OSError) as error:
        raise ModelLoadError(
            f"cannot load model {uri} from the MLflow store {resolve_tracking_uri(tracking_uri)}: "
            f"{str(error).splitlines()[0]}. Check the name, version or alias (`mlflow models` / the MLflow UI, "
            f"e.g. models:/ttvsr@champion) and --mlflow-uri / $MLFLOW_TRACKING_URI"
        ) from error


def load_model(
    model: ModelSpec,
    *,
    device: str | torch.device = "cpu",
    arch: str | None = None,
    tracking_uri: str | None = None,
) -> nn.Module:
    """The network named by ``model``, in eval mode on ``device``.

    Args:
        model: an ``nn.Module``; a path to this project's checkpoint (``vsr_models.save_checkpoint``) or
            to a training checkpoint folder holding one (``model.pt``)
            or, with ``arch``, to an authors' released checkpoint; or an MLflow model URI
            (``models:/ttvsr@champion``, ``models:/ttvsr/3``, ``runs:/<run id>/model``).
        arch: ``ttvsr`` | ``vsrt``: read ``model`` as an official release of that architecture.
        tracking_uri: MLflow store for model URIs (default ``$MLFLOW_TRACKING_URI``, then ``sqlite:///mlflow.db``).

    Raises:
        MissingInputError: a checkpoint path that does not exist (a ``FileNotFoundError``).
        ModelLoadError: an MLflow URI that does not resolve.
        vsr_models.IncompatibleCheckpointError: a file that is not a checkpoint of a known network.
    """
    if isinstance(model, nn.Module):
        network = model
    elif arch is not None:
        if not Path(model).is_file():
            raise MissingInputError(f"released checkpoint {model} does not exist; check --official")
        network = vsr_models.import_official(model, arch)
    elif Path(model).is_dir():  # a training checkpoint folder (pipelines.training writes model.pt there)
        network = vsr_models.load_checkpoint(Path(model) / CHECKPOINT_MODEL_FILE)
    elif Path(model).exists():
        network = vsr_models.load_checkpoint(model)
    elif MODEL_URI.match(str(model)):
        network = _load_mlflow_model(str(model), tracking_uri)
    else:
        raise MissingInputError(
            f"model {model} is neither an existing checkpoint file nor an MLflow model URI "
            f"(models:/<name>@<alias>, models:/<name>/<version>, runs:/<run id>/model)"
        )
    return network.to(resolve_device(device)).eval()
