"""Shard files: written under a hidden temporary name, renamed into place, then recorded.

A shard's done-record (``part-NNNNN.done.json`` beside it) holds the plan's key, the file's sha256 and
size and what went into it; a re-run keeps a shard only when its record matches both the plan and the
file on disk (:func:`completed_record`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa

from pipelines.common.files import TEMP_MARKER, sha256_file, temp_path_for, write_json_atomic
from pipelines.data.manifest import SHARDS_DIR
from pipelines.data.prepare.plan import ShardPlan
from pipelines.data.schema import CLIP_SCHEMA, PARQUET_WRITER_OPTIONS


class ShardWriter:
    """Collects one shard's clips in a hidden temporary file; ``finish`` renames it and records it."""

    def __init__(self, output: Path, plan: ShardPlan):
        self.output = output
        self.plan = plan
        self.final = output / plan.path
        self.temp = temp_path_for(self.final)
        self.pending = {c.clip_id for c in plan.clips}
        self.writer = None
        self.clips: list[dict] = []
        self.quarantined: list[dict] = []
        self.warnings: list[dict] = []

    def add(self, row: dict, clip: pa.Table) -> None:
        """Add one clip: ``row`` its scalar fields, ``clip`` its one-row table (frames included)."""
        import pyarrow.parquet as pq

        self.pending.discard(row["clip_id"])
        for message in json.loads(row["warnings"]):
            self.warnings.append({"input": row["source"], "clip_id": row["clip_id"], "message": message})
        if row["error"]:
            self.quarantined.append({"input": row["error_input"] or row["source"], "reason": row["error"]})
            return
        if self.writer is None:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.temp, CLIP_SCHEMA, **PARQUET_WRITER_OPTIONS)
        self.writer.write_table(clip.select(CLIP_SCHEMA.names).cast(CLIP_SCHEMA))  # one row group
        self.clips.append(
            {
                "clip_id": row["clip_id"],
                "split": row["split"],
                "shard": self.plan.path,
                "source": row["source"],
                "frame_start": row["frame_start"],
                "num_frames": row["num_frames"],
                "hr_size": [row["hr_height"], row["hr_width"]],
                "lr_size": [row["lr_height"], row["lr_width"]],
                "source_size": [row["source_height"], row["source_width"]],
                "cropped": [row["source_height"], row["source_width"]] != [row["hr_height"], row["hr_width"]],
            }
        )

    @property
    def complete(self) -> bool:
        return not self.pending

    def finish(self) -> dict:
        """Rename the finished file into place, then write its done-record; returns the record."""
        record = {
            "key": self.plan.key,
            "path": None,
            "rows": len(self.clips),
            "bytes": 0,
            "sha256": None,
            "clips": self.clips,
            "quarantined": self.quarantined,
            "warnings": self.warnings,
        }
        if self.writer is not None:
            self.writer.close()
            with self.temp.open("rb") as f:
                os.fsync(f.fileno())
            record |= {"path": self.plan.path, "bytes": self.temp.stat().st_size}
            record["sha256"] = sha256_file(self.temp)
            os.replace(self.temp, self.final)
        write_json_atomic(self.output / self.plan.record_path, record)
        return record

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.temp.unlink(missing_ok=True)


def completed_record(output: Path, plan: ShardPlan) -> dict | None:
    """The shard's done-record if it matches the plan and the file on disk, else None (rewrite it)."""
    record_path = output / plan.record_path
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("key") != plan.key:
        return None
    if record.get("path") is None:
        return record if not (output / plan.path).exists() else None
    shard = output / record["path"]
    if (
        not shard.is_file()
        or shard.stat().st_size != record["bytes"]
        or sha256_file(shard) != record["sha256"]
    ):
        return None
    return record


def clean_output(output: Path, plans: list[ShardPlan]) -> None:
    """Delete temporary files of interrupted runs and shards no longer in the plan."""
    shards_dir = output / SHARDS_DIR
    if not shards_dir.is_dir():
        return
    wanted = {p.path for p in plans} | {p.record_path for p in plans}
    for path in shards_dir.rglob("*"):
        if not path.is_file():
            continue
        rel = str(path.relative_to(output))
        stale_temp = TEMP_MARKER in path.name and path.name.startswith(".")
        orphan = path.name.startswith("part-") and rel not in wanted
        if stale_temp or orphan:
            path.unlink()
