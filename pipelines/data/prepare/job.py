"""Prepare a video dataset for training: decode, degrade and store it as Parquet shards (ARCHITECTURE.md, data flow).

The driver plans; Ray tasks do the work and write straight to the output storage (a local or NFS path,
or any filesystem URI, :mod:`pipelines.common.storage`):

1. discovery: the driver lists the source's clip folders (or video files); Ray tasks list each folder's
   frames and read their headers, in batches (:func:`pipelines.data.sources.inspect_clip_folders`), and
   probe each video (length, size, timing);
2. the driver assigns splits and cuts clips into shards deterministically (:mod:`pipelines.data.prepare.plan`);
3. on a re-run, Ray tasks verify the done-records and checksums of the shards already there
   (:func:`~pipelines.data.prepare.shards.check_shards`); only the others are written again;
4. one Ray task per shard decodes, degrades, compresses and writes it, hashing it while writing, and
   returns its small done-record (:func:`~pipelines.data.prepare.shards.write_shard`); tasks are spread
   over the cluster's nodes and run in any order;
5. the driver writes ``manifest.json`` from the done-records, last.

No frame reaches the driver. An unreadable input is quarantined (left out and reported) unless
``strict``, which stops the job at the first one. An interrupted run (Ctrl-C, a killed driver or node)
re-run with the same command finishes the dataset with the same shards. Format: ``docs/data_format.md``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.common.cli import flag_overrides, job_parser, run_job
from pipelines.common.config import load_config
from pipelines.common.errors import DataError
from pipelines.common.files import project_version
from pipelines.common.progress import ThroughputReporter
from pipelines.common.ray_session import init_ray
from pipelines.common.storage import Location, check_storage_uri, iter_chunks, resolve
from pipelines.data.manifest import MANIFEST_NAME, SHARDS_DIR
from pipelines.data.prepare.config import SAMPLE_OUTPUT, SAMPLE_SOURCE, PrepareConfig
from pipelines.data.prepare.plan import assign_splits, plan_clips, plan_shards
from pipelines.data.prepare.shards import STAGES, check_shards, clean_output, write_shard
from pipelines.data.prepare.stages import probe_videos
from pipelines.data.schema import FORMAT_VERSION
from pipelines.data.sources import (
    CONTENT_FINGERPRINT_LIMIT,
    LAYOUTS,
    SourceItem,
    check_source,
    discover,
    fingerprint,
    inspect_clip_folders,
)

CHECK_SHARDS_PER_TASK = 16  # done-records (and checksums) one resume-check task verifies
SUMMARY_LIST_LIMIT = 20  # quarantined inputs / warnings printed in the summary (all are in the manifest)


@dataclass
class PrepareSummary:
    """What one run did; ``table()`` is the text the job prints at the end."""

    output: str  # the output folder's path or URI
    clips: int
    frames: int
    bytes: int
    seconds: float
    frames_processed: int  # decoded and degraded in this run (skipped shards excluded)
    shards_written: int
    shards_skipped: int
    quarantined: list[dict]
    warnings: list[dict]
    cropped_clips: int = 0  # clips whose HR frames were cropped to a multiple of the scale
    scale: int = 4
    shards_by_node: dict[str, int] = field(default_factory=dict)  # node id -> shards it wrote this run
    stage_seconds: dict[str, float] = field(default_factory=dict)  # task seconds per stage, this run
    driver_received_bytes: int = 0  # JSON size of everything the write tasks returned to the driver

    @property
    def frames_per_s(self) -> float:
        return self.frames_processed / self.seconds if self.seconds > 0 else 0.0

    def table(self) -> str:
        rows = [
            ("output", self.output),
            ("clips", f"{self.clips}"),
            ("frames", f"{self.frames}"),
            ("bytes", f"{self.bytes:,} ({self.bytes / 2**20:.1f} MiB)"),
            ("shards written / skipped", f"{self.shards_written} / {self.shards_skipped}"),
            ("written on nodes", f"{len(self.shards_by_node)}"),
            ("seconds", f"{self.seconds:.1f}"),
            ("frames/s (this run)", f"{self.frames_per_s:.1f} ({self.frames_processed} frames)"),
            (
                "HR cropped to a multiple of x" + str(self.scale),
                f"{self.cropped_clips} clips (bottom / right)",
            ),
            ("quarantined inputs", f"{len(self.quarantined)}"),
            ("warnings", f"{len(self.warnings)}"),
        ]
        if self.frames_processed:
            per_frame = ", ".join(
                f"{stage} {1000 * seconds / self.frames_processed:.1f}"
                for stage, seconds in self.stage_seconds.items()
            )
            rows.insert(7, ("ms per frame (task time)", per_frame))
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
        from pipelines.data.sample import render_sample_dataset

        return Path(render_sample_dataset(Path(cfg.sample_cache)))
    return resolve(cfg.source).local_path


def _tasks(fn, name: str, retries: int = 3):
    import ray

    return ray.remote(fn).options(num_cpus=1, max_retries=retries, scheduling_strategy="SPREAD", name=name)


def _inspect_in_tasks(root: str, batches: list[list]) -> list[dict]:
    """Discovery's per-folder work (frame listing, image headers) in parallel Ray tasks, in batch order."""
    import ray

    task = _tasks(inspect_clip_folders, "discover clip folders")
    return ray.get([task.remote(root, batch) for batch in batches])


