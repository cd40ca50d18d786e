"""Shard files, written by the Ray task that prepares their clips, straight to the output storage.

:func:`write_shard` runs in one Ray task per shard: it decodes, degrades and compresses the shard's
clips one at a time, writes each as row groups of at most ``segment_frames`` frames (its segments,
``docs/data_format.md``) of a Parquet file under a hidden temporary name while
hashing the bytes on their way out, moves the file to its real name and then writes its done-record
(``part-NNNNN.done.json``, a :class:`DoneRecord`) beside it. It returns the record (the clips'
:class:`~pipelines.data.manifest.ClipRecord`, checksum) with the timings and the node that wrote it to
the driver (:class:`WrittenShard`); frames never leave the task.

A record is the only proof a shard is complete: a re-run keeps a shard when its record matches the
shard's plan and the file's size and sha256 (:func:`check_shards`, also in Ray tasks), and deletes
leftover temporary files (:func:`clean_output`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipelines.common.errors import DataError, UnreadableInput
from pipelines.common.files import TEMP_MARKER, is_disk_full
from pipelines.common.storage import HashingWriter, Location, resolve, sha256_location, sync_local
from pipelines.data.manifest import SHARDS_DIR, ClipRecord, ShardRecord
from pipelines.data.prepare.stages import compress_clip, decode_clip, degrade_clip
from pipelines.data.schema import CLIP_SCHEMA, PARQUET_WRITER_OPTIONS

STAGES = ("decode", "degrade", "compress", "write")  # per-stage seconds in every returned record


@dataclass(frozen=True)
class DoneRecord:
    """A shard's done-record (``part-NNNNN.done.json``, ``docs/data_format.md#shards-and-resuming``): the
    only proof the shard is complete, and the records of its clips."""

    key: str  # sha256 of everything the shard's bytes depend on (plan.ShardPlan.key)
    path: str | None  # None: every clip was quarantined, no file was written
    rows: int
    bytes: int
    sha256: str | None
    clips: tuple[ClipRecord, ...]
    quarantined: tuple[Mapping[str, str], ...]
    warnings: tuple[Mapping[str, str], ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DoneRecord:
        return cls(
            key=data["key"],
            path=data["path"],
            rows=int(data["rows"]),
            bytes=int(data["bytes"]),
            sha256=data["sha256"],
            clips=tuple(ClipRecord.from_json(c) for c in data["clips"]),
            quarantined=tuple(dict(q) for q in data["quarantined"]),
            warnings=tuple(dict(w) for w in data["warnings"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "path": self.path,
            "rows": self.rows,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "clips": [c.to_json() for c in self.clips],
            "quarantined": [dict(q) for q in self.quarantined],
            "warnings": [dict(w) for w in self.warnings],
        }

    def shard(self, split: str) -> ShardRecord | None:
        """The manifest's record of the shard file (None when there is no file)."""
        if self.path is None:
            return None
        clip_ids = tuple(c.clip_id for c in self.clips)
        return ShardRecord(self.path, split, self.rows, self.bytes, self.sha256, clip_ids)


@dataclass(frozen=True)
class WrittenShard:
    """What one shard task returns to the driver: its record, or the input that stopped a strict run."""

    node: str  # Ray node id of the task
    record: DoneRecord | None = None
    timings: dict[str, float] = field(default_factory=dict)  # task seconds per stage
    frames: int = 0  # decoded and degraded
    strict_error: Mapping[str, str] | None = None  # {"input", "reason"} under strict

    def json_size(self) -> int:
        """Its size as JSON: what the driver received, for the summary."""
        if self.record is None:
            return len(json.dumps({"strict_error": self.strict_error, "node": self.node}))
        extra = {"node": self.node, "timings": self.timings, "frames": self.frames}
        return len(json.dumps(self.record.to_json() | extra))


