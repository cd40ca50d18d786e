"""Both checkpoint file formats: the authors' releases and this project's own.

- :func:`import_official` loads a released checkpoint (``docs/models.md#released-checkpoint-files``):
  TTVSR's mmediting file, whose ``state_dict`` holds the generator under ``generator.``, or
  VSR-Transformer's BasicSR file with ``params`` / ``params_ema``, or a bare state dict. Tensor names
  are mapped, and the config read from the file, by the family's hooks
  (:class:`~vsr_models.registry.ModelFamily`); anything that does not fit ends in one
  :class:`IncompatibleCheckpointError` listing every missing, unexpected and mis-shaped tensor.
- :func:`save_checkpoint` / :func:`load_checkpoint` write and read this project's format: the weights
  together with the architecture, its config, the project and torch versions and free ``extra`` data,
  written atomically.

Every file is read with ``torch.load(weights_only=True)``: no arbitrary objects are ever unpickled.
"""

from __future__ import annotations

import importlib.metadata
import os
import pickle
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vsr_models.registry import ARCHITECTURES, ModelFamily, StateDict, get_family, model_arch, model_config


class IncompatibleCheckpointError(ValueError):
    """A checkpoint file does not fit the requested architecture / configuration (or is not one)."""


# -- building for loading --------------------------------------------------------------------------


def _build_for_loading(family: ModelFamily, overrides: Mapping[str, Any]) -> nn.Module:
    """The network on the meta device: shapes only, no random initialisation (see :func:`_load_weights`).

    The family's init-only fields are cleared: the weights come from the file.
    """
    config = family.make_config({**overrides, **dict.fromkeys(family.init_only_fields)})
    with torch.device("meta"):
        return family.model_class(config)


def _load_weights(model: nn.Module, state_dict: StateDict) -> nn.Module:
    """Give a meta-device ``model`` the tensors of a complete, checked ``state_dict`` (on their device).

    The tensors are adopted rather than copied into freshly initialised ones (half the memory
    traffic for a 32M-parameter model) and cast to the dtype the model declares.
    """
    expected = model.state_dict()
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state_dict.items()}, assign=True)
    left_on_meta = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left_on_meta:  # a tensor the state dict does not carry (e.g. a non-persistent buffer)
        raise RuntimeError(
            f"{type(model).__name__}: tensors not restored from the state dict: {left_on_meta}"
        )
    return model.eval()


# -- compatibility report --------------------------------------------------------------------------

_LISTED = 12  # names shown per category before "... and N more"


def _shape(t: Tensor | torch.Size) -> str:
    return "x".join(map(str, t.shape if isinstance(t, Tensor) else t)) or "scalar"


def _listing(title: str, items: list[str]) -> str:
    shown = items[:_LISTED] + ([f"... and {len(items) - _LISTED} more"] if len(items) > _LISTED else [])
    return f"  {title} ({len(items)}):\n" + "\n".join(f"    {item}" for item in shown)


def _mismatches(expected: StateDict, found: StateDict, name: Callable[[str], str]) -> list[str]:
    """Missing, unexpected and mis-shaped tensors as report sections, named by ``name``."""
    missing = [name(k) for k in expected if k not in found]
    unexpected = [name(k) for k in found if k not in expected]
    wrong_shape = [
        f"{name(k)}: file {_shape(found[k])}, model {_shape(expected[k])}"
        for k in expected
        if k in found and found[k].shape != expected[k].shape
    ]
    return [
        _listing(title, items)
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
        if items
    ]


# -- the authors' released checkpoints -------------------------------------------------------------

# Tried in this order when key=None. "params" before "params_ema": the released VSR-Transformer test
# loads BasicSR's default param_key "params", so that is what its published numbers were scored with.
_WRAPPER_KEYS = ("params", "params_ema", "state_dict")
_PREFIXES = ("generator.", "module.")


def _load_file(path: Path, map_location: str | torch.device = "cpu") -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # corrupt file, or pickled objects weights_only refuses
        # torch's message spans lines and suggests weights_only=False, which would run the file's code.
        unpickler = isinstance(error, pickle.UnpicklingError) or "WeightsUnpickler error:" in str(error)
        reason = "it holds objects other than tensors and plain values" if unpickler else _first_line(error)
        raise IncompatibleCheckpointError(
            f"cannot read checkpoint {path}: {reason}. Only tensors and plain values are loaded (never "
            "pickled code); pass a file written by vsr_models.save_checkpoint / a training checkpoint "
            "folder, a released checkpoint with --official and --arch, or a models:/ URI"
        ) from None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _unwrap_state_dict(raw: Any, path: Path, key: str | None) -> StateDict:
    """The generator's state dict inside a released file, with ``generator.`` / ``module.`` stripped."""
    if not isinstance(raw, Mapping):
        raise IncompatibleCheckpointError(f"{path} holds a {type(raw).__name__}, not a state dict")
    if key is not None:
        if key not in raw:
            raise IncompatibleCheckpointError(
                f"{path} has no entry {key!r}; its top-level keys: {sorted(raw)}"
            )
        sd = raw[key]
    else:
        sd = next((raw[k] for k in _WRAPPER_KEYS if k in raw), raw)
    if not isinstance(sd, Mapping):
        raise IncompatibleCheckpointError(f"{path}: the state dict is a {type(sd).__name__}, not a dict")
    not_tensors = sorted(k for k, v in sd.items() if not isinstance(v, Tensor))
    if not_tensors:
        raise IncompatibleCheckpointError(
            f"{path}: found no state dict (entries {not_tensors[:_LISTED]} are not tensors); "
            f"pass key= one of its top-level keys {sorted(raw)}"
        )
    for prefix in _PREFIXES:
        # mmediting files also hold e.g. a discriminator; keep only the generator
        if any(k.startswith(prefix) for k in sd):
            sd = {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)


