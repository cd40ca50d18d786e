"""How a split is scored: the validation protocol, one object wherever the settings travel.

The conventions are those of ``docs/benchmarks.md#evaluation-conventions``: which split, RGB or the MATLAB
Y channel, the border cropped before scoring, only each clip's centre frame (Vimeo-90K-T), the clip fed
mirrored (TTVSR on Vimeo-90K-T), how many clips and frames per clip (cheaper periodic validation), and
the temporal window of long clips on small memory. Training validation, ``jobs/evaluate.py`` and tuning's
evaluation sweeps all score through :func:`pipelines.evaluation.scoring.evaluate` /
:func:`~pipelines.evaluation.scoring.score_clips` with one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

LINEAGE_FIELDS = (
    "split",
    "channel",
    "crop_border",
    "centre_frame_only",
    "mirror_times",
    "max_clips",
    "max_frames",
)
"""The settings a score depends on (``chunk`` only changes the memory it needs, not the score)."""


@dataclass(frozen=True)
class ValidationProtocol:
    """The settings of one validation: what is scored and how (``docs/benchmarks.md#evaluation-conventions``)."""

    split: str = "val"
    channel: Literal["rgb", "y"] = "rgb"  # REDS4 / sample: rgb; Vid4, UDM10, Vimeo-90K-T (BD): y
    crop_border: int = 0
    centre_frame_only: bool = False  # Vimeo-90K-T scores only the centre frame of each septuplet
    mirror_times: int = 0  # Vimeo-90K-T with TTVSR: 2 (7 -> 28 frames, outputs averaged over copies)
    max_clips: int | None = None  # the first clips of the split only (None: all)
    max_frames: int | None = None  # the first frames of each clip only (None: whole clips)
    chunk: int | None = None  # temporal window for long clips on small memory (None: whole clips)

    def lineage(self) -> str:
        """The ``val_protocol`` tag of a registered version: the settings its score depends on, as JSON
        with sorted keys; the champion alias compares only versions whose tags agree
        (:func:`pipelines.tracking.promote_champion`)."""
        return json.dumps({name: getattr(self, name) for name in LINEAGE_FIELDS}, sort_keys=True)
