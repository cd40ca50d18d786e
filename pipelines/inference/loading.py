"""The one way a network is loaded from what a user names: own checkpoints, MLflow URIs, released weights.

A :class:`ModelRef` names a network without loading it (small: it travels to Ray tasks and actors, which
load it where they run): a checkpoint of this project (``vsr_models.save_checkpoint``) or a training
checkpoint folder holding one (``model.pt``); with ``arch``, an authors' released checkpoint
(``vsr_models.import_official``); or an MLflow model URI (``models:/ttvsr@champion``, loaded by
:func:`pipelines.tracking.load_registered_model` from ``tracking_uri``). :meth:`ModelRef.load` is the
loader; :func:`load_model` also takes a network already built, or a path or URI as a plain string. Every
file is read as tensors and plain values only (``docs/security.md``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import vsr_models
from pipelines.common.errors import ConfigError, MissingInputError, ModelLoadError
from pipelines.common.files import CHECKPOINT_MODEL_FILE

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


@dataclass(frozen=True)
class ModelRef:
    """A network named, not loaded: what a job was given to run.

    spec: a path to this project's checkpoint (``vsr_models.save_checkpoint``) or to a training checkpoint
        folder holding one (``model.pt``); with ``arch``, to an authors' released checkpoint; or an MLflow
        model URI (``models:/ttvsr@champion``, ``models:/ttvsr/3``, ``runs:/<run id>/model``).
    arch: ``ttvsr`` | ``vsrt`` (a family of ``vsr_models.ARCHITECTURES``): ``spec`` is a release of that
        architecture (``--official``); None for this project's checkpoints and MLflow URIs.
    tracking_uri: MLflow store of model URIs (default ``$MLFLOW_TRACKING_URI``, then ``sqlite:///mlflow.db``).
    """

    spec: str
    arch: str | None = None
    tracking_uri: str | None = None

    @property
    def official(self) -> bool:
        """An authors' released checkpoint (read with ``vsr_models.import_official``)."""
        return self.arch is not None

    def load(self, device: str | torch.device = "cpu", **runtime_fields: Any) -> nn.Module:
        """The network, in eval mode on ``device``; ``runtime_fields`` change config fields that keep its
        weights, such as TTVSR's ``key_frame_stride`` (:func:`with_model_settings`).

        Raises:
            MissingInputError: a checkpoint path that does not exist (a ``FileNotFoundError``).
            ModelLoadError: an MLflow URI that does not resolve.
            vsr_models.IncompatibleCheckpointError: a file that is not a checkpoint of a known network.
            ConfigError: a runtime field that would change the network's tensors.
        """
        spec = self.spec
        if self.arch is not None:
            if not Path(spec).is_file():
                raise MissingInputError(f"released checkpoint {spec} does not exist; check --official")
            network = vsr_models.import_official(spec, self.arch)
        elif Path(spec).is_dir():  # a training checkpoint folder (pipelines.training writes model.pt there)
            network = vsr_models.load_checkpoint(Path(spec) / CHECKPOINT_MODEL_FILE)
        elif Path(spec).exists():
            network = vsr_models.load_checkpoint(spec)
        elif MODEL_URI.match(spec):
            network = _load_mlflow_model(spec, self.tracking_uri)
        else:
            raise MissingInputError(
                f"model {spec} is neither an existing checkpoint file nor an MLflow model URI "
                f"(models:/<name>@<alias>, models:/<name>/<version>, runs:/<run id>/model)"
            )
        return with_model_settings(network, runtime_fields).to(resolve_device(device)).eval()


ModelSpec = nn.Module | ModelRef | str | os.PathLike
"""A network, a :class:`ModelRef`, or a checkpoint path or MLflow model URI (read as ``ModelRef(spec)``)."""


def load_model(model: ModelSpec, *, device: str | torch.device = "cpu") -> nn.Module:
    """The network named by ``model``, in eval mode on ``device``: a network as given, a :class:`ModelRef`
    loaded (:meth:`ModelRef.load`), a path or URI loaded as ``ModelRef(model)``."""
    if isinstance(model, nn.Module):
        return model.to(resolve_device(device)).eval()
    ref = model if isinstance(model, ModelRef) else ModelRef(str(model))
    return ref.load(device)


def with_model_settings(model: Any, settings: Mapping[str, Any]) -> Any:
    """``model`` rebuilt with other values of config fields that keep its tensors, its weights kept.

    Such a field says how the trained network computes, not what it learnt: TTVSR's ``key_frame_stride``
    (which frames become key frames, whose tokens the attention reaches; Table 5 of the paper varies it
    on one trained model) or any ``runtime_fields`` entry of the family. A field that would change a
    tensor's name or shape (``mid_channels``, ``token_size``) is a :class:`ConfigError` naming it.
    """
    if not settings:
        return model
    arch = vsr_models.model_arch(model)
    family = vsr_models.get_family(arch)
    config = vsr_models.model_config(model) | dict.fromkeys(family.init_only_fields) | dict(settings)
    given = ", ".join(f"model.{k}={v!r}" for k, v in settings.items())
    try:
        with torch.device("meta"):  # shapes only: the weights are the loaded network's
            rebuilt = vsr_models.build_model(arch, **config)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{given}: {error}") from None
    weights, expected = model.state_dict(), rebuilt.state_dict()
    changed = sorted(
        name
        for name in weights.keys() | expected.keys()
        if name not in weights or name not in expected or weights[name].shape != expected[name].shape
    )
    if changed:
        raise ConfigError(
            f"{given} changes the network's tensors ({', '.join(changed[:3])}"
            f"{', ...' if len(changed) > 3 else ''}): an evaluation can only vary {arch} settings that keep "
            "the trained weights (such as key_frame_stride); train a model for each value instead"
        )
    rebuilt.load_state_dict(weights, assign=True)
    return rebuilt.eval()