def _convert_each(family: ModelFamily, official: StateDict) -> tuple[StateDict, list[str]]:
    """Convert released names; if the converter refuses, go name by name to find those it does not know."""
    try:
        return family.from_official(official), []
    except (ValueError, KeyError):
        pass
    converted, unknown = {}, []
    for name, value in official.items():
        try:
            converted.update(family.from_official({name: value}))
        except (ValueError, KeyError):
            unknown.append(name)
    return converted, unknown


def _official_name(family: ModelFamily, ours: str) -> str:
    try:
        return next(iter(family.to_official({ours: torch.empty(0)})))
    except (ValueError, KeyError):
        return ours


def _official_problems(family: ModelFamily, model: nn.Module, official: StateDict) -> list[str]:
    """Report sections (released names) for a released state dict that does not fit ``model``."""
    converted, unknown = _convert_each(family, official)
    problems = _mismatches(model.state_dict(), converted, lambda ours: _official_name(family, ours))
    if unknown:
        problems.insert(0, _listing("names unknown to the converter", unknown))
    return problems


def _describe(overrides: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in overrides.items()) or "the defaults"


def import_official(
    path: str | os.PathLike, arch: str, *, key: str | None = None, **overrides: Any
) -> nn.Module:
    """Build a network from the authors' released checkpoint.

    Args:
        path: the released file (``.pth``).
        arch: ``'ttvsr'`` or ``'vsrt'``.
        key: the top-level entry holding the weights. By default the first present of
            ``'params'`` (what the released VSR-Transformer test loads, BasicSR's default),
            ``'params_ema'`` and ``'state_dict'``, else the file is taken as a bare state dict.
        **overrides: config fields. Fields readable from the file (block counts, channels, and for
            VSR-Transformer ``depth``, ``spatial_size`` and ``num_frames``, the latter assumed equal to
            ``depth`` as in both releases) are inferred when not given, so the Vimeo-90K 7-frame
            VSR-Transformer imports without overrides.

    Returns:
        The network with the file's weights, in eval mode, on the CPU.

    Raises:
        FileNotFoundError: no such file.
        IncompatibleCheckpointError: unreadable file, or tensors that do not fit; the message lists
            every missing, unexpected and mis-shaped tensor (released names) and what to try.
    """
    path = Path(path)
    family = get_family(arch)
    official = _unwrap_state_dict(_load_file(path), path, key)
    inferred = family.infer_config(official)
    config = {**inferred, **overrides}
    found = f"{arch} with {_describe(config)} (inferred from the file: {_describe(inferred)})"
    try:
        model = _build_for_loading(family, config)
    except (TypeError, ValueError) as error:
        raise IncompatibleCheckpointError(f"{path}: cannot build {found}: {error}") from error

    problems = _official_problems(family, model, official)
    if problems:
        fits = [
            f"arch={other.name!r} with {_describe(c)}"
            for other, c in _fitting(official)
            if (other, c) != (family, config)  # e.g. the file fits this arch without the overrides
        ]
        raise IncompatibleCheckpointError(
            f"{path} does not fit {found}; expected layout {family.release}:\n"
            + "\n".join(problems)
            + "\nTry other config overrides, key= ('params', 'params_ema', 'state_dict') or another arch "
            + (f"(the file does fit {fits[0]})." if fits else f"({sorted(ARCHITECTURES)}).")
        )
    return _load_weights(model, _convert_each(family, official)[0])


def _fitting(official: StateDict) -> list[tuple[ModelFamily, dict[str, Any]]]:
    """The architectures (with their inferred configs) that a released state dict fits exactly."""
    fitting = []
    for family in ARCHITECTURES.values():
        config = family.infer_config(official)
        try:
            model = _build_for_loading(family, config)
        except (TypeError, ValueError):
            continue
        if not _official_problems(family, model, official):
            fitting.append((family, config))
    return fitting


# -- this project's checkpoints --------------------------------------------------------------------