def _probe_videos(items: list[SourceItem], cfg: PrepareConfig):
    """Probe every video in its own Ray task: {item id: (frames, (h, w), seekable)}, warnings, quarantined.

    One video per task: decord may crash its worker on a bad file, and a retried task repeats only it.
    """
    import ray

    videos = [i for i in items if i.kind == "video"]
    task = _tasks(probe_videos, "probe video", cfg.decode_retries)
    rows = [
        r
        for rs in ray.get([task.remote([{"item_id": v.item_id, "path": v.path}]) for v in videos])
        for r in rs
    ]
    by_id = {v.item_id: v for v in videos}
    info, warnings, quarantined = {}, [], []
    for row in rows:
        video = by_id[row["item_id"]]
        if row["error"] and cfg.strict:
            raise DataError(f"{video.path}: {row['error']} (--strict stops at the first unreadable input)")
        if row["error"]:
            quarantined.append({"input": video.source, "reason": row["error"]})
            continue
        info[row["item_id"]] = (row["num_frames"], (row["height"], row["width"]), row["seekable"])
        warnings += [{"input": video.source, "message": m} for m in row["warnings"]]
    return info, warnings, quarantined


def _check_output(root: Path, output: Location) -> None:
    if output.is_local and (output.local_path == root or root in output.local_path.parents):
        raise DataError(
            f"{output.uri}: the output folder is inside the source {root}; choose an output outside it"
        )


# Manifest fields that say what a prepared dataset is; a run that differs in one makes another dataset.
_IDENTITY = ("degradation", "scale", "clip_length")


def _check_replaces_nothing_else(output: Location, source_root: Path, cfg: PrepareConfig) -> None:
    """Refuse to replace a dataset in ``output`` made from another source or settings, unless ``overwrite``."""
    manifest_file = output.join(MANIFEST_NAME)
    if cfg.overwrite or not manifest_file.is_file():
        return
    try:
        existing = manifest_file.read_json()
        made_from = existing["source"]["path"]
        differences = [
            f"{key} {existing[key]} (this run: {getattr(cfg, key)})"
            for key in _IDENTITY
            if existing[key] != getattr(cfg, key)
        ]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(
            f"{output.uri} holds a {MANIFEST_NAME} that does not read as a prepared dataset; choose another "
            "--output, or pass --overwrite to replace what is there"
        ) from None
    if made_from != str(source_root):
        differences.insert(0, f"source {made_from} (this run: {source_root})")
    if differences:
        raise DataError(
            f"{output.uri} holds another prepared dataset ({'; '.join(differences)}): choose another --output, "
            "or pass --overwrite to replace it"
        )


def _source_fingerprint(root: Path, items: list[SourceItem]) -> dict:
    """The source's fingerprint: from the listed sizes and mtimes, or, for a small source, its bytes (in a task)."""
    import ray

    files = [f for item in items for f in item.files]
    if sum(f.size for f in files) > CONTENT_FINGERPRINT_LIMIT:
        return fingerprint(root, files)  # needs no file access
    return ray.get(_tasks(fingerprint, "fingerprint source").remote(root, files))


