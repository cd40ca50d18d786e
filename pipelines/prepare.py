"""Prepare a video dataset for training: decode, degrade and store it as Parquet shards (DESIGN.md, data flow).

The job runs as one Ray Data pipeline over clips:

1. the driver lists the source (``pipelines/sources.py``) and, for videos, probes each file in a Ray
   task to learn its length and cut it into clips of ``clip_length`` frames;
2. splits and shards are assigned deterministically (clips sorted by id, consecutive clips per shard),
   so a re-run maps every clip to the same shard;
3. a decode stage (its own ``map_batches``, retried when its worker dies: decord may crash on a bad
   file) reads the HR frames of one clip;
4. a degrade stage crops HR to a multiple of the scale and makes LR with BI or BD
   (``pipelines/degradations.py``, the benchmarks' MATLAB degradations), then compresses every frame;
5. the driver writes the clips of each shard into a hidden temporary file, renames it into place, and
   records the shard's sha256 in a done-record beside it; ``manifest.json`` is written last.

Re-running with the same output skips every shard whose done-record matches both the shard's inputs and
its file's checksum, and rewrites the rest. An unreadable input is quarantined (left out and reported)
unless ``strict``, which stops the job at the first one. The format is in ``docs/data_format.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from pipelines.schema import CLIP_SCHEMA, DEFAULT_ZSTD_LEVEL, FORMAT_VERSION, PARQUET_WRITER_OPTIONS
from pipelines.sources import (
    LAYOUTS,
    DataError,
    FileStat,
    SourceItem,
    UnreadableInput,
    check_source,
    decode_frame_clip,
    decode_video_clip,
    discover,
    fingerprint,
    probe_video,
)
from pipelines.video_io import natural_key

MANIFEST_NAME = "manifest.json"
SHARDS_DIR = "shards"
TEMP_MARKER = ".tmp-"
SAMPLE_SOURCE = "sample"
SAMPLE_OUTPUT = "data/sample"
SUMMARY_LIST_LIMIT = 20  # quarantined inputs / warnings printed in the summary (all are in the manifest)


# ----------------------------------------------------------------------------------------------------
# configuration


@dataclass
class SplitConfig:
    """How clips are assigned to splits when the layout does not say (REDS4, Vimeo lists, split folders).

    ``val_clips`` (source clip or video ids) overrides the layout's split; ``val_fraction`` sends that
    fraction of the remaining unassigned sources to ``val``, chosen by a hash of their ids (stable).
    Whole sources go to one split, so clips cut from one video never straddle train and val.
    """

    default: str = "train"
    val_clips: list[str] | None = None
    val_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"splits.val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class PrepareConfig:
    """Everything ``prepare_dataset`` needs; loadable from YAML with ``pipelines.config.load_config``."""

    source: str = SAMPLE_SOURCE  # a path, or 'sample' for the bundled sample dataset
    layout: Literal["auto", "reds", "vimeo", "folders", "frames", "videos"] = "auto"
    output: str = ""  # required, except for the sample dataset (default data/sample)
    degradation: Literal["BI", "BD"] = "BI"
    scale: int = 4
    clip_length: int = 100  # longer clip folders and videos are cut into clips of this many frames
    max_frames_per_video: int | None = None  # read only the first N frames of each video (quick runs)
    splits: SplitConfig = field(default_factory=SplitConfig)
    shard_size: int = 64  # at most this many clips per shard ...
    shard_max_mb: int = 512  # ... and at most this much raw HR (MiB), whichever comes first
    strict: bool = False  # stop at the first unreadable input instead of quarantining it
    sample_cache: str = "data/sample_src"  # where '--dataset sample' renders its frames
    decode_retries: int = 3  # retries of a decode task whose worker died
    zstd_level: int = DEFAULT_ZSTD_LEVEL

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.degradation not in ("BI", "BD"):
            raise ValueError(f"degradation must be 'BI' or 'BD', got {self.degradation!r}")
        if self.scale < 1:
            raise ValueError(f"scale must be a positive integer, got {self.scale}")
        if self.degradation == "BD" and self.scale != 4:
            raise ValueError("degradation 'BD' is defined for scale 4 only (the authors' script); use BI")
        for name in ("clip_length", "shard_size", "shard_max_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


# ----------------------------------------------------------------------------------------------------
# plan: clips, splits, shards


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


# ----------------------------------------------------------------------------------------------------
# Ray Data stages (run in Ray tasks; every function takes and returns one pyarrow batch)


def _probe_stage(batch: pa.Table, strict: bool) -> pa.Table:
    """Open each video once: frame count, size, timestamp warnings, or why it is unreadable."""
    rows = []
    for item_id, path in zip(batch["item_id"].to_pylist(), batch["path"].to_pylist(), strict=True):
        row = {"item_id": item_id, "num_frames": 0, "height": 0, "width": 0, "seekable": False}
        row |= {"warnings": "[]", "error": ""}
        try:
            probe = probe_video(path)
            row |= {
                "seekable": probe.seekable,
                "num_frames": probe.num_frames,
                "height": probe.frame_size[0],
                "width": probe.frame_size[1],
                "warnings": json.dumps(probe.warnings),
            }
        except UnreadableInput as err:
            if strict:
                raise
            row["error"] = err.reason
        rows.append(row)
    return pa.Table.from_pylist(rows)


DECODED_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("split", pa.string()),
        ("shard", pa.string()),
        ("source", pa.string()),
        ("frame_start", pa.int32()),
        ("num_frames", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("frame_names", pa.list_(pa.string())),
        ("hr_raw", pa.large_binary()),  # (t, h, w, 3) uint8, C order
        ("warnings", pa.string()),  # JSON list
        ("error", pa.string()),  # why the clip is quarantined, or ""
        ("error_input", pa.string()),
    ]
)


def _decode_stage(batch: pa.Table, strict: bool) -> pa.Table:
    """Read the HR frames of each clip (PNG files via Pillow, videos via decord)."""
    rows = []
    for spec in batch.to_pylist():
        row = {k: spec[k] for k in ("clip_id", "split", "shard", "source", "frame_start")}
        row |= {"num_frames": 0, "height": 0, "width": 0, "frame_names": [], "hr_raw": b""}
        row |= {"warnings": "[]", "error": "", "error_input": ""}
        try:
            if spec["kind"] == "video":
                frames, warnings = decode_video_clip(
                    spec["path"], spec["frame_start"], spec["num_frames"], spec["seekable"]
                )
                names = [f"{spec['frame_start'] + i:08d}" for i in range(len(frames))]
            else:
                frames, warnings = decode_frame_clip(spec["frame_paths"]), []
                names = [Path(p).name for p in spec["frame_paths"]]
            if frames.shape[1:3] != (spec["height"], spec["width"]):
                raise UnreadableInput(
                    spec["path"],
                    f"decoded frames are {frames.shape[1]}x{frames.shape[2]}, "
                    f"headers said {spec['height']}x{spec['width']}",
                )
            row |= {
                "num_frames": len(frames),
                "height": frames.shape[1],
                "width": frames.shape[2],
                "frame_names": names,
                "hr_raw": np.ascontiguousarray(frames).tobytes(),
                "warnings": json.dumps(warnings),
            }
        except UnreadableInput as err:
            if strict:
                raise
            row |= {"error": err.reason, "error_input": err.path}
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)


REPORT_FIELDS = [
    pa.field("shard", pa.string()),
    pa.field("source_height", pa.int32()),
    pa.field("source_width", pa.int32()),
    pa.field("warnings", pa.string()),
    pa.field("error", pa.string()),
    pa.field("error_input", pa.string()),
]
DEGRADED_SCHEMA = pa.schema(list(CLIP_SCHEMA) + REPORT_FIELDS)


def _degrade_stage(batch: pa.Table, degradation: str, scale: int, zstd_level: int) -> pa.Table:
    """Crop HR to a multiple of ``scale``, degrade it to LR, compress every frame."""
    import torch

    from pipelines.degradations import crop_to_multiple, degrade
    from pipelines.schema import encode_frames

    rows = []
    raw_frames = batch["hr_raw"]
    for i, row in enumerate(batch.drop_columns(["hr_raw"]).to_pylist()):
        out = {k: row[k] for k in ("clip_id", "split", "source", "frame_start", "frame_names", "shard")}
        out |= {k: row[k] for k in ("warnings", "error", "error_input")}
        out |= {"source_height": row["height"], "source_width": row["width"], "scale": scale}
        if row["error"]:
            out |= {k: 0 for k in ("num_frames", "hr_height", "hr_width", "lr_height", "lr_width")}
            rows.append(out | {"hr_frames": [], "lr_frames": []})
            continue
        t, h, w = row["num_frames"], row["height"], row["width"]
        hr = np.frombuffer(raw_frames[i].as_buffer(), dtype=np.uint8).reshape(t, h, w, 3)
        # (t, h, w, 3) -> (t, 3, h, w): the copy also makes the tensor writable (Arrow buffers are not).
        hr_tensor, _ = crop_to_multiple(
            torch.from_numpy(np.ascontiguousarray(hr.transpose(0, 3, 1, 2))), scale
        )
        lr = degrade(hr_tensor, degradation, scale).permute(0, 2, 3, 1).numpy()
        hr = hr_tensor.permute(0, 2, 3, 1).numpy()
        out |= {
            "num_frames": t,
            "hr_height": hr.shape[1],
            "hr_width": hr.shape[2],
            "lr_height": lr.shape[1],
            "lr_width": lr.shape[2],
            "hr_frames": encode_frames(np.ascontiguousarray(hr), zstd_level),
            "lr_frames": encode_frames(np.ascontiguousarray(lr), zstd_level),
        }
        rows.append(out)
    return pa.Table.from_pylist(rows, schema=DEGRADED_SCHEMA)


def _map_with_bounded_retries(ds, fn, max_retries: int, fn_kwargs: dict):
    """``ds.map_batches(fn)``, one row per task, retried at most ``max_retries`` times if its worker dies.

    Ray Data retries tasks forever by default; a file that crashes decord every time must fail the job
    instead. Ray 2.60 has no named parameter for this yet and warns about passing it through.
    """
    from ray.util.annotations import RayDeprecationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RayDeprecationWarning)
        return ds.map_batches(
            fn, batch_size=1, batch_format="pyarrow", fn_kwargs=fn_kwargs, num_cpus=1, max_retries=max_retries
        )


def _unwrap_data_error(err: BaseException) -> DataError | None:
    """The DataError a Ray task raised, without Ray's wrapper (whose message repeats the traceback)."""
    seen = set()
    stack = [err]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        cause = getattr(current, "cause", None)  # RayTaskError keeps the task's exception here
        if isinstance(cause, DataError):
            return cause
        if isinstance(current, DataError):
            return current
        stack.extend([current.__cause__, current.__context__, cause])
    return None


