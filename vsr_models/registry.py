"""The contract every network family fulfils, and the registry that names the families.

A family is one package (:mod:`vsr_models.ttvsr`, :mod:`vsr_models.vsrt`) described by a
:class:`ModelFamily`: its ``nn.Module`` and config dataclass, its code paths (reference and fast), the
converters between the authors' released tensor names and ours, what can be read back from a released
state dict, and the layout of the released file (``docs/models.md#released-checkpoint-files``). Each
package's ``__init__`` registers its family with :func:`register_family`; importing :mod:`vsr_models`
registers both (``docs/models.md#code-layout``).

Everything else goes through the hooks: :func:`build_model` makes a network by registry name,
:func:`model_arch` / :func:`model_config` say what a network is, and :mod:`vsr_models.checkpoint`
reads and writes files without knowing any family's tensor names.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

StateDict = dict[str, Tensor]
"""Tensor name -> tensor."""


@dataclass(frozen=True)
class InputConstraints:
    """What a model accepts: ``h``, ``w`` multiples of ``multiple`` and at least ``min_size``; fixed
    patch size / sequence length where not ``None``. ``why``: what makes ``multiple`` (for messages)."""

    multiple: int = 1
    min_size: int = 1
    spatial_size: int | None = None
    num_frames: int | None = None
    why: str = field(default="", compare=False)

    def problems(self, height: int, width: int, num_frames: int | None = None) -> list[str]:
        """The constraints ``height`` x ``width`` LR frames in sequences of ``num_frames`` (``None``: any
        length) break, by field name in the order ``spatial_size``, ``num_frames``, ``min_size``,
        ``multiple``; empty when the model takes them.

        One check for every caller (training crops, inference tiles); each words the refusal with the
        keys its user sets (``data.lr_patch``, ``--tile``).
        """
        sizes = (height, width)
        broken = {
            "spatial_size": self.spatial_size is not None and any(s != self.spatial_size for s in sizes),
            "num_frames": self.num_frames is not None
            and num_frames is not None
            and num_frames != self.num_frames,
            "min_size": any(s < self.min_size for s in sizes),
            "multiple": any(s % self.multiple for s in sizes),
        }
        return [name for name, failed in broken.items() if failed]


@runtime_checkable
class DeclaresInputConstraints(Protocol):
    """A model (or config) that says which LR inputs it accepts."""

    def input_constraints(self) -> InputConstraints: ...


@dataclass(frozen=True)
class ModelFamily:
    """One network family: how to build it and translate the authors' released checkpoints.

    Attributes:
        name: the registry name (``'ttvsr'``, ``'vsrt'``).
        model_class: the network; ``model_class(config)`` builds it, keeps the config as ``.config``
            and answers ``input_constraints()``.
        config_class: the config dataclass; its defaults are the released REDS model.
        from_official: released state dict (wrapper prefixes such as ``generator.`` stripped) ->
            our names; raises ``ValueError`` or ``KeyError`` on a name it does not know.
        to_official: our state dict -> the released names (inverse of ``from_official``).
        infer_config: config fields readable from a released state dict (block counts, channels,
            ...); fields it cannot read are left out.
        release: the released file layout, quoted in error messages.
        init_only_fields: config fields that only say how to initialise weights (e.g.
            ``spynet_pretrained``): meaningless, and maybe a missing path, when the weights come from a
            checkpoint.
        runtime_fields: config fields that choose how the network computes (code path, compilation,
            activation checkpointing, inference memory bounds), never which tensors it has: a checkpoint
            written with any of their values loads with any other (``load_checkpoint(path, **fields)``).
        scale: the upscaling factor of the network's output (both released families: x4).
        one_frame_unused: what a one-frame sequence leaves without a gradient (nothing to align or attend
            to), which DDP refuses (``docs/cluster.md#configurations-ddp-cannot-run``); empty when every
            parameter gets one.
        implementations: the network's code paths by the name its config's ``implementation`` field
            holds: name -> forward function taking the network first (``"reference"``: the network's
            own ``forward_reference``; ``"fast"``: the family's fast-path module). The network's
            ``forward`` runs the one its config names, so the network module never imports its fast path.
    """

    name: str
    model_class: type[nn.Module]
    config_class: type
    from_official: Callable[[StateDict], StateDict]
    to_official: Callable[[StateDict], StateDict]
    infer_config: Callable[[Mapping[str, Tensor]], dict[str, Any]]
    release: str
    init_only_fields: tuple[str, ...] = ()
    runtime_fields: tuple[str, ...] = ()
    scale: int = 4
    one_frame_unused: str = ""
    implementations: Mapping[str, Callable[..., Tensor]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.config_class):
            raise TypeError(f"family {self.name!r}: config_class {self.config_class!r} is not a dataclass")
        for kind in ("init_only_fields", "runtime_fields"):
            unknown = sorted(set(getattr(self, kind)) - set(self.field_names))
            if unknown:
                raise ValueError(f"family {self.name!r}: {kind} {unknown} are not config fields")
        for declarer in (self.model_class, self.config_class):
            if not issubclass(declarer, DeclaresInputConstraints):
                raise TypeError(f"family {self.name!r}: {declarer.__name__} has no input_constraints()")

    @property
    def field_names(self) -> tuple[str, ...]:
        """The config's field names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(self.config_class))

    def make_config(self, overrides: Mapping[str, Any]) -> Any:
        """The config with the released defaults and ``overrides``; lists become tuples where a tuple is held.

        Raises:
            ValueError: an override that is no config field (the message lists the allowed ones), or
                values the config rejects.
        """
        fields = {f.name: f for f in dataclasses.fields(self.config_class)}
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise ValueError(
                f"unknown {self.name} config key(s) {', '.join(unknown)}; allowed keys: {', '.join(fields)}"
            )
        values = dict(overrides)
        for name, value in values.items():
            # YAML and JSON give lists where the config holds tuples (e.g. token_scales)
            if isinstance(value, list) and isinstance(fields[name].default, tuple):
                values[name] = tuple(value)
        return self.config_class(**values)


_FAMILIES: dict[str, ModelFamily] = {}

ARCHITECTURES: Mapping[str, ModelFamily] = MappingProxyType(_FAMILIES)
"""Registry name -> :class:`ModelFamily`, read-only (add families with :func:`register_family`)."""


def register_family(family: ModelFamily) -> ModelFamily:
    """Add ``family`` to the registry under ``family.name`` and return it.

    Raises:
        ValueError: another family is already registered under that name.
    """
    registered = _FAMILIES.get(family.name)
    if registered is not None and registered != family:
        raise ValueError(
            f"architecture {family.name!r} is already registered "
            f"(by {registered.model_class.__module__}.{registered.model_class.__name__})"
        )
    _FAMILIES[family.name] = family
    return family


def get_family(arch: str) -> ModelFamily:
    """The family registered as ``arch``.

    Raises:
        ValueError: no such family; the message lists the registered ones.
    """
    if arch not in _FAMILIES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(_FAMILIES)}")
    return _FAMILIES[arch]


def build_model(arch: str, **overrides: Any) -> nn.Module:
    """A randomly initialised network with the released REDS configuration and ``overrides``.

    Args:
        arch: ``'ttvsr'`` (6,773,615 parameters by default) or ``'vsrt'`` (32,564,335).
        **overrides: fields of :class:`~vsr_models.ttvsr.TTVSRConfig` / :class:`~vsr_models.vsrt.VSRTConfig`.

    Raises:
        ValueError: unknown architecture or config key (the message lists the allowed ones).
    """
    family = get_family(arch)
    return family.model_class(family.make_config(overrides))


def model_family(model: nn.Module) -> ModelFamily:
    """The registered family ``model`` belongs to.

    Raises:
        ValueError: ``model`` is no registered network.
    """
    for family in _FAMILIES.values():
        if isinstance(model, family.model_class):
            return family
    raise ValueError(f"{type(model).__name__} is not a registered architecture ({sorted(_FAMILIES)})")


def model_arch(model: nn.Module) -> str:
    """The registry name (``'ttvsr'`` / ``'vsrt'``) of a network built by :func:`build_model`."""
    return model_family(model).name


def model_config(model: nn.Module) -> dict[str, Any]:
    """The config fields of a registered network.

    ``build_model(model_arch(m), **model_config(m))`` rebuilds ``m`` (with fresh weights).
    """
    model_family(model)
    return dataclasses.asdict(model.config)


def count_indices(state_dict: Mapping[str, Tensor], pattern: str) -> int | None:
    """``1 + max(i)`` over the names matching ``pattern`` (one ``(\\d+)`` group), ``None`` if none match.

    For ``infer_config`` hooks: the number of blocks or layers a state dict holds.
    """
    regex = re.compile(pattern)
    indices = [int(m[1]) for name in state_dict if (m := regex.match(name))]
    return max(indices) + 1 if indices else None
