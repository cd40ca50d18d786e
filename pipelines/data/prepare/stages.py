"""What preparation does to one clip, inside the Ray task that writes the clip's shard.

- :func:`probe_videos`: open each video once (frame count, size, timing warnings, or why it is unreadable);
- :func:`decode_clip`: read the HR frames of one clip (PNG files via Pillow, videos via decord);
- :func:`degrade_clip`: crop HR to a multiple of the scale and make LR with BI or BD
  (:mod:`pipelines.data.degradations`);
- :func:`compress_clip`: one zstd buffer per frame (:mod:`pipelines.data.schema`).

An unreadable input raises :class:`~pipelines.common.errors.UnreadableInput`; the shard task records it
as quarantined (or, under ``strict``, stops the job).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.common.errors import UnreadableInput
from pipelines.data.schema import encode_frames
from pipelines.data.sources import decode_frame_clip, decode_video_clip, probe_video


def probe_videos(videos: list[dict]) -> list[dict]:
    """Open each video ``{'item_id', 'path'}`` once: frame count, size, timing warnings, or the error."""
    rows = []
    for video in videos:
        row = {"item_id": video["item_id"], "num_frames": 0, "height": 0, "width": 0, "seekable": False}
        row |= {"warnings": [], "error": ""}
        try:
            probe = probe_video(video["path"])
            row |= {
                "seekable": probe.seekable,
                "num_frames": probe.num_frames,
                "height": probe.frame_size[0],
                "width": probe.frame_size[1],
                "warnings": probe.warnings,
            }
        except UnreadableInput as err:
            row["error"] = err.reason
        rows.append(row)
    return rows


@dataclass
class DecodedClip:
    frames: np.ndarray  # (t, h, w, 3) uint8
    names: list[str]  # file names, or frame indices of a video as 8 digits
    warnings: list[str]


def decode_clip(spec: dict) -> DecodedClip:
    """The HR frames of the clip ``spec`` (a row of :func:`pipelines.data.prepare.plan.plan_clips`)."""
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
            f"decoded frames are {frames.shape[1]}x{frames.shape[2]}, headers said {spec['height']}x{spec['width']}",
        )
    return DecodedClip(frames, names, warnings)


DEGRADE_CHUNK = 1  # frames degraded together: one at a time is fastest (cache-sized float64 copies)


def degrade_clip(frames: np.ndarray, degradation: str, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """``(hr, lr)`` uint8 ``(t, h, w, 3)``: HR cropped at the bottom / right to a multiple of ``scale``."""
    import torch

    from pipelines.data.degradations import crop_to_multiple, degrade

    t, h, w = frames.shape[:3]
    if h < scale or w < scale:
        raise UnreadableInput(
            "",
            f"frames of {w}x{h} are smaller than the scale x{scale}: no LR pixel is left; remove the clip or "
            "prepare at a smaller scale",
        )
    # (t, h, w, 3) -> (t, 3, h, w); the copy makes the tensor contiguous.
    hr_tensor, _ = crop_to_multiple(
        torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))), scale
    )
    # Frame by frame: the float64 working copy of a whole 100-frame 720p clip would be 2.2 GB, 5x slower.
    lr = torch.cat([degrade(chunk, degradation, scale) for chunk in hr_tensor.split(DEGRADE_CHUNK)])
    hr = hr_tensor.permute(0, 2, 3, 1).numpy()
    return np.ascontiguousarray(hr), np.ascontiguousarray(lr.permute(0, 2, 3, 1).numpy())


def compress_clip(hr: np.ndarray, lr: np.ndarray, zstd_level: int) -> tuple[list[bytes], list[bytes]]:
    return encode_frames(hr, zstd_level), encode_frames(lr, zstd_level)
