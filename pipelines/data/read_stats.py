"""Count the bytes a reader takes from storage: a pyarrow filesystem that wraps another and counts.

``bench/bench_ingest.py`` measures bytes read per training sample with it, and the ingestion tests
check with it that a crop reads only the segments its window spans (``docs/data_format.md``). Reads
are counted where they leave the wrapped filesystem, so Parquet's footer, page headers and any
coalesced gaps count too: what shared storage would serve.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.fs as pafs


class _CountedFile:
    """The raw file object behind a ``pa.PythonFile``: forwards to a pyarrow file and counts what it reads."""

    def __init__(self, native: pa.NativeFile, counter: CountingHandler):
        self._native = native
        self._counter = counter
        self.closed = False

    def read(self, nbytes: int = -1) -> bytes:
        data = self._native.read() if nbytes is None or nbytes < 0 else self._native.read(nbytes)
        self._counter.bytes_read += len(data)
        self._counter.reads += 1
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._native.seek(offset, whence)

    def tell(self) -> int:
        return self._native.tell()

    def size(self) -> int:
        return self._native.size()

    def close(self) -> None:
        self._native.close()
        self.closed = True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False


class CountingHandler(pafs.FileSystemHandler):
    """Read-only handler over ``fs``; ``bytes_read`` and ``reads`` add up every read of an opened file."""

    def __init__(self, fs: pafs.FileSystem | None = None):
        self.fs = fs or pafs.LocalFileSystem()
        self.bytes_read = 0
        self.reads = 0

    def reset(self) -> None:
        self.bytes_read = self.reads = 0

    def __eq__(self, other) -> bool:
        return self is other

    def __ne__(self, other) -> bool:
        return self is not other

    def get_type_name(self) -> str:
        return "counting"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def open_input_file(self, path: str):
        return pa.PythonFile(_CountedFile(self.fs.open_input_file(path), self), mode="r")

    def open_input_stream(self, path: str):
        return self.open_input_file(path)

    def _read_only(self, *args):
        raise NotImplementedError("CountingHandler is read-only")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = _read_only
    delete_file = move = copy_file = open_output_stream = open_append_stream = _read_only


def counting_filesystem(fs: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, CountingHandler]:
    """A filesystem reading through ``fs`` (local by default) and the handler that holds the counts."""
    handler = CountingHandler(fs)
    return pafs.PyFileSystem(handler), handler
