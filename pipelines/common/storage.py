"""Where prepared datasets live: a local or NFS path, or any pyarrow / fsspec filesystem URI.

Every reader and writer of prepared data goes through :class:`Location`, so the same code writes a
shard to ``/data/reds``, ``file:///data/reds``, ``s3://bucket/reds`` or ``gs://bucket/reds``:

- plain paths and ``file://`` URIs are the local filesystem (NFS is a local path on every node);
- ``s3://``, ``gs://``, ``hdfs://`` and the other schemes pyarrow knows use pyarrow's filesystems;
- any other scheme goes through fsspec when it is installed (``memory://`` in tests, ``az://``, ...).

Object stores have no atomic rename. Writers therefore write under a hidden temporary name
(:data:`~pipelines.common.files.TEMP_MARKER`), move it to the real name, and only then write the small
record that says the file is complete (``docs/data_format.md``): a reader trusts records, never names.
Locations are passed to Ray tasks as their URI strings (:attr:`Location.uri`) and resolved there.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow.fs as pafs

from pipelines.common.errors import DataError
from pipelines.common.files import TEMP_MARKER

# Schemes pyarrow's FileSystem.from_uri serves itself; others go through fsspec.
_PYARROW_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


def _scheme(uri: str) -> str:
    head, sep, _ = uri.partition("://")
    return head.lower() if sep and head.isidentifier() else ""


@dataclass(frozen=True)
class Location:
    """A file or folder on some filesystem: ``fs`` and ``path`` for pyarrow, ``uri`` for people and tasks."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def local_path(self) -> Path:
        """The local path (only for local locations)."""
        if not self.is_local:
            raise DataError(f"{self.uri}: needs a local or mounted path here, not an object-store URI")
        return Path(self.path)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def join(self, *parts: str) -> Location:
        path = posixpath.join(self.path, *parts)
        uri = self.uri.rstrip("/") + "/" + "/".join(parts) if parts else self.uri
        return Location(self.fs, path, uri)

    @property
    def parent(self) -> Location:
        path = posixpath.dirname(self.path.rstrip("/"))
        return Location(self.fs, path, self.uri.rstrip("/").rsplit("/", 1)[0])

    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def size(self) -> int | None:
        info = self.info()
        return info.size if info.type == pafs.FileType.File else None

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_json(self) -> Any:
        return json.loads(self.read_bytes())

    def open_input(self) -> pafs.NativeFile:
        """A seekable file (what ``pyarrow.parquet.ParquetFile`` needs)."""
        return self.fs.open_input_file(self.path)

    def mkdirs(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def delete(self) -> None:
        """Delete the file if it exists."""
        if self.is_file():
            self.fs.delete_file(self.path)

    def list_files(self) -> list[pafs.FileInfo]:
        """Every file below this folder (recursive); nothing when the folder does not exist."""
        if not self.is_dir():
            return []
        selector = pafs.FileSelector(self.path, recursive=True, allow_not_found=True)
        return [i for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File]

    def temp_sibling(self) -> Location:
        """The hidden temporary name this file is written under before it is moved into place."""
        return self.parent.join(f".{self.name}{TEMP_MARKER}{os.getpid()}")

    def write_bytes_atomic(self, data: bytes) -> None:
        """Write under the temporary name, then move into place (atomic on local and NFS)."""
        self.parent.mkdirs()
        temp = self.temp_sibling()
        try:
            with self.fs.open_output_stream(temp.path) as f:
                f.write(data)
            sync_local(temp)
            self.fs.move(temp.path, self.path)
        except BaseException:
            temp.delete()
            raise

    def write_json_atomic(self, data: Any) -> None:
        self.write_bytes_atomic(json.dumps(data, indent=1).encode())


def sync_local(location: Location) -> None:
    """fsync a local file, so a move after it cannot expose a file whose bytes are not on disk."""
    if location.is_local:
        with open(location.path, "rb") as f:
            os.fsync(f.fileno())


def is_uri(where: str | os.PathLike) -> bool:
    """``where`` names a filesystem by its scheme (``s3://``, ``file://``, ``memory://``): not a plain path."""
    return bool(_scheme(os.fspath(where)))


def absolute(where: str | os.PathLike) -> str:
    """``where`` as any process on any node can use it: a URI as given, a plain path made absolute (``~``
    expanded). The one place that tells a local path from a URI in a config (no filesystem is opened)."""
    text = os.fspath(where)
    return text if is_uri(text) else str(Path(text).expanduser().resolve())


def resolve(where: str | os.PathLike | Location) -> Location:
    """The :class:`Location` of a path or URI; a :class:`DataError` for a scheme nothing here can serve."""
    if isinstance(where, Location):
        return where
    text = os.fspath(where)
    scheme = _scheme(text)
    if not scheme or scheme == "file":
        local = text.removeprefix("file://") if scheme else text
        path = str(Path(local).expanduser().resolve())
        uri = f"file://{path}" if scheme else path
        return Location(pafs.LocalFileSystem(), path, uri)
    if scheme in _PYARROW_SCHEMES:
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except Exception as error:  # pyarrow raises ArrowInvalid / OSError for bad URIs and credentials
            # One line: HDFS without a JVM lists every libjvm path it tried, one per line.
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DataError(
                f"{text}: cannot open this storage URI ({reason}); check the URI and credentials"
            ) from None
        return Location(fs, path.rstrip("/"), text.rstrip("/"))
    check_storage_uri(text)
    import fsspec

    try:
        fs_spec, path = fsspec.core.url_to_fs(text)
    except (ImportError, ValueError) as error:
        raise DataError(
            f"{text}: no filesystem for {scheme}:// ({error}); install its fsspec backend"
        ) from None
    return Location(pafs.PyFileSystem(pafs.FSSpecHandler(fs_spec)), path.rstrip("/"), text.rstrip("/"))


def check_storage_uri(where: str | os.PathLike) -> None:
    """Refuse a URI whose filesystem package is not installed, in one line naming the package, without
    contacting the store: jobs call it before Ray starts (:func:`resolve` would first fail in a task).

    Local paths and pyarrow's own schemes (``s3://``, ``gs://``, ... built into pyarrow) pass; other
    schemes need fsspec and the backend fsspec's registry names for them (``az://``: adlfs).
    """
    text = os.fspath(where)
    scheme = _scheme(text)
    if not scheme or scheme == "file" or scheme in _PYARROW_SCHEMES:
        return
    try:
        import fsspec
    except ImportError:
        raise DataError(
            f"{text}: the scheme {scheme}:// needs fsspec and its {scheme} backend (pip install fsspec); "
            "or use a local / mounted path"
        ) from None
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as error:
        from fsspec.registry import known_implementations

        package = known_implementations.get(scheme, {}).get("class", "").split(".")[0]
        install = f"pip install {package}" if package and package != "fsspec" else "install it"
        raise DataError(
            f"{text}: {scheme}:// needs a filesystem package that is not installed ({error}): {install}, "
            "or use a local / mounted path"
        ) from None
    except ValueError as error:  # "Protocol not known"
        raise DataError(
            f"{text}: no filesystem for {scheme}:// ({error}); install its fsspec backend"
        ) from None


class HashingWriter:
    """A binary output stream that computes the sha256 and size of what passes through it.

    Lets a shard be hashed while it is written instead of read back afterwards.
    """

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._digest = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data) -> int:
        view = memoryview(data)
        self._digest.update(view)
        self.size += view.nbytes
        self._stream.write(view)
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._stream.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        # pyarrow's ParquetWriter closes its sink; the stream is closed by its owner.
        self.closed = True

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


def sha256_location(location: Location, chunk: int = 8 * 2**20) -> str:
    """Hex sha256 of a file's bytes on any filesystem, read in chunks."""
    digest = hashlib.sha256()
    with location.fs.open_input_stream(location.path) as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def iter_chunks(items: list, size: int) -> Iterator[list]:
    """``items`` in consecutive lists of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
