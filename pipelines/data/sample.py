"""A small, real, reproducible video dataset for running the whole pipeline on any machine.

Nothing is downloaded: each clip is rendered from a real photograph shipped inside scikit-image
(``skimage/data/*.png|jpg``, no pooch fetch) as seen by a moving camera, so the frames carry the natural
textures a super-resolution model learns from, and the motion gives the recurrent models something to
align. Per clip:

- **camera motion**: a smooth sub-pixel pan (0.3-1.2 px/frame) with a hand-held wobble, a slow zoom and a
  slight rotation (at most 2 degrees), rendered by resampling the photograph (bicubic ``grid_sample``);
- **an independently moving region**: a disc of texture cut from another photograph of the same split,
  moving along its own path and spinning, composited with an anti-aliased edge (it occludes and
  uncovers the background as real objects do).

Train and val clips come from disjoint photographs. Optionally (``include_videos=True``) the real
videos of Debian's ``opencv-doc`` are added to the train split; they are left out by default so that the
default dataset is the same on every machine.

Layout (a frames-folder dataset, ``docs/data_format.md``)::

    out_dir/train/000_astronaut/00000000.png ...
    out_dir/val/000_chelsea/00000000.png ...
    out_dir/_COMPLETE            # JSON of the parameters, written last
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

COMPLETE_MARKER = "_COMPLETE"
SAMPLE_FORMAT_VERSION = 1

# Photographs bundled with scikit-image (loaded from the wheel, never fetched); disjoint per split.
PHOTOGRAPHS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": skimage.data.astronaut,
    "coffee": skimage.data.coffee,
    "rocket": skimage.data.rocket,
    "motorcycle": lambda: skimage.data.stereo_motorcycle()[0],
    "hubble_deep_field": skimage.data.hubble_deep_field,
    "retina": skimage.data.retina,
    "chelsea": skimage.data.chelsea,
    "immunohistochemistry": skimage.data.immunohistochemistry,
}
SPLIT_PHOTOGRAPHS = {
    "train": ("astronaut", "coffee", "rocket", "motorcycle", "hubble_deep_field", "retina"),
    "val": ("chelsea", "immunohistochemistry"),
}

OPENCV_VIDEO_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
OPENCV_VIDEOS = ("vtest.avi", "Megamind.avi", "tree.avi")  # not Megamind_bugy.avi, a damaged duplicate

# bicubic reads 2 pixels on each side of a sample
_SAMPLING_MARGIN = 2.0


def load_photograph(name: str) -> torch.Tensor:
    """``(3, h, w)`` float32 in [0, 1]."""
    return torch.from_numpy(PHOTOGRAPHS[name]()).permute(2, 0, 1).float() / 255


def _rotation(angle: np.ndarray) -> np.ndarray:
    """``(t, 2, 2)`` rotation matrices acting on (x, y) column vectors."""
    cos, sin = np.cos(angle), np.sin(angle)
    return np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)


def _camera_motion(rng: np.random.Generator, num_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A smooth camera path: per frame the view centre's offset ``(t, 2)`` in source pixels (x, y),
    the zoom ``(t,)`` in source pixels per output pixel and the roll angle ``(t,)`` in radians."""
    t = np.arange(num_frames, dtype=np.float64)
    heading = rng.uniform(0, 2 * np.pi)
    pan = rng.uniform(0.3, 1.2) * t[:, None] * np.array([np.cos(heading), np.sin(heading)])
    wobble_period = rng.uniform(8, 20)
    wobble = rng.uniform(0.2, 0.6, 2) * np.sin(
        2 * np.pi * t[:, None] / wobble_period + rng.uniform(0, 2 * np.pi, 2)
    )
    zoom = rng.uniform(1.0, 1.1) * (1 + rng.uniform(-0.06, 0.06) * t / max(num_frames - 1, 1))
    roll_period = rng.uniform(24, 48)
    roll = np.deg2rad(rng.uniform(0.5, 2.0)) * np.sin(2 * np.pi * t / roll_period + rng.uniform(0, 2 * np.pi))
    return pan + wobble, zoom, roll


def _output_coordinates(size: tuple[int, int]) -> np.ndarray:
    """``(h, w, 2)`` (x, y) coordinates of the output pixels relative to the frame centre."""
    h, w = size
    y, x = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    return np.stack([x, y], -1)


def _to_grid(points: np.ndarray, source_size: tuple[int, int]) -> torch.Tensor:
    """Source pixel coordinates ``(..., 2)`` (x, y) -> ``grid_sample`` coordinates (align_corners False)."""
    h, w = source_size
    return torch.from_numpy((2 * points + 1) / np.array([w, h]) - 1).float()


