"""Progress lines for long work: items done, rate and time left, at most every few seconds."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_eta(seconds: float) -> str:
    """``01h02m03s``, or ``2d 03h04m`` past a day; ``?`` when unknown."""
    if seconds != seconds or seconds == float("inf"):  # NaN or infinite
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h{minutes:02d}m" if days else f"{hours:02d}h{minutes:02d}m{seconds:02d}s"


class ThroughputReporter:
    """Prints ``<name>: done/total <unit>, rate/s, ETA`` at most every ``interval`` seconds (and at the end).

    Call it as ``report(done, total)``; it is the ``progress`` callback of the long-running functions.
    """

    def __init__(
        self, name: str, unit: str = "frames", interval: float = 5.0, stream: TextIO | None = None
    ) -> None:
        self.name, self.unit, self.interval = name, unit, interval
        self.stream = stream
        self.start = self.last = time.perf_counter()

    def rate(self, done: int) -> float:
        return done / max(time.perf_counter() - self.start, 1e-9)

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.interval and done < total:
            return
        self.last = now
        rate = self.rate(done)
        eta = (total - done) / rate if rate > 0 else float("inf")
        print(
            f"{self.name}: {done}/{total} {self.unit}, {rate:.2f} {self.unit}/s, ETA {format_eta(eta)}",
            file=self.stream or sys.stderr,
            flush=True,
        )
