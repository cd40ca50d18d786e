"""Reading and writing frame sequences: video files and folders of frames.

Frames cross this boundary as uint8 ``(t, h, w, 3)`` RGB arrays; :mod:`vsr_models.frames` converts
them to the project's float ``(n, t, c, h, w)`` layout.

- Reading: video files are decoded with decord (one thread per reader, created by the process
  that uses it: decord is not fork-safe and leaks on some seeks); a folder holds one image per frame in
  name order (the Vid4 / UDM10 / REDS layout).
- Writing: decord cannot encode, so videos are written with PyAV: FFV1 (lossless RGB) in
  ``.mkv`` / ``.avi``, H.264 at a low constant rate factor (visually lossless, 4:2:0, plays
  anywhere) in ``.mp4`` / ``.mov``; a path without a suffix becomes a folder of PNG frames.
- Writers stream frame by frame into a hidden partial file or folder beside the target and rename
  it into place on success, so a failure never leaves a half-written output under the real name.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Protocol

import numpy as np

from pipelines.common.errors import MissingInputError, OutputExistsError, VideoError
from pipelines.common.files import TEMP_MARKER, is_disk_full
from pipelines.data.containers import Truncation, check_container

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".flv", ".wmv"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

# Output codec per container: (codec, pixel format, encoder options).
LOSSLESS = ("ffv1", "bgr0", {})
"""FFV1 in RGB: bit-exact round trip."""
H264_CRF = 12
"""x264 constant rate factor of ``.mp4`` / ``.mov`` outputs: visually lossless (0 = lossless, 23 = x264 default)."""
OUTPUT_CODECS: dict[str, tuple[str, str, dict[str, str]]] = {
    ".mkv": LOSSLESS,
    ".avi": LOSSLESS,
    ".mp4": ("libx264", "yuv420p", {"crf": str(H264_CRF), "preset": "medium"}),
    ".mov": ("libx264", "yuv420p", {"crf": str(H264_CRF), "preset": "medium"}),
}
FRAME_NAME = "{:08d}.png"
"""Frame file names of PNG outputs, as in the sample dataset layout (``00000000.png``)."""


@dataclass(frozen=True)
class VideoInfo:
    """What a reader knows before decoding: frame count, frame size and frame rate."""

    num_frames: int
    height: int
    width: int
    fps: float


class FrameReader(Protocol):
    """Random access to the frames of one sequence."""

    path: Path
    info: VideoInfo
    truncation: Truncation | None  # set when a video file is shorter than its container declares

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start .. stop - 1`` as uint8 ``(stop - start, h, w, 3)`` RGB."""
        ...

    def close(self) -> None: ...


def is_frame_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding image files (one per frame)."""
    return path.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())


def is_video_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def natural_key(name: str) -> list[int | str]:
    """Sort ``frame2.png`` before ``frame10.png``: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, in natural name order."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: natural_key(p.name))


def open_video(path: str | Path):
    """A decord ``VideoReader`` with one decoding thread (Ray already runs one task per CPU).

    Create it in the process that decodes (a Ray task), never in the driver.
    """
    import decord

    return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)


class DecordReader:
    """Frames of a video file, decoded with decord.

    ``truncation`` says whether the file is shorter than its container declares
    (:func:`pipelines.data.containers.check_container`): decord then reports and decodes only the frames
    that are there, so the caller must decide whether a partial video is acceptable.
    """

    def __init__(self, path: Path):
        import decord  # imported here: reader processes (Ray workers) import it themselves

        self.path = path
        self.truncation = check_container(path)
        try:
            self._video = open_video(path)
            num_frames = len(self._video)
            height, width = self._video[0].shape[:2] if num_frames else (0, 0)
        except (RuntimeError, decord.DECORDError) as error:
            raise VideoError(
                f"cannot decode video {path}: {str(error).splitlines()[0]}. Check the file plays, or re-encode "
                f"it (ffmpeg -i {path.name} -c:v libx264 -crf 12 fixed.mp4) or extract its frames to a folder"
            ) from error
        if num_frames == 0:
            raise VideoError(f"video {path} has no frames; check the file is complete")
        self.info = VideoInfo(num_frames, height, width, float(self._video.get_avg_fps()))

    def read(self, start: int, stop: int) -> np.ndarray:
        try:
            frames = self._video.get_batch(list(range(start, stop))).asnumpy()
        except (RuntimeError, IndexError) as error:
            # A truncated or damaged file often reports more frames than it can decode.
            raise VideoError(
                f"video {self.path} claims {self.info.num_frames} frames but frames {start}..{stop - 1} cannot be "
                f"decoded ({str(error).splitlines()[0]}); the file is probably truncated or corrupt: re-encode "
                f"it or extract its frames to a folder"
            ) from error
        return frames

    def close(self) -> None:
        del self._video


