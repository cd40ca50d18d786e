"""Prepare a video dataset for training: decode, degrade and store it as Parquet shards (ARCHITECTURE.md, data flow).

:func:`run_prepare` is the stage (``jobs/prepare_data.py``): it checks the source and output, starts or
joins Ray and runs :func:`prepare_dataset`. The driver plans; Ray tasks do the work and write straight to
the output storage (a local or NFS path, or any filesystem URI, :mod:`pipelines.common.storage`):

1. discovery: the driver lists the source's clip folders (or video files); Ray tasks list each folder's
   frames and read their headers, in batches, and probe each video (length, size, timing)
   (:mod:`pipelines.data.prepare.discovery`);
2. the driver assigns splits and cuts clips into shards deterministically (:mod:`pipelines.data.prepare.plan`);
3. on a re-run, Ray tasks verify the done-records and checksums of the shards already there
   (:func:`~pipelines.data.prepare.shards.check_shards`); only the others are written again;
4. one Ray task per shard decodes, degrades, compresses and writes it, hashing it while writing, and
   returns its small done-record (:func:`~pipelines.data.prepare.shards.write_shard`); tasks are spread
   over the cluster's nodes and run in any order;
5. the driver writes ``manifest.json`` from the done-records, last (:mod:`pipelines.data.prepare.records`).

No frame reaches the driver. An unreadable input is quarantined (left out and reported) unless
``strict``, which stops the job at the first one. An interrupted run (Ctrl-C, a killed driver or node)
re-run with the same command finishes the dataset with the same shards. Format: ``docs/data_format.md``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from pipelines.common.errors import DataError
from pipelines.common.progress import ThroughputReporter
from pipelines.common.ray_session import init_ray
from pipelines.common.storage import Location, check_storage_uri, iter_chunks, resolve
from pipelines.data.manifest import MANIFEST_NAME, SHARDS_DIR, write_manifest
from pipelines.data.prepare.config import SAMPLE_OUTPUT, SAMPLE_SOURCE, PrepareConfig
from pipelines.data.prepare.discovery import (
    check_output_outside,
    check_replaces_nothing_else,
    inspect_in_tasks,
    probe_videos_in_tasks,
    ray_tasks,
    resolve_source,
    source_fingerprint,
)
from pipelines.data.prepare.plan import assign_splits, plan_clips, plan_shards
from pipelines.data.prepare.records import dataset_manifest
from pipelines.data.prepare.shards import STAGES, DoneRecord, check_shards, clean_output, write_shard
from pipelines.data.sources import check_source, discover

CHECK_SHARDS_PER_TASK = 16  # done-records (and checksums) one resume-check task verifies
SUMMARY_LIST_LIMIT = 20  # quarantined inputs / warnings printed in the summary (all are in the manifest)


@dataclass(frozen=True)
class PrepareSummary:
    """What one run did; ``describe()`` is the text the job prints at the end."""

    output: str  # the output folder's path or URI
    clips: int
    frames: int
    bytes: int
    seconds: float
    frames_processed: int  # decoded and degraded in this run (skipped shards excluded)
    shards_written: int
    shards_skipped: int
    quarantined: tuple[Mapping[str, str], ...]
    warnings: tuple[Mapping[str, str], ...]
    cropped_clips: int = 0  # clips whose HR frames were cropped to a multiple of the scale
    scale: int = 4
    shards_by_node: dict[str, int] = field(default_factory=dict)  # node id -> shards it wrote this run
    stage_seconds: dict[str, float] = field(default_factory=dict)  # task seconds per stage, this run
    driver_received_bytes: int = 0  # JSON size of everything the write tasks returned to the driver

    @property
    def frames_per_s(self) -> float:
        return self.frames_processed / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
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


def run_prepare(cfg: PrepareConfig) -> PrepareSummary:
    """The preparation stage: check the source and output (before Ray: a typo fails in a second), start or
    join Ray (``cfg.address``, ``cfg.num_cpus``), then :func:`prepare_dataset`."""
    if cfg.source != SAMPLE_SOURCE:
        check_source(cfg.source, cfg.layout)
    if cfg.output:
        check_storage_uri(cfg.output)  # az:// without adlfs, ...: before Ray, not in a task
    init_ray(cfg.address, num_cpus=cfg.num_cpus)
    return prepare_dataset(cfg)


def prepare_dataset(cfg: PrepareConfig, progress=None) -> PrepareSummary:
    """Prepare ``cfg.source`` into ``cfg.output`` (Parquet shards + manifest); resumable. Needs Ray.

    ``progress(done, total)`` is called as shards finish (default: a line on stderr every few seconds).
    """
    started = time.perf_counter()
    if not cfg.output and cfg.source != SAMPLE_SOURCE:
        raise DataError("no output folder given: pass --output DIR (or set output in the config)")
    output = resolve(cfg.output or SAMPLE_OUTPUT)
    found = discover(resolve_source(cfg), cfg.layout, inspect=inspect_in_tasks)
    check_output_outside(found.root, output)
    quarantined = [{"input": q.input, "reason": q.reason} for q in found.quarantined]
    if cfg.strict and quarantined:
        raise DataError(
            f"{quarantined[0]['input']}: {quarantined[0]['reason']} (--strict stops at the first)"
        )
    split_of = assign_splits(found.items, cfg.splits)
    video_info, video_warnings, video_quarantined = probe_videos_in_tasks(found.items, cfg)
    quarantined += video_quarantined
    plans = plan_shards(plan_clips(found.items, split_of, video_info, cfg), cfg)
    if not plans:
        raise DataError(
            f"{found.root}: no readable clip left ({len(quarantined)} inputs quarantined: "
            f"{', '.join(q['input'] for q in quarantined[:4])}); fix or replace them"
        )

    check_replaces_nothing_else(output, found.root, cfg)
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

    source = (found.root, found.layout, source_fingerprint(found.root, found.items))
    manifest = dataset_manifest(cfg, source, plans, records, quarantined, found.warnings + video_warnings)
    write_manifest(output, manifest)
    return PrepareSummary(
        output=output.uri,
        clips=len(manifest.clips),
        frames=sum(c.num_frames for c in manifest.clips),
        bytes=sum(s.bytes for s in manifest.shards),
        seconds=time.perf_counter() - started,
        frames_processed=run["frames"],
        shards_written=len(todo),
        shards_skipped=len(plans) - len(todo),
        quarantined=manifest.quarantined,
        warnings=manifest.warnings,
        cropped_clips=len(manifest.cropped_clips),
        scale=cfg.scale,
        shards_by_node=dict(run["nodes"]),
        stage_seconds=run["stages"],
        driver_received_bytes=run["received"],
    )


def _kept_shards(output: Location, tasks: list[dict]) -> list[DoneRecord | None]:
    """The done-records of shards already complete (checked in Ray tasks, checksums included), else None."""
    import ray

    if not output.join(SHARDS_DIR).is_dir():
        return [None] * len(tasks)
    check = ray_tasks(check_shards, "check prepared shards")
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
    task = ray_tasks(write_shard, "write shard", cfg.decode_retries)
    pending = {task.remote(output.uri, plan, settings): plan for plan in todo}
    done = 0
    try:
        while pending:
            finished, _ = ray.wait(list(pending), num_returns=1)
            plan = pending.pop(finished[0])
            result = ray.get(finished[0])
            run["received"] += result.json_size()
            if result.strict_error is not None:
                failed = result.strict_error
                raise DataError(
                    f"{failed['input']}: {failed['reason']} (--strict stops at the first unreadable input)"
                )
            records[plan["path"]] = result.record
            run["frames"] += result.frames
            run["nodes"][result.node] += 1
            for stage, seconds in result.timings.items():
                run["stages"][stage] += seconds
            done += 1
            progress(done, len(todo))
    finally:
        for ref in pending:
            ray.cancel(ref, force=False)
    return run
