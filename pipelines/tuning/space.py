"""Search spaces: dotted training-config keys mapped to distributions, as written in a search YAML.

``optim.lr: {loguniform: [1.0e-5, 1.0e-3]}`` is one searched key (:data:`DISTRIBUTIONS` lists the
kinds); each becomes a ``ray.tune`` sampler when the search runs.

A tied group draws several keys together: its name lists them, separated by commas, and every drawn
value sets all of them (:func:`assign`)::

    model.num_frames, data.num_frames: {grid: [3, 5]}               # the same value to each key
    model.token_size, model.token_scales: {grid: [[4, [4, 6, 8]], [8, [8, 12, 16]]]}   # one per key

An option that is a list of exactly one value per key gives each key its own value, in order; any other
value goes to every key of the group.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipelines.common.errors import ConfigError

# What each distribution samples (the names and semantics of ray.tune's samplers).
DISTRIBUTIONS = {
    "loguniform": "floats in [low, high], uniform in log space",
    "uniform": "floats in [low, high]",
    "randint": "integers low <= x < high (high excluded, as tune.randint)",
    "choice": "one of the listed values",
    "grid": "every listed value, each num_samples times",
}
_RANGES = ("loguniform", "uniform", "randint")


def _number(value: Any, integer: bool) -> float | int | None:
    """A bound as a number; YAML reads ``1e-5`` (no dot) as a string, so numeric strings count."""
    if isinstance(value, bool):
        return None
    if integer:
        return value if isinstance(value, int) else None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return value if isinstance(value, int | float) else None


@dataclass(frozen=True)
class Distribution:
    """One searched value: ``{kind: args}`` in YAML, a ``ray.tune`` sampler when the search runs."""

    kind: str
    args: list[Any]  # [low, high] for ranges, the values for choice / grid

    @classmethod
    def parse(cls, kind: str, args: Any) -> Distribution:
        """Check ``args`` for ``kind`` (a key of :data:`DISTRIBUTIONS`); bounds become numbers."""
        if kind not in _RANGES:
            if not isinstance(args, list) or not args:
                raise ConfigError(f"{{{kind}: ...}} takes a non-empty list of values, got {args!r}")
            return cls(kind, list(args))
        integer = kind == "randint"
        bounds = [_number(a, integer) for a in args] if isinstance(args, list) else []
        if len(bounds) != 2 or None in bounds:
            raise ConfigError(
                f"{{{kind}: ...}} takes two {'integers' if integer else 'numbers'} [low, high], got {args!r}"
            )
        low, high = bounds
        if not low < high:
            raise ConfigError(f"{{{kind}: [{low}, {high}]}}: low must be below high")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{{loguniform: [{low}, {high}]}}: bounds must be positive")
        return cls(kind, [low, high])

    def to_tune(self) -> Any:
        from ray import tune

        if self.kind in _RANGES:
            return getattr(tune, self.kind)(*self.args)
        return tune.choice(self.args) if self.kind == "choice" else tune.grid_search(self.args)

    def extremes(self) -> list[Any]:
        """The values a trial can get that are most likely to break the config: bounds, or every option."""
        if self.kind == "randint":
            return [self.args[0], self.args[1] - 1]
        return list(self.args)


def tied_keys(name: str) -> tuple[str, ...]:
    """The config keys a search entry sets: ``"model.num_frames, data.num_frames"`` -> both."""
    return tuple(key.strip() for key in name.split(","))


def assign(name: str, value: Any) -> dict[str, Any]:
    """The config values one drawn ``value`` of the entry ``name`` sets (see the module docstring)."""
    keys = tied_keys(name)
    if len(keys) > 1 and isinstance(value, list | tuple) and len(value) == len(keys):
        return dict(zip(keys, value, strict=True))
    return dict.fromkeys(keys, value)


def drawn_values(drawn: Mapping[str, Any]) -> dict[str, Any]:
    """The config values a trial's draw sets, entry by entry (:func:`assign`): search entry -> value in,
    config key -> value out."""
    values: dict[str, Any] = {}
    for entry, value in drawn.items():
        values |= assign(entry, value)
    return values


def model_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """The ``model.*`` values among config values, by field name: ``{"model.key_frame_stride": 5}`` ->
    ``{"key_frame_stride": 5}`` (an evaluation sweep's network settings)."""
    return {k.removeprefix("model."): v for k, v in values.items() if k.startswith("model.")}


def _entry_name(key: str) -> str:
    """``"model.num_frames,data.num_frames "`` -> ``"model.num_frames, data.num_frames"``; one key each."""
    keys = tied_keys(key)
    if any(not k for k in keys) or len(set(keys)) != len(keys):
        raise ConfigError(
            f"search.{key}: a tied group lists distinct config keys separated by commas, "
            f"e.g. 'model.num_frames, data.num_frames'"
        )
    return ", ".join(keys)


def parse_search_space(search: Mapping[str, Any]) -> dict[str, Distribution]:
    """``{"optim.lr": Distribution(...)}`` from the YAML ``search`` section.

    Keys may be dotted (``optim.lr: {...}``) or nested (``optim: {lr: {...}}``), which is what
    ``--set search.optim.lr={loguniform: [1e-4, 1e-3]}`` writes; a tied group's name is several keys
    separated by commas. A leaf that is not a ``{distribution: args}`` mapping is a :class:`ConfigError`
    listing the distributions; a key in two entries is one too.
    """
    space: dict[str, Distribution] = {}

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict) and len(node) == 1:
            ((kind, args),) = node.items()
            if kind in DISTRIBUTIONS:
                key = _entry_name(key)
                try:
                    space[key] = Distribution.parse(kind, args)
                except ConfigError as err:
                    raise ConfigError(f"search.{key}: {err}") from None
                return
            if isinstance(args, list):  # {loguniformm: [...]}: a misspelt distribution, not a section
                close = difflib.get_close_matches(str(kind), DISTRIBUTIONS, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise ConfigError(
                    f"search.{key}: unknown distribution '{kind}'.{hint} Distributions: {', '.join(DISTRIBUTIONS)}"
                )
        if isinstance(node, dict) and node:
            for child, value in node.items():
                walk(value, f"{key}.{child}")
            return
        raise ConfigError(
            f"search.{key}: expected a distribution such as {{loguniform: [1.0e-5, 1.0e-3]}}, got {node!r}. "
            f"Distributions: {', '.join(DISTRIBUTIONS)}"
        )

    for key, node in search.items():
        walk(node, str(key))
    seen: dict[str, str] = {}
    for name in space:
        for key in tied_keys(name):
            if key in seen:
                raise ConfigError(
                    f"search: {key} is drawn by two entries ('{seen[key]}' and '{name}'): keep one"
                )
            seen[key] = name
    return space