class ShardWriter:
    """One shard's Parquet file: a hidden temporary file hashed while written, moved into place by ``finish``."""

    def __init__(self, output: Location, plan: dict):
        self.output = output
        self.plan = plan
        self.final = output.join(plan["path"])
        self.temp = self.final.temp_sibling()
        self._stream = None
        self._hashing: HashingWriter | None = None
        self._writer = None
        self.clips: list[ClipRecord] = []
        self.row_groups = 0  # written so far
        self.quarantined: list[dict] = []
        self.warnings: list[dict] = []

    def add(self, row: dict, segment_frames: int) -> tuple[int, int]:
        """Write one clip (``row`` has every :data:`CLIP_SCHEMA` column but ``segment_start``) as row groups
        of at most ``segment_frames`` frames; returns ``(first row group, row groups)``."""
        try:
            return self._add(row, segment_frames)
        except OSError as error:
            self._raise_if_disk_full(error)
            raise

    def _add(self, row: dict, segment_frames: int) -> tuple[int, int]:
        import pyarrow.parquet as pq

        if self._writer is None:
            self.final.parent.mkdirs()
            self._stream = self.output.fs.open_output_stream(self.temp.path)
            self._hashing = HashingWriter(self._stream)
            self._writer = pq.ParquetWriter(self._hashing, CLIP_SCHEMA, **PARQUET_WRITER_OPTIONS)
        first = self.row_groups
        for start in range(0, row["num_frames"], segment_frames):
            cut = slice(start, start + segment_frames)
            segment = row | {
                "segment_start": start,
                **{k: row[k][cut] for k in ("frame_names", "hr_frames", "lr_frames")},
            }
            # One write_table call of one row is one row group.
            self._writer.write_table(pa.Table.from_pylist([segment], schema=CLIP_SCHEMA))
            self.row_groups += 1
        return first, self.row_groups - first

    def finish(self) -> DoneRecord:
        """Close and move the file into place, then write its done-record; returns the record."""
        try:
            return self._finish()
        except OSError as error:
            self._raise_if_disk_full(error)
            raise

    def _finish(self) -> DoneRecord:
        path, size, sha256 = None, 0, None
        if self._writer is not None:
            self._writer.close()
            self._stream.close()
            sync_local(self.temp)
            path, size, sha256 = self.plan["path"], self._hashing.size, self._hashing.sha256
            self.output.fs.move(self.temp.path, self.final.path)
        record = DoneRecord(
            self.plan["key"],
            path,
            len(self.clips),
            size,
            sha256,
            tuple(self.clips),
            tuple(self.quarantined),
            tuple(self.warnings),
        )
        self.output.join(self.plan["record_path"]).write_json_atomic(record.to_json())
        return record

    def abort(self) -> None:
        """Close and delete the temporary file (closing may fail again on a full disk: it goes anyway)."""
        writer, stream, self._writer = self._writer, self._stream, None
        if writer is not None:
            for close in (writer.close, stream.close):
                with contextlib.suppress(OSError):
                    close()
        self.temp.delete()

    def _raise_if_disk_full(self, error: OSError) -> None:
        """A full disk is the user's to fix: one line naming the shard, with nothing hidden left behind."""
        if not is_disk_full(error):
            return
        self.abort()
        raise DataError(
            f"no space left on the device while writing {self.final.uri} (a shard of the prepared dataset): free "
            "space there or choose another output; a re-run keeps the shards already complete"
        ) from None


def _clip_record(spec: dict, hr_shape, lr_shape, source_shape, row_groups: tuple[int, int]) -> ClipRecord:
    return ClipRecord(
        clip_id=spec["clip_id"],
        split=spec["split"],
        shard=spec["shard"],
        source=spec["source"],
        frame_start=spec["frame_start"],
        num_frames=hr_shape[0],
        hr_size=tuple(hr_shape[1:3]),
        lr_size=tuple(lr_shape[1:3]),
        source_size=tuple(source_shape[1:3]),
        cropped=tuple(source_shape[1:3]) != tuple(hr_shape[1:3]),
        # The clip's segments in its shard: first row group and how many (format version 2).
        row_groups=tuple(row_groups),
    )


