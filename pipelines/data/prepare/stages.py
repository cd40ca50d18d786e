"""The Ray Data stages of preparation; each takes and returns one pyarrow batch and runs in a Ray task.

- :func:`probe_stage`: open each video once (frame count, size, timing warnings, or why it is unreadable);
- :func:`decode_source_stage`: read the HR frames of one clip (its own stage, retried when its worker
  dies: decord may crash on a bad file);
- :func:`degrade_stage`: crop HR to a multiple of the scale, make LR with BI or BD
  (:mod:`pipelines.data.degradations`), compress every frame (:mod:`pipelines.data.schema`).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines.common.errors import UnreadableInput
from pipelines.data.schema import DECODED_SCHEMA, DEGRADED_SCHEMA
from pipelines.data.sources import decode_frame_clip, decode_video_clip, probe_video


def probe_stage(batch: pa.Table) -> pa.Table:
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
            row["error"] = err.reason
        rows.append(row)
    return pa.Table.from_pylist(rows)


def decode_source_stage(batch: pa.Table) -> pa.Table:
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
            row |= {"error": err.reason, "error_input": err.path}
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)


def degrade_stage(batch: pa.Table, degradation: str, scale: int, zstd_level: int) -> pa.Table:
    """Crop HR to a multiple of ``scale``, degrade it to LR, compress every frame."""
    import torch

    from pipelines.data.degradations import crop_to_multiple, degrade
    from pipelines.data.schema import encode_frames

    rows = []
    raw_frames = batch["hr_raw"]
    for i, row in enumerate(batch.drop_columns(["hr_raw"]).to_pylist()):
        out = {k: row[k] for k in ("clip_id", "split", "source", "frame_start", "frame_names", "shard")}
        out |= {k: row[k] for k in ("warnings", "error", "error_input")}
        out |= {"source_height": row["height"], "source_width": row["width"], "scale": scale}
        t, h, w = row["num_frames"], row["height"], row["width"]
        if not row["error"] and (h < scale or w < scale):
            out |= {
                "error": f"frames of {w}x{h} are smaller than the scale x{scale}: no LR pixel is left; "
                "remove the clip or prepare at a smaller scale",
                "error_input": row["error_input"] or row["source"],
            }
        if out["error"]:
            out |= {k: 0 for k in ("num_frames", "hr_height", "hr_width", "lr_height", "lr_width")}
            rows.append(out | {"hr_frames": [], "lr_frames": []})
            continue
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


def map_with_bounded_retries(ds, fn, max_retries: int, fn_kwargs: dict):
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


@contextlib.contextmanager
def prepare_execution() -> Iterator[None]:
    """Ray Data settings of the preparation pipelines, restored afterwards.

    Rows come out in plan order, so each shard's clips arrive together (one open file at a time), and
    an exception raised in a stage reaches the driver as itself. Unreadable inputs are not exceptions:
    the stages return them as rows with ``error`` set, and the driver quarantines them or, under
    ``strict``, stops at the first.
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