@contextlib.contextmanager
def _prepare_execution() -> Iterator[None]:
    """Ray Data settings of the preparation pipelines, restored afterwards.

    Rows come out in plan order, so each shard's clips arrive together (one open file at a time), and
    an exception raised in a stage reaches the driver as itself (a DataError under ``strict``).
    """
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = (ctx.execution_options.preserve_order, ctx.raise_original_map_exception)
    ctx.execution_options.preserve_order = True
    ctx.raise_original_map_exception = True
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.raise_original_map_exception = before


# ----------------------------------------------------------------------------------------------------
# shard files


def sha256_file(path: Path, chunk: int = 8 * 2**20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _write_json_atomic(path: Path, data: dict) -> None:
    temp = path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}")
    with temp.open("w") as f:
        json.dump(data, f, indent=1, sort_keys=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)


class _ShardWriter:
    """Collects one shard's clips in a hidden temporary file; ``finish`` renames it and records it."""

    def __init__(self, output: Path, plan: ShardPlan):
        self.output = output
        self.plan = plan
        self.final = output / plan.path
        self.temp = self.final.with_name(f".{self.final.name}{TEMP_MARKER}{os.getpid()}")
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
        _write_json_atomic(self.output / self.plan.record_path, record)
        return record

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.temp.unlink(missing_ok=True)


