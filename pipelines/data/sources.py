"""Video sources: find the clips of a dataset on disk and decode their frames (ARCHITECTURE.md, data flow 1).

Layouts understood (``layout='auto'`` detects them, in this order):

- ``vimeo``: Vimeo-90K septuplets, ``sequences/<a>/<b>/im1.png..im7.png`` listed by ``sep_trainlist.txt``
  (split ``train``) and ``sep_testlist.txt`` (split ``val``, i.e. Vimeo-90K-T).
- ``reds``: REDS, ``train_sharp/<clip>/<frame>.png`` (also under ``train/``); REDS4 (clips 000, 011,
  015, 020) is the ``val`` split. The official ``val_sharp`` clips, when present, join as 240-269, the
  numbering BasicSR uses when it merges them into the training set.
- ``folders``: Vid4 / UDM10 style, one folder of frames per clip; clip folders may sit inside split folders
  named ``train``, ``val`` or ``test`` (the sample dataset does).
- ``frames``: one folder of frames, a single clip.
- ``videos``: video files (mp4, avi, mkv, mov, webm), the folder's tree or one file; decoded with decord.

Discovery (:func:`discover`) lists folders where it is called and hands the clip folders, in
batches, to :func:`inspect_clip_folders` (frame listing, image headers, file sizes), which preparation
runs in Ray tasks; decoding (:func:`decode_frame_clip`, :func:`probe_video`, :func:`decode_video_clip`) runs inside
Ray tasks. Every mistake in the dataset's structure is a
:class:`~pipelines.common.errors.DataError`; a single unreadable input is an ``UnreadableInput`` (a
``DataError`` too), which preparation quarantines unless ``strict``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.common.errors import DataError, UnreadableInput
from pipelines.data.containers import container_truncation
from pipelines.data.video_io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, image_files, open_video

LAYOUTS = ("auto", "reds", "vimeo", "folders", "frames", "videos")
SPLIT_FOLDERS = ("train", "val", "test")

# REDS4: the four REDS training clips every paper holds out for validation.
REDS4_CLIPS = ("000", "011", "015", "020")
# BasicSR renumbers REDS's official validation clips 000-029 to 240-269 when merging them in.
REDS_VAL_SHARP_OFFSET = 240

# Inputs smaller than this in total are fingerprinted by content, larger ones by size and mtime.
CONTENT_FINGERPRINT_LIMIT = 64 * 2**20


@dataclass(frozen=True)
class FileStat:
    """What identifies one input file's version: its path relative to the source root, size, mtime."""

    path: str
    size: int
    mtime_ns: int


@dataclass
class SourceItem:
    """One clip folder or one video file of a source, before it is cut into clips.

    ``split`` is the split the layout implies (REDS4, Vimeo lists, split folders) or None.
    Frame items carry their frame files and frame size; videos learn theirs in :func:`probe_video`.
    """

    item_id: str
    kind: str  # 'frames' | 'video'
    source: str  # relative to the source root
    path: str  # absolute: the clip folder or the video file
    split: str | None = None
    frame_paths: list[str] = field(default_factory=list)
    frame_size: tuple[int, int] | None = None  # (h, w)
    files: list[FileStat] = field(default_factory=list)


@dataclass
class Quarantined:
    """An input left out of the prepared dataset, and why."""

    input: str
    reason: str


@dataclass
class DiscoveredSource:
    root: Path
    layout: str
    items: list[SourceItem]
    quarantined: list[Quarantined]
    # Reported, not fatal: folders left out because their name starts with '.' ({'input', 'message'}).
    warnings: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------
# layout detection


def _subdirs(folder: Path, hidden: list[Path] | None = None) -> list[Path]:
    """Sub-folders by name, without those whose name starts with '.' (appended to ``hidden`` when given,
    so that discovery reports them: a clip folder named ``..x`` must not vanish in silence)."""
    found = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.name)
    if hidden is not None:
        hidden += [p for p in found if p.name.startswith(".")]
    return [p for p in found if not p.name.startswith(".")]