class FolderReader:
    """Frames stored as one image file each in a folder, read in natural name order."""

    truncation = None  # a folder of frames has no container to compare with

    def __init__(self, path: Path):
        self.path = path
        self.files = image_files(path)
        if not self.files:
            raise VideoError(
                f"folder {path} holds no frames ({', '.join(sorted(IMAGE_SUFFIXES))}); pass a video file "
                f"or a folder of images"
            )
        first = self._load(self.files[0])
        self.info = VideoInfo(len(self.files), first.shape[0], first.shape[1], fps=0.0)

    @staticmethod
    def _load(file: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(file) as image:
                return np.asarray(image.convert("RGB"))
        except (OSError, UnidentifiedImageError) as error:
            raise VideoError(f"cannot read frame {file}: {error}") from error

    def read(self, start: int, stop: int) -> np.ndarray:
        frames = [self._load(file) for file in self.files[start:stop]]
        expected = (self.info.height, self.info.width, 3)
        for file, frame in zip(self.files[start:stop], frames):
            if frame.shape != expected:
                raise VideoError(
                    f"frame {file} is {frame.shape[1]}x{frame.shape[0]} but {self.files[0].name} is "
                    f"{expected[1]}x{expected[0]}; all frames of a sequence must have one size"
                )
        return np.stack(frames)

    def close(self) -> None:
        pass


def open_frames(path: str | os.PathLike, *, allow_truncated: bool = False) -> FrameReader:
    """Open a video file or a folder of frames for reading.

    A video file cut short (its container declares more bytes than it has) is refused unless
    ``allow_truncated``: decoders read such a file without an error and return only its first frames.

    Raises:
        MissingInputError: ``path`` does not exist.
        VideoError: it is neither a decodable video nor a folder of images, or it is truncated.
    """
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"input {path} does not exist; pass a video file or a folder of frames")
    if path.is_dir():
        return FolderReader(path)
    reader = DecordReader(path)
    if reader.truncation is not None and not allow_truncated:
        found = reader.info.num_frames
        missing = reader.truncation.estimate_missing(found)
        estimate = f", about {missing} more are missing" if missing is not None else ""
        reader.close()
        raise VideoError(
            f"video {path} is cut short ({reader.truncation.reason}): only {found} frames decode{estimate}. "
            "Restore or re-download the file, or pass --allow-truncated to super-resolve the frames that are there"
        )
    return reader


# -- writing ---------------------------------------------------------------------------------------


OUTPUT_MARKER = ".ray-vsr-output"
"""Written into every PNG-frame output folder; ``--overwrite`` replaces only folders that hold it."""
_FRAME_FILE = re.compile(r"^\d{8}\.png$")  # FRAME_NAME's files


def _is_own_output_file(path: Path) -> bool:
    return path.is_file() and (path.name == OUTPUT_MARKER or bool(_FRAME_FILE.match(path.name)))


def check_replaceable(path: Path, folder: bool, overwrite: bool) -> None:
    """Refuse an output that exists, unless ``overwrite`` and it is a file or a folder this project wrote."""
    if not path.exists():
        return
    if path.is_dir() and not (path / OUTPUT_MARKER).is_file():
        raise OutputExistsError(
            f"output folder {path} exists and was not written by ray-vsr (it has no {OUTPUT_MARKER}); "
            "choose a new output path (--overwrite replaces only outputs ray-vsr wrote)"
        )
    if path.is_dir() != folder:
        raise OutputExistsError(
            f"output {path} exists and is not a {'folder' if folder else 'file'}; choose another path"
        )
    if not overwrite:
        raise OutputExistsError(f"output {path} already exists; remove it or pass --overwrite to replace it")


def output_is_folder(path: Path) -> bool:
    """A path without a suffix (or an existing folder) receives PNG frames; otherwise a video."""
    return path.is_dir() or not path.suffix


def disk_full_error(path: Path) -> VideoError:
    """The one line for a full disk under an output video or folder (its partial output already deleted)."""
    return VideoError(
        f"no space left on the device while writing {path}: free space there or choose another output "
        "path (the partial output was deleted)"
    )


