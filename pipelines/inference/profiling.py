"""``jobs/profile_model.py``: parameters and FLOPs per frame of a network (:mod:`vsr_models.profile`)."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.common.errors import ConfigError
from pipelines.inference.config import ProfileConfig
from vsr_models.profile import profile_report


@dataclass(frozen=True)
class ProfileSummary:
    """The printable counts (and, off the meta device, the time) of one network."""

    report: str

    def describe(self) -> str:
        return self.report


def run_profile(cfg: ProfileConfig) -> ProfileSummary:
    """Count ``cfg.arch`` built with ``cfg.model`` on ``cfg.frames`` LR frames of ``cfg.size``; a config
    field the family does not have is a :class:`ConfigError` (``--set``)."""
    try:
        report = profile_report(
            cfg.arch, cfg.size, cfg.frames, dict(cfg.model), cfg.device, cfg.chunk_overlap
        )
    except (TypeError, ValueError) as error:  # the model config rejected an override
        raise ConfigError(f"--set: {error}") from None
    return ProfileSummary(report)
