"""The ``ray_vsr`` MLflow model format: written by :func:`save_model`, read by :func:`load_registered_model`.

A model's artifacts are ::

    MLmodel                     flavors ray_vsr and python_function, signature, input example info
    model.pt                    vsr_models.save_checkpoint: arch, config, CPU state dict, versions
    input_example.json          a (1, t, 3, h, w) float32 LR clip the model accepts
    serving_input_example.json  the same as a serving request ({"inputs": ...})

``model.pt`` holds tensors and plain values only and is read with ``torch.load(weights_only=True)``
(:func:`vsr_models.load_checkpoint`); the network is rebuilt by this installed code from its arch and
config. :func:`load_registered_model` reads ``MLmodel`` with ``yaml.safe_load`` and nothing but ``model.pt``, and
refuses anything else, in particular versions logged by earlier releases with
``mlflow.pytorch.log_model`` (a pickled ``nn.Module`` whose unpickling runs whatever code the registry
holds), with how to re-register them.

Registration records the sha256 of every file of the version (:func:`record_artifact_digests`, the
version tag :data:`ARTIFACT_DIGEST_TAG`): a tag is written through the tracking server, which whoever can
write the artifact store cannot change. :func:`load_registered_model` checks ``MLmodel`` and ``model.pt``
against it, :func:`load_pyfunc_model` every file, before anything is used. ``mlflow.pyfunc.load_model``
on its own checks nothing: it imports whatever module ``MLmodel`` names, so a version whose files someone
could change is loaded as a pyfunc with :func:`load_pyfunc_model` only (``docs/security.md``).
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipelines.common.files import CHECKPOINT_MODEL_FILE, check_unchanged, project_version, sha256_file
from pipelines.tracking.runs import mlflow_client, resolve_tracking_uri

FLAVOR_NAME = "ray_vsr"
"""The MLflow flavor of this project's registered models (see the module docstring for the layout)."""
FLAVOR_FORMAT_VERSION = 1
MODEL_DATA_FILE = CHECKPOINT_MODEL_FILE  # "model.pt", as in a training checkpoint folder
MLMODEL_FILE = "MLmodel"
PYFUNC_LOADER_MODULE = "pipelines.tracking.flavor"
"""``python_function`` loader: a module of the installed project, never code from the artifact store."""
REGISTER_JOB = "jobs/register_model.py"
ARTIFACT_DIGEST_TAG = "artifact_sha256"
"""Version tag: ``{file: sha256}`` of every file of the version, recorded at registration."""
_MODELS_PREFIX = "models:/"