def _videos_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def _reds_clip_roots(root: Path) -> list[tuple[Path, int]]:
    """REDS clip-folder parents found under ``root`` with the id offset of each (val_sharp: 240)."""
    found = []
    for name, offset in (("train_sharp", 0), ("val_sharp", REDS_VAL_SHARP_OFFSET)):
        if root.name == name:
            found.append((root, offset))
        for candidate in (root / name, root / name.split("_")[0] / name):
            if candidate.is_dir():
                found.append((candidate, offset))
    return found


def detect_layout(root: Path) -> str:
    """Name the layout of ``root`` (see the module docstring), or raise :class:`DataError`."""
    if root.is_file():
        if root.suffix.lower() in VIDEO_SUFFIXES:
            return "videos"
        raise DataError(
            f"{root}: not a video file ({', '.join(sorted(VIDEO_SUFFIXES))}); "
            "pass a video, or a folder of clips, frames or videos"
        )
    if (root / "sequences").is_dir() and any(
        (root / name).is_file() for name in ("sep_trainlist.txt", "sep_testlist.txt")
    ):
        return "vimeo"
    if _reds_clip_roots(root):
        return "reds"
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise DataError(f"{root}: the source folder is empty; point --source at the dataset's folder")
    if image_files(root):
        return "frames"
    subdirs = _subdirs(root)
    if any(image_files(d) for d in subdirs):
        return "folders"
    split_folders = subdirs and all(d.name in SPLIT_FOLDERS for d in subdirs)
    if split_folders and any(image_files(clip) for d in subdirs for clip in _subdirs(d)):
        return "folders"
    if _videos_under(root):
        return "videos"
    found = ", ".join(sorted(p.name for p in entries)[:8])
    raise DataError(
        f"{root}: unknown dataset layout (found: {found}). Expected one of: REDS (train_sharp/<clip>/*.png), "
        "Vimeo-90K (sequences/ + sep_trainlist.txt), folders of frame folders (optionally inside "
        "train/val/test), a folder of frames, or video files. Point --source at such a folder or pass "
        "--layout explicitly."
    )


# ----------------------------------------------------------------------------------------------------
# discovery


def _stat(path: Path, root: Path) -> FileStat:
    st = path.stat()
    return FileStat(str(path.relative_to(root)), st.st_size, st.st_mtime_ns)


def _frame_item(
    item_id: str, frame_paths: list[Path], root: Path, where: Path, split: str | None
) -> SourceItem | Quarantined:
    """Read every frame's header: a clip with an unreadable header or frames of mixed sizes is quarantined."""
    from PIL import Image

    if not frame_paths:
        raise DataError(f"{where}: the clip folder holds no frames ({', '.join(sorted(IMAGE_SUFFIXES))})")
    sizes: dict[tuple[int, int], list[str]] = {}
    for path in frame_paths:
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Exception as err:  # PIL raises many types for a broken header
            return Quarantined(str(path), f"unreadable image header ({type(err).__name__}: {err})")
        sizes.setdefault((height, width), []).append(path.name)
    if len(sizes) > 1:
        described = "; ".join(
            f"{h}x{w}: {names[0]} (+{len(names) - 1} more)" for (h, w), names in sizes.items()
        )
        return Quarantined(
            str(where),
            f"frames of different sizes within one clip ({described}); resize them to one size or move the "
            "odd frames into their own clip folder",
        )
    return SourceItem(
        item_id=item_id,
        kind="frames",
        source=str(where.relative_to(root)) if where != root else ".",
        path=str(where),
        split=split,
        frame_paths=[str(p) for p in frame_paths],
        frame_size=next(iter(sizes)),
        files=[_stat(p, root) for p in frame_paths],
    )


