"""Small on-disk datasets for the preparation and ingestion tests: frame folders and real videos."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Re-exported: with two conftest.py files, a test's `from conftest import ...` may bind to this one.
from tests.conftest import OPENCV_DATA, REPO_ROOT, opencv_video, require_file, tiny_tmpfs  # noqa: F401


def smooth_frames(num_frames: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """``(t, h, w, 3)`` uint8 frames of a smooth random texture drifting one pixel per frame."""
    rng = np.random.default_rng(seed)
    h, w = size
    coarse = rng.random((h // 4 + 3, w // 4 + num_frames + 3, 3))
    texture = np.kron(coarse, np.ones((4, 4, 1)))  # blocky but not constant over 4x4 LR footprints
    texture = (texture + rng.random(texture.shape) * 0.2) / 1.2
    frames = [texture[:h, t : t + w] for t in range(num_frames)]
    return (np.stack(frames) * 255).round().astype(np.uint8)


def write_clip(folder: Path, frames: np.ndarray, name: str = "{:08d}.png", first: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames):
        path = folder / name.format(first + i)
        Image.fromarray(frame).save(path)
        paths.append(path)
    return paths


def make_frame_dataset(
    root: Path, clips: dict[str, int], size: tuple[int, int] = (34, 40), split_folders: bool = True
) -> Path:
    """``root/<split>/<clip>/00000000.png``; clip names starting with 'val' go to val."""
    for seed, (name, num_frames) in enumerate(sorted(clips.items())):
        split = "val" if name.startswith("val") else "train"
        write_clip(
            root / split / name if split_folders else root / name, smooth_frames(num_frames, size, seed)
        )
    return root


@pytest.fixture
def frame_dataset(tmp_path) -> Path:
    """Train clips a, b, c (6 frames) and val clip val_a (5 frames) of 34x40: HR height is cropped to 32."""
    return make_frame_dataset(tmp_path / "frames_src", {"a": 6, "b": 6, "c": 6, "val_a": 5})


def truncated_copy(source: Path, target: Path, keep: int) -> Path:
    target.write_bytes(source.read_bytes()[:keep])
    return target


@pytest.fixture
def video_folder(tmp_path) -> Path:
    """Real videos: tree.avi, Megamind_bugy.avi, a truncated copy of tree.avi and a header-only one."""
    tree = opencv_video("tree.avi")
    bugy = opencv_video("Megamind_bugy.avi")
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(tree, folder / "tree.avi")
    shutil.copy(bugy, folder / "bugy.avi")
    truncated_copy(tree, folder / "tree_cut.avi", tree.stat().st_size // 2)
    truncated_copy(tree, folder / "tree_header.avi", 4096)
    return folder