@contextlib.contextmanager
def disk_full_as_one_line(path: Path, abort: Callable[[], None]) -> Iterator[None]:
    """Inside, a full disk aborts the writer (its partial output deleted) and is :func:`disk_full_error`."""
    try:
        yield
    except OSError as error:  # PyAV's av.error.OSError names the hidden partial file, not the output
        if is_disk_full(error):
            abort()
            raise disk_full_error(path) from None
        raise


class FrameWriter:
    """Streams uint8 ``(t, h, w, 3)`` RGB chunks to a video file or a PNG folder.

    Writes into ``.<name>.tmp-<pid><suffix>`` beside ``path`` and renames it to ``path`` in
    :meth:`close`; :meth:`abort` (called when the ``with`` block raises) deletes the partial output.
    """

    def __init__(
        self, path: str | os.PathLike, fps: float, *, overwrite: bool = False, crf: int | None = None
    ):
        self.path = Path(path)
        self.folder = output_is_folder(self.path)
        check_replaceable(self.path, self.folder, overwrite)
        suffix = self.path.suffix.lower()
        if not self.folder and suffix not in OUTPUT_CODECS:
            raise VideoError(
                f"cannot write {self.path}: unsupported output suffix {suffix!r}; use one of "
                f"{', '.join(sorted(OUTPUT_CODECS))} or a path without a suffix for PNG frames"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The suffix stays last: the encoder picks the container from it.
        self.partial = self.path.with_name(f".{self.path.stem}{TEMP_MARKER}{os.getpid()}{self.path.suffix}")
        self._remove(self.partial)
        # Frame rate as a rational (29.97 -> 30000/1001); folders of frames carry none, so 25 fps.
        self.rate = Fraction(fps if fps > 0 else 25.0).limit_denominator(1001)
        self.crf = crf
        self.num_frames = 0
        self._container = None
        self._stream = None
        if self.folder:
            self.partial.mkdir()

    @staticmethod
    def _remove(path: Path) -> None:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    def _open_stream(self, height: int, width: int) -> None:
        import av

        codec, pix_fmt, options = OUTPUT_CODECS[self.path.suffix.lower()]
        if codec == "libx264" and (height % 2 or width % 2):
            raise VideoError(
                f"H.264 needs an even frame size, got {width}x{height}; write .mkv (FFV1) instead"
            )
        options = dict(options)
        if self.crf is not None and codec == "libx264":
            options["crf"] = str(self.crf)
        self._container = av.open(str(self.partial), mode="w")
        self._stream = self._container.add_stream(codec, rate=self.rate)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, pix_fmt
        self._stream.options = options

    def write(self, frames: np.ndarray) -> None:
        """Append uint8 ``(t, h, w, 3)`` RGB frames."""
        with disk_full_as_one_line(self.path, self.abort):
            self._write(frames)

    def _write(self, frames: np.ndarray) -> None:
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 (t, h, w, 3) frames, got {frames.dtype} {frames.shape}")
        if self.folder:
            from PIL import Image

            for frame in frames:
                Image.fromarray(frame).save(self.partial / FRAME_NAME.format(self.num_frames))
                self.num_frames += 1
            return
        import av

        if self._stream is None:
            self._open_stream(*frames.shape[1:3])
        for frame in frames:
            for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                self._container.mux(packet)
            self.num_frames += 1

    def close(self) -> None:
        """Flush the encoder and move the finished output to ``path``."""
        with disk_full_as_one_line(self.path, self.abort):
            self._close()

    def _close(self) -> None:
        if self._stream is not None:
            for packet in self._stream.encode():  # flush frames the encoder still buffers
                self._container.mux(packet)
            self._container.close()
        if self.num_frames == 0:
            self.abort()
            raise VideoError(f"no frames were written to {self.path}")
        if not self.folder:
            os.replace(self.partial, self.path)  # replaces an existing file atomically
            return
        (self.partial / OUTPUT_MARKER).write_text(
            "frames written by ray-vsr; --overwrite replaces only these\n"
        )
        if not self.path.exists():
            os.replace(self.partial, self.path)
            return
        # A folder this project wrote before: replace its frames, keep anything else someone put there.
        for old in self.path.iterdir():
            if _is_own_output_file(old):
                old.unlink()
        for new in self.partial.iterdir():
            os.replace(new, self.path / new.name)
        self.partial.rmdir()

    def abort(self) -> None:
        """Delete the partial output."""
        container, self._container, self._stream = self._container, None, None
        if container is not None:
            with contextlib.suppress(OSError):  # a full disk fails the close again; the partial goes anyway
                container.close()
        self._remove(self.partial)

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()
