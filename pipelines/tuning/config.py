"""A search's YAML (``configs/search/*.yaml``, ``docs/tuning.md``) as :class:`SearchConfig`, and the
check, before anything starts, of every value a trial can draw against the training config
(:func:`base_experiment`)."""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipelines.common.config import as_overrides, flatten, with_values
from pipelines.common.errors import ConfigError
from pipelines.inference.loading import with_model_settings
from pipelines.training.config import Experiment, load_experiment
from pipelines.tuning.space import (
    Distribution,
    assign,
    drawn_values,
    model_settings,
    parse_search_space,
    tied_keys,
)

MAX_COMBINATIONS = 512  # combinations of the entries' extremes checked up front (beyond: pairs only)
# Keys an evaluation sweep may draw besides model settings: the validation protocol of the evaluation.
EVALUATION_VAL_KEYS = ("channel", "crop_border", "centre_frame_only", "mirror_times", "max_clips", "chunk")
_NAME = re.compile(r"^[\w-]+$")  # a Tune folder and part of an MLflow alias (best-<name>)


# -- the search config -----------------------------------------------------------------------------------


@dataclass
class SchedulerSection:
    """Early stopping of poor trials: ASHA (Li et al., 2020) or none (every trial runs to the end)."""

    name: Literal["asha", "none"] = "asha"
    grace_validations: int = 1  # validations every trial gets before ASHA may stop it
    reduction_factor: int = 2  # ASHA keeps the best 1/reduction_factor of the trials at each rung

    def __post_init__(self) -> None:
        if self.grace_validations < 1:
            raise ValueError(f"scheduler.grace_validations must be at least 1, got {self.grace_validations}")
        if self.reduction_factor < 2:
            raise ValueError(f"scheduler.reduction_factor must be at least 2, got {self.reduction_factor}")


@dataclass
class SearchConfig:
    """A Tune search (``jobs/tune_<arch>.py --config``); see the module docstring."""

    base: str  # the training config every trial starts from
    # the model family every trial trains (jobs/tune_<arch>.py sets it); None: the base config's arch
    arch: str | None = None
    experiment: dict[str, Any] = field(default_factory=dict)  # partial training config for every trial
    search: dict[str, Any] = field(default_factory=dict)  # dotted key (or tied keys) -> {distribution: args}
    name: str = "tune"  # Tune experiment <run.storage_path>/<name>/, MLflow parent run <name>
    num_samples: int = 8  # trials (with grid entries: samples per grid point)
    metric: Literal["val_psnr", "val_ssim"] = "val_psnr"  # the validation metric to maximise
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    evaluate: str | None = None  # a model to evaluate in every trial (nothing trains); None: train
    device: str = "auto"  # evaluation trials: auto (a GPU when the cluster has one), cpu or cuda
    max_concurrent_trials: int | None = None  # None: as many as the cluster holds (or can scale to)
    max_cluster_resources: dict[str, float] | None = None  # the autoscaler's maximum, e.g. {GPU: 8}
    seed: int | None = 0  # seeds the sampling, so a search draws the same values again
    register_best: bool = True  # training searches: register the best trial's network as best-<name>
    promote_champion: bool = False  # ... and move `champion` to it if it beats the champion

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"name must be letters, digits, '_' or '-' (a folder and an alias), got {self.name!r}"
            )
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ValueError(
                f"max_concurrent_trials must be at least 1 (or null), got {self.max_concurrent_trials}"
            )
        if not self.search:
            raise ValueError(
                "search: no key to search; e.g. search: {optim.lr: {loguniform: [1.0e-4, 1.0e-3]}}"
            )
        self.search = {key: {d.kind: d.args} for key, d in parse_search_space(self.search).items()}

    def space(self) -> dict[str, Distribution]:
        return parse_search_space(self.search)

    def total_trials(self) -> int:
        """How many trials the search runs: ``num_samples`` for every point of the grid entries."""
        return self.num_samples * math.prod(len(d.args) for d in self.space().values() if d.kind == "grid")

    @property
    def best_alias(self) -> str:
        return f"best-{self.name}"


# -- checking every value a trial can draw, before any trial starts --------------------------------------