def _sample_frames(source: torch.Tensor, points: np.ndarray) -> torch.Tensor:
    """Bicubic samples of ``source (3, H, W)`` at ``points (t, h, w, 2)`` -> ``(t, 3, h, w)``.

    The t frames are stacked along the grid's height so one ``grid_sample`` call renders them all
    without copying the source t times.
    """
    t, h, w, _ = points.shape
    grid = _to_grid(points.reshape(1, t * h, w, 2), tuple(source.shape[-2:]))
    frames = F.grid_sample(source[None], grid, mode="bicubic", padding_mode="border", align_corners=False)
    return frames[0].reshape(3, t, h, w).transpose(0, 1)


def _affine(points: np.ndarray, matrices: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``matrices[t] @ p + offsets[t]`` for every point ``p`` of ``points (..., 2)`` -> ``(t, ..., 2)``."""
    extra = (slice(None),) + (None,) * (points.ndim - 1)
    x, y = points[..., 0], points[..., 1]
    return np.stack(
        [
            matrices[:, 0, 0][extra] * x + matrices[:, 0, 1][extra] * y + offsets[:, 0][extra],
            matrices[:, 1, 0][extra] * x + matrices[:, 1, 1][extra] * y + offsets[:, 1][extra],
        ],
        -1,
    )


def _render_background(photo: torch.Tensor, rng: np.random.Generator, num_frames: int, size: tuple[int, int]):
    """The photograph seen by the moving camera: ``(t, 3, h, w)``."""
    offset, zoom, roll = _camera_motion(rng, num_frames)
    # source position of an output pixel (x, y), relative to the view's starting centre
    camera = zoom[:, None, None] * _rotation(roll)
    # the view's extremes are at the frame's corners (the map is affine)
    h, w = size
    corners = np.array([[sx * (w - 1) / 2, sy * (h - 1) / 2] for sx in (-1, 1) for sy in (-1, 1)])
    corners = _affine(corners, camera, offset).reshape(-1, 2)
    low, high = corners.min(0) - _SAMPLING_MARGIN, corners.max(0) + _SAMPLING_MARGIN
    source_extent = np.array([photo.shape[2] - 1, photo.shape[1] - 1], dtype=np.float64)
    # a photograph too small for the path is magnified just enough (never the case at 256x256)
    fit = min(1.0, *(source_extent / (high - low)))
    low, high = low * fit, high * fit
    centre = np.array([rng.uniform(-low[k], source_extent[k] - high[k]) for k in range(2)])
    return _sample_frames(photo, _affine(_output_coordinates(size), camera * fit, offset * fit + centre))


def render_moving_region(
    frames: torch.Tensor, texture: torch.Tensor, rng: np.random.Generator, size: tuple[int, int]
) -> torch.Tensor:
    """Composite a spinning disc of ``texture`` moving on its own path over ``frames (t, 3, h, w)``."""
    num_frames = frames.shape[0]
    h, w = size
    t = np.arange(num_frames, dtype=np.float64)
    texture_h, texture_w = texture.shape[-2:]
    radius = min(rng.uniform(0.1, 0.18) * min(h, w), min(texture_h, texture_w) / 2 - 2 * _SAMPLING_MARGIN)
    heading = rng.uniform(0, 2 * np.pi)
    velocity = rng.uniform(0.6, 2.0) * np.array([np.cos(heading), np.sin(heading)])
    start = rng.uniform(0.3, 0.7, 2) * np.array([w, h]) - np.array([w, h]) / 2
    sideways = np.array([-np.sin(heading), np.cos(heading)])
    swerve = rng.uniform(2, 6) * np.sin(2 * np.pi * t / rng.uniform(20, 40))[:, None] * sideways
    position = start + velocity * t[:, None] + swerve  # (t, 2) disc centre, frame-centred pixels
    spin = np.deg2rad(rng.uniform(-1.5, 1.5)) * t
    # disc-local coordinates of every output pixel: R(-spin) @ (pixel - position)
    unspin = _rotation(-spin)
    local = _affine(_output_coordinates(size), unspin, -np.einsum("tij,tj->ti", unspin, position))
    margin = radius + _SAMPLING_MARGIN
    texture_centre = np.array(
        [rng.uniform(margin, texture_w - margin), rng.uniform(margin, texture_h - margin)]
    )
    region = _sample_frames(texture, local + texture_centre)
    # anti-aliased edge: coverage ramps from 0 to 1 across the one pixel straddling the rim
    coverage = np.clip(radius - np.linalg.norm(local, axis=-1) + 0.5, 0, 1)
    alpha = torch.from_numpy(coverage).float()[:, None]
    return alpha * region + (1 - alpha) * frames


def _render_photograph_clip(
    photo: str, texture: str, rng: np.random.Generator, num_frames: int, size: tuple[int, int]
) -> np.ndarray:
    """``(t, h, w, 3)`` uint8 frames of one clip."""
    frames = _render_background(load_photograph(photo), rng, num_frames, size)
    frames = render_moving_region(frames, load_photograph(texture), rng, size)
    return (frames.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _video_clips(num_frames: int, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Centre crops of the first ``num_frames`` frames of each opencv-doc video large enough for ``size``."""
    import decord

    found = [OPENCV_VIDEO_DIR / name for name in OPENCV_VIDEOS if (OPENCV_VIDEO_DIR / name).is_file()]
    if not found:
        raise FileNotFoundError(
            f"include_videos=True but no videos in {OPENCV_VIDEO_DIR}; install them with "
            "`apt-get install opencv-doc` or render without videos"
        )
    clips = {}
    h, w = size
    for path in found:
        reader = decord.VideoReader(str(path))
        frame_h, frame_w = reader[0].shape[:2]
        if len(reader) < num_frames or frame_h < h or frame_w < w:
            continue
        top, left = (frame_h - h) // 2, (frame_w - w) // 2
        frames = reader.get_batch(list(range(num_frames))).asnumpy()
        clips[path.stem] = np.ascontiguousarray(frames[:, top : top + h, left : left + w])
    if not clips:
        raise ValueError(
            f"include_videos=True but no video in {OPENCV_VIDEO_DIR} has {num_frames} frames of at least {h}x{w}"
        )
    return clips


def _write_clip(clip_dir: Path, frames: np.ndarray) -> None:
    clip_dir.mkdir(parents=True)
    for index, frame in enumerate(frames):
        # fast zlib level: the files are re-read once by prepare, size matters less than time
        Image.fromarray(frame).save(clip_dir / f"{index:08d}.png", format="PNG", compress_level=1)


def render_sample_dataset(
    out_dir: Path,
    num_train_clips: int = 4,
    num_val_clips: int = 2,
    num_frames: int = 32,
    size: tuple[int, int] = (256, 256),
    seed: int = 0,
    include_videos: bool = False,
) -> Path:
    """Render the sample dataset into ``out_dir`` unless it is already there; return ``out_dir``.

    Args:
        out_dir: destination; created atomically (rendered into a temporary sibling, then renamed).
        num_train_clips: photograph clips in ``train/`` (photographs are reused with new paths beyond 6).
        num_val_clips: photograph clips in ``val/`` (beyond 2, likewise).
        num_frames: frames per clip.
        size: HR frame ``(h, w)``; keep both divisible by the SR scale.
        seed: the same seed gives byte-identical files on the same software stack (another CPU's
            float rounding in ``grid_sample`` may move a rare pixel by one level).
        include_videos: also add opencv-doc's videos to ``train/`` (``video_<name>``).

    Raises:
        ValueError: ``out_dir`` holds a sample rendered with other parameters, or something else.
        FileNotFoundError: ``include_videos`` without opencv-doc installed.
    """
    out_dir = Path(out_dir)
    parameters = {
        "format_version": SAMPLE_FORMAT_VERSION,
        "num_train_clips": num_train_clips,
        "num_val_clips": num_val_clips,
        "num_frames": num_frames,
        "size": list(size),
        "seed": seed,
        "include_videos": include_videos,
    }
    if _is_complete(out_dir, parameters):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(
            f"{out_dir} exists and is not a complete sample dataset; delete it or pick another path"
        )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for split_index, (split, num_clips) in enumerate(
            [("train", num_train_clips), ("val", num_val_clips)]
        ):
            pool = SPLIT_PHOTOGRAPHS[split]
            for clip_index in range(num_clips):
                photo, texture = pool[clip_index % len(pool)], pool[(clip_index + 1) % len(pool)]
                # one generator per clip: adding clips leaves the earlier ones unchanged
                rng = np.random.default_rng([seed, split_index, clip_index])
                frames = _render_photograph_clip(photo, texture, rng, num_frames, size)
                _write_clip(staging / split / f"{clip_index:03d}_{photo}", frames)
        if include_videos:
            for name, frames in _video_clips(num_frames, size).items():
                _write_clip(staging / "train" / f"video_{name}", frames)
        (staging / COMPLETE_MARKER).write_text(json.dumps(parameters, indent=2) + "\n")
        try:
            # replaces out_dir only if it is absent or empty
            os.rename(staging, out_dir)
        except OSError:
            # another process finished first; its result is used if it matches
            if not _is_complete(out_dir, parameters):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _is_complete(out_dir: Path, parameters: dict) -> bool:
    """Whether ``out_dir`` holds a finished sample with these parameters (ValueError if other ones)."""
    marker = out_dir / COMPLETE_MARKER
    if not marker.is_file():
        return False
    found = json.loads(marker.read_text())
    if found != parameters:
        raise ValueError(
            f"{out_dir} holds a sample dataset rendered with {found}, not {parameters}; "
            "delete it or pick another path"
        )
    return True


__all__ = [
    "COMPLETE_MARKER",
    "PHOTOGRAPHS",
    "SPLIT_PHOTOGRAPHS",
    "load_photograph",
    "render_moving_region",
    "render_sample_dataset",
]