def prepare_dataset(cfg: PrepareConfig, progress=None) -> PrepareSummary:
    """Prepare ``cfg.source`` into ``cfg.output`` (Parquet shards + manifest); resumable. Needs Ray.

    ``progress(done, total)`` is called as shards finish (default: a line on stderr every few seconds).
    """
    started = time.perf_counter()
    if not cfg.output and cfg.source != SAMPLE_SOURCE:
        raise DataError("no output folder given: pass --output DIR (or set output in the config)")
    output = resolve(cfg.output or SAMPLE_OUTPUT)
    source = _resolve_source(cfg)
    found = discover(source, cfg.layout, inspect=_inspect_in_tasks)
    _check_output(found.root, output)
    quarantined = [{"input": q.input, "reason": q.reason} for q in found.quarantined]
    if cfg.strict and quarantined:
        raise DataError(
            f"{quarantined[0]['input']}: {quarantined[0]['reason']} (--strict stops at the first)"
        )
    split_of = assign_splits(found.items, cfg.splits)
    video_info, video_warnings, video_quarantined = _probe_videos(found.items, cfg)
    quarantined += video_quarantined
    plans = plan_shards(plan_clips(found.items, split_of, video_info, cfg), cfg)
    if not plans:
        raise DataError(
            f"{found.root}: no readable clip left ({len(quarantined)} inputs quarantined: "
            f"{', '.join(q['input'] for q in quarantined[:4])}); fix or replace them"
        )

    _check_replaces_nothing_else(output, found.root, cfg)
    tasks = [plan.as_task() for plan in plans]
    records = dict(zip((p.path for p in plans), _kept_shards(output, tasks), strict=True))
    todo = [task for task in tasks if records[task["path"]] is None]
    if todo or not output.join(MANIFEST_NAME).is_file():
        # The dataset is about to change: it must not look complete until the new manifest is written.
        output.join(MANIFEST_NAME).delete()
    output.mkdirs()
    clean_output(output, tasks)
    run = _write_shards(todo, cfg, output, records, progress or ThroughputReporter("prepare", "shards"))
    clean_output(output, tasks)  # temporary files of tasks whose worker or node died and were retried

    manifest = _manifest(cfg, found, source, plans, records, quarantined, found.warnings + video_warnings)
    output.join(MANIFEST_NAME).write_json_atomic(manifest)
    return PrepareSummary(
        output=output.uri,
        clips=len(manifest["clips"]),
        frames=sum(c["num_frames"] for c in manifest["clips"]),
        bytes=sum(s["bytes"] for s in manifest["shards"]),
        seconds=time.perf_counter() - started,
        frames_processed=run["frames"],
        shards_written=len(todo),
        shards_skipped=len(plans) - len(todo),
        quarantined=manifest["quarantined"],
        warnings=manifest["warnings"],
        cropped_clips=len(manifest["crop"]["cropped_clips"]),
        scale=cfg.scale,
        shards_by_node=dict(run["nodes"]),
        stage_seconds=run["stages"],
        driver_received_bytes=run["received"],
    )


def _kept_shards(output: Location, tasks: list[dict]) -> list[dict | None]:
    """The done-records of shards already complete (checked in Ray tasks, checksums included), else None."""
    import ray

    if not output.join(SHARDS_DIR).is_dir():
        return [None] * len(tasks)
    check = _tasks(check_shards, "check prepared shards")
    groups = list(
        iter_chunks([{k: t[k] for k in ("path", "record_path", "key")} for t in tasks], CHECK_SHARDS_PER_TASK)
    )
    return [record for group in ray.get([check.remote(output.uri, g) for g in groups]) for record in group]


