"""Prepare a video dataset for training: decode, degrade and store it as Parquet shards (ARCHITECTURE.md, data flow).

The job runs as one Ray Data pipeline over clips:

1. the driver lists the source (:mod:`pipelines.data.sources`) and, for videos, probes each file in a
   Ray task to learn its length and cut it into clips of ``clip_length`` frames;
2. splits and shards are assigned deterministically (:mod:`pipelines.data.prepare.plan`);
3. a decode stage reads the HR frames of one clip, a degrade stage crops, degrades and compresses them
   (:mod:`pipelines.data.prepare.stages`);
4. the clips of each shard go into a hidden temporary file, renamed into place and recorded with its
   sha256 in a done-record beside it (:mod:`pipelines.data.prepare.shards`); ``manifest.json`` is
   written last (:mod:`pipelines.data.manifest`).

Re-running with the same output skips every shard whose done-record matches both the shard's inputs and
its file's checksum, and rewrites the rest. An unreadable input is quarantined (left out and reported)
unless ``strict``, which stops the job at the first one. The format is in ``docs/data_format.md``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.common.cli import flag_overrides, job_parser, run_job
from pipelines.common.config import load_config
from pipelines.common.errors import DataError
from pipelines.common.files import project_version, write_json_atomic
from pipelines.common.ray_session import init_ray
from pipelines.data.manifest import MANIFEST_NAME
from pipelines.data.prepare.config import SAMPLE_OUTPUT, SAMPLE_SOURCE, PrepareConfig
from pipelines.data.prepare.plan import ShardPlan, assign_splits, plan_clips, plan_shards
from pipelines.data.prepare.shards import ShardWriter, clean_output, completed_record
from pipelines.data.prepare.stages import (
    decode_source_stage,
    degrade_stage,
    map_with_bounded_retries,
    prepare_execution,
    probe_stage,
)
from pipelines.data.schema import FORMAT_VERSION
from pipelines.data.sources import LAYOUTS, SourceItem, check_source, discover, fingerprint

SUMMARY_LIST_LIMIT = 20  # quarantined inputs / warnings printed in the summary (all are in the manifest)


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
    cropped_clips: int = 0  # clips whose HR frames were cropped to a multiple of the scale
    scale: int = 4

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
            (
                "HR cropped to a multiple of x" + str(self.scale),
                f"{self.cropped_clips} clips (bottom / right)",
            ),
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
        from pipelines.data.sample import render_sample_dataset

        return Path(render_sample_dataset(Path(cfg.sample_cache)))
    return Path(cfg.source)


def _probe_videos(items: list[SourceItem], cfg: PrepareConfig):
    """Probe every video in Ray tasks: {item id: (frames, (h, w), seekable)}, warnings, quarantined."""
    import ray.data

    videos = [i for i in items if i.kind == "video"]
    if not videos:
        return {}, [], []
    items = [{"item_id": v.item_id, "path": v.path} for v in videos]
    with prepare_execution():  # a Dataset keeps the DataContext it was created under
        rows = map_with_bounded_retries(
            ray.data.from_items(items, override_num_blocks=min(len(videos), 256)),
            probe_stage,
            cfg.decode_retries,
            fn_kwargs={},
        ).take_all()
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
        warnings += [{"input": video.source, "message": m} for m in json.loads(row["warnings"])]
    return info, warnings, quarantined


def _check_output(root: Path, output: Path) -> None:
    if output == root or root in output.parents:
        raise DataError(
            f"{output}: the output folder is inside the source {root}; choose an output outside it"
        )


# Manifest fields that say what a prepared dataset is; a run that differs in one makes another dataset.
_IDENTITY = ("degradation", "scale", "clip_length")


def _check_replaces_nothing_else(output: Path, source_root: Path, cfg: PrepareConfig) -> None:
    """Refuse to replace a dataset in ``output`` made from another source or settings, unless ``overwrite``."""
    manifest_file = output / MANIFEST_NAME
    if cfg.overwrite or not manifest_file.is_file():
        return
    try:
        existing = json.loads(manifest_file.read_text())
        made_from = existing["source"]["path"]
        differences = [
            f"{key} {existing[key]} (this run: {getattr(cfg, key)})"
            for key in _IDENTITY
            if existing[key] != getattr(cfg, key)
        ]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(
            f"{output} holds a {MANIFEST_NAME} that does not read as a prepared dataset; choose another "
            "--output, or pass --overwrite to replace what is there"
        ) from None
    if made_from != str(source_root):
        differences.insert(0, f"source {made_from} (this run: {source_root})")
    if differences:
        raise DataError(
            f"{output} holds another prepared dataset ({'; '.join(differences)}): choose another --output, "
            "or pass --overwrite to replace it"
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
    video_info, video_warnings, video_quarantined = _probe_videos(found.items, cfg)
    quarantined += video_quarantined
    plans = plan_shards(plan_clips(found.items, split_of, video_info, cfg), cfg)
    if not plans:
        raise DataError(
            f"{found.root}: no readable clip left ({len(quarantined)} inputs quarantined: "
            f"{', '.join(q['input'] for q in quarantined[:4])}); fix or replace them"
        )

    _check_replaces_nothing_else(output, found.root, cfg)
    records = {p.path: completed_record(output, p) for p in plans}
    todo = [p for p in plans if records[p.path] is None]
    if todo or not (output / MANIFEST_NAME).is_file():
        # The dataset is about to change: it must not look complete until the new manifest is written.
        (output / MANIFEST_NAME).unlink(missing_ok=True)
    output.mkdir(parents=True, exist_ok=True)
    clean_output(output, plans)

    frames_processed = 0
    if todo:
        frames_processed = _run_pipeline(todo, cfg, output, records)

    manifest = _manifest(cfg, found, source, plans, records, quarantined, video_warnings)
    write_json_atomic(output / MANIFEST_NAME, manifest)
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
        cropped_clips=len(manifest["crop"]["cropped_clips"]),
        scale=cfg.scale,
    )


def _run_pipeline(todo: list[ShardPlan], cfg: PrepareConfig, output: Path, records: dict) -> int:
    """Decode, degrade and write the shards in ``todo``; fills ``records``; returns frames processed."""
    import ray.data

    specs = [clip.spec for plan in todo for clip in plan.clips]
    shard_of = {clip.clip_id: plan for plan in todo for clip in plan.clips}
    writers: dict[str, ShardWriter] = {}
    frames = 0
    try:
        with prepare_execution():
            ds = map_with_bounded_retries(
                ray.data.from_items(specs, override_num_blocks=min(len(specs), 2000)),
                decode_source_stage,
                cfg.decode_retries,
                fn_kwargs={},
            ).map_batches(
                degrade_stage,
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
                    if row["error"] and cfg.strict:
                        failed = row["error_input"] or row["source"]
                        raise DataError(
                            f"{failed}: {row['error']} (--strict stops at the first unreadable input)"
                        )
                    plan = shard_of[row["clip_id"]]
                    writer = writers.setdefault(plan.path, ShardWriter(output, plan))
                    writer.add(row, batch.slice(i, 1))
                    frames += row["num_frames"]
                    if writer.complete:
                        records[plan.path] = writer.finish()
                        del writers[plan.path]
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
        "project_version": project_version(),
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


# ----------------------------------------------------------------------------------------------------
# command line (jobs/prepare_data.py)


def build_parser(description: str | None = None):
    parser = job_parser(description)
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
        init_ray(args.address, num_cpus=args.num_cpus)
        print(prepare_dataset(cfg).table())

    return run_job(body)
