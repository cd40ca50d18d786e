"""Many videos at once on a Ray cluster: Ray Data batch inference with an actor pool.

Each actor (:class:`VideoSuperResolver`) loads the network once and super-resolves one video per row
(:func:`pipelines.inference.video.super_resolve_video`, so every video keeps its streams, timing and
colour), and long and short videos balance across the pool. Only paths and small summaries travel between
the driver and the actors; frames are decoded and encoded where the actor runs, from and to shared
storage. A video that fails is reported in its row and the others go on; outputs are renamed into place
only when complete, so a rerun skips the ones that exist (``docs/video.md#many-videos``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipelines.common.errors import InferError, MissingInputError, VideoError
from pipelines.data.video_io import OUTPUT_MARKER, is_frame_folder, is_video_file
from pipelines.inference.config import InferConfig
from pipelines.inference.loading import ModelSpec, load_model
from pipelines.inference.video import InferSummary, check_not_input, super_resolve_video

SKIPPED = "skipped: complete output from an earlier run (--overwrite redoes it)"


def list_inputs(folder: str | os.PathLike) -> list[Path]:
    """The sequences in ``folder``: its video files and its sub-folders of frames, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInputError(f"input folder {folder} does not exist; check the input path")
    inputs = sorted(p for p in folder.iterdir() if is_video_file(p) or is_frame_folder(p))
    if not inputs:
        raise VideoError(f"{folder} holds no video files and no sub-folders of frames")
    return inputs


class VideoSuperResolver:
    """Ray Data actor: loads the network once, then super-resolves the video of each row it gets.

    A video that fails (undecodable, output exists, any error of its own) is reported in the row's
    ``error`` column instead of failing the whole batch.
    """

    def __init__(self, model: ModelSpec, settings: dict, overwrite: bool):
        self.settings = settings
        self.overwrite = overwrite
        self.network = load_model(model, device=settings["device"])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = []
        for in_path, out_path in zip(batch["input"], batch["output"]):
            try:
                summary = super_resolve_video(
                    self.network, in_path, out_path, progress=False, overwrite=self.overwrite, **self.settings
                )
                rows.append(
                    {
                        "input": in_path,
                        "output": out_path,
                        "summary": json.dumps(asdict(summary)),
                        "error": "",
                    }
                )
            except Exception as failure:  # noqa: BLE001 - one video's failure must not stop the others
                message = str(failure).splitlines()[0] if str(failure) else ""
                error = f"{type(failure).__name__}: {message}"
                rows.append({"input": in_path, "output": out_path, "summary": "", "error": error})
        return {
            key: np.asarray([row[key] for row in rows]) for key in ("input", "output", "summary", "error")
        }


def _summary_from_json(text: str) -> InferSummary:
    fields = json.loads(text)
    tuples = {key: tuple(fields[key]) for key in ("lr_size", "sr_size", "notes")}
    return InferSummary(**fields | tuples)


def is_complete(output: Path) -> bool:
    """Whether an earlier run finished ``output``: writers rename into place only at the end, so it exists."""
    if output.is_dir():
        return (output / OUTPUT_MARKER).is_file()
    return output.is_file() and output.stat().st_size > 0


def _skipped(in_path: Path, output: Path) -> InferSummary:
    return InferSummary(str(in_path), str(output), 0, (0, 0), (0, 0), 0.0, 0.0, "-", notes=(SKIPPED,))


def format_table(summaries: Sequence[InferSummary], failures: dict[str, str] | None = None) -> str:
    """The end-of-run table: one row per video with its status, frames, sizes, time and rate."""
    failures = failures or {}
    rows = [("input", "status", "frames", "output size", "seconds", "frames/s", "output")]
    for summary in summaries:
        status = "skipped" if SKIPPED in summary.notes else "done"
        size = f"{summary.sr_size[1]}x{summary.sr_size[0]}" if status == "done" else "-"
        rows.append(
            (Path(summary.input).name, status, str(summary.num_frames), size, f"{summary.seconds:.1f}",
             f"{summary.frames_per_second:.2f}" if status == "done" else "-", summary.output)
        )  # fmt: skip
    rows += [(Path(path).name, "FAILED", "-", "-", "-", "-", error) for path, error in failures.items()]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows
    )