def signature(input_example: np.ndarray):
    """Frames of any batch, length and size: only the channel axis is fixed."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    # Unnamed specs: the pyfunc model takes one plain array, not a dict of named inputs.
    any_frames = (-1, -1, input_example.shape[2], -1, -1)
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), any_frames)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), any_frames)]),
    )


def example_input(model: nn.Module) -> np.ndarray:
    """A small ``(1, t, 3, h, w)`` LR clip ``model`` accepts (its fixed length and size where it has them)."""
    constraints = model.input_constraints()
    frames = constraints.num_frames or 3
    size = constraints.spatial_size or max(constraints.min_size, constraints.multiple)
    return np.random.default_rng(0).random((1, frames, 3, size, size), dtype=np.float32)


def save_model(
    model: nn.Module,
    path: str | os.PathLike,
    mlflow_model: Any = None,
    signature: Any = None,
    input_example: np.ndarray | None = None,
) -> Path:
    """Write ``model`` as an MLflow model in the ``ray_vsr`` flavor into the new folder ``path``.

    ``mlflow.models.Model.log(flavor=pipelines.tracking, ...)`` calls this with the ``Model`` it logs.
    The folder holds ``MLmodel``, ``model.pt`` (:func:`vsr_models.save_checkpoint`) and, with
    ``input_example``, ``input_example.json`` / ``serving_input_example.json``. No code, no pickled
    objects and no ``code_paths``: the reader rebuilds the network with its own installed ``vsr_models``.
    Nor are there requirement files: ``pipelines.tracking`` is not on PyPI, so serve the model
    (``mlflow models serve --env-manager local``) from an environment where ray-vsr is installed.
    """
    import mlflow.pyfunc
    from mlflow.models import Model

    # The helper every MLflow flavor (mlflow.pytorch, mlflow.sklearn, ...) saves its input example with.
    from mlflow.models.utils import _save_example

    import vsr_models

    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} is not empty: an MLflow model is written into a new folder")
    path.mkdir(parents=True, exist_ok=True)
    mlflow_model = mlflow_model if mlflow_model is not None else Model()
    checkpoint = vsr_models.save_checkpoint(model, path / MODEL_DATA_FILE)
    _chmod_like_new_file(checkpoint)
    if signature is not None:
        mlflow_model.signature = signature
    if input_example is not None:
        _save_example(mlflow_model, input_example, str(path))
    mlflow_model.add_flavor(
        FLAVOR_NAME,
        data=MODEL_DATA_FILE,
        format_version=FLAVOR_FORMAT_VERSION,
        arch=vsr_models.model_arch(model),
        ray_vsr_version=project_version(),
        torch_version=str(torch.__version__),
    )
    mlflow.pyfunc.add_to_model(mlflow_model, loader_module=PYFUNC_LOADER_MODULE, data=MODEL_DATA_FILE)
    mlflow_model.model_size_bytes = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    mlflow_model.save(str(path / MLMODEL_FILE))
    return path


def _chmod_like_new_file(path: Path) -> None:
    """Give ``path`` the mode of a file created under the umask (``save_checkpoint``'s temporary file is
    private, 0600), so a shared artifact store lets the other users read the model."""
    probe = path.with_name(f".{path.name}.mode")
    probe.touch()  # created with 0666 & ~umask (reading the umask with os.umask would change it)
    try:
        path.chmod(probe.stat().st_mode & 0o777)
    finally:
        probe.unlink()


class _PyfuncModel:
    """What ``mlflow.pyfunc.load_model`` wraps: float32 ``(n, t, 3, h, w)`` LR frames in, SR frames out."""

    def __init__(self, network: nn.Module) -> None:
        self.network = network

    def predict(self, model_input: np.ndarray, params: Mapping[str, Any] | None = None) -> np.ndarray:
        frames = torch.from_numpy(np.ascontiguousarray(model_input, dtype=np.float32))
        with torch.inference_mode():
            return self.network(frames).numpy()


def _load_pyfunc(data_path: str, model_config: Mapping[str, Any] | None = None) -> _PyfuncModel:
    """``python_function`` loader of the ``ray_vsr`` flavor: ``data_path`` is the model's ``model.pt``."""
    import vsr_models

    return _PyfuncModel(vsr_models.load_checkpoint(data_path))


# -- the version's files, as registered ----------------------------------------------------------------


def artifact_digests(folder: str | os.PathLike) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    root = Path(folder)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def record_artifact_digests(tracking_uri: str, name: str, version: str) -> dict[str, str]:
    """Hash the files the registry holds for ``name`` version ``version`` into its
    :data:`ARTIFACT_DIGEST_TAG` tag, right after registration; the digests."""
    from mlflow.artifacts import download_artifacts

    client = mlflow_client(tracking_uri)
    location = client.get_model_version_download_uri(name, version)
    with tempfile.TemporaryDirectory(prefix="ray-vsr-model-") as tmp:
        folder = download_artifacts(artifact_uri=location, dst_path=tmp, tracking_uri=tracking_uri)
        digests = artifact_digests(folder)
    client.set_model_version_tag(name, version, ARTIFACT_DIGEST_TAG, json.dumps(digests, sort_keys=True))
    return digests


def _registered_digests(model_uri: str, version: Any) -> dict[str, str] | None:
    """The version's recorded digests; None for a version registered before they were recorded."""
    from pipelines.common.errors import ModelLoadError

    text = (dict(version.tags or {}) if version is not None else {}).get(ARTIFACT_DIGEST_TAG)
    if text is None:
        return None
    try:
        digests = json.loads(text)
    except ValueError:
        digests = None
    if not isinstance(digests, dict):
        raise ModelLoadError(f"{model_uri}: its {ARTIFACT_DIGEST_TAG} tag is not the JSON ray-vsr writes")
    return digests


def _check_files(model_uri: str, registered: dict[str, str], found: Mapping[str, str]) -> None:
    """Refuse the model unless every file in ``found`` (``{name: sha256}``) is as registered."""
    from pipelines.common.errors import ModelLoadError

    check_unchanged(
        registered,
        found,
        lambda name, change: ModelLoadError(
            f"{model_uri}: its file {name} was {change} in the artifact store after registration "
            f"(the {ARTIFACT_DIGEST_TAG} version tag), so it is refused; re-register the model from "
            f"its training checkpoint (python {REGISTER_JOB})"
        ),
    )


