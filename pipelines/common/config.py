"""Typed configuration: YAML files validated into nested dataclasses, with ``--set a.b=value`` overrides.

Every command accepts ``--config FILE`` and any number of ``--set key.path=value``. Values given with
``--set`` are parsed as YAML scalars/lists (``--set optim.lr=1e-4``, ``--set data.splits=[a,b]``).
An unknown or mistyped key, or a value of the wrong type, is a :class:`ConfigError` that names the key,
where it came from and the keys allowed there.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipelines.common.errors import ConfigError

T = TypeVar("T")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert what YAML cannot express (tuples, Paths)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not a valid {_describe(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {_describe(tp)} fields, got {value!r}")
        return _build(tp, value, where)
    if origin in (list, tuple):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(
                _coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-4" (no dot) as a string; accept numeric strings for floats.
            try:
                return float(value)
            except ValueError:
                _fail(where, value, tp)
        if isinstance(value, bool) or not isinstance(value, int | float):
            _fail(where, value, tp)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(where, value, tp)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            _fail(where, value, tp)
        return value
    if tp is str:
        if not isinstance(value, str):
            _fail(where, value, tp)
        return value
    if tp is Path:
        if not isinstance(value, str | Path):
            _fail(where, value, tp)
        return Path(value)
    return value


def _fail(where: str, value: Any, tp: Any) -> typing.NoReturn:
    raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r} ({type(value).__name__})")


def _unknown_key(cls: type, key: str, where: str) -> ConfigError:
    allowed = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    path = f"{where}.{key}" if where else key
    return ConfigError(f"unknown config key '{path}'.{hint} Allowed keys here: {', '.join(allowed)}")


def _merged(default: dict, given: dict) -> dict:
    """``given`` on top of ``default``, section by section."""
    merged = dict(default)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _merged(merged[key], value)
        merged[key] = value
    return merged


def _build(cls: type[T], data: dict, where: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in names:
            raise _unknown_key(cls, key, where)
    # A section whose default is the parent's own (VSR-Transformer's 5-frame `data`) keeps it for the
    # fields not given: `--set data.path=...` alone must not fall back to the section class's defaults.
    for f in dataclasses.fields(cls):
        if isinstance(data.get(f.name), dict) and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if dataclasses.is_dataclass(default):
                data = {**data, f.name: _merged(config_to_dict(default), data[f.name])}
    kwargs = {
        key: _coerce(value, hints[key], f"{where}.{key}" if where else key) for key, value in data.items()
    }
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{where or cls.__name__}: {err}") from None
    except ValueError as err:  # __post_init__ validation
        raise ConfigError(f"{where or cls.__name__}: {err}") from None


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is a value, not a section")
        node = child
    node[leaf] = value


class _Section(dict):
    """The keys under one dotted prefix of :func:`with_values` (``{"optim.lr": x}`` -> ``optim: {lr: x}``)."""


def _sections(values: Mapping[str, Any]) -> _Section:
    tree = _Section()
    for dotted, value in values.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            if not isinstance(node.get(part), _Section):
                node[part] = _Section()
            node = node[part]
        node[leaf] = value
    return tree


def _first_key(section: _Section) -> str:
    key, value = next(iter(section.items()))
    return f"{key}.{_first_key(value)}" if isinstance(value, _Section) and value else key


def _replaced(cfg: Any, given: Mapping[str, Any], where: str) -> Any:
    """``cfg`` with the fields in ``given`` changed, section by section, in field order as ``_build``."""
    cls = type(cfg)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in given:
        if key not in names:
            raise _unknown_key(cls, key, where)
    changes = {}
    for f in dataclasses.fields(cls):
        if f.name not in given:
            continue
        value, current = given[f.name], getattr(cfg, f.name)
        path = f"{where}.{f.name}" if where else f.name
        if isinstance(value, dict) and dataclasses.is_dataclass(current):
            changes[f.name] = _replaced(current, value, path)
        elif isinstance(value, _Section) and not isinstance(current, dict):
            raise ConfigError(f"{path}.{_first_key(value)}: '{f.name}' is a value, not a section")
        elif isinstance(value, _Section):
            changes[f.name] = _coerce(_merged(current, value), hints[f.name], path)
        else:
            changes[f.name] = _coerce(value, hints[f.name], path)
    try:
        return dataclasses.replace(cfg, **changes)
    except (TypeError, ValueError) as err:  # __post_init__ validation, as in _build
        raise ConfigError(f"{where or cls.__name__}: {err}") from None


def with_values(cfg: T, values: Mapping[str, Any]) -> T:
    """``cfg`` with the dotted keys of ``values`` set: ``with_values(cfg, {"optim.lr": 1e-4})``.

    The values are checked and converted as :func:`load_config` checks a file's (lists become tuples
    where a tuple is held, a mapping given for a section changes the fields it names), every changed
    section is rebuilt with ``dataclasses.replace`` so its ``__post_init__`` checks run again, up to
    ``cfg`` itself, and an unknown key is the same :class:`ConfigError` as in a file.
    """
    return _replaced(cfg, _sections(values), "")


def as_overrides(values: dict[str, Any]) -> list[str]:
    """``{"optim.lr": 3e-4, "val.max_clips": None}`` -> ``["optim.lr=0.0003", "val.max_clips=null"]``.

    Values are written as JSON, which YAML reads back unchanged (strings stay strings).
    """
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


MAX_CONFIG_BYTES = 1 << 20  # a config file is a few KiB; anything far larger is not one


def _load_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` of a config, refusing anchors and aliases first (one linear pass over the
    events): a "billion laughs" file of nested aliases is small but expands in every walk of the result,
    and configs never need them."""
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise ConfigError(
                    f"{where}: YAML aliases (*name) are not accepted in configs; write the values out"
                )
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        reason = str(err).splitlines()[0][:200]
        raise ConfigError(f"{where}: not valid YAML ({reason})") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``'optim.lr=1e-4'`` -> ``('optim.lr', 1e-4)``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.lr=1e-4")
    value = _load_yaml(raw, f"--set {key.strip()}") if raw.strip() else ""
    return key.strip(), value


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (pass an existing YAML file to --config)")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: {path.stat().st_size} bytes is not a config file (at most {MAX_CONFIG_BYTES}); "
            "pass the YAML config to --config"
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8); pass the YAML config to --config") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: a binary file, not YAML; pass the YAML config to --config")
    data = _load_yaml(text, str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config sections")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build the dataclass ``cls`` from an optional YAML file and ``--set`` overrides (applied in order)."""
    data = read_yaml(path) if path else {}
    for text in overrides or []:
        key, value = parse_override(text)
        _set_path(data, key, value)
    try:
        return _build(cls, data)
    except ConfigError as err:
        origin = f" (in {path})" if path else ""
        raise ConfigError(f"{err}{origin}") from None


def config_to_dict(cfg: Any) -> dict:
    """A dataclass config as plain YAML-safe data (tuples -> lists, Paths -> strings)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(cfg)


def dump_config(cfg: Any) -> str:
    """YAML text of a config; ``load_config`` reads it back to an equal object."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optim.lr": 2e-4, ...}``: a config flattened to dotted keys (e.g. for MLflow params)."""
    data = config_to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat
