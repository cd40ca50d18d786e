"""Video inference: streaming windows, real video round trips, model loading errors, Ray Data batches.

The video is a real one (opencv-doc's tree.avi) cut to a few frames and downscaled to keep TTVSR
fast on a CPU.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import opencv_video
from torch import nn

import vsr_models
from pipelines.common.errors import InferError, ModelLoadError
from pipelines.data.video_io import OUTPUT_MARKER, FrameWriter, VideoError, open_frames
from pipelines.inference import batch, video
from pipelines.inference.config import InferConfig
from vsr_models.inference import super_resolve

LR_SIZE = (64, 80)  # (h, w): TTVSR's smallest input is 64x64


class PerFrameUpscaler(nn.Module):
    """A x4 network that treats every frame independently: chunking must not change its output."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():  # the same weights in every instance (and Ray actor)
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 3 * 16, 3, padding=1)
        self.shuffle = nn.PixelShuffle(4)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """(n, t, 3, h, w) -> (n, t, 3, 4h, 4w)."""
        n, t = lr.shape[:2]
        base = F.interpolate(lr.flatten(0, 1), scale_factor=4, mode="nearest")
        sr = base + 0.1 * torch.tanh(self.shuffle(self.conv(lr.flatten(0, 1))))
        return sr.unflatten(0, (n, t))


def tree_frames(num_frames: int) -> np.ndarray:
    """The first frames of tree.avi, area-downscaled to ``LR_SIZE``: uint8 ``(t, h, w, 3)``."""
    reader = open_frames(opencv_video("tree.avi"))
    frames = torch.from_numpy(reader.read(0, num_frames)).permute(0, 3, 1, 2).float()
    small = F.interpolate(frames, size=LR_SIZE, mode="area")
    return small.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """Five LR frames of tree.avi in a lossless FFV1 video, and the frames themselves."""
    frames = tree_frames(5)
    path = tmp_path_factory.mktemp("clip") / "tree_lr.mkv"
    with FrameWriter(path, fps=15) as writer:
        writer.write(frames)
    return path, frames


def reference_sr(model: nn.Module, frames: np.ndarray, **kwargs) -> np.ndarray:
    """Direct (in-memory) super-resolution of uint8 frames, quantised like the written output."""
    lr = torch.from_numpy(frames).permute(0, 3, 1, 2).unsqueeze(0).float() / 255
    sr = super_resolve(model, lr, **kwargs)[0]
    return sr.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


def test_lossless_clip_round_trips_exactly(clip):
    path, frames = clip
    reader = open_frames(path)
    assert (reader.info.num_frames, reader.info.height, reader.info.width) == (5, *LR_SIZE)
    assert reader.info.fps == pytest.approx(15)
    np.testing.assert_array_equal(reader.read(0, 5), frames)


def test_tiny_ttvsr_checkpoint_super_resolves_real_video_to_4x(clip, tmp_path):
    path, frames = clip
    model = vsr_models.build_model("ttvsr", mid_channels=8, num_extract_blocks=1, num_propagation_blocks=1)
    checkpoint = vsr_models.save_checkpoint(model, tmp_path / "tiny_ttvsr.pt")
    out = tmp_path / "tree_sr.mp4"

    summary = video.super_resolve_video(checkpoint, path, out, chunk=3, chunk_overlap=1, progress=False)

    assert (summary.num_frames, summary.lr_size, summary.sr_size) == (5, LR_SIZE, (256, 320))
    video.check_output(summary)
    decoded = open_frames(out)
    assert (decoded.info.num_frames, decoded.info.height, decoded.info.width) == (5, 256, 320)
    assert decoded.info.fps == pytest.approx(15)
    # Same windows in memory: H.264 at crf 12 keeps it close to the network's own output.
    expected = reference_sr(model, frames, chunk=3, chunk_overlap=1)
    assert psnr(decoded.read(0, 5), expected) > 35
    assert not list(tmp_path.glob(".*partial*"))


def test_chunked_output_equals_unchunked_for_per_frame_model(clip, tmp_path):
    path, frames = clip
    model = PerFrameUpscaler()
    whole = video.super_resolve_video(model, path, tmp_path / "whole", chunk=None, progress=False)
    chunked = video.super_resolve_video(
        model, path, tmp_path / "chunked", chunk=3, chunk_overlap=1, tile=32, progress=False
    )

    whole_frames = open_frames(whole.output).read(0, 5)
    np.testing.assert_array_equal(open_frames(chunked.output).read(0, 5), whole_frames)
    np.testing.assert_array_equal(whole_frames, reference_sr(model, frames))
    names = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert names[:3] == [OUTPUT_MARKER, "00000000.png", "00000001.png"]  # marked as ray-vsr's own output


def test_streaming_reads_each_frame_once_in_window_sized_pieces(clip, tmp_path, monkeypatch):
    path, _ = clip
    reads = []

    read = video.SourceReader.read

    def record(reader, start, stop):
        reads.append((start, stop))
        return read(reader, start, stop)

    monkeypatch.setattr(video.SourceReader, "read", record)
    video.super_resolve_video(
        PerFrameUpscaler(), path, tmp_path / "out.mkv", chunk=3, chunk_overlap=1, progress=False
    )

    assert max(stop - start for start, stop in reads) <= 3
    assert [f for start, stop in reads for f in range(start, stop)] == list(range(5))


@pytest.mark.parametrize(
    ("num_frames", "chunk", "overlap", "needed", "expected_overlap"),
    [(30, 10, None, None, 2), (30, 10, 0, None, 0), (30, 10, 1, 5, 4), (7, 30, None, None, 0)],
)
def test_temporal_windows_write_every_frame_once_in_order(
    num_frames, chunk, overlap, needed, expected_overlap
):
    windows = video.temporal_windows(num_frames, chunk, overlap, needed)

    assert [f for _, _, kept in windows for f in kept] == list(range(num_frames))
    assert all(stop - start == min(chunk, num_frames) for start, stop, _ in windows)
    assert all(start <= f < stop for start, stop, kept in windows for f in kept)
    if len(windows) > 1:
        assert windows[0][1] - windows[1][0] == expected_overlap
    if needed:  # a fixed-length model sees its (needed - 1) // 2 neighbours on both sides
        half = (needed - 1) // 2
        for start, stop, kept in windows:
            assert all(f - half >= start or start == 0 for f in kept)
            assert all(f + half < stop or stop == num_frames for f in kept)


def test_frame_folder_input(clip, tmp_path):
    _, frames = clip
    with FrameWriter(tmp_path / "lr_frames", fps=0) as writer:
        writer.write(frames[:3])
    summary = video.super_resolve_video(
        PerFrameUpscaler(), tmp_path / "lr_frames", tmp_path / "sr.mkv", progress=False
    )

    assert (summary.num_frames, summary.sr_size) == (3, (256, 320))
    np.testing.assert_array_equal(
        open_frames(tmp_path / "sr.mkv").read(0, 3), reference_sr(PerFrameUpscaler(), frames[:3])
    )


def test_missing_input_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.mp4 does not exist"):
        video.super_resolve_video(PerFrameUpscaler(), tmp_path / "nothing.mp4", tmp_path / "out.mp4")


def test_corrupt_video_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not really a video" * 50)
    with pytest.raises(VideoError, match="cannot decode video .*broken.mp4"):
        video.super_resolve_video(PerFrameUpscaler(), bad, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()


def test_unknown_model_uri_is_a_clear_error(clip, tmp_path, mlflow_uri):
    with pytest.raises(ModelLoadError, match="cannot load model models:/nope@champion from the MLflow store"):
        video.super_resolve_video("models:/nope@champion", clip[0], tmp_path / "out.mp4")
    with pytest.raises(
        FileNotFoundError, match="neither an existing checkpoint file nor an MLflow model URI"
    ):
        video.super_resolve_video("no_such_model.pt", clip[0], tmp_path / "out.mp4")


def test_existing_output_is_kept_unless_overwrite(clip, tmp_path):
    out = tmp_path / "out.mkv"
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="already exists"):
        video.super_resolve_video(PerFrameUpscaler(), clip[0], out, progress=False)
    assert out.read_bytes() == b"precious"

    video.super_resolve_video(PerFrameUpscaler(), clip[0], out, overwrite=True, progress=False)
    assert open_frames(out).info.num_frames == 5


def test_failure_midway_leaves_no_output(clip, tmp_path):
    class FailsOnSecondWindow(PerFrameUpscaler):
        calls = 0

        def forward(self, lr):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("out of memory")
            return super().forward(lr)

    with pytest.raises(RuntimeError, match="out of memory"):
        video.super_resolve_video(
            FailsOnSecondWindow(), clip[0], tmp_path / "out.mp4", chunk=3, progress=False
        )
    assert list(tmp_path.iterdir()) == []


def test_progress_reports_frames_written(clip, tmp_path):
    calls = []
    video.super_resolve_video(
        PerFrameUpscaler(),
        clip[0],
        tmp_path / "o.mkv",
        chunk=3,
        chunk_overlap=1,
        progress=lambda *a: calls.append(a),
    )
    assert calls[-1] == (5, 5)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_many_videos_with_ray_data_actor_pool(clip, tmp_path, ray_local):
    # Actors unpickle the test's network; they cannot import this test module, so ship it by value.
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[PerFrameUpscaler.__module__])
    videos = tmp_path / "videos"
    videos.mkdir()
    frames = clip[1]
    for name, count in (("a.mkv", 3), ("b.mkv", 5)):
        with FrameWriter(videos / name, fps=15) as writer:
            writer.write(frames[:count])
    (videos / "c.mp4").write_bytes(b"corrupt")

    exact = InferConfig(precision="fp32")  # the job's auto is bf16 on CPUs with AVX512-BF16
    with pytest.raises(
        InferError, match=r"1 of 3 videos failed:\n.*c.mp4: VideoError: cannot decode"
    ) as failed:
        batch.super_resolve_many(
            videos, tmp_path / "sr", PerFrameUpscaler(), num_workers=2, suffix=".mkv", config=exact
        )
    table = str(failed.value).splitlines()[-4:]
    assert [row.split()[:3] for row in table] == [
        ["input", "status", "frames"],
        ["a.mkv", "done", "3"],
        ["b.mkv", "done", "5"],
        ["c.mp4", "FAILED", "-"],
    ]
    for name, count in (("a", 3), ("b", 5)):
        np.testing.assert_array_equal(
            open_frames(tmp_path / "sr" / f"{name}.mkv").read(0, count),
            reference_sr(PerFrameUpscaler(), frames[:count]),
        )

    (videos / "c.mp4").unlink()
    # A rerun skips the complete outputs (no actor starts: nothing is left to do).
    rerun = batch.super_resolve_many(videos, tmp_path / "sr", PerFrameUpscaler(), suffix=".mkv", config=exact)
    assert [s.notes for s in rerun] == [(batch.SKIPPED,), (batch.SKIPPED,)]
    assert "skipped" in batch.format_table(rerun).splitlines()[1]
    summaries = batch.super_resolve_many(
        videos, tmp_path / "sr2", PerFrameUpscaler(), num_workers=2, config=InferConfig(chunk=2)
    )
    assert [(s.num_frames, s.sr_size) for s in summaries] == [(3, (256, 320)), (5, (256, 320))]
    assert [open_frames(s.output).info.num_frames for s in summaries] == [3, 5]


def test_a_truncated_real_video_fails_and_leaves_no_output(tmp_path):
    cut = tmp_path / "tree_cut.avi"
    tree = opencv_video("tree.avi")
    cut.write_bytes(tree.read_bytes()[: tree.stat().st_size * 3 // 10])  # 22 of its 68 frames decode
    out = tmp_path / "sr.mkv"
    with pytest.raises(VideoError, match="is cut short .*only 22 frames decode.*--allow-truncated"):
        video.super_resolve_video(PerFrameUpscaler(), cut, out, chunk=8, device="cpu", progress=False)
    assert not out.exists() and list(tmp_path.iterdir()) == [cut]

    summary = video.super_resolve_video(
        PerFrameUpscaler(), cut, out, chunk=8, device="cpu", progress=False, allow_truncated=True
    )
    assert summary.num_frames == 22 and open_frames(out).info.num_frames == 22
    assert summary.truncation.startswith("truncated: RIFF header declares")
    assert (
        40 <= summary.missing_frames <= 60
    )  # estimated from the missing bytes; 46 frames are really missing
    assert f"INCOMPLETE: the input is cut short ({summary.truncation}), about {summary.missing_frames}" in (
        video.describe(summary)
    )


def test_overwrite_replaces_only_what_ray_vsr_wrote(clip, tmp_path):
    out = tmp_path / "frames"
    video.super_resolve_video(PerFrameUpscaler(), clip[0], out, progress=False)
    (out / "notes.txt").write_text("mine")
    (out / "00000099.png").write_bytes((out / "00000000.png").read_bytes())  # a stale frame of ours
    video.super_resolve_video(PerFrameUpscaler(), clip[0], out, overwrite=True, chunk=2, progress=False)
    assert (out / "notes.txt").read_text() == "mine"  # unrelated files are kept
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:08d}.png" for i in range(5)]

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"jpeg")
    with pytest.raises(FileExistsError, match="was not written by ray-vsr") as refused:
        video.super_resolve_video(PerFrameUpscaler(), clip[0], foreign, overwrite=True, progress=False)
    assert "pass --overwrite" not in str(refused.value)
    assert [p.name for p in foreign.iterdir()] == ["holiday.jpg"]