def _read_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _discover_items(
    root: Path, layout: str, hidden: list[Path] | None = None
) -> list[tuple[str, str, str | None]]:
    """(item id, clip folder, implied split) for the frame layouts: lists folders, opens no frame file.

    Folders left out because their name starts with '.' are appended to ``hidden``."""
    if layout == "frames":
        return [(root.name, str(root), None)]
    if layout == "vimeo":
        entries = []
        for list_name, split in (("sep_trainlist.txt", "train"), ("sep_testlist.txt", "val")):
            for rel in _read_list(root / list_name):
                entries.append((rel.replace("/", "_"), str(root / "sequences" / rel), split))
        return entries
    if layout == "reds":
        entries = []
        for clip_root, offset in _reds_clip_roots(root):
            for folder in _subdirs(clip_root, hidden):
                clip_id = f"{int(folder.name) + offset:03d}" if folder.name.isdigit() else folder.name
                split = "val" if clip_id in REDS4_CLIPS else "train"
                entries.append((clip_id, str(folder), split))
        return entries
    if layout == "folders":
        entries = []
        for folder in _subdirs(root, hidden):
            if folder.name in SPLIT_FOLDERS and not image_files(folder):
                entries.extend((clip.name, str(clip), folder.name) for clip in _subdirs(folder, hidden))
            else:
                entries.append((folder.name, str(folder), None))
        return entries
    raise AssertionError(layout)


def inspect_clip_folders(root: str, candidates: list[tuple[str, str, str | None]]) -> dict:
    """List the frames of each clip folder and read their headers (runs in a Ray task over a batch).

    Returns ``{'items': [SourceItem], 'quarantined': [Quarantined], 'error': str}``; ``error`` is the first
    structural mistake (a listed folder missing, no frames), which stops the job.
    """
    base = Path(root)
    out: dict = {"items": [], "quarantined": [], "error": ""}
    for item_id, folder, split in candidates:
        where = Path(folder)
        try:
            if not where.is_dir():
                raise DataError(
                    f"{where}: listed by the dataset but missing; restore it or remove it from the list"
                )
            found = _frame_item(item_id, image_files(where), base, where, split)
        except DataError as err:
            out["error"] = str(err)
            return out
        out["items" if isinstance(found, SourceItem) else "quarantined"].append(found)
    return out


def _inspect_here(root: str, batches: list[list]) -> list[dict]:
    return [inspect_clip_folders(root, batch) for batch in batches]


def check_source(source: str | Path, layout: str = "auto") -> Path:
    """The resolved source folder; a :class:`DataError` for a missing path or an unknown layout."""
    root = Path(source).expanduser().resolve()
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not root.exists():
        raise DataError(f"{root}: the source does not exist; check --source")
    return root


INSPECT_BATCH = 512  # clip folders per discovery task


def discover(source: str | Path, layout: str = "auto", inspect=_inspect_here) -> DiscoveredSource:
    """List the clips (frame layouts) or video files of ``source``; decode nothing.

    Here only folders are listed; the frames of each clip folder are listed and their headers read by
    ``inspect(root, batches)``, called with batches of :data:`INSPECT_BATCH` clip folders: in this process
    by default, in parallel Ray tasks from preparation (:mod:`pipelines.data.prepare.discovery`).

    Raises:
        DataError: missing or empty source, unknown layout, duplicate clip ids.
    """
    root = check_source(source, layout)
    if layout == "auto":
        layout = detect_layout(root)
    items: list[SourceItem] = []
    quarantined: list[Quarantined] = []
    hidden: list[Path] = []
    if layout == "videos":
        videos = [root] if root.is_file() else _videos_under(root)
        base = root.parent if root.is_file() else root
        for video in videos:
            rel = video.relative_to(base)
            top = rel.parts[0] if len(rel.parts) > 1 else None
            items.append(
                SourceItem(
                    item_id=str(rel.with_suffix("")).replace(os.sep, "_"),
                    kind="video",
                    source=str(rel),
                    path=str(video),
                    split=top if top in SPLIT_FOLDERS else None,
                    files=[_stat(video, base)],
                )
            )
    else:
        candidates = _discover_items(root, layout, hidden)
        batches = [candidates[i : i + INSPECT_BATCH] for i in range(0, len(candidates), INSPECT_BATCH)]
        for result in inspect(str(root), batches):
            if result["error"]:
                raise DataError(result["error"])
            items += result["items"]
            quarantined += result["quarantined"]
    if not items and not quarantined:
        raise DataError(f"{root}: no clips found for layout '{layout}'; check --source and --layout")
    seen: dict[str, str] = {}
    for item in items:
        if item.item_id in seen:
            raise DataError(
                f"{root}: two inputs map to the clip id '{item.item_id}' ({seen[item.item_id]} and "
                f"{item.source}); rename one of them"
            )
        seen[item.item_id] = item.source
    warnings = [
        {
            "input": str(folder.relative_to(root)),
            "message": "folder name starts with '.': left out as hidden; rename it if it holds a clip",
        }
        for folder in hidden
    ]
    return DiscoveredSource(root=root, layout=layout, items=items, quarantined=quarantined, warnings=warnings)