def load_pyfunc_model(model_uri: str, tracking_uri: str | None = None) -> Any:
    """``mlflow.pyfunc.load_model`` of a registered version (``models:/ttvsr@champion``,
    ``models:/ttvsr/3``), after checking every file against the version's :data:`ARTIFACT_DIGEST_TAG`
    and that ``MLmodel`` names this installed module as the loader: a doctored ``MLmodel`` or a module
    placed beside it is refused before pyfunc imports anything.

    Raises:
        ModelLoadError: not a registered version, a version without recorded digests, a file changed,
            added or removed since registration, or another loader module.
    """
    import mlflow.pyfunc
    import yaml
    from mlflow.artifacts import download_artifacts

    from pipelines.common.errors import ModelLoadError

    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow_client(uri)
    pinned, version = _pin_version(client, model_uri)
    registered = _registered_digests(model_uri, version)
    if registered is None:
        raise ModelLoadError(
            f"{model_uri}: only a registered version with recorded file hashes ({ARTIFACT_DIGEST_TAG} tag) "
            f"is loaded as a pyfunc (models:/<name>/<version> or models:/<name>@<alias>); re-register it "
            f"with python {REGISTER_JOB}, or load the network with load_registered_model"
        )
    with tempfile.TemporaryDirectory(prefix="ray-vsr-model-") as tmp:
        folder = download_artifacts(artifact_uri=pinned, dst_path=tmp, tracking_uri=uri, registry_uri=uri)
        _check_files(model_uri, registered, artifact_digests(folder))
        conf = yaml.safe_load((Path(folder) / MLMODEL_FILE).read_text())
        pyfunc = conf.get("flavors", {}).get("python_function", {}) if isinstance(conf, dict) else {}
        if pyfunc.get("loader_module") != PYFUNC_LOADER_MODULE or pyfunc.get("code"):
            raise ModelLoadError(f"{model_uri}: its pyfunc loader is not {PYFUNC_LOADER_MODULE}; refused")
        return mlflow.pyfunc.load_model(folder)


# -- loading -----------------------------------------------------------------------------------------


def load_registered_model(model_uri: str, tracking_uri: str | None = None) -> nn.Module:
    """A registered or logged network (``models:/ttvsr@champion``, ``runs:/<id>/model``) on the CPU.

    Only the ``ray_vsr`` format is loaded: ``MLmodel`` is read with ``yaml.safe_load`` and ``model.pt``
    with :func:`vsr_models.load_checkpoint` (tensors and plain values); nothing else of the model's
    artifacts is read, so nothing in the registry can run code here (``docs/security.md``).

    Raises:
        ModelLoadError: a model in another format, in particular a pickled ``mlflow.pytorch`` model
            of an earlier release (the message says how to re-register it), or a ``model.pt`` that is
            not a plain ray-vsr checkpoint.
        MlflowException: the URI names no model (no such name, version or alias).
    """
    import yaml
    from mlflow.artifacts import download_artifacts

    import vsr_models
    from pipelines.common.errors import ModelLoadError

    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow_client(uri)
    # An alias is resolved once, so MLmodel and model.pt come from the same version even if it moves.
    pinned, version = _pin_version(client, model_uri)
    with tempfile.TemporaryDirectory(prefix="ray-vsr-model-") as tmp:

        def fetch(name: str) -> Path:
            return Path(
                download_artifacts(
                    artifact_uri=f"{pinned}/{name}", dst_path=tmp, tracking_uri=uri, registry_uri=uri
                )
            )

        mlmodel = fetch(MLMODEL_FILE)
        try:
            conf = yaml.safe_load(mlmodel.read_text())
        except yaml.YAMLError as error:
            raise ModelLoadError(
                f"{model_uri}: its {MLMODEL_FILE} file is not valid YAML ({error})"
            ) from None
        flavors = conf.get("flavors") if isinstance(conf, dict) else None
        flavors = flavors if isinstance(flavors, dict) else {}
        flavor = flavors.get(FLAVOR_NAME)
        if not isinstance(flavor, dict):
            raise ModelLoadError(_refusal(client, model_uri, version, flavors))
        if int(flavor.get("format_version", 1)) > FLAVOR_FORMAT_VERSION:
            raise ModelLoadError(
                f"{model_uri} is in {FLAVOR_NAME} format version {flavor['format_version']} (written by "
                f"ray-vsr {flavor.get('ray_vsr_version')}); this ray-vsr {project_version()} reads up to "
                f"version {FLAVOR_FORMAT_VERSION}: upgrade ray-vsr"
            )
        model_file = fetch(MODEL_DATA_FILE)
        registered = _registered_digests(model_uri, version)
        if registered is not None:  # MLmodel and model.pt, the files read here, as registered
            read = {MLMODEL_FILE: mlmodel, MODEL_DATA_FILE: model_file}
            found = {name: sha256_file(path) for name, path in read.items()}
            _check_files(model_uri, {name: registered.get(name, "") for name in read}, found)
        try:
            return vsr_models.load_checkpoint(model_file)
        except vsr_models.IncompatibleCheckpointError as error:
            text = str(error)
            # vsr_models words it so, or keeps torch's UnpicklingError as the cause.
            pickled = "other than tensors" in text or isinstance(error.__cause__, pickle.UnpicklingError)
            if pickled:
                reason = (
                    f"its {MODEL_DATA_FILE} holds objects other than tensors and plain values, which "
                    "ray-vsr never writes: the version was not registered by ray-vsr or has been tampered "
                    "with, and it is refused (unpickling it could run code)"
                )
            else:
                reason = text.replace(str(Path(tmp) / MODEL_DATA_FILE), MODEL_DATA_FILE)
            raise ModelLoadError(f"{model_uri}: {reason}. {_reregister_hint(client, version)}") from None


