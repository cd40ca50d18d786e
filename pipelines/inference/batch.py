"""Many videos at once on a Ray cluster: Ray Data batch inference with an actor pool.

Each actor (:class:`VideoSuperResolver`) loads the network once and super-resolves one video per row
(:func:`pipelines.inference.video.super_resolve_video`), so long and short videos balance across the
pool. Only paths and small summaries travel between the driver and the actors; frames are decoded and
encoded where the actor runs, from and to shared storage.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipelines.common.errors import InferError, MissingInputError, UserError, VideoError
from pipelines.data.video_io import is_frame_folder, is_video_file
from pipelines.inference.loading import ModelSpec, load_model
from pipelines.inference.video import InferConfig, InferSummary, super_resolve_video


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

    A video that fails with an input error (missing, undecodable, output exists) is reported in the
    row's ``error`` column instead of failing the whole batch.
    """

    def __init__(
        self, model: ModelSpec, settings: dict, tracking_uri: str | None, arch: str | None, overwrite: bool
    ):
        self.settings = settings
        self.overwrite = overwrite
        self.network = load_model(model, device=settings["device"], arch=arch, tracking_uri=tracking_uri)

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
            except (OSError, UserError) as failure:
                error = f"{type(failure).__name__}: {failure}"
                rows.append({"input": in_path, "output": out_path, "summary": "", "error": error})
        return {
            key: np.asarray([row[key] for row in rows]) for key in ("input", "output", "summary", "error")
        }


def _summary_from_json(text: str) -> InferSummary:
    fields = json.loads(text)
    return InferSummary(**fields | {"lr_size": tuple(fields["lr_size"]), "sr_size": tuple(fields["sr_size"])})


def super_resolve_many(
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike,
    model_uri: ModelSpec,
    num_workers: int = 1,
    *,
    config: InferConfig | None = None,
    suffix: str = ".mp4",
    num_gpus_per_worker: float = 0,
    num_cpus_per_worker: float = 1,
    overwrite: bool = False,
    arch: str | None = None,
    tracking_uri: str | None = None,
) -> list[InferSummary]:
    """Super-resolve many videos in parallel with Ray Data (batch inference with an actor pool).

    Each of ``num_workers`` actors loads the network once (:class:`VideoSuperResolver`) and takes
    one video at a time, so long and short videos balance across the pool. Runs on the current Ray
    cluster (``ray.init(address=...)`` first), or starts a local one.

    Args:
        inputs: video files / frame folders, or one folder holding them (:func:`list_inputs`).
        out_dir: receives ``<input name><suffix>`` per input (``suffix=''``: PNG frame folders).
        model_uri: MLflow model URI or checkpoint path, loaded inside every actor; an ``nn.Module``
            also works (it is pickled to the actors).
        num_workers: actors in the pool.
        config: tiling / chunking / device settings (:class:`InferConfig`).
        num_gpus_per_worker, num_cpus_per_worker: resources each actor reserves.

    Returns:
        One summary per input, in input order.

    Raises:
        InferError: listing every input that failed, after all the others were written.
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
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = asdict(config or InferConfig())
    if num_gpus_per_worker > 0 and settings["device"] == "auto":
        settings["device"] = "cuda"

    rows = ray.data.from_items([{"input": str(i), "output": str(o)} for i, o in zip(inputs, outputs)])
    results = rows.map_batches(
        VideoSuperResolver,
        batch_size=1,  # one video per call: videos differ wildly in length
        compute=ray.data.ActorPoolStrategy(size=min(num_workers, len(inputs))),
        fn_constructor_kwargs={
            "model": model_uri,
            "settings": settings,
            "tracking_uri": tracking_uri,
            "arch": arch,
            "overwrite": overwrite,
        },
        num_cpus=num_cpus_per_worker,
        num_gpus=num_gpus_per_worker,
    ).take_all()
    by_input = {str(row["input"]): row for row in results}
    failures = [f"{i}: {by_input[str(i)]['error']}" for i in inputs if by_input[str(i)]["error"]]
    if failures:
        raise InferError(f"{len(failures)} of {len(inputs)} videos failed:\n" + "\n".join(failures))
    return [_summary_from_json(by_input[str(i)]["summary"]) for i in inputs]
