"""Decode, super-resolve and encode at the same time; numeric precision; per-frame progress.

The model is the slow stage. :func:`run_overlapped` decodes the next window in one thread and encodes the
previous one in another while the model runs on the current window in the caller's thread, with bounded
queues between them, so decoding and encoding hide behind the model (PyAV and PyTorch both release the
GIL while they work) and memory holds at most a few windows. ``bench/bench_infer.py`` measures the
end-to-end rate against the model-only rate (``docs/video.md``).

Precision: ``auto`` is bfloat16 where the hardware computes it natively (CUDA compute capability 8.0+,
CPUs with AMX or AVX512-BF16) and float32 elsewhere; bf16 / fp16 run the network under
``torch.autocast`` (convolutions and matrix products in the low precision, reductions in float32).
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any, TextIO

import torch
from torch import nn

from pipelines.common.errors import ConfigError
from pipelines.common.progress import format_eta

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16(flags_file: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes bfloat16 in hardware (AMX tiles or AVX512-BF16 instructions)."""
    try:
        with open(flags_file) as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"amx_bf16", "avx512_bf16"} & set(flags))


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where ``device`` runs it natively, else ``fp32``; others are checked and kept."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


class Autocast(nn.Module):
    """Runs ``network`` under ``torch.autocast`` in ``dtype``; returns float32. Keeps its input constraints."""

    def __init__(self, network: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.network, self.dtype = network, dtype

    def input_constraints(self):
        from vsr_models.inference import input_constraints

        return input_constraints(self.network)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """(n, t, 3, h, w) -> (n, t, 3, 4h, 4w), float32."""
        with torch.autocast(lr.device.type, dtype=self.dtype):
            return self.network(lr).float()


def with_precision(network: nn.Module, precision: str) -> nn.Module:
    """``network`` as is for fp32, wrapped in :class:`Autocast` for bf16 / fp16."""
    return network if precision == "fp32" else Autocast(network, _DTYPES[precision]).eval()


# -- progress --------------------------------------------------------------------------------------


class FrameProgress:
    """``name: 120/900 frames (13%), 2.31 frames/s, ETA 05m37s`` after every frame.

    On a terminal the line is rewritten in place each frame; elsewhere (logs) one line every
    ``interval`` seconds. While the model works on a window, :meth:`heartbeat` keeps the line alive.
    """

    def __init__(self, name: str, total: int, stream: TextIO | None = None, interval: float = 10.0):
        self.name, self.total = name, total
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval
        self.start = self.last = time.perf_counter()
        self.done = 0

    def __call__(self, done: int, total: int | None = None) -> None:
        self.done = done
        now = time.perf_counter()
        if not self.tty and now - self.last < self.interval and done < self.total:
            return
        self.last = now
        self._print(now)

    def heartbeat(self) -> None:
        now = time.perf_counter()
        if now - self.last >= (1.0 if self.tty else self.interval):
            self.last = now
            self._print(now)

    def _print(self, now: float) -> None:
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        line = (
            f"{self.name}: {self.done}/{self.total} frames ({100 * self.done // max(self.total, 1)}%), "
            f"{rate:.2f} frames/s, ETA {format_eta(eta)}, {format_eta(elapsed)} elapsed"
        )
        end = "\n" if not self.tty or self.done >= self.total else ""
        print(("\r" if self.tty else "") + line, end=end, file=self.stream, flush=True)


# -- the overlapped pipeline -----------------------------------------------------------------------

_DONE = object()


class _Stage(threading.Thread):
    """A thread moving items through ``work`` between two bounded queues; its error is kept for the caller."""

    def __init__(self, name: str, work: Callable[[queue.Queue], None], stop: threading.Event):
        super().__init__(name=name, daemon=True)
        self.work, self.stop, self.error = work, stop, None
        self.inbox: queue.Queue = queue.Queue(maxsize=2)

    def run(self) -> None:
        try:
            self.work(self.inbox)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            self.error = error
            self.stop.set()


def _put(box: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put unless the pipeline stopped; False once it has."""
    while not stop.is_set():
        try:
            box.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(box: queue.Queue, stop: threading.Event) -> Any:
    """The next item, or ``_DONE`` once the pipeline stopped."""
    while True:
        try:
            return box.get(timeout=0.2)
        except queue.Empty:
            if stop.is_set():
                return _DONE


def run_overlapped(
    windows: Iterable[Any],
    decode: Callable[[Any], Any],
    model: Callable[[Any, Any], Any],
    encode: Callable[[Any, Any], None],
    idle: Callable[[], None] | None = None,
) -> None:
    """For each window: ``decoded = decode(w)`` (decode thread), ``out = model(w, decoded)`` (this thread),
    ``encode(w, out)`` (encode thread), in order, each stage on a different window at once.

    ``idle`` is called every second from a helper thread (progress lines while the model runs long).
    The first error in any stage stops the others and is raised here.
    """
    stop = threading.Event()
    decoded: queue.Queue = queue.Queue(maxsize=2)

    def decoding(_: queue.Queue) -> None:
        for window in windows:
            if not _put(decoded, (window, decode(window)), stop):
                return
        _put(decoded, _DONE, stop)

    def encoding(inbox: queue.Queue) -> None:
        while (item := _get(inbox, stop)) is not _DONE:
            encode(*item)

    decoder, encoder = _Stage("decode", decoding, stop), _Stage("encode", encoding, stop)
    decoder.start()
    encoder.start()
    heartbeat = _Heartbeat(idle) if idle is not None else nullcontext()
    try:
        with heartbeat:
            while (item := _get(decoded, stop)) is not _DONE:
                window, frames = item
                if not _put(encoder.inbox, (window, model(window, frames)), stop):
                    break
            _put(encoder.inbox, _DONE, stop)
            encoder.join()
    finally:
        stop.set()
        decoder.join()
        encoder.join()
    for stage in (decoder, encoder):
        if stage.error is not None:
            raise stage.error


class _Heartbeat:
    """Calls ``beat`` every second from a thread while the model holds the caller's thread."""

    def __init__(self, beat: Callable[[], None]):
        self.beat, self.stop = beat, threading.Event()
        self.thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            self.beat()

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
