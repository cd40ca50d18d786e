"""Unusual inputs through the real preparation path (issue 18): 16-bit frames are scaled to 8 bits, a clip
of mixed frame sizes is quarantined without stopping the others, hidden folders are reported."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import smooth_frames, write_clip
from PIL import Image

from pipelines.common.errors import DataError
from pipelines.data.manifest import open_dataset
from pipelines.data.prepare import PrepareConfig, prepare_dataset
from pipelines.data.schema import decode_frames
from pipelines.data.sources import discover

_RUN: dict = {}


def write_png16(path, frame: np.ndarray) -> None:
    """A 16-bit PNG (grey for ``(h, w)``, RGB for ``(h, w, 3)``) written byte by byte: Pillow cannot
    write 16-bit RGB, and this way the file is exactly what a camera pipeline or a scan would give."""
    frame = np.asarray(frame, dtype=np.uint16)
    height, width = frame.shape[:2]
    rows = frame.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 0 if frame.ndim == 2 else 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _frames16(num_frames: int, size: tuple[int, int], seed: int, channels: int) -> np.ndarray:
    """16-bit frames over the whole range, most values far above 255 (clipping would make them white)."""
    frames = smooth_frames(num_frames, size, seed).astype(np.uint16) * 257 + np.uint16(seed * 41)
    return frames[..., 0] if channels == 1 else frames


def _source(root):
    """Clips: 'good' (8-bit), 'grey16' (I;16), 'rgb16' (16-bit RGB), 'mixed' (a 16x20 frame among 16x16)
    and a clip folder '..x' that discovery leaves out as hidden."""
    write_clip(root / "good", smooth_frames(3, (16, 16), seed=0))
    for name, channels in (("grey16", 1), ("rgb16", 3)):
        for i, frame in enumerate(_frames16(3, (16, 16), seed=len(name) + channels, channels=channels)):
            write_png16(root / name / f"{i:08d}.png", frame)
    write_clip(root / "mixed", smooth_frames(2, (16, 16), seed=2))
    Image.fromarray(smooth_frames(1, (16, 20), seed=3)[0]).save(root / "mixed" / "00000002.png")
    write_clip(root / "..x", smooth_frames(2, (16, 16), seed=4))
    return root


@pytest.fixture
def prepared_inputs(ray_local, tmp_path_factory):
    """The source above prepared once (BI x4); shared by the tests of this module."""
    if not _RUN:
        root = tmp_path_factory.mktemp("inputs")
        source = _source(root / "src")
        out = root / "out"
        summary = prepare_dataset(PrepareConfig(source=str(source), output=str(out), shard_size=1))
        _RUN.update(source=source, out=out, summary=summary, manifest=open_dataset(out))
    return _RUN


def _stored_hr(manifest, clip_id: str) -> np.ndarray:
    clip = manifest.clip(clip_id)
    rows = [
        r
        for r in pq.read_table(manifest.location.join(clip.shard).path).to_pylist()
        if r["clip_id"] == clip_id
    ]
    return np.concatenate([decode_frames(r["hr_frames"], *clip.hr_size) for r in rows])


@pytest.mark.parametrize("clip_id,channels", [("grey16", 1), ("rgb16", 3)])
def test_16_bit_frames_are_scaled_to_8_bits_not_clipped_to_white(prepared_inputs, clip_id, channels):
    stored = _stored_hr(prepared_inputs["manifest"], clip_id)
    originals = _frames16(3, (16, 16), seed=len(clip_id) + channels, channels=channels).astype(np.int64)
    assert originals.max() > 20_000  # really 16-bit values
    expected = np.round(originals / 257)  # 65535 -> 255
    if channels == 1:
        expected = np.repeat(expected[..., None], 3, axis=-1)
    # Pillow takes the high byte of 16-bit RGB (x >> 8); grey is rounded: both within one level.
    assert np.abs(stored.astype(np.int64) - expected).max() <= 1
    assert (stored == 255).mean() < 0.05 and stored.std() > 10  # not a white frame


def test_a_clip_of_mixed_frame_sizes_is_quarantined_and_the_others_prepared(prepared_inputs):
    summary = prepared_inputs["summary"]
    (entry,) = summary.quarantined
    assert entry["input"].endswith("mixed")
    assert "frames of different sizes" in entry["reason"] and "16x20" in entry["reason"]
    assert sorted(c.clip_id for c in prepared_inputs["manifest"].clips()) == ["good", "grey16", "rgb16"]


def test_a_clip_of_mixed_frame_sizes_stops_a_strict_run(ray_local, tmp_path):
    source = tmp_path / "src"
    write_clip(source / "good", smooth_frames(2, (16, 16), seed=0))
    write_clip(source / "mixed", smooth_frames(2, (16, 16), seed=2))
    Image.fromarray(smooth_frames(1, (16, 20), seed=3)[0]).save(source / "mixed" / "00000002.png")
    with pytest.raises(DataError, match="frames of different sizes.*--strict stops") as err:
        prepare_dataset(PrepareConfig(source=str(source), output=str(tmp_path / "out"), strict=True))
    assert "\n" not in str(err.value) and not (tmp_path / "out" / "manifest.json").exists()


def test_folders_whose_name_starts_with_a_dot_are_reported_not_skipped_in_silence(prepared_inputs, tmp_path):
    (warning,) = [w for w in prepared_inputs["summary"].warnings if w["input"] == "..x"]
    assert "starts with '.'" in warning["message"] and "rename" in warning["message"]
    assert warning in prepared_inputs["manifest"].manifest.warnings
    assert "..x" not in [c.clip_id for c in prepared_inputs["manifest"].clips()]
    # Inside split folders too (the sample layout), and in discovery alone.
    write_clip(tmp_path / "train" / "a", smooth_frames(1, (8, 8), seed=0))
    write_clip(tmp_path / "train" / ".b", smooth_frames(1, (8, 8), seed=0))
    assert [w["input"] for w in discover(tmp_path).warnings] == ["train/.b"]
