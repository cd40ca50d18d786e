"""The rendered sample dataset: layout, sizes, determinism, sub-pixel motion, idempotence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.registration import phase_cross_correlation

from pipelines.data.sample import (
    COMPLETE_MARKER,
    OPENCV_VIDEO_DIR,
    PHOTOGRAPHS,
    SPLIT_PHOTOGRAPHS,
    load_photograph,
    render_moving_region,
    render_sample_dataset,
)

SMALL = {"num_train_clips": 2, "num_val_clips": 1, "num_frames": 6, "size": (64, 96)}


@pytest.fixture(scope="module")
def default_sample(tmp_path_factory) -> Path:
    return render_sample_dataset(tmp_path_factory.mktemp("sample") / "default")


def read_clip(clip_dir: Path) -> np.ndarray:
    """(t, h, w, 3) uint8."""
    return np.stack([np.asarray(Image.open(path)) for path in sorted(clip_dir.glob("*.png"))])


def all_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()
    }


def test_default_layout_and_sizes(default_sample):
    train = sorted(path.name for path in (default_sample / "train").iterdir())
    val = sorted(path.name for path in (default_sample / "val").iterdir())
    assert train == ["000_astronaut", "001_coffee", "002_rocket", "003_motorcycle"]
    assert val == ["000_chelsea", "001_immunohistochemistry"]
    for clip in (default_sample / "train").iterdir():
        names = sorted(path.name for path in clip.iterdir())
        assert names == [f"{index:08d}.png" for index in range(32)]
    frames = read_clip(default_sample / "val" / "000_chelsea")
    assert frames.shape == (32, 256, 256, 3) and frames.dtype == np.uint8
    assert json.loads((default_sample / COMPLETE_MARKER).read_text())["num_frames"] == 32


def test_splits_use_disjoint_photographs_that_ship_with_scikit_image():
    assert not set(SPLIT_PHOTOGRAPHS["train"]) & set(SPLIT_PHOTOGRAPHS["val"])
    for name in PHOTOGRAPHS:
        photo = load_photograph(name)
        assert photo.shape[0] == 3 and min(photo.shape[1:]) >= 300, name


def test_consecutive_frames_move_by_a_small_sub_pixel_shift(default_sample):
    for clip in sorted((default_sample / "train").iterdir()) + sorted((default_sample / "val").iterdir()):
        grey = read_clip(clip).astype(np.float64).mean(-1)
        # every 4th pair keeps the test fast; the path is smooth, so these are representative
        shifts = np.array(
            [phase_cross_correlation(grey[i], grey[i + 1], upsample_factor=20)[0] for i in range(0, 31, 4)]
        )
        magnitude = np.linalg.norm(shifts, axis=1)
        fractional = np.abs(shifts - np.round(shifts)).max(axis=1) > 0.05
        assert 0.1 < np.median(magnitude) < 3, (clip.name, magnitude)
        assert fractional.mean() > 0.5, (clip.name, shifts)
        assert all(not np.array_equal(grey[i], grey[i + 1]) for i in range(len(grey) - 1))


def test_moving_region_follows_its_own_path():
    # Over a black background only the disc is visible: it keeps its area and its centre moves steadily.
    size = (128, 128)
    background = torch.zeros(16, 3, *size)
    frames = render_moving_region(background, load_photograph("coffee"), np.random.default_rng(3), size)
    visible = frames.amax(1) > 0
    area = visible.flatten(1).sum(1).float()
    assert area.min() > 0.75 * area.max()
    ys, xs = torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij")
    centroids = (
        torch.stack([(visible * xs).flatten(1).sum(1), (visible * ys).flatten(1).sum(1)], 1) / area[:, None]
    )
    steps = (centroids[1:] - centroids[:-1]).norm(dim=1)
    assert steps.min() > 0.2 and steps.max() < 3.5


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    first = render_sample_dataset(tmp_path / "a", **SMALL)
    second = render_sample_dataset(tmp_path / "b", **SMALL)
    other = render_sample_dataset(tmp_path / "c", seed=1, **SMALL)
    assert all_bytes(first) == all_bytes(second)
    first_frames, other_frames = (
        read_clip(first / "train" / "000_astronaut"),
        read_clip(other / "train" / "000_astronaut"),
    )
    assert first_frames.shape == other_frames.shape == (6, 64, 96, 3)
    assert not np.array_equal(first_frames, other_frames)


def test_adding_clips_leaves_earlier_clips_unchanged(tmp_path):
    fewer = render_sample_dataset(tmp_path / "fewer", **SMALL)
    more = render_sample_dataset(tmp_path / "more", **{**SMALL, "num_train_clips": 3})
    np.testing.assert_array_equal(
        read_clip(fewer / "train" / "001_coffee"), read_clip(more / "train" / "001_coffee")
    )


def test_rendering_is_idempotent_and_atomic(tmp_path):
    out = render_sample_dataset(tmp_path / "sample", **SMALL)
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    assert render_sample_dataset(tmp_path / "sample", **SMALL) == out
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sample"]  # no staging folder left behind

    with pytest.raises(ValueError, match="rendered with"):
        render_sample_dataset(tmp_path / "sample", **{**SMALL, "num_frames": 7})
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a complete sample"):
        render_sample_dataset(foreign, **SMALL)
    assert sorted(path.name for path in foreign.iterdir()) == ["notes.txt"]


@pytest.mark.skipif(
    not OPENCV_VIDEO_DIR.is_dir(), reason="Debian package opencv-doc (its example videos) not installed"
)
def test_opencv_doc_videos_are_added_to_train_on_request(tmp_path):
    out = render_sample_dataset(tmp_path / "videos", include_videos=True, **{**SMALL, "size": (128, 128)})
    videos = sorted(path.name for path in (out / "train").iterdir() if path.name.startswith("video_"))
    assert videos == ["video_Megamind", "video_tree", "video_vtest"]
    frames = read_clip(out / "train" / "video_vtest")
    assert frames.shape == (6, 128, 128, 3)
    assert not np.array_equal(frames[0], frames[-1])
    assert sorted(path.name for path in (out / "val").iterdir()) == ["000_chelsea"]