CHECKPOINT_FORMAT = "ray-vsr"
FORMAT_VERSION = 1


def project_version() -> str:
    """The installed ``ray-vsr`` distribution's version (``'unknown'`` when run from an uninstalled tree)."""
    try:
        return importlib.metadata.version("ray-vsr")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


_PLAIN_TYPES = (str, int, float, bool, type(None), Tensor)


def _check_loadable(value: Any, where: str) -> None:
    """Refuse, before writing, what ``torch.load(weights_only=True)`` could not read back."""
    if isinstance(value, _PLAIN_TYPES):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, _PLAIN_TYPES):
                raise TypeError(f"{where}: key {k!r} of type {type(k).__name__} cannot be stored")
            _check_loadable(v, f"{where}[{k!r}]")
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_loadable(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}; checkpoints hold only tensors, numbers, strings, None and "
        "dicts / lists / tuples of them (they are read with torch.load(weights_only=True))"
    )


def save_checkpoint(
    model: nn.Module, path: str | os.PathLike, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write ``model`` with its architecture and config to ``path``, atomically.

    The file is a ``torch.save`` dict: ``format``, ``format_version``, ``arch``, ``config``,
    ``state_dict`` (on the CPU), ``ray_vsr_version``, ``torch_version`` and ``extra`` (e.g. optimizer
    state, iteration; only tensors, numbers, strings, None and containers of them). It is written to
    a temporary file beside ``path`` and moved into place with ``os.replace``, so ``path`` is always
    either the previous file or the complete new one.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    extra = dict(extra or {})
    _check_loadable(extra, "extra")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": model_arch(model),
        "config": model_config(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "ray_vsr_version": project_version(),
        "torch_version": str(torch.__version__),
        "extra": extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


# What load_checkpoint needs from a file, and of which type.
_REQUIRED_KEYS = {"arch": str, "config": dict, "state_dict": dict}


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw contents of a file written by :func:`save_checkpoint` (see there for the keys)."""
    path = Path(path)
    raw = _load_file(path, map_location)
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        hint = ""
        if isinstance(raw, dict) and any(k in raw for k in _WRAPPER_KEYS):
            hint = "; it looks like an authors' release: use vsr_models.import_official(path, arch=...)"
        raise IncompatibleCheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint{hint}")
    if raw.get("format_version", 0) > FORMAT_VERSION:
        raise IncompatibleCheckpointError(
            f"{path} has format version {raw['format_version']} (written by ray-vsr "
            f"{raw.get('ray_vsr_version')}); this ray-vsr {project_version()} reads up to version "
            f"{FORMAT_VERSION}: upgrade ray-vsr"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in raw]
    wrong = [key for key, kind in _REQUIRED_KEYS.items() if key in raw and not isinstance(raw[key], kind)]
    if missing or wrong:
        raise IncompatibleCheckpointError(
            f"{path} is a damaged {CHECKPOINT_FORMAT} checkpoint: "
            + "; ".join(
                [f"no '{k}'" for k in missing]
                + [f"'{k}' is not a {_REQUIRED_KEYS[k].__name__}" for k in wrong]
            )
            + ". Use another checkpoint of the run, or re-save the network with vsr_models.save_checkpoint"
        )
    return raw


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", **runtime: Any
) -> nn.Module:
    """Rebuild the network saved by :func:`save_checkpoint`, in eval mode, on ``map_location``.

    ``runtime``: values for the family's runtime fields (e.g. ``implementation="reference"``,
    ``max_key_frames=8``) in place of the stored ones; they do not touch the weights.

    Raises:
        IncompatibleCheckpointError: not this format, or weights that do not fit the stored config
            (e.g. written by another version of the code; the message lists the tensors).
        ValueError: a ``runtime`` key that is no runtime field of the checkpoint's family.
    """
    path = Path(path)
    raw = read_checkpoint(path, map_location)
    family = get_family(raw["arch"])
    not_runtime = sorted(set(runtime) - set(family.runtime_fields))
    if not_runtime:
        raise ValueError(
            f"{family.name} checkpoints can be loaded with other values of {list(family.runtime_fields)} "
            f"only, not {not_runtime}"
        )
    try:
        model = _build_for_loading(family, {**raw["config"], **runtime})
    except (TypeError, ValueError) as error:
        raise IncompatibleCheckpointError(
            f"{path}: cannot rebuild {family.name} from its stored config (written by ray-vsr "
            f"{raw.get('ray_vsr_version')}, this is {project_version()}): {error}"
        ) from error
    state_dict = raw["state_dict"]
    problems = _mismatches(model.state_dict(), state_dict, str)
    if problems:
        raise IncompatibleCheckpointError(
            f"{path} does not fit {family.name} with its stored config (written by ray-vsr "
            f"{raw.get('ray_vsr_version')}, this is {project_version()}):\n" + "\n".join(problems)
        )
    return _load_weights(model, state_dict)
