"""Planning: source items -> clips -> shards, deterministically, so a re-run maps every clip to the same shard.

Clips are sorted by id and consecutive clips of one split share a shard. Each shard's ``key`` hashes
everything its bytes depend on (settings and input files), which is how a re-run recognises a shard it
can keep.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from pipelines.common.errors import DataError
from pipelines.data.manifest import SHARDS_DIR
from pipelines.data.prepare.config import PrepareConfig, SplitConfig
from pipelines.data.schema import FORMAT_VERSION
from pipelines.data.sources import FileStat, SourceItem
from pipelines.data.video_io import natural_key


@dataclass
class ClipPlan:
    """One clip to prepare; ``spec`` is the row handed to the Ray Data pipeline."""

    spec: dict
    files: list[FileStat]

    @property
    def clip_id(self) -> str:
        return self.spec["clip_id"]

    @property
    def hr_bytes(self) -> int:
        return self.spec["num_frames"] * self.spec["height"] * self.spec["width"] * 3


@dataclass
class ShardPlan:
    split: str
    index: int
    clips: list[ClipPlan]
    key: str = ""  # sha256 of everything the shard's bytes depend on

    @property
    def path(self) -> str:
        """Relative to the output folder."""
        return f"{SHARDS_DIR}/{self.split}/part-{self.index:05d}.parquet"

    @property
    def record_path(self) -> str:
        return self.path.removesuffix(".parquet") + ".done.json"

    def as_task(self) -> dict:
        """What the shard's Ray task needs (:func:`pipelines.data.prepare.shards.write_shard`): plain values."""
        return {
            "path": self.path,
            "record_path": self.record_path,
            "key": self.key,
            "split": self.split,
            "clips": [clip.spec for clip in self.clips],
        }


def assign_splits(items: list[SourceItem], splits: SplitConfig) -> dict[str, str]:
    """Map every source item id to its split (see :class:`SplitConfig`)."""
    ids = {item.item_id for item in items}
    if splits.val_clips is not None:
        unknown = sorted(set(splits.val_clips) - ids)
        if unknown:
            raise DataError(
                f"splits.val_clips names clips that are not in the source: {', '.join(unknown[:8])}; "
                f"known ids look like: {', '.join(sorted(ids)[:8])}"
            )
        val = set(splits.val_clips)
        return {i.item_id: "val" if i.item_id in val else _non_val(i.split, splits.default) for i in items}
    assigned = {item.item_id: item.split or "" for item in items}
    free = sorted(i for i, split in assigned.items() if not split)
    if splits.val_fraction > 0 and free:
        count = round(splits.val_fraction * len(free))
        by_hash = sorted(free, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
        for item_id in by_hash[:count]:
            assigned[item_id] = "val"
    return {i: split or splits.default for i, split in assigned.items()}


def _non_val(split: str | None, default: str) -> str:
    return split if split and split != "val" else default


def _cut(item_id: str, total: int, clip_length: int) -> list[tuple[str, int, int]]:
    """(clip id, first frame, frame count) of the clips cut from ``total`` frames."""
    if total <= clip_length:
        return [(item_id, 0, total)]
    return [(f"{item_id}_{s:06d}", s, min(clip_length, total - s)) for s in range(0, total, clip_length)]


def plan_clips(items: list[SourceItem], split_of: dict[str, str], video_info: dict, cfg: PrepareConfig):
    """Cut every source item into :class:`ClipPlan` rows (videos need their probe result)."""
    clips = []
    for item in items:
        if item.kind == "video":
            if item.item_id not in video_info:
                continue  # quarantined while probing
            total, (height, width), seekable = video_info[item.item_id]
            if cfg.max_frames_per_video:
                total = min(total, cfg.max_frames_per_video)
        else:
            total, (height, width), seekable = len(item.frame_paths), item.frame_size, True
        for clip_id, start, count in _cut(item.item_id, total, cfg.clip_length):
            frames = item.frame_paths[start : start + count] if item.kind == "frames" else []
            # A video's clips all depend on the whole file; a frame clip on its own frames.
            files = item.files[start : start + count] if item.kind == "frames" else item.files
            spec = {
                "clip_id": clip_id,
                "split": split_of[item.item_id],
                "shard": "",
                "kind": item.kind,
                "source": item.source,
                "path": item.path,
                "frame_paths": frames,
                "frame_start": start,
                "num_frames": count,
                "height": height,
                "width": width,
                "seekable": seekable,
            }
            clips.append(ClipPlan(spec, files))
    return clips


def plan_shards(clips: list[ClipPlan], cfg: PrepareConfig) -> list[ShardPlan]:
    """Consecutive clips (sorted by id) per split, at most ``shard_size`` clips and ``shard_max_mb`` MiB."""
    shards: list[ShardPlan] = []
    limit = cfg.shard_max_mb * 2**20
    for split in sorted({c.spec["split"] for c in clips}):
        members = sorted((c for c in clips if c.spec["split"] == split), key=lambda c: natural_key(c.clip_id))
        current: list[ClipPlan] = []
        for clip in members:
            size = sum(c.hr_bytes for c in current)
            if current and (len(current) >= cfg.shard_size or size + clip.hr_bytes > limit):
                shards.append(ShardPlan(split, len([s for s in shards if s.split == split]), current))
                current = []
            current.append(clip)
        if current:
            shards.append(ShardPlan(split, len([s for s in shards if s.split == split]), current))
    settings = {
        "format_version": FORMAT_VERSION,
        "degradation": cfg.degradation,
        "scale": cfg.scale,
        "zstd_level": cfg.zstd_level,
        "segment_frames": cfg.segment_frames,
    }
    for shard in shards:
        for clip in shard.clips:
            clip.spec["shard"] = shard.path
        inputs = [
            {k: c.spec[k] for k in ("clip_id", "source", "frame_start", "num_frames")}
            | {"files": [[f.path, f.size, f.mtime_ns] for f in c.files]}
            for c in shard.clips
        ]
        text = json.dumps({"settings": settings, "clips": inputs}, sort_keys=True)
        shard.key = hashlib.sha256(text.encode()).hexdigest()
    return shards
