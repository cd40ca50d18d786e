"""Whether a video file is whole: the sizes its container header declares against the file's own size.

Decoders often play a cut-off copy without an error and return fewer frames; preparation quarantines
such a file and inference refuses it (or, when asked, says how much is missing). Checked: the top-level
size fields of RIFF (AVI), ISO BMFF (MP4, MOV) and EBML (MKV, WebM). Frame counts in headers are not
used: some writers store wrong ones (opencv-doc's tree.avi declares 444 frames and holds 68).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Truncation:
    """Why a file is cut short; ``declared`` is where its container says it ends (None: unknown)."""

    reason: str
    declared: int | None
    size: int

    def estimate_missing(self, frames_present: int) -> int | None:
        """Frames missing, estimated from the missing bytes at the frames' average size (None: unknown)."""
        if self.declared is None or self.size <= 0:
            return None
        return round(frames_present * (self.declared - self.size) / self.size)


def container_truncation(path: str | Path) -> str | None:
    """The reason the file is shorter than its container declares, or None (see :func:`check_container`)."""
    found = check_container(path)
    return found.reason if found else None


def check_container(path: str | Path) -> Truncation | None:
    """How the file is shorter than its container header says it is (a cut-off copy), or None.

    Checks the top-level size fields of RIFF (AVI), ISO BMFF (MP4, MOV) and EBML (MKV, WebM); decoders
    often play such a file without error and silently return fewer frames.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(64)
        if head[:4] == b"RIFF" and len(head) >= 8:
            declared = struct.unpack("<I", head[4:8])[0] + 8
            if size >= declared:
                return None
            return Truncation(
                f"truncated: RIFF header declares {declared} bytes, file has {size}", declared, size
            )
        if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
            offset = 0
            while offset + 8 <= size:
                f.seek(offset)
                box = f.read(16)
                box_size = struct.unpack(">I", box[:4])[0]
                if box_size == 1 and len(box) >= 16:
                    box_size = struct.unpack(">Q", box[8:16])[0]
                elif box_size == 0:  # extends to the end of the file
                    return None
                if box_size < 8:
                    return Truncation(
                        f"corrupt: MP4 box at byte {offset} declares size {box_size}", None, size
                    )
                if offset + box_size > size:
                    kind = box[4:8].decode("latin-1")
                    reason = f"truncated: MP4 box '{kind}' ends at byte {offset + box_size}, file has {size}"
                    return Truncation(reason, offset + box_size, size)
                offset += box_size
            return None
        if head[:4] == b"\x1a\x45\xdf\xa3":
            return _ebml_truncation(f, size)
    return None


def _read_vint(f, keep_marker: bool) -> tuple[int, int, bool] | None:
    """One EBML variable-length integer: (value, length, all value bits set)."""
    first = f.read(1)
    if not first:
        return None
    length = 1
    while length <= 8 and not first[0] & (0x80 >> (length - 1)):
        length += 1
    if length > 8:
        return None
    rest = f.read(length - 1)
    if len(rest) != length - 1:
        return None
    value = first[0] if keep_marker else first[0] & (0xFF >> length)
    for byte in rest:
        value = (value << 8) | byte
    unknown = not keep_marker and value == (1 << (7 * length)) - 1
    return value, length, unknown


def _ebml_truncation(f, size: int) -> Truncation | None:
    """Matroska/WebM: the EBML header, then a Segment whose declared size must fit in the file."""
    f.seek(0)
    for expected in (0x1A45DFA3, 0x18538067):  # EBML header, Segment
        start = f.tell()
        element = _read_vint(f, keep_marker=True)
        length = _read_vint(f, keep_marker=False)
        if element is None or length is None:
            return Truncation(f"truncated: incomplete EBML element at byte {start}", None, size)
        if element[0] != expected:
            return None
        data_start = f.tell()
        if length[2]:  # unknown size (live streams): nothing to compare
            return None
        if data_start + length[0] > size:
            end = data_start + length[0]
            return Truncation(
                f"truncated: EBML element at byte {start} ends at {end}, file has {size}", end, size
            )
        if expected == 0x1A45DFA3:
            f.seek(data_start + length[0])
    return None
