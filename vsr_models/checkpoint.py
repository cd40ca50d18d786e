"""The model registry and both checkpoint formats: the authors' releases and this project's own.

- :func:`build_model` makes ``'ttvsr'`` (:class:`~vsr_models.ttvsr.TTVSR`) or ``'vsrt'``
  (:class:`~vsr_models.vsrt.VSRTransformer`) from its released REDS configuration plus overrides.
- :func:`import_official` loads a released checkpoint (``reference/README.md``, "Checkpoint files as
  released"): TTVSR's mmediting file, whose ``state_dict`` holds the generator under ``generator.``,
  or VSR-Transformer's BasicSR file with ``params`` / ``params_ema``, or a bare state dict. Tensor names
  are mapped by each model file's ``convert_official_state_dict``; anything that does not fit ends in
  one :class:`IncompatibleCheckpointError` listing every missing, unexpected and mis-shaped tensor.
- :func:`save_checkpoint` / :func:`load_checkpoint` write and read this project's format: the weights
  together with the architecture, its config, the project and torch versions and free ``extra`` data,
  written atomically.

Every file is read with ``torch.load(weights_only=True)``: no arbitrary objects are ever unpickled.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from vsr_models import ttvsr, vsrt

StateDict = dict[str, Tensor]


class IncompatibleCheckpointError(ValueError):
    """A checkpoint file does not fit the requested architecture / configuration (or is not one)."""


# -- registry --------------------------------------------------------------------------------------


def _count_indices(sd: Mapping[str, Tensor], pattern: str) -> int | None:
    """``1 + max(i)`` over the keys matching ``pattern`` (one ``(\\d+)`` group), ``None`` if none match."""
    regex = re.compile(pattern)
    indices = [int(m[1]) for key in sd if (m := regex.match(key))]
    return max(indices) + 1 if indices else None


def _infer_ttvsr_config(official: Mapping[str, Tensor]) -> dict[str, Any]:
    """Hyperparameters readable from released TTVSR tensor names and shapes."""
    found: dict[str, Any] = {
        "num_extract_blocks": _count_indices(official, r"^feat_extractor\.main\.2\.(\d+)\."),
        "num_propagation_blocks": _count_indices(official, r"^resblocks\.main\.2\.(\d+)\."),
    }
    if "feat_extractor.main.0.weight" in official:
        found["mid_channels"] = official["feat_extractor.main.0.weight"].shape[0]
    return {key: value for key, value in found.items() if value is not None}


def _infer_vsrt_config(official: Mapping[str, Tensor]) -> dict[str, Any]:
    """Hyperparameters readable from released VSR-Transformer tensor names and shapes.

    ``num_frames`` is not stored: the positional encoding's ``inv_freq`` only gives
    ``ceil(num_frames / 6)``. Both released models use ``num_frames == depth`` (5/5 REDS, 7/7 Vimeo),
    so ``depth`` is taken when it is consistent with ``inv_freq``, else the default when that is.
    """
    found: dict[str, Any] = {
        "depth": _count_indices(official, r"^transformer\.layers\.(\d+)\."),
        "num_extract_blocks": _count_indices(official, r"^feature_extraction\.(\d+)\."),
        "num_reconstruct_blocks": _count_indices(official, r"^reconstruction\.(\d+)\."),
        "num_ffn_blocks": _count_indices(
            official, r"^transformer\.layers\.0\.1\.fn\.fn\.backward_resblocks\.main\.2\.(\d+)\."
        ),
    }
    if "conv_first.weight" in official:
        found["mid_channels"] = official["conv_first.weight"].shape[0]
    if (norm := official.get("transformer.layers.0.0.fn.norm.weight")) is not None and norm.dim() == 3:
        found["spatial_size"] = norm.shape[-1]
    if (inv_freq := official.get("pos_embedding.penc.inv_freq")) is not None:
        frequencies = inv_freq.numel()
        for candidate in (found["depth"], vsrt.VSRTConfig.num_frames):
            if candidate is not None and -(-candidate // 6) == frequencies:
                found["num_frames"] = candidate
                break
    return {key: value for key, value in found.items() if value is not None}


@dataclass(frozen=True)
class Architecture:
    """How to build one network family and translate its released checkpoints.

    ``model_file`` is the family's module; by the package's contract it provides
    ``convert_official_state_dict`` (released names -> ours) and ``to_official_state_dict``.
    """

    name: str
    model_file: ModuleType
    model_class: type[nn.Module]
    config_class: type
    infer_config: Callable[[Mapping[str, Tensor]], dict[str, Any]]
    release: str  # the released file layout, for error messages

    def convert_official(self, sd: StateDict) -> StateDict:
        return self.model_file.convert_official_state_dict(sd)

    def to_official(self, sd: StateDict) -> StateDict:
        return self.model_file.to_official_state_dict(sd)


ARCHITECTURES: dict[str, Architecture] = {
    spec.name: spec
    for spec in (
        Architecture(
            "ttvsr",
            ttvsr,
            ttvsr.TTVSR,
            ttvsr.TTVSRConfig,
            _infer_ttvsr_config,
            release="mmediting: {'state_dict': {'generator.<name>': tensor}, 'meta': ...}",
        ),
        Architecture(
            "vsrt",
            vsrt,
            vsrt.VSRTransformer,
            vsrt.VSRTConfig,
            _infer_vsrt_config,
            release="BasicSR: {'params': {<name>: tensor}} (and maybe 'params_ema')",
        ),
    )
}

# Config fields that only say how to initialise weights: meaningless (and maybe a missing path) when
# the weights come from a checkpoint.
_INIT_ONLY_FIELDS = ("spynet_pretrained",)


def _architecture(arch: str) -> Architecture:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def _make_config(spec: Architecture, overrides: Mapping[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(spec.config_class)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown {spec.name} config key(s) {', '.join(unknown)}; allowed keys: {', '.join(fields)}"
        )
    values = dict(overrides)
    for name, value in values.items():
        # YAML and JSON give lists where the config holds tuples (e.g. token_scales)
        if isinstance(value, list) and isinstance(fields[name].default, tuple):
            values[name] = tuple(value)
    return spec.config_class(**values)


def build_model(arch: str, **overrides: Any) -> nn.Module:
    """A randomly initialised network with the released REDS configuration and ``overrides``.

    Args:
        arch: ``'ttvsr'`` (6,773,615 parameters by default) or ``'vsrt'`` (32,564,335).
        **overrides: fields of :class:`~vsr_models.ttvsr.TTVSRConfig` / :class:`~vsr_models.vsrt.VSRTConfig`.

    Raises:
        ValueError: unknown architecture or config key (the message lists the allowed ones).
    """
    spec = _architecture(arch)
    return spec.model_class(_make_config(spec, overrides))


def model_arch(model: nn.Module) -> str:
    """The registry name (``'ttvsr'`` / ``'vsrt'``) of a network built by :func:`build_model`."""
    for spec in ARCHITECTURES.values():
        if isinstance(model, spec.model_class):
            return spec.name
    raise ValueError(f"{type(model).__name__} is not a registered architecture ({sorted(ARCHITECTURES)})")


def model_config(model: nn.Module) -> dict[str, Any]:
    """The config fields of a registered network.

    ``build_model(model_arch(m), **model_config(m))`` rebuilds ``m`` (with fresh weights).
    """
    model_arch(model)
    return dataclasses.asdict(model.config)


def _build_for_loading(spec: Architecture, overrides: Mapping[str, Any]) -> nn.Module:
    """The network on the meta device: shapes only, no random initialisation (see :func:`_load_weights`)."""
    fields = {f.name for f in dataclasses.fields(spec.config_class)}
    values = {**overrides, **{name: None for name in _INIT_ONLY_FIELDS if name in fields}}
    config = _make_config(spec, values)
    with torch.device("meta"):
        return spec.model_class(config)


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
        raise IncompatibleCheckpointError(f"cannot read checkpoint {path}: {error}") from error


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


def _convert_each(spec: Architecture, official: StateDict) -> tuple[StateDict, list[str]]:
    """Convert released names; if the converter refuses, go name by name to find those it does not know."""
    try:
        return spec.convert_official(official), []
    except (ValueError, KeyError):
        pass
    converted, unknown = {}, []
    for name, value in official.items():
        try:
            converted.update(spec.convert_official({name: value}))
        except (ValueError, KeyError):
            unknown.append(name)
    return converted, unknown


def _official_name(spec: Architecture, ours: str) -> str:
    try:
        return next(iter(spec.to_official({ours: torch.empty(0)})))
    except (ValueError, KeyError):
        return ours


def _official_problems(spec: Architecture, model: nn.Module, official: StateDict) -> list[str]:
    """Report sections (released names) for a released state dict that does not fit ``model``."""
    converted, unknown = _convert_each(spec, official)
    problems = _mismatches(model.state_dict(), converted, lambda ours: _official_name(spec, ours))
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
    spec = _architecture(arch)
    official = _unwrap_state_dict(_load_file(path), path, key)
    inferred = spec.infer_config(official)
    config = {**inferred, **overrides}
    found = f"{arch} with {_describe(config)} (inferred from the file: {_describe(inferred)})"
    try:
        model = _build_for_loading(spec, config)
    except (TypeError, ValueError) as error:
        raise IncompatibleCheckpointError(f"{path}: cannot build {found}: {error}") from error

    problems = _official_problems(spec, model, official)
    if problems:
        fits = [
            f"arch={other.name!r} with {_describe(c)}"
            for other, c in _fitting(official)
            if (other, c) != (spec, config)  # e.g. the file fits this arch without the overrides
        ]
        raise IncompatibleCheckpointError(
            f"{path} does not fit {found}; expected layout {spec.release}:\n"
            + "\n".join(problems)
            + "\nTry other config overrides, key= ('params', 'params_ema', 'state_dict') or another arch "
            + (f"(the file does fit {fits[0]})." if fits else f"({sorted(ARCHITECTURES)}).")
        )
    return _load_weights(model, _convert_each(spec, official)[0])


def _fitting(official: StateDict) -> list[tuple[Architecture, dict[str, Any]]]:
    """The architectures (with their inferred configs) that a released state dict fits exactly."""
    fitting = []
    for spec in ARCHITECTURES.values():
        config = spec.infer_config(official)
        try:
            model = _build_for_loading(spec, config)
        except (TypeError, ValueError):
            continue
        if not _official_problems(spec, model, official):
            fitting.append((spec, config))
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
    return raw


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the network saved by :func:`save_checkpoint`, in eval mode, on ``map_location``.

    Raises:
        IncompatibleCheckpointError: not this format, or weights that do not fit the stored config
            (e.g. written by another version of the code; the message lists the tensors).
    """
    path = Path(path)
    raw = read_checkpoint(path, map_location)
    spec = _architecture(raw["arch"])
    try:
        model = _build_for_loading(spec, raw["config"])
    except (TypeError, ValueError) as error:
        raise IncompatibleCheckpointError(
            f"{path}: cannot rebuild {spec.name} from its stored config (written by ray-vsr "
            f"{raw.get('ray_vsr_version')}, this is {project_version()}): {error}"
        ) from error
    state_dict = raw["state_dict"]
    problems = _mismatches(model.state_dict(), state_dict, str)
    if problems:
        raise IncompatibleCheckpointError(
            f"{path} does not fit {spec.name} with its stored config (written by ray-vsr "
            f"{raw.get('ray_vsr_version')}, this is {project_version()}):\n" + "\n".join(problems)
        )
    return _load_weights(model, state_dict)