def _pin_version(client: Any, model_uri: str) -> tuple[str, Any]:
    """The URI the model's files are fetched under (``<base>/MLmodel``) and its ModelVersion, if any.

    ``models:/name@alias`` and ``models:/name/<n>`` become the version's artifact location as the
    registry reports it (``get_model_version_download_uri``), and ``models:/<model id>`` (an MLflow 3
    LoggedModel) its artifact location: downloading through a ``models:/`` URI would look the name up
    in the process-wide registry, not in ``client``'s. Other URIs (``runs:/<id>/model``,
    ``models:/name/<stage>``, storage URIs) stay as they are, with None.
    """
    uri = model_uri.rstrip("/")
    if not uri.startswith(_MODELS_PREFIX):
        return uri, None
    parts = uri[len(_MODELS_PREFIX) :].split("/")
    if len(parts) == 1 and "@" in parts[0]:
        name, alias = parts[0].rsplit("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    elif len(parts) == 2 and parts[1].isdigit():
        version = client.get_model_version(parts[0], parts[1])
    elif len(parts) == 1:
        return client.get_logged_model(parts[0]).artifact_location.rstrip("/"), None
    else:
        return uri, None
    return client.get_model_version_download_uri(version.name, version.version).rstrip("/"), version


def _refusal(client: Any, model_uri: str, version: Any, flavors: Mapping[str, Any]) -> str:
    """Why a model that is not in the ``ray_vsr`` format is not loaded, and how to re-register it."""
    if "pytorch" in flavors:
        what = (
            "an MLflow `pytorch` model (a pickled nn.Module, as registered by ray-vsr before it had its "
            f"own `{FLAVOR_NAME}` format)"
        )
    else:
        what = f"not in ray-vsr's `{FLAVOR_NAME}` format (its flavors: {sorted(flavors) or 'none'})"
    return (
        f"{model_uri} is refused: it is {what}, and loading it would unpickle code from the model "
        "registry, which anyone who can write to the registry controls (docs/security.md). ray-vsr loads "
        f"only `{FLAVOR_NAME}` models (weights and config as plain data). "
        + _reregister_hint(client, version)
    )


def _reregister_hint(client: Any, version: Any) -> str:
    """``Re-register it ... python jobs/register_model.py <checkpoint folder> --name <model>``, with the
    folder filled in from the version's ``mlflow_run_id`` / ``iteration`` tags where they are."""
    from mlflow.exceptions import MlflowException

    name = version.name if version is not None else "<model>"
    tags = dict(version.tags or {}) if version is not None else {}
    storage, run_name, iteration = "<storage_path>", "<run name>", "<iteration>"
    if str(tags.get("iteration", "")).isdigit():
        iteration = f"{int(tags['iteration']):08d}"
    if tags.get("mlflow_run_id"):
        try:
            run = client.get_run(tags["mlflow_run_id"])
            run_name = run.info.run_name or run_name
            storage = run.data.params.get("run.storage_path", storage)
        except MlflowException:
            pass
    folder = f"{storage}/{run_name}/checkpoint_{iteration}"
    aliases = [a for a in (getattr(version, "aliases", None) or [])]
    alias = f" --alias {aliases[0]}" if aliases else ""
    found = (
        f" (the version's tags: MLflow run {tags['mlflow_run_id']}, iteration {tags['iteration']})"
        if tags.get("mlflow_run_id") and tags.get("iteration")
        else " (a version registered by training has the run and iteration in its `mlflow_run_id` and "
        "`iteration` tags)"
    )
    return (
        f"Re-register it from the training checkpoint it came from{found}: "
        f"`python {REGISTER_JOB} {folder} --name {name}{alias}` (with the same --mlflow-uri / "
        "$MLFLOW_TRACKING_URI), then load the new version"
    )