def write_shard(output_uri: str, plan: dict, settings: dict) -> WrittenShard:
    """Prepare and write one shard (a Ray task); returns its done-record with the node, timings and frames.

    ``settings``: ``degradation``, ``scale``, ``zstd_level``, ``segment_frames``, ``strict``. Under ``strict`` the first
    unreadable input ends the task with nothing written and ``strict_error`` set.
    """
    import ray

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    timings = dict.fromkeys(STAGES, 0.0)
    writer = ShardWriter(resolve(output_uri), plan)
    frames = 0
    try:
        for spec in plan["clips"]:
            started = time.perf_counter()
            try:
                decoded = decode_clip(spec)
                decoded_at = time.perf_counter()
                hr, lr = degrade_clip(decoded.frames, settings["degradation"], settings["scale"])
            except UnreadableInput as err:
                entry = {"input": err.path or spec["source"], "reason": err.reason}
                if settings["strict"]:
                    writer.abort()
                    return WrittenShard(node, strict_error=entry)
                writer.quarantined.append(entry)
                continue
            degraded_at = time.perf_counter()
            hr_frames, lr_frames = compress_clip(hr, lr, settings["zstd_level"])
            compressed_at = time.perf_counter()
            writer.warnings += [
                {"input": spec["source"], "clip_id": spec["clip_id"], "message": m} for m in decoded.warnings
            ]
            row_groups = writer.add(
                {k: spec[k] for k in ("clip_id", "split", "source", "frame_start")}
                | {
                    "num_frames": len(hr),
                    "scale": settings["scale"],
                    "hr_height": hr.shape[1],
                    "hr_width": hr.shape[2],
                    "lr_height": lr.shape[1],
                    "lr_width": lr.shape[2],
                    "frame_names": decoded.names,
                    "hr_frames": hr_frames,
                    "lr_frames": lr_frames,
                },
                settings["segment_frames"],
            )
            writer.clips.append(_clip_record(spec, hr.shape, lr.shape, decoded.frames.shape, row_groups))
            frames += len(hr)
            done = time.perf_counter()
            for stage, seconds in zip(
                STAGES,
                (
                    decoded_at - started,
                    degraded_at - decoded_at,
                    compressed_at - degraded_at,
                    done - compressed_at,
                ),
                strict=True,
            ):
                timings[stage] += seconds
        started = time.perf_counter()
        record = writer.finish()
        timings["write"] += time.perf_counter() - started
    except BaseException:
        writer.abort()
        raise
    return WrittenShard(node, record, timings, frames)


def _valid_record(output: Location, plan: dict) -> DoneRecord | None:
    record_file = output.join(plan["record_path"])
    try:
        data = record_file.read_json()
    except (OSError, ValueError, FileNotFoundError):
        return None
    if not isinstance(data, dict) or data.get("key") != plan["key"]:
        return None
    try:
        record = DoneRecord.from_json(data)
    except (KeyError, TypeError, ValueError):
        return None  # not a record this code wrote: the shard is written again
    if record.path is None:
        return record if not output.join(plan["path"]).is_file() else None
    shard = output.join(record.path)
    if shard.size() != record.bytes or sha256_location(shard) != record.sha256:
        return None
    return record


def check_shards(output_uri: str, plans: list[dict]) -> list[DoneRecord | None]:
    """For each shard plan, its done-record if the record matches the plan and the file's sha256, else None.

    Runs in a Ray task over a group of shards: this is where a resumed run verifies what it keeps.
    """
    output = resolve(output_uri)
    return [_valid_record(output, plan) for plan in plans]


def clean_output(output: Location, plans: list[dict]) -> None:
    """Delete temporary files of interrupted runs and shards no longer in the plan (one listing)."""
    wanted = {p["path"] for p in plans} | {p["record_path"] for p in plans}
    shards_dir = output.join(SHARDS_DIR)
    prefix = output.path.rstrip("/") + "/"
    for info in shards_dir.list_files():
        rel = info.path.removeprefix(prefix)
        stale_temp = TEMP_MARKER in info.base_name and info.base_name.startswith(".")
        orphan = info.base_name.startswith("part-") and rel not in wanted
        if stale_temp or orphan:
            output.fs.delete_file(info.path)
