"""Inference at scale: super-resolve whole videos, one at a time or many at once on a Ray cluster.

- :func:`load_model` accepts a network, a checkpoint of this project (``vsr_models.load_checkpoint``),
  an authors' release (``vsr_models.import_official``) or an MLflow model URI
  (``models:/ttvsr@champion``, loaded by :func:`pipelines.tracking.load_model`).
- :func:`super_resolve_video` streams one video (or folder of frames) through the network:
  frames are decoded window by window, each window is super-resolved with
  :func:`vsr_models.inference.super_resolve` (spatial tiles when asked) and only the frames for
  which the window is the most central (:func:`vsr_models.inference.most_central_windows`) are
  encoded. Consecutive windows share ``chunk_overlap`` frames, so a recurrent model such as TTVSR,
  whose bidirectional propagation carries features along the whole input (TTVSR Sec. 3), still sees
  temporal context on both sides of every output frame, while memory stays bounded by one window
  of LR and SR frames whatever the video's length.
- :func:`super_resolve_many` runs it over many videos with Ray Data: an actor pool in which each
  actor loads the network once and super-resolves one video per row.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipelines.config import add_config_args, load_config
from pipelines.video_io import (
    FrameReader,
    FrameWriter,
    VideoError,
    is_frame_folder,
    is_video_file,
    open_frames,
)
from vsr_models.inference import input_constraints, most_central_windows, super_resolve

SCALE = 4
"""Both networks upscale by 4 (TTVSR Sec. 4.1, VSR-Transformer Sec. 4)."""

ModelSpec = nn.Module | str | os.PathLike
"""A network, a checkpoint path, or an MLflow model URI."""
Progress = Callable[[int, int], None]
"""Called as ``progress(frames written, total frames)``."""

# ``models:/name@alias``, ``runs:/id/model``, ``s3://...``: a scheme of two or more characters.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


class ModelLoadError(ValueError):
    """A model specification that names no loadable network; the message says what was tried."""


class InferError(RuntimeError):
    """Some videos of a batch failed; the others were written."""


@dataclass
class InferConfig:
    """Inference settings (``jobs/infer.py --config`` / ``--set``; flags override them).

    tile: LR tile size for spatial tiling (None: whole frames). VSR-Transformer always uses 64.
    tile_overlap: LR pixels shared by neighbouring tiles (None: ``tile // 4``).
    chunk: frames per temporal window held in memory (None: the whole video at once).
    chunk_overlap: frames shared by consecutive windows (None: ``chunk // 4``, at least the
        frames a fixed-length model needs around each output frame).
    device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ...
    crf: x264 quality of ``.mp4`` / ``.mov`` outputs (None: ``video_io.H264_CRF``).
    """

    tile: int | None = None
    tile_overlap: int | None = None
    chunk: int | None = 30
    chunk_overlap: int | None = None
    device: str = "auto"
    crf: int | None = None


@dataclass(frozen=True)
class InferSummary:
    """What :func:`super_resolve_video` did: sizes are ``(height, width)``."""

    input: str
    output: str
    num_frames: int
    lr_size: tuple[int, int]
    sr_size: tuple[int, int]
    fps: float
    seconds: float
    device: str

    @property
    def frames_per_second(self) -> float:
        """Throughput: output frames per second of wall time, decoding and encoding included."""
        return self.num_frames / self.seconds if self.seconds > 0 else float("inf")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> the first CUDA device if there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available; use --device cpu or auto")
    return device


def _load_mlflow_model(uri: str, tracking_uri: str | None) -> nn.Module:
    """An MLflow-logged network; turns MLflow's lookup failures into one message naming the URI."""
    from mlflow.exceptions import MlflowException

    from pipelines.tracking import load_model as load_tracked_model
    from pipelines.tracking import resolve_tracking_uri

    try:
        return load_tracked_model(uri, tracking_uri)
    except (MlflowException, OSError) as error:
        raise ModelLoadError(
            f"cannot load model {uri} from the MLflow store {resolve_tracking_uri(tracking_uri)}: "
            f"{str(error).splitlines()[0]}. Check the name, version or alias (`mlflow models` / the MLflow UI, "
            f"e.g. models:/ttvsr@champion) and --mlflow-uri / $MLFLOW_TRACKING_URI"
        ) from error


def load_model(
    model: ModelSpec,
    *,
    device: str | torch.device = "cpu",
    arch: str | None = None,
    tracking_uri: str | None = None,
) -> nn.Module:
    """The network named by ``model``, in eval mode on ``device``.

    Args:
        model: an ``nn.Module``; a path to this project's checkpoint (``vsr_models.save_checkpoint``) or
            to a training checkpoint folder holding one (``model.pt``)
            or, with ``arch``, to an authors' released checkpoint; or an MLflow model URI
            (``models:/ttvsr@champion``, ``models:/ttvsr/3``, ``runs:/<run id>/model``).
        arch: ``ttvsr`` | ``vsrt``: read ``model`` as an official release of that architecture.
        tracking_uri: MLflow store for model URIs (default ``$MLFLOW_TRACKING_URI``, then ``sqlite:///mlflow.db``).

    Raises:
        FileNotFoundError: a checkpoint path that does not exist.
        ModelLoadError: an MLflow URI that does not resolve.
        vsr_models.IncompatibleCheckpointError: a file that is not a checkpoint of a known network.
    """
    import vsr_models

    if isinstance(model, nn.Module):
        network = model
    elif arch is not None:
        network = vsr_models.import_official(model, arch)
    elif Path(model).is_dir():  # a training checkpoint folder (pipelines.train writes model.pt there)
        network = vsr_models.load_checkpoint(Path(model) / "model.pt")
    elif Path(model).exists():
        network = vsr_models.load_checkpoint(model)
    elif _URI.match(str(model)):
        network = _load_mlflow_model(str(model), tracking_uri)
    else:
        raise FileNotFoundError(
            f"model {model} is neither an existing checkpoint file nor an MLflow model URI "
            f"(models:/<name>@<alias>, models:/<name>/<version>, runs:/<run id>/model)"
        )
    return network.to(resolve_device(device)).eval()


class _ThroughputReporter:
    """Prints ``done/total frames, frames/s, ETA`` to stderr at most every ``interval`` seconds."""

    def __init__(self, name: str, total: int, interval: float = 5.0):
        self.name, self.total, self.interval = name, total, interval
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.interval and done < total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (total - done) / rate if rate > 0 else float("inf")
        print(
            f"{self.name}: {done}/{total} frames, {rate:.2f} frames/s, ETA {eta:.0f} s",
            file=sys.stderr,
            flush=True,
        )


def _to_frames(lr: np.ndarray) -> torch.Tensor:
    """uint8 ``(t, h, w, 3)`` -> float ``(1, t, 3, h, w)`` in [0, 1]."""
    return torch.from_numpy(lr).permute(0, 3, 1, 2).unsqueeze(0).float().div_(255)


def _to_uint8(sr: torch.Tensor) -> np.ndarray:
    """float ``(t, 3, h, w)`` in [0, 1] -> uint8 ``(t, h, w, 3)``, rounded like the benchmarks' quantisation."""
    return sr.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


class _SlidingFrames:
    """The decoded LR frames of the current temporal window; frames shared with the next one are kept."""

    def __init__(self, reader: FrameReader):
        self.reader = reader
        self.start = 0
        self.frames = np.empty((0, reader.info.height, reader.info.width, 3), np.uint8)

    def window(self, start: int, stop: int) -> np.ndarray:
        """LR frames ``start .. stop - 1``; windows must move forward."""
        end = self.start + len(self.frames)
        kept = self.frames[max(start - self.start, 0) :]
        fresh = self.reader.read(max(start, end), stop) if stop > end else kept[:0]
        self.frames, self.start = np.concatenate([kept, fresh])[: stop - start], start
        return self.frames


def temporal_windows(
    num_frames: int, chunk: int | None, chunk_overlap: int | None, num_frames_needed: int | None = None
) -> list[tuple[int, int, list[int]]]:
    """The streaming windows of a video: ``[(start, stop, [frames written from this window]), ...]``.

    ``chunk=None`` (or a video no longer than ``chunk``) is one window. Otherwise windows of
    ``chunk`` frames overlap by ``chunk_overlap`` (default ``chunk // 4``), raised to
    ``num_frames_needed - 1`` for a fixed-length model (VSR-Transformer) so each output frame has its
    ``num_frames`` neighbours inside its window.
    """
    if chunk is None or num_frames <= chunk:
        return [(0, num_frames, list(range(num_frames)))]
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 or None, got {chunk}")
    overlap = chunk // 4 if chunk_overlap is None else chunk_overlap
    if num_frames_needed is not None:
        if chunk < num_frames_needed:
            raise ValueError(f"chunk={chunk} is shorter than the {num_frames_needed} frames the model takes")
        overlap = max(overlap, num_frames_needed - 1)
    return [(start, start + chunk, kept) for start, kept in most_central_windows(num_frames, chunk, overlap)]


def super_resolve_video(
    model: ModelSpec,
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    tile: int | None = None,
    tile_overlap: int | None = None,
    chunk: int | None = 30,
    chunk_overlap: int | None = None,
    device: str | torch.device = "auto",
    crf: int | None = None,
    progress: bool | Progress = True,
    overwrite: bool = False,
    arch: str | None = None,
    tracking_uri: str | None = None,
) -> InferSummary:
    """Super-resolve one video file or folder of frames x4 and write the result.

    Decodes, super-resolves and encodes one temporal window at a time (:func:`temporal_windows`):
    memory holds ``chunk`` LR frames and their SR frames, never the whole video.

    Args:
        model: network, checkpoint path or MLflow model URI (:func:`load_model`).
        in_path: a video file (decoded with decord) or a folder of frames.
        out_path: ``.mkv`` / ``.avi`` (FFV1, lossless), ``.mp4`` / ``.mov`` (H.264, ``crf``) or a
            path without a suffix for a folder of PNG frames. Written atomically.
        tile, tile_overlap: spatial tiling in LR pixels (:func:`vsr_models.inference.tiled_forward`).
        chunk, chunk_overlap: temporal windows (:func:`temporal_windows`).
        device: where the network runs (``auto``: CUDA when available).
        progress: print frames/s to stderr (``True``) or call ``progress(done, total)``.
        overwrite: replace an existing output instead of refusing.
        arch, tracking_uri: see :func:`load_model`.

    Raises:
        FileNotFoundError: missing input or checkpoint.
        FileExistsError: ``out_path`` exists and ``overwrite`` is false.
        VideoError: an input that cannot be decoded, or an unsupported output suffix.
        ModelLoadError: an MLflow URI that does not resolve.
    """
    started = time.perf_counter()
    reader = open_frames(in_path)  # fail on a bad input before the (slow) model load
    try:
        info = reader.info
        target = resolve_device(device)
        network = load_model(model, device=target, arch=arch, tracking_uri=tracking_uri)
        windows = temporal_windows(
            info.num_frames, chunk, chunk_overlap, input_constraints(network).num_frames
        )
        if progress is True:
            report: Progress | None = _ThroughputReporter(Path(in_path).name, info.num_frames)
        else:
            report = progress or None
        frames = _SlidingFrames(reader)
        written = 0
        with FrameWriter(out_path, info.fps, overwrite=overwrite, crf=crf) as writer:
            for start, stop, kept in windows:
                lr = _to_frames(frames.window(start, stop))
                sr = super_resolve(network, lr, tile=tile, overlap=tile_overlap, scale=SCALE)[0]
                writer.write(_to_uint8(sr[[frame - start for frame in kept]]))
                written += len(kept)
                if report is not None:
                    report(written, info.num_frames)
    finally:
        reader.close()
    return InferSummary(
        input=str(in_path),
        output=str(out_path),
        num_frames=written,
        lr_size=(info.height, info.width),
        sr_size=(SCALE * info.height, SCALE * info.width),
        fps=info.fps,
        seconds=time.perf_counter() - started,
        device=str(target),
    )


def check_output(summary: InferSummary) -> None:
    """Decode the written output and check it has every input frame at ``SCALE`` times the size.

    Raises:
        VideoError: the output's frame count or size differs from what the input implies.
    """
    reader = open_frames(summary.output)
    try:
        found = (reader.info.num_frames, reader.info.height, reader.info.width)
    finally:
        reader.close()
    expected = (summary.num_frames, *summary.sr_size)
    if found != expected:
        raise VideoError(
            f"{summary.output} has {found[0]} frames of {found[2]}x{found[1]}, expected {expected[0]} frames of "
            f"{expected[2]}x{expected[1]} ({SCALE}x the {summary.lr_size[1]}x{summary.lr_size[0]} input "
            f"{summary.input})"
        )


# -- many videos with Ray Data ---------------------------------------------------------------------


def list_inputs(folder: str | os.PathLike) -> list[Path]:
    """The sequences in ``folder``: its video files and its sub-folders of frames, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder {folder} does not exist")
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
                rows.append(_summary_columns(summary) | {"error": ""})
            except (OSError, VideoError) as failure:
                rows.append(
                    {"input": in_path, "output": out_path, "error": f"{type(failure).__name__}: {failure}"}
                )
        return {key: np.asarray([row.get(key, 0) for row in rows]) for key in (*_RESULT_COLUMNS, "error")}


_RESULT_COLUMNS = ("input", "output", "num_frames", "lr_h", "lr_w", "fps", "seconds", "device")


def _summary_columns(summary: InferSummary) -> dict:
    return {
        "input": summary.input,
        "output": summary.output,
        "num_frames": summary.num_frames,
        "lr_h": summary.lr_size[0],
        "lr_w": summary.lr_size[1],
        "fps": summary.fps,
        "seconds": summary.seconds,
        "device": summary.device,
    }


def _summary_from_row(row: dict) -> InferSummary:
    lr_size = (int(row["lr_h"]), int(row["lr_w"]))
    return InferSummary(
        input=str(row["input"]),
        output=str(row["output"]),
        num_frames=int(row["num_frames"]),
        lr_size=lr_size,
        sr_size=(SCALE * lr_size[0], SCALE * lr_size[1]),
        fps=float(row["fps"]),
        seconds=float(row["seconds"]),
        device=str(row["device"]),
    )


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
        raise ValueError("super_resolve_many needs at least one input")
    out_dir = Path(out_dir)
    outputs = [out_dir / f"{p.stem if p.is_file() else p.name}{suffix}" for p in inputs]
    if len(set(outputs)) != len(outputs):
        raise ValueError(f"inputs share output names in {out_dir}: {sorted(str(o) for o in outputs)}")
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
    return [_summary_from_row(by_input[str(i)]) for i in inputs]


def describe(summary: InferSummary) -> str:
    """One line for logs: frames, sizes, throughput."""
    (h, w), (sh, sw) = summary.lr_size, summary.sr_size
    return (
        f"{summary.input} -> {summary.output}: {summary.num_frames} frames {w}x{h} -> {sw}x{sh} "
        f"in {summary.seconds:.1f} s ({summary.frames_per_second:.2f} frames/s on {summary.device})"
    )


# -- command line (jobs/infer.py) ------------------------------------------------------------------------


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The command line of ``jobs/infer.py``."""
    parser = argparse.ArgumentParser(
        prog="jobs/infer.py", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", type=Path, help="video file, folder of frames, or folder of videos")
    parser.add_argument(
        "output",
        type=Path,
        help=".mkv/.avi (FFV1, lossless), .mp4/.mov (H.264) or a path without suffix (PNG frames); "
        "for a folder of videos: the output folder",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model", help="MLflow model URI (models:/ttvsr@champion) or checkpoint of this project"
    )
    source.add_argument("--official", metavar="CKPT", help="authors' released checkpoint (needs --arch)")
    parser.add_argument("--arch", choices=("ttvsr", "vsrt"), help="architecture of --official")
    parser.add_argument(
        "--mlflow-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, sqlite:///mlflow.db)"
    )
    # Shortcuts for the most used InferConfig fields; --set reaches all of them.
    parser.add_argument("--tile", type=int, help="LR tile size for spatial tiling (default: whole frames)")
    parser.add_argument("--chunk", type=int, help="frames per temporal window (default 30)")
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument(
        "--scale-check",
        action="store_true",
        help="decode the output afterwards and check it has every frame at 4x the input size",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--num-workers", type=int, default=1, help="actors for a folder of videos")
    parser.add_argument(
        "--gpus-per-worker", type=float, default=0, help="GPUs per actor for a folder of videos"
    )
    parser.add_argument("--address", help="Ray cluster address for a folder of videos (default: local)")
    parser.add_argument("--suffix", default=".mp4", help="output suffix for a folder of videos ('' for PNG)")
    return add_config_args(parser)


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    """Command-line entry of ``jobs/infer.py``: one video streamed, or a folder of videos on Ray Data."""
    args = build_parser(description).parse_args(argv)
    if args.official and not args.arch:
        print("error: --official needs --arch ttvsr|vsrt", file=sys.stderr)
        return 2
    shortcuts = {"tile": args.tile, "chunk": args.chunk, "device": args.device}
    overrides = args.overrides + [f"{key}={value}" for key, value in shortcuts.items() if value is not None]
    model = args.model or args.official
    try:
        config = load_config(InferConfig, args.config, overrides)
        if args.input.is_dir() and not is_frame_folder(args.input):
            if args.address:
                import ray

                ray.init(address=args.address)
            summaries = super_resolve_many(
                args.input,
                args.output,
                model,
                args.num_workers,
                config=config,
                suffix=args.suffix,
                num_gpus_per_worker=args.gpus_per_worker,
                overwrite=args.overwrite,
                arch=args.arch,
                tracking_uri=args.mlflow_uri,
            )
        else:
            summaries = [
                super_resolve_video(
                    model,
                    args.input,
                    args.output,
                    **vars(config),
                    progress=not args.quiet,
                    overwrite=args.overwrite,
                    arch=args.arch,
                    tracking_uri=args.mlflow_uri,
                )
            ]
        for summary in summaries:
            if args.scale_check:
                check_output(summary)
            print(describe(summary))
    except (OSError, ValueError, InferError) as error:  # ConfigError, VideoError: ValueErrors
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
