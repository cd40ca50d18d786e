"""What the driver learns about the source before planning, with the per-file work in Ray tasks.

- :func:`resolve_source`: the source folder (the bundled sample is rendered first);
- :func:`inspect_in_tasks`: discovery's per-folder work (frame listing, image headers), batched in tasks;
- :func:`probe_videos_in_tasks`: one task per video (length, size, timing), quarantining the unreadable;
- :func:`source_fingerprint`: the source's fingerprint recorded in the manifest;
- :func:`check_output_outside`, :func:`check_replaces_nothing_else`: the output is not inside the source
  and holds no other prepared dataset.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.common.errors import DataError
from pipelines.common.storage import Location, resolve
from pipelines.data.manifest import IDENTITY_FIELDS, MANIFEST_NAME, read_identity
from pipelines.data.prepare.config import SAMPLE_SOURCE, PrepareConfig
from pipelines.data.prepare.stages import probe_videos
from pipelines.data.sources import CONTENT_FINGERPRINT_LIMIT, SourceItem, fingerprint, inspect_clip_folders


def ray_tasks(fn, name: str, retries: int = 3):
    """``fn`` as a Ray task of one CPU, spread over the cluster, retried ``retries`` times if its worker dies."""
    import ray

    return ray.remote(fn).options(num_cpus=1, max_retries=retries, scheduling_strategy="SPREAD", name=name)


def resolve_source(cfg: PrepareConfig) -> Path:
    if cfg.source == SAMPLE_SOURCE:
        from pipelines.data.sample import render_sample_dataset

        return Path(render_sample_dataset(Path(cfg.sample_cache)))
    return resolve(cfg.source).local_path


def inspect_in_tasks(root: str, batches: list[list]) -> list[dict]:
    """Discovery's per-folder work (frame listing, image headers) in parallel Ray tasks, in batch order."""
    import ray

    task = ray_tasks(inspect_clip_folders, "discover clip folders")
    return ray.get([task.remote(root, batch) for batch in batches])


def probe_videos_in_tasks(items: list[SourceItem], cfg: PrepareConfig):
    """Probe every video in its own Ray task: {item id: (frames, (h, w), seekable)}, warnings, quarantined.

    One video per task: decord may crash its worker on a bad file, and a retried task repeats only it.
    """
    import ray

    videos = [i for i in items if i.kind == "video"]
    task = ray_tasks(probe_videos, "probe video", cfg.decode_retries)
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


def source_fingerprint(root: Path, items: list[SourceItem]) -> dict:
    """The source's fingerprint: from the listed sizes and mtimes, or, for a small source, its bytes (in a task)."""
    import ray

    files = [f for item in items for f in item.files]
    if sum(f.size for f in files) > CONTENT_FINGERPRINT_LIMIT:
        return fingerprint(root, files)  # needs no file access
    return ray.get(ray_tasks(fingerprint, "fingerprint source").remote(root, files))


def check_output_outside(root: Path, output: Location) -> None:
    if output.is_local and (output.local_path == root or root in output.local_path.parents):
        raise DataError(
            f"{output.uri}: the output folder is inside the source {root}; choose an output outside it"
        )


def check_replaces_nothing_else(output: Location, source_root: Path, cfg: PrepareConfig) -> None:
    """Refuse to replace a dataset in ``output`` made from another source or settings, unless ``overwrite``."""
    if cfg.overwrite or not output.join(MANIFEST_NAME).is_file():
        return
    try:
        made_from, identity = read_identity(output)
        differences = [
            f"{key} {identity[key]} (this run: {getattr(cfg, key)})"
            for key in IDENTITY_FIELDS
            if identity[key] != getattr(cfg, key)
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