def fingerprint(root: Path, files: list[FileStat]) -> dict:
    """Identify the source's version: content sha256 for small inputs, else sha256 of paths+sizes+mtimes."""
    files = sorted(files, key=lambda f: f.path)
    total = sum(f.size for f in files)
    digest = hashlib.sha256()
    base = root.parent if root.is_file() else root
    if total <= CONTENT_FINGERPRINT_LIMIT:
        method = "content"
        for f in files:
            digest.update(f"{f.path}\0".encode())
            digest.update((base / f.path).read_bytes())
    else:
        method = "stat"
        for f in files:
            digest.update(f"{f.path}\0{f.size}\0{f.mtime_ns}\n".encode())
    return {"method": method, "sha256": digest.hexdigest(), "files": len(files), "bytes": total}


# ----------------------------------------------------------------------------------------------------
# decoding (runs inside Ray tasks)


# Pillow's modes of 16-bit grey images (PNG, TIFF); its "RGB" of a 16-bit colour PNG is already 8-bit.
GREY_16_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb8(image) -> np.ndarray:
    """``(h, w, 3)`` uint8 RGB of a Pillow image. 16-bit grey is scaled to 8 bits (``round(x / 257)``, so
    65535 is 255); Pillow's own conversion would clip every value above 255 to white."""
    if image.mode in GREY_16_MODES:
        grey = np.asarray(image).astype(np.int64)
        scaled = ((np.clip(grey, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(scaled[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"))


def decode_frame_clip(frame_paths: list[str]) -> np.ndarray:
    """Decode image files into ``(t, h, w, 3)`` uint8 RGB; a broken file raises :class:`UnreadableInput`,
    and so do frames whose sizes differ (headers that lied)."""
    from PIL import Image

    frames = []
    for path in frame_paths:
        try:
            with Image.open(path) as image:
                frames.append(to_rgb8(image))
        except Exception as err:
            raise UnreadableInput(path, f"cannot decode image ({type(err).__name__}: {err})") from None
        if frames[-1].shape != frames[0].shape:
            raise UnreadableInput(
                path,
                f"decoded as {frames[-1].shape[1]}x{frames[-1].shape[0]}, the clip's first frame as "
                f"{frames[0].shape[1]}x{frames[0].shape[0]}: frames of different sizes within one clip",
            )
    return np.stack(frames)


@dataclass
class VideoProbe:
    num_frames: int  # as the container reports it
    fps: float
    frame_size: tuple[int, int]
    warnings: list[str]
    # Every frame has a timestamp and they increase: only then does seeking land on the right frame
    # (decord lands one frame early in opencv-doc's Megamind*.avi, whose frames mostly lack one).
    seekable: bool = True


def timing_warnings(timestamps: np.ndarray, fps: float) -> list[str]:
    """Compare frame start times (seconds, as decord reports them) with the container's nominal rate."""
    n = len(timestamps)
    if fps <= 0:
        return ["the container reports no frame rate"]
    out = []
    valid = timestamps >= 0  # decord reports frames without a presentation time as huge negatives
    if not valid.all():
        out.append(f"{int((~valid).sum())} of {n} frames carry no timestamp")
    index = np.nonzero(valid)[0]
    if len(index) > 1:
        drift = (timestamps[index] - timestamps[index[0]]) * fps - (index - index[0])
        worst = float(np.abs(drift).max())
        if worst > 1.0:
            out.append(
                f"frame timestamps disagree with the nominal {fps:.3f} fps by up to {worst:.1f} frames "
                f"({worst / fps:.2f} s)"
            )
    return out


def probe_video(path: str) -> VideoProbe:
    """Open a video, read its frame count, rate, size and timestamps; decode only the first frame."""
    truncated = container_truncation(path)
    if truncated:
        raise UnreadableInput(path, truncated)
    try:
        reader = open_video(path)
        num_frames = len(reader)
        first = reader.next().asnumpy() if num_frames else None
    except Exception as err:
        raise UnreadableInput(path, f"cannot open the video ({type(err).__name__}: {err})") from None
    if first is None:
        raise UnreadableInput(path, "the container holds no frames")
    fps = float(reader.get_avg_fps())
    timestamps = reader.get_frame_timestamp(range(num_frames))[:, 0]
    seekable = bool((timestamps >= 0).all() and (np.diff(timestamps) > 0).all())
    return VideoProbe(num_frames, fps, first.shape[:2], timing_warnings(timestamps, fps), seekable)


def frame_anomaly_warnings(frames: np.ndarray, frame_start: int = 0) -> list[str]:
    """Repeated identical frames, and frames far from both neighbours (damaged or out of order).

    A frame ``i`` is an outlier when it differs from each neighbour by more than twice what the
    neighbours differ from each other (mean absolute difference, grey levels, on a 4x subsampled grid).
    """
    out = []
    repeated = [
        frame_start + i + 1 for i in range(len(frames) - 1) if np.array_equal(frames[i], frames[i + 1])
    ]
    if repeated:
        out.append(f"{len(repeated)} repeated identical frames (at {_first_few(repeated)})")
    if len(frames) >= 3:
        small = frames[:, ::4, ::4].astype(np.int16)
        step = np.abs(np.diff(small, axis=0)).mean(axis=(1, 2, 3))
        skip = np.abs(small[2:] - small[:-2]).mean(axis=(1, 2, 3))
        nearest = np.minimum(step[:-1], step[1:])
        outliers = np.nonzero((nearest > 2 * np.maximum(skip, 0.5)) & (nearest > 1.0))[0] + 1
        if len(outliers):
            where = _first_few([frame_start + int(i) for i in outliers])
            out.append(
                f"{len(outliers)} frames differ from both neighbours far more than the neighbours differ "
                f"from each other (damaged or out-of-order frames, at {where})"
            )
    return out


def _first_few(indices: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (", ..." if len(indices) > limit else "")


def decode_video_clip(
    path: str, frame_start: int, num_frames: int, seekable: bool = True
) -> tuple[np.ndarray, list[str]]:
    """Decode frames ``[frame_start, frame_start + num_frames)`` in order; ``(t, h, w, 3)`` uint8 + warnings.

    Frames are read one by one so that a container over-reporting its length ends the clip early (with a
    warning) instead of failing it. Unless ``seekable`` (see :class:`VideoProbe`), the frames before the
    clip are decoded and dropped, so that clips of one video join without a frame lost or repeated.
    """
    try:
        reader = open_video(path)
        if frame_start and seekable:
            reader.seek_accurate(frame_start)
        elif frame_start:
            for _ in range(frame_start):
                reader.next()
        frames = []
        for _ in range(num_frames):
            try:
                frames.append(reader.next().asnumpy())
            except StopIteration:
                break
    except Exception as err:
        raise UnreadableInput(path, f"cannot decode frames ({type(err).__name__}: {err})") from None
    if not frames:
        raise UnreadableInput(path, f"no frame decodes from frame {frame_start} on")
    warnings = []
    if len(frames) < num_frames:
        warnings.append(
            f"decoded {len(frames)} of the {num_frames} frames its container reports from frame {frame_start}"
        )
    clip = np.stack(frames)
    return clip, warnings + frame_anomaly_warnings(clip, frame_start)