def _dotted_keys(text: str, known: set[str]) -> set[str]:
    """The config keys a message names (``data.num_frames (5) must equal model.num_frames (3)``)."""
    return {word for word in re.findall(r"[a-z_]+\.[a-z_]+", text) if word in known}


def _tie_hint(entries: list[str], message: str, known: set[str]) -> str:
    """How to draw together the keys whose values the config refused in combination."""
    if "unknown config key" in message:
        return ""
    drawn = [key for entry in entries for key in tied_keys(entry)]
    others = sorted(_dotted_keys(message, known) - set(drawn))
    if len(entries) == 1 and not others:
        return "; a value that needs other keys changed with it is drawn with them in a tied group (docs/tuning.md)"
    group = ", ".join([*drawn, *others])
    return f"; draw them together in a tied group, e.g. '{group}: {{grid: [...]}}' (docs/tuning.md)"


def _check_evaluation_entry(entry: str, distribution: Distribution, base: Experiment) -> None:
    """An evaluation sweep trains nothing: it may draw model settings that keep the weights, and the protocol."""
    import torch

    import vsr_models

    for key in tied_keys(entry):
        section, _, name = key.partition(".")
        if section == "model":
            continue
        if section == "val" and name in EVALUATION_VAL_KEYS:
            continue
        raise ConfigError(
            f"search.{entry}: an evaluation sweep (evaluate: / --evaluate) trains nothing, so it can draw "
            f"model settings that keep the weights (model.key_frame_stride, ...) and val.{{{', '.join(EVALUATION_VAL_KEYS)}}}, "
            f"not {key}"
        )
    with torch.device("meta"):
        network = vsr_models.build_model(base.arch, **base.model_overrides())
    for value in distribution.extremes():
        try:
            with_model_settings(network, model_settings(assign(entry, value)))
        except ConfigError as err:
            raise ConfigError(f"search.{entry} = {value!r}: {err}") from None


def base_experiment(spec: SearchConfig) -> Experiment:
    """The base config with the shared ``experiment`` changes; every value a trial can draw is checked.

    Each searched entry is applied at its extremes (both bounds, every option), alone and then in every
    combination with the other entries' extremes (pairs only, past :data:`MAX_COMBINATIONS`), so a
    typo, a wrong type, or a value the config rejects in combination (``model.token_size`` 8 with token
    scales (4, 6, 8); VSR-Transformer's ``model.num_frames`` without ``data.num_frames``) is a
    :class:`ConfigError` before any trial starts. An evaluation sweep checks its keys with
    :func:`_check_evaluation_entry` as well.
    """
    if not Path(spec.base).is_file():
        raise ConfigError(
            f"base: training config {spec.base} not found (the YAML every trial starts from, "
            "e.g. configs/ttvsr_sample.yaml; relative paths are from the current folder)"
        )
    # The partial config goes through the loader as the train command's --set does: the schedule is
    # fitted to the run unless the search sets it (pipelines.training.config.fit_schedule).
    shared = as_overrides(flatten(spec.experiment))
    try:
        base = load_experiment(spec.base, shared, arch=spec.arch)
    except ConfigError as err:
        raise ConfigError(f"experiment: {err}") from None
    known = set(flatten(base))

    def check(drawn: list[tuple[str, Any]]) -> None:
        try:
            with_values(base, drawn_values(dict(drawn)))
        except ConfigError as err:
            where = " with ".join(f"search.{entry} = {value!r}" for entry, value in drawn)
            hint = _tie_hint([entry for entry, _ in drawn], str(err), known)
            raise ConfigError(f"{where}: {err}{hint}") from None

    space = spec.space()
    for entry, distribution in space.items():
        for value in distribution.extremes():
            check([(entry, value)])
        if spec.evaluate is not None:
            _check_evaluation_entry(entry, distribution, base)
    options = [[(entry, value) for value in d.extremes()] for entry, d in space.items()]
    if math.prod(len(o) for o in options) <= MAX_COMBINATIONS:
        combinations = itertools.product(*options)
    else:
        combinations = (
            pair for a, b in itertools.combinations(options, 2) for pair in itertools.product(a, b)
        )
    if len(space) > 1:
        for drawn in combinations:
            check(list(drawn))
    return base