def _completed_record(output: Path, plan: ShardPlan) -> dict | None:
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


def _clean_output(output: Path, plans: list[ShardPlan]) -> None:
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


# ----------------------------------------------------------------------------------------------------
# manifest


@dataclass
class Manifest:
    """A prepared dataset's ``manifest.json`` (format in ``docs/data_format.md``)."""

    root: Path
    data: dict

    @property
    def scale(self) -> int:
        return self.data["scale"]

    @property
    def degradation(self) -> str:
        return self.data["degradation"]

    @property
    def splits(self) -> list[str]:
        return sorted(self.data["splits"])

    def clips(self, split: str | None = None) -> list[dict]:
        return [c for c in self.data["clips"] if split is None or c["split"] == split]

    def shards(self, split: str | None = None) -> list[dict]:
        return [s for s in self.data["shards"] if split is None or s["split"] == split]

    def shard_paths(self, split: str) -> list[Path]:
        """Absolute paths of the split's shards; a missing split is a DataError listing the others."""
        if split not in self.data["splits"]:
            raise DataError(
                f"{self.root}: no split '{split}' in this prepared dataset (splits: {', '.join(self.splits)})"
            )
        return [self.root / s["path"] for s in self.shards(split)]


def load_manifest(data_dir: str | Path, verify: bool = True) -> Manifest:
    """Read ``manifest.json``; with ``verify`` refuse any shard whose sha256 differs from the manifest's."""
    root = Path(data_dir).expanduser().resolve()
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise DataError(
            f"{root}: no {MANIFEST_NAME}: not a prepared dataset, or its preparation did not finish. "
            f"Run `python jobs/prepare_data.py --output {root} ...` (re-running resumes)."
        )
    data = json.loads(path.read_text())
    if data.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path}: format version {data.get('format_version')} but this code reads {FORMAT_VERSION}; "
            "prepare the dataset again"
        )
    if verify:
        for shard in data["shards"]:
            file = root / shard["path"]
            if not file.is_file():
                raise DataError(
                    f"{file}: shard listed in the manifest is missing. Re-run prepare with the same "
                    f"--output {root} to rewrite it, or delete {root} and prepare again."
                )
            if sha256_file(file) != shard["sha256"]:
                raise DataError(
                    f"{file}: sha256 does not match the manifest (the shard is corrupt or was changed). "
                    f"Re-run prepare with the same --output {root} to rewrite it, or delete {root} and "
                    "prepare again."
                )
    return Manifest(root, data)