def _write_shards(todo: list[dict], cfg: PrepareConfig, output: Location, records: dict, progress) -> dict:
    """One Ray task per shard in ``todo``, collected as they finish; fills ``records``.

    Returns the frames processed, the shards each node wrote, task seconds per stage and the bytes the
    driver received. Under ``strict`` the first unreadable input cancels the remaining tasks.
    """
    import ray

    run = {"frames": 0, "nodes": Counter(), "stages": dict.fromkeys(STAGES, 0.0), "received": 0}
    if not todo:
        return run
    settings = {
        "degradation": cfg.degradation,
        "scale": cfg.scale,
        "zstd_level": cfg.zstd_level,
        "segment_frames": cfg.segment_frames,
        "strict": cfg.strict,
    }
    task = _tasks(write_shard, "write shard", cfg.decode_retries)
    pending = {task.remote(output.uri, plan, settings): plan for plan in todo}
    done = 0
    try:
        while pending:
            finished, _ = ray.wait(list(pending), num_returns=1)
            plan = pending.pop(finished[0])
            result = ray.get(finished[0])
            run["received"] += len(json.dumps(result))
            if "strict_error" in result:
                failed = result["strict_error"]
                raise DataError(
                    f"{failed['input']}: {failed['reason']} (--strict stops at the first unreadable input)"
                )
            records[plan["path"]] = {
                k: v for k, v in result.items() if k not in ("node", "timings", "frames")
            }
            run["frames"] += result["frames"]
            run["nodes"][result["node"]] += 1
            for stage, seconds in result["timings"].items():
                run["stages"][stage] += seconds
            done += 1
            progress(done, len(todo))
    finally:
        for ref in pending:
            ray.cancel(ref, force=False)
    return run


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
    return {
        "format_version": FORMAT_VERSION,
        "project_version": project_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": {
            "path": str(found.root),
            "requested": cfg.source,
            "layout": found.layout,
            "fingerprint": _source_fingerprint(found.root, found.items),
        },
        "degradation": cfg.degradation,
        "scale": cfg.scale,
        "clip_length": cfg.clip_length,
        "frame_codec": {"name": "zstd", "level": cfg.zstd_level, "layout": "per-frame (h, w, 3) uint8 RGB"},
        "segment_frames": cfg.segment_frames,
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
    parser = job_parser(description, set_example="clip_length=50")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--source", help="dataset folder or video file (layout detected, see --layout)")
    source.add_argument(
        "--dataset", choices=[SAMPLE_SOURCE], help="render and prepare the bundled sample dataset"
    )
    parser.add_argument("--layout", choices=LAYOUTS, help="source layout (default: auto)")
    parser.add_argument(
        "--output",
        help=f"prepared dataset folder: a path (NFS on a cluster) or a URI such as s3://bucket/reds_bi "
        f"(sample dataset: {SAMPLE_OUTPUT})",
    )
    parser.add_argument("--degradation", choices=["BI", "BD"], help="LR degradation (default: BI)")
    parser.add_argument("--scale", type=int, help="downscaling factor (default: 4)")
    parser.add_argument(
        "--strict", action="store_true", default=None, help="stop at the first unreadable input"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="replace a dataset in --output prepared from another source or with other settings",
    )
    parser.add_argument(
        "--any-scale",
        action="store_true",
        default=None,
        help="allow a --scale other than x4 (both networks are x4): data for a network of your own",
    )
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray started when no cluster is given")
    return parser


def config_from_args(args) -> PrepareConfig:
    """``--config``/``--set`` first, then the direct flags (they win)."""
    direct = {
        "source": SAMPLE_SOURCE if args.dataset else args.source,
        "layout": args.layout,
        "output": args.output,
        "degradation": args.degradation,
        "scale": args.scale,
        "strict": args.strict,
        "overwrite": args.overwrite,
        "any_scale": args.any_scale,
    }
    return load_config(PrepareConfig, args.config, [*args.overrides, *flag_overrides(direct)])


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    """Parse, prepare, print the summary table; a user mistake exits 2 with one message, no traceback."""
    args = build_parser(description).parse_args(argv)

    def body() -> None:
        cfg = config_from_args(args)
        if cfg.source != SAMPLE_SOURCE:
            check_source(cfg.source, cfg.layout)  # before starting Ray: a typo fails in a second
        if cfg.output:
            check_storage_uri(cfg.output)  # az:// without adlfs, ...: before Ray, not in a task
        init_ray(args.address, num_cpus=args.num_cpus)
        print(prepare_dataset(cfg).table())

    return run_job(body)
