"""The shards' done-records -> the dataset's :class:`~pipelines.data.manifest.Manifest` (written last)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from pipelines.common.files import project_version
from pipelines.data.manifest import ClipRecord, Manifest, ShardRecord, SourceRecord, split_totals
from pipelines.data.prepare.config import PrepareConfig
from pipelines.data.prepare.plan import ShardPlan
from pipelines.data.prepare.shards import DoneRecord
from pipelines.data.schema import FORMAT_VERSION


def dataset_manifest(
    cfg: PrepareConfig,
    source: tuple[Path, str, dict],
    plans: list[ShardPlan],
    records: Mapping[str, DoneRecord],
    quarantined: list[dict],
    warnings: list[dict],
) -> Manifest:
    """The manifest of the shards ``plans`` from their done-``records`` (by shard path).

    ``source``: the source root, its layout and fingerprint; ``quarantined`` and ``warnings``: the notes
    of discovery and probing, before the shards' own.
    """
    root, layout, fingerprint = source
    clips: list[ClipRecord] = []
    shards: list[ShardRecord] = []
    warnings = list(warnings)
    for plan in plans:
        record = records[plan.path]
        clips += record.clips
        quarantined = quarantined + list(record.quarantined)
        warnings += record.warnings
        shard = record.shard(plan.split)
        if shard is not None:
            shards.append(shard)
    return Manifest(
        format_version=FORMAT_VERSION,
        project_version=project_version(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        source=SourceRecord(str(root), cfg.source, layout, fingerprint),
        degradation=cfg.degradation,
        scale=cfg.scale,
        clip_length=cfg.clip_length,
        frame_codec={"name": "zstd", "level": cfg.zstd_level, "layout": "per-frame (h, w, 3) uint8 RGB"},
        segment_frames=cfg.segment_frames,
        crop_policy=f"HR frames are cropped at the bottom and right to a multiple of the scale ({cfg.scale})",
        cropped_clips=tuple(c.clip_id for c in clips if c.cropped),
        splits=split_totals(clips),
        shards=tuple(shards),
        clips=tuple(clips),
        quarantined=tuple(quarantined),
        warnings=tuple(warnings),
    )