def _project_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray-vsr")
    except PackageNotFoundError:
        return "unknown"


# ----------------------------------------------------------------------------------------------------
# the job


@dataclass
class PrepareSummary:
    """What one run did; ``table()`` is the text the job prints at the end."""

    output: Path
    clips: int
    frames: int
    bytes: int
    seconds: float
    frames_processed: int  # decoded and degraded in this run (skipped shards excluded)
    shards_written: int
    shards_skipped: int
    quarantined: list[dict]
    warnings: list[dict]

    @property
    def frames_per_s(self) -> float:
        return self.frames_processed / self.seconds if self.seconds > 0 else 0.0

    def table(self) -> str:
        rows = [
            ("output", str(self.output)),
            ("clips", f"{self.clips}"),
            ("frames", f"{self.frames}"),
            ("bytes", f"{self.bytes:,} ({self.bytes / 2**20:.1f} MiB)"),
            ("shards written / skipped", f"{self.shards_written} / {self.shards_skipped}"),
            ("seconds", f"{self.seconds:.1f}"),
            ("frames/s (this run)", f"{self.frames_per_s:.1f} ({self.frames_processed} frames)"),
            ("quarantined inputs", f"{len(self.quarantined)}"),
            ("warnings", f"{len(self.warnings)}"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        for label, entries, text in (
            ("quarantined", self.quarantined, lambda q: f"{q['input']}: {q['reason']}"),
            ("warning", self.warnings, lambda w: f"{w['input']}: {w['message']}"),
        ):
            lines += [f"  {label}: {text(entry)}" for entry in entries[:SUMMARY_LIST_LIMIT]]
            if len(entries) > SUMMARY_LIST_LIMIT:
                lines.append(
                    f"  ... {len(entries) - SUMMARY_LIST_LIMIT} more {label} entries in manifest.json"
                )
        return "\n".join(lines)


def _resolve_source(cfg: PrepareConfig) -> Path:
    if cfg.source == SAMPLE_SOURCE:
        from pipelines.sample import render_sample_dataset

        return Path(render_sample_dataset(Path(cfg.sample_cache)))
    return Path(cfg.source)


def _probe_videos(items: list[SourceItem], cfg: PrepareConfig):
    """Probe every video in Ray tasks: {item id: (frames, (h, w), seekable)}, warnings, quarantined."""
    import ray.data

    videos = [i for i in items if i.kind == "video"]
    if not videos:
        return {}, [], []
    items = [{"item_id": v.item_id, "path": v.path} for v in videos]
    with _prepare_execution():  # a Dataset keeps the DataContext it was created under
        rows = _map_with_bounded_retries(
            ray.data.from_items(items, override_num_blocks=min(len(videos), 256)),
            _probe_stage,
            cfg.decode_retries,
            fn_kwargs={"strict": cfg.strict},
        ).take_all()
    by_id = {v.item_id: v for v in videos}
    info, warnings, quarantined = {}, [], []
    for row in rows:
        video = by_id[row["item_id"]]
        if row["error"]:
            quarantined.append({"input": video.source, "reason": row["error"]})
            continue
        info[row["item_id"]] = (row["num_frames"], (row["height"], row["width"]), row["seekable"])
        warnings += [{"input": video.source, "message": m} for m in json.loads(row["warnings"])]
    return info, warnings, quarantined


def _check_output(root: Path, output: Path) -> None:
    if output == root or root in output.parents:
        raise DataError(
            f"{output}: the output folder is inside the source {root}; choose an output outside it"
        )


def prepare_dataset(cfg: PrepareConfig) -> PrepareSummary:
    """Prepare ``cfg.source`` into ``cfg.output`` (Parquet shards + manifest); resumable. Needs Ray."""
    started = time.perf_counter()
    if not cfg.output and cfg.source != SAMPLE_SOURCE:
        raise DataError("no output folder given: pass --output DIR (or set output in the config)")
    output = Path(cfg.output or SAMPLE_OUTPUT).expanduser().resolve()
    source = _resolve_source(cfg)
    found = discover(source, cfg.layout)
    _check_output(found.root, output)
    quarantined = [{"input": q.input, "reason": q.reason} for q in found.quarantined]
    if cfg.strict and quarantined:
        raise DataError(
            f"{quarantined[0]['input']}: {quarantined[0]['reason']} (--strict stops at the first)"
        )
    split_of = assign_splits(found.items, cfg.splits)
    try:
        video_info, video_warnings, video_quarantined = _probe_videos(found.items, cfg)
    except Exception as err:
        data_error = _unwrap_data_error(err)
        if data_error is None:
            raise
        raise DataError(f"{data_error} (--strict stops at the first unreadable input)") from None
    quarantined += video_quarantined
    plans = plan_shards(plan_clips(found.items, split_of, video_info, cfg), cfg)
    if not plans:
        raise DataError(
            f"{found.root}: no readable clip left ({len(quarantined)} inputs quarantined: "
            f"{', '.join(q['input'] for q in quarantined[:4])}); fix or replace them"
        )

    records = {p.path: _completed_record(output, p) for p in plans}
    todo = [p for p in plans if records[p.path] is None]
    if todo or not (output / MANIFEST_NAME).is_file():
        # The dataset is about to change: it must not look complete until the new manifest is written.
        (output / MANIFEST_NAME).unlink(missing_ok=True)
    output.mkdir(parents=True, exist_ok=True)
    _clean_output(output, plans)

    frames_processed = 0
    if todo:
        frames_processed = _run_pipeline(todo, cfg, output, records)

    manifest = _manifest(cfg, found, source, plans, records, quarantined, video_warnings)
    _write_json_atomic(output / MANIFEST_NAME, manifest)
    return PrepareSummary(
        output=output,
        clips=len(manifest["clips"]),
        frames=sum(c["num_frames"] for c in manifest["clips"]),
        bytes=sum(s["bytes"] for s in manifest["shards"]),
        seconds=time.perf_counter() - started,
        frames_processed=frames_processed,
        shards_written=len(todo),
        shards_skipped=len(plans) - len(todo),
        quarantined=manifest["quarantined"],
        warnings=manifest["warnings"],
    )


def _run_pipeline(todo: list[ShardPlan], cfg: PrepareConfig, output: Path, records: dict) -> int:
    """Decode, degrade and write the shards in ``todo``; fills ``records``; returns frames processed."""
    import ray.data

    specs = [clip.spec for plan in todo for clip in plan.clips]
    shard_of = {clip.clip_id: plan for plan in todo for clip in plan.clips}
    writers: dict[str, _ShardWriter] = {}
    frames = 0
    try:
        with _prepare_execution():
            ds = _map_with_bounded_retries(
                ray.data.from_items(specs, override_num_blocks=min(len(specs), 2000)),
                _decode_stage,
                cfg.decode_retries,
                fn_kwargs={"strict": cfg.strict},
            ).map_batches(
                _degrade_stage,
                batch_size=1,
                batch_format="pyarrow",
                fn_kwargs={
                    "degradation": cfg.degradation,
                    "scale": cfg.scale,
                    "zstd_level": cfg.zstd_level,
                },
                num_cpus=1,
            )
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                # Frames stay in Arrow buffers from the task's output to the file.
                scalars = batch.drop_columns(["hr_frames", "lr_frames"]).to_pylist()
                for i, row in enumerate(scalars):
                    plan = shard_of[row["clip_id"]]
                    writer = writers.setdefault(plan.path, _ShardWriter(output, plan))
                    writer.add(row, batch.slice(i, 1))
                    frames += row["num_frames"]
                    if writer.complete:
                        records[plan.path] = writer.finish()
                        del writers[plan.path]
    except Exception as err:
        data_error = _unwrap_data_error(err)
        if data_error is None:
            raise
        raise DataError(f"{data_error} (--strict stops at the first unreadable input)") from None
    finally:
        for writer in writers.values():
            writer.abort()
    if writers:
        raise RuntimeError(f"the pipeline ended before these shards were complete: {sorted(writers)}")
    return frames


def _manifest(cfg, found, source: Path, plans, records, quarantined, video_warnings) -> dict:
    clips, shards, warnings = [], [], list(video_warnings)
    for plan in plans:
        record = records[plan.path]
        clips += record["clips"]
        quarantined = quarantined + record["quarantined"]
        warnings += record["warnings"]
        if record["path"] is not None:
            shards.append(
                {
                    "path": record["path"],
                    "split": plan.split,
                    "rows": record["rows"],
                    "bytes": record["bytes"],
                    "sha256": record["sha256"],
                    "clips": [c["clip_id"] for c in record["clips"]],
                }
            )
    splits: dict[str, dict] = {}
    for clip in clips:
        entry = splits.setdefault(clip["split"], {"clips": 0, "frames": 0})
        entry["clips"] += 1
        entry["frames"] += clip["num_frames"]
    all_files = [f for item in found.items for f in item.files]
    return {
        "format_version": FORMAT_VERSION,
        "project_version": _project_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": {
            "path": str(found.root),
            "requested": cfg.source,
            "layout": found.layout,
            "fingerprint": fingerprint(found.root, all_files),
        },
        "degradation": cfg.degradation,
        "scale": cfg.scale,
        "clip_length": cfg.clip_length,
        "frame_codec": {"name": "zstd", "level": cfg.zstd_level, "layout": "per-frame (h, w, 3) uint8 RGB"},
        "crop": {
            "policy": f"HR frames are cropped at the bottom and right to a multiple of the scale ({cfg.scale})",
            "cropped_clips": [c["clip_id"] for c in clips if c["cropped"]],
        },
        "splits": splits,
        "shards": shards,
        "clips": clips,
        "quarantined": quarantined,
        "warnings": warnings,
    }


# ----------------------------------------------------------------------------------------------------
# command line (jobs/prepare_data.py)


def build_parser(description: str | None = None):
    import argparse

    from pipelines.config import add_config_args

    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--source", help="dataset folder or video file (layout detected, see --layout)")
    source.add_argument(
        "--dataset", choices=[SAMPLE_SOURCE], help="render and prepare the bundled sample dataset"
    )
    parser.add_argument("--layout", choices=LAYOUTS, help="source layout (default: auto)")
    parser.add_argument("--output", help=f"prepared dataset folder (sample dataset: {SAMPLE_OUTPUT})")
    parser.add_argument("--degradation", choices=["BI", "BD"], help="LR degradation (default: BI)")
    parser.add_argument("--scale", type=int, help="downscaling factor (default: 4)")
    parser.add_argument(
        "--strict", action="store_true", default=None, help="stop at the first unreadable input"
    )
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray started when no cluster is given")
    return parser


def config_from_args(args) -> PrepareConfig:
    """``--config``/``--set`` first, then the direct flags (they win)."""
    import dataclasses

    from pipelines.config import ConfigError, load_config

    cfg = load_config(PrepareConfig, args.config, args.overrides)
    direct = {
        "source": SAMPLE_SOURCE if args.dataset else args.source,
        "layout": args.layout,
        "output": args.output,
        "degradation": args.degradation,
        "scale": args.scale,
        "strict": args.strict,
    }
    try:
        return dataclasses.replace(cfg, **{k: v for k, v in direct.items() if v is not None})
    except ValueError as err:
        raise ConfigError(str(err)) from None


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    """Parse, prepare, print the summary table; a user mistake exits 2 with one message, no traceback."""
    import sys

    import ray

    from pipelines.config import ConfigError

    args = build_parser(description).parse_args(argv)
    try:
        cfg = config_from_args(args)
        if cfg.source != SAMPLE_SOURCE:
            check_source(cfg.source, cfg.layout)  # before starting Ray: a typo fails in a second
        if not ray.is_initialized():
            # No address: RAY_ADDRESS (set by `ray job submit`) or else a new local Ray.
            ray.init(address=args.address, num_cpus=None if args.address else args.num_cpus)
        summary = prepare_dataset(cfg)
    except (DataError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary.table())
    return 0
