"""Every Arrow schema and column list of the project, and the frame codec of the stored clips.

A prepared dataset (``docs/data_format.md``) is a folder of Parquet shards. Since format version 2 a clip
is stored as consecutive rows of at most ``segment_frames`` frames each (its *segments*), one row group
per segment, so a training crop of ``num_frames`` frames reads only the segments its window spans; a
version-1 shard holds one row (and row group) per clip and still reads. Frames are
lossless uint8 RGB: every frame is its raw ``(h, w, 3)`` C-order byte buffer compressed on its own with
zstd, so a reader decompresses only the frames it needs (a 50-frame window of a 100-frame clip, the
centre frame of a septuplet) and the compression runs in the Ray task that prepares and writes each shard. The frame columns are therefore
stored with Parquet compression off; every other column uses Parquet's zstd.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

# Bump when a change makes old shards unreadable by older code; the manifest records it.
# 1: one row group per clip. 2: one row group per segment of at most `segment_frames` frames.
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)  # versions this code reads
# Frames per segment. A 50-frame window then reads at most 60 frames of a 100-frame clip, not 100; a
# segment of a 720p clip is about 14 MB compressed, so row groups stay large enough to read efficiently.
DEFAULT_SEGMENT_FRAMES = 10

FRAME_CODEC = "zstd"
DEFAULT_ZSTD_LEVEL = 3

FRAME_COLUMNS = ("hr_frames", "lr_frames")

CLIP_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        # Where the frames came from, relative to the source root (clip folder or video file).
        pa.field("source", pa.string(), nullable=False),
        # Index of the first frame within the source (non-zero when a long video is cut into clips).
        pa.field("frame_start", pa.int32(), nullable=False),
        # Frames of the whole clip (every segment row repeats it).
        pa.field("num_frames", pa.int32(), nullable=False),
        # Index within the clip of this row's first frame (version 2; a version-1 row is the whole clip).
        pa.field("segment_start", pa.int32(), nullable=False),
        pa.field("scale", pa.int32(), nullable=False),
        pa.field("hr_height", pa.int32(), nullable=False),
        pa.field("hr_width", pa.int32(), nullable=False),
        pa.field("lr_height", pa.int32(), nullable=False),
        pa.field("lr_width", pa.int32(), nullable=False),
        # Original file names of this row's frames (video sources: the frame index as 8 digits).
        pa.field("frame_names", pa.list_(pa.string()), nullable=False),
        # One zstd-compressed (h, w, 3) uint8 RGB buffer per frame of this row.
        pa.field("hr_frames", pa.list_(pa.large_binary()), nullable=False),
        pa.field("lr_frames", pa.list_(pa.large_binary()), nullable=False),
    ],
    metadata={"ray_vsr.format_version": str(FORMAT_VERSION), "ray_vsr.frame_codec": FRAME_CODEC},
)

# Arguments for pyarrow.parquet.ParquetWriter: one segment per row group (written one at a time), zstd on
# the small columns, none on the frames (already zstd), no dictionary for the frame bytes.
PARQUET_WRITER_OPTIONS = {
    "compression": {name: ("none" if name in FRAME_COLUMNS else "zstd") for name in CLIP_SCHEMA.names},
    "use_dictionary": [name for name in CLIP_SCHEMA.names if name not in FRAME_COLUMNS],
    "write_statistics": ["clip_id", "split", "num_frames"],
    # A CRC-32 per page (version 2), checked on every read (READ_OPTIONS): zstd has no checksum in
    # Arrow's codec and stores incompressible blocks raw, so damaged frame bytes would otherwise decode
    # silently into wrong pixels. The check costs far less than the decompression.
    "write_page_checksum": True,
}

# Arguments for pyarrow.parquet.ParquetFile when reading frames (a version-1 shard has no checksums).
READ_OPTIONS = {"page_checksum_verification": True}


def encode_frames(frames: np.ndarray, level: int = DEFAULT_ZSTD_LEVEL) -> list[bytes]:
    """Compress ``frames (t, h, w, 3) uint8`` into one zstd buffer per frame."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"encode_frames: expected (t, h, w, 3) uint8, got {frames.shape} {frames.dtype}")
    codec = pa.Codec(FRAME_CODEC, compression_level=level)
    return [codec.compress(np.ascontiguousarray(frame), asbytes=True) for frame in frames]


def decode_frames(
    encoded: Sequence[bytes | pa.Buffer] | pa.Array,
    height: int,
    width: int,
    indices: Sequence[int] | None = None,
) -> np.ndarray:
    """Decompress frames ``indices`` (all when None) of one clip into ``(t, h, w, 3)`` uint8."""
    codec = pa.Codec(FRAME_CODEC)
    size = height * width * 3
    chosen = range(len(encoded)) if indices is None else indices
    out = np.empty((len(chosen), height, width, 3), dtype=np.uint8)
    for i, index in enumerate(chosen):
        buffer = encoded[index]
        if isinstance(buffer, pa.Scalar):
            buffer = buffer.as_buffer()
        out[i] = np.frombuffer(codec.decompress(buffer, decompressed_size=size), dtype=np.uint8).reshape(
            height, width, 3
        )
    return out