def super_resolve_many(
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike,
    model: ModelSpec,
    num_workers: int = 1,
    *,
    config: InferConfig | None = None,
    suffix: str = ".mp4",
    num_gpus_per_worker: float = 0,
    num_cpus_per_worker: float = 1,
    overwrite: bool = False,
) -> list[InferSummary]:
    """Super-resolve many videos in parallel with Ray Data (batch inference with an actor pool).

    Each of ``num_workers`` actors loads the network once (:class:`VideoSuperResolver`) and takes
    one video at a time, so long and short videos balance across the pool. Runs on the current Ray
    cluster (``ray.init(address=...)`` first), or starts a local one.

    Args:
        inputs: video files / frame folders, or one folder holding them (:func:`list_inputs`).
        out_dir: receives ``<input name><suffix>`` per input (``suffix=''``: PNG frame folders).
        model: a :class:`~pipelines.inference.loading.ModelRef` (or an MLflow model URI or checkpoint
            path), loaded inside every actor; an ``nn.Module`` also works (it is pickled to the actors).
        num_workers: actors in the pool.
        config: tiling / chunking / device settings (:class:`InferConfig`).
        num_gpus_per_worker, num_cpus_per_worker: resources each actor reserves.

    An input whose output exists is skipped when ``overwrite`` is off (a complete output of an earlier
    run: :func:`is_complete`); its summary says so.

    Returns:
        One summary per input, in input order.

    Raises:
        OutputExistsError: an output would replace one of the inputs (before anything runs).
        InferError: listing every input that failed and the table of all, after the others were written.
    """
    import ray.data

    if isinstance(inputs, str | os.PathLike):
        inputs = list_inputs(inputs)
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise VideoError("super_resolve_many needs at least one input")
    out_dir = Path(out_dir)
    outputs = [out_dir / f"{p.stem if p.is_file() else p.name}{suffix}" for p in inputs]
    if len(set(outputs)) != len(outputs):
        raise VideoError(f"inputs share output names in {out_dir}: {sorted(str(o) for o in outputs)}")
    for in_path, output in zip(inputs, outputs):
        check_not_input(in_path, output)
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped = {str(i): _skipped(i, o) for i, o in zip(inputs, outputs) if not overwrite and is_complete(o)}
    pending = [(i, o) for i, o in zip(inputs, outputs) if str(i) not in skipped]
    if not pending:
        return [skipped[str(i)] for i in inputs]
    settings = asdict(config or InferConfig())
    if num_gpus_per_worker > 0 and settings["device"] == "auto":
        settings["device"] = "cuda"

    rows = ray.data.from_items([{"input": str(i), "output": str(o)} for i, o in pending])
    results = rows.map_batches(
        VideoSuperResolver,
        batch_size=1,  # one video per call: videos differ wildly in length
        compute=ray.data.ActorPoolStrategy(size=min(num_workers, len(pending))),
        fn_constructor_kwargs={
            "model": model,
            "settings": settings,
            "overwrite": overwrite,
        },
        num_cpus=num_cpus_per_worker,
        num_gpus=num_gpus_per_worker,
    ).take_all()
    by_input = {str(row["input"]): row for row in results}
    failures = {str(i): str(by_input[str(i)]["error"]) for i, _ in pending if by_input[str(i)]["error"]}
    summaries = [
        skipped[str(i)] if str(i) in skipped else _summary_from_json(by_input[str(i)]["summary"])
        for i in inputs
        if str(i) not in failures
    ]
    if failures:
        lines = [f"{path}: {error}" for path, error in failures.items()]
        raise InferError(
            f"{len(failures)} of {len(inputs)} videos failed:\n" + "\n".join(lines) + "\n"
            + format_table(summaries, failures)
        )  # fmt: skip
    return summaries
