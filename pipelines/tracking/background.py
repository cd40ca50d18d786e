"""Logging that a tracking outage cannot stall or fail: a bounded queue drained by one background thread.

Rank 0 of a training run logs every ``log_every`` iterations while the other ranks wait for it in the
next all-reduce. Logged synchronously, one call against a tracking server that is away blocks for
minutes (MLflow's HTTP client retries ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` = 7 times with backoff factor
2, each request allowed ``MLFLOW_HTTP_REQUEST_TIMEOUT`` = 120 s) and then raises, which fails the step
and restarts the worker group from its last checkpoint (``docs/cluster.md#tracking-server``).

:class:`BackgroundTracker` takes the calls of the training loop (metrics, params, tags, images, small
artifacts) into memory and returns at once; its thread sends metrics and tags in ``log_batch`` calls of
up to 1000 metrics, and each file or params call on its own. While the server is away the thread retries
with exponential backoff (1 s doubling to 30 s) and keeps everything queued, so nothing is lost across
an outage of minutes (or hours: see the bounds below). Nothing it does raises into the caller.

Bounds (memory stays bounded whatever the outage):

- ``max_metrics`` values (default 200,000, some 40 MB): hours of a training run's metrics even when it
  logs every iteration, days at ``log_every: 100``. When full, the OLDEST values are dropped and counted;
  once the server answers again the count is logged as the metric ``tracking/dropped_metrics`` and in
  a warning line.
- ``max_file_bytes`` of pending images and artifacts (default 256 MiB); the oldest are dropped likewise
  (``tracking/dropped_files``).

A request the server refuses (HTTP 4xx: a changed param, a deleted run) is not retried: it is dropped
with an error line. A refused batch is first sent again in halves, down to single entries, so one key
the server rejects costs only its own values, not the other metrics and tags of its batch. :meth:`BackgroundTracker.close` waits a bounded time (``flush_timeout``) for the
queue to drain and then logs ONE line saying what was not delivered.

Why not MLflow's own asynchronous logging (``synchronous=False``, ``MLFLOW_ENABLE_ASYNC_LOGGING``): in
MLflow 3 (``mlflow/utils/async_logging/async_logging_queue.py``) a batch whose ``log_batch`` fails is
logged as an error and dropped (``run_batch.exception = e``), never retried; its queue is unbounded; its
worker threads still make the 7-retry, 120 s requests; and waiting on the returned futures re-raises the
failure. It would turn a stall into silent loss, which is why this module exists.

Short requests: in a process that logs through this class, :func:`fail_fast_http_requests` sets MLflow's
HTTP client to one attempt with a 10 s timeout (MLflow reads those environment variables at each
request; there is no per-client setting), so the thread notices an outage and its recovery quickly and
does the retrying itself.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.common.errors import UserError
from pipelines.tracking.runs import _param_text, log_new_params, metric_entries

logger = logging.getLogger("ray_vsr.tracking")

# MLflow's limits per log_batch call.
_METRICS_PER_BATCH = 1000
_TAGS_PER_BATCH = 100

FAIL_FAST_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
"""MLflow HTTP settings while :func:`fail_fast_http_requests` is on: one attempt, 10 s at most."""
DROPPED_METRICS = "tracking/dropped_metrics"
DROPPED_FILES = "tracking/dropped_files"


@contextlib.contextmanager
def fail_fast_http_requests(short_timeout: bool = True) -> Iterator[None]:
    """MLflow HTTP requests of this process make one attempt (the caller retries), of at most 10 s
    unless ``short_timeout`` is False.

    Process-wide (MLflow reads ``os.environ`` at each request): use it where every MLflow call of the
    process retries on its own terms (a training worker logging through :class:`BackgroundTracker`,
    the driver's registration loop). ``short_timeout=False`` keeps MLflow's timeout (120 s by default)
    for requests that may be long on a healthy server: registration uploads ``model.pt``, which a
    server proxying artifacts to object storage may take well over 10 s to accept.
    """
    settings = FAIL_FAST_HTTP if short_timeout else {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def is_transient(error: BaseException) -> bool:
    """Whether retrying may help: the server is away, overloaded or failed (not a refused request).

    A refusal is an ``MlflowException`` whose error code maps to an HTTP status below 500 other than
    429 (a param logged again with another value, a run that no longer exists); a connection refused
    or a timeout is an ``MlflowException`` with the default ``INTERNAL_ERROR`` (500), and anything else
    (``requests`` errors of artifact uploads, OS errors) is taken as transient too.
    """
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        status = error.get_http_status_code()
        return status >= 500 or status == 429
    return True


def retry_until(call: Callable[[], Any], deadline: float, what: str, first_delay: float = 1.0) -> Any:
    """``call()`` retried with exponential backoff (``first_delay`` doubling to 30 s) while it fails
    transiently and ``time.monotonic()`` is before ``deadline``; the last error is raised after that."""
    delay = first_delay
    while True:
        try:
            return call()
        except Exception as error:
            if not is_transient(error) or time.monotonic() + delay > deadline:
                raise
            logger.warning("%s failed (%s); retrying in %.0f s", what, _short(error), delay)
            time.sleep(delay)
            delay = min(2 * delay, 30.0)


class TrackingUnavailableError(UserError, ConnectionError):
    """The tracking server stayed away past a bounded wait; the message says what to run once it is back."""


@dataclass
class _FileJob:
    """One image, artifact or params call: sent on its own, retried like the batches."""

    what: str
    nbytes: int
    send: Callable[[Any, str], None]  # (client, run_id)
    cleanup: Callable[[], None] = lambda: None


@dataclass
class Undelivered:
    """What :meth:`BackgroundTracker.close` could not send (and what it dropped on the way)."""

    metrics: int = 0
    first_step: int | None = None
    last_step: int | None = None
    tags: int = 0
    files: list[str] = field(default_factory=list)
    dropped_metrics: int = 0
    dropped_files: int = 0
    rejected: int = 0

    @property
    def nothing(self) -> bool:
        return not (self.metrics or self.tags or self.files or self.dropped_metrics or self.dropped_files)


class BackgroundTracker:
    """The logging calls of :class:`pipelines.tracking.runs.RunTracker`, queued and sent by a thread.

    Built with :meth:`wrap` around a (rank-0, active) tracker; for an inactive tracker every call does
    nothing and no thread starts. Call :meth:`close` (or use it as a context manager) at the end.

    Args:
        client: what the thread calls (``log_batch``, ``log_image``, ...); the tracker's MlflowClient
            unless given (tests give a real client behind a switch that fails its calls).
        max_metrics / max_file_bytes: the bounds of the queue (module docstring).
        first_retry_delay / max_retry_delay: the backoff while the server is away (1 s doubling to 30 s).
        flush_timeout: how long :meth:`close` waits for the queue to drain (5 minutes: at the end of a
            run the job waits for the server anyway, to register the model, and a restarted server
            takes a minute to answer on a busy head node).
    """

    def __init__(
        self,
        tracker: Any,
        *,
        client: Any = None,
        max_metrics: int = 200_000,
        max_file_bytes: int = 256 << 20,
        flush_timeout: float = 300.0,
        first_retry_delay: float = 1.0,
        max_retry_delay: float = 30.0,
    ) -> None:
        self.tracking_uri = tracker.tracking_uri
        self.run_id = tracker.run_id if tracker.active else None
        self._client = client if client is not None else (tracker._client if tracker.active else None)
        self.max_metrics, self.max_file_bytes = max_metrics, max_file_bytes
        self.flush_timeout, self.max_retry_delay = flush_timeout, max_retry_delay
        self.first_retry_delay = first_retry_delay
        self._cond = threading.Condition()
        self._metrics: collections.deque = collections.deque()
        self._tags: collections.deque = collections.deque()
        self._files: collections.deque[_FileJob] = collections.deque()
        self._file_bytes = 0
        self._dropped_metrics = self._dropped_files = 0
        self._reported_metrics = self._reported_files = 0
        self._rejected = 0
        self._last_step = 0
        self._closing = False
        self._gave_up = False  # close() stopped waiting: what is still queued was reported as lost
        self._down_since: float | None = None  # time.time() of the first failure of an outage
        self._last_error = ""
        self.delivered_metrics = 0
        self.failed_attempts = 0
        self._thread: threading.Thread | None = None
        self._scratch: str | None = None
        if self._client is not None:
            self._thread = threading.Thread(target=self._run, name="mlflow-background", daemon=True)
            self._thread.start()

    @classmethod
    def wrap(cls, tracker: Any, **kwargs: Any) -> BackgroundTracker:
        return cls(tracker, **kwargs)

    @property
    def active(self) -> bool:
        return self._client is not None

    def __enter__(self) -> BackgroundTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the calls of the training loop: each returns at once and never raises -------------------------

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.active:
            return
        batch = metric_entries(metrics, step)  # stamped now: a retried batch repeats identical rows
        with self._cond:
            self._metrics.extend(batch)
            self._last_step = max(self._last_step, int(step))
            overflow = len(self._metrics) - self.max_metrics
            for _ in range(max(overflow, 0)):
                self._metrics.popleft()
            self._dropped_metrics += max(overflow, 0)
            self._cond.notify()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import RunTag

        with self._cond:
            self._tags.extend(RunTag(k, str(v)) for k, v in tags.items())
            self._cond.notify()

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params not logged before (a resumed run keeps its first values), as one queued job."""
        if not self.active:
            return
        texts = {k: _param_text(v) for k, v in params.items()}  # a snapshot now
        self._add_file(
            _FileJob(
                f"params ({len(texts)})",
                sum(map(len, texts.values())),
                lambda client, run_id: log_new_params(client, run_id, texts),
            )
        )

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        if not self.active:
            return
        image = np.array(image, copy=True)  # the caller may reuse its buffer
        self._add_file(
            _FileJob(
                f"image {key} step {step}",
                image.nbytes,
                lambda client, run_id: client.log_image(run_id, image, key=key, step=step),
            )
        )

    def log_dict(self, data: dict, artifact_file: str) -> None:
        if not self.active:
            return
        text = json.dumps(data)  # a snapshot now; MLflow writes YAML or JSON by the file's suffix
        snapshot = json.loads(text)
        self._add_file(
            _FileJob(
                artifact_file,
                len(text),
                lambda client, run_id: client.log_dict(run_id, snapshot, artifact_file),
            )
        )

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.active:
            self._add_file(
                _FileJob(
                    artifact_file,
                    len(text),
                    lambda client, run_id: client.log_text(run_id, text, artifact_file),
                )
            )

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A copy of the file (the caller may delete it once this returns) is sent, then deleted."""
        if not self.active:
            return
        source = Path(path)
        try:
            if self._scratch is None:
                self._scratch = tempfile.mkdtemp(prefix="mlflow-queue-")
            folder = Path(tempfile.mkdtemp(dir=self._scratch))
            copy = folder / source.name
            shutil.copy2(source, copy)
        except OSError as error:
            logger.error("tracking: cannot queue artifact %s (%s); not logged", source, error)
            return
        self._add_file(
            _FileJob(
                str(artifact_path or "") + "/" + source.name,
                copy.stat().st_size,
                lambda client, run_id: client.log_artifact(run_id, str(copy), artifact_path),
                cleanup=lambda: shutil.rmtree(folder, ignore_errors=True),
            )
        )

    def _add_file(self, job: _FileJob) -> None:
        with self._cond:
            self._files.append(job)
            self._file_bytes += job.nbytes
            while self._file_bytes > self.max_file_bytes and len(self._files) > 1:
                dropped = self._files.popleft()
                self._file_bytes -= dropped.nbytes
                self._dropped_files += 1
                dropped.cleanup()
            self._cond.notify()

    # -- the end ---------------------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> Undelivered:
        """Send what is queued, waiting at most ``timeout`` (default ``flush_timeout``) seconds; then stop.

        Returns what was not delivered; when that is anything, one warning line says what, to where, and
        since when the server has been unreachable.
        """
        left = Undelivered()
        if self._thread is None:
            return left
        timeout = self.flush_timeout if timeout is None else timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        with self._cond:
            self._gave_up = True
            steps = [m.step for m in self._metrics]
            left = Undelivered(
                metrics=len(self._metrics),
                first_step=min(steps, default=None),
                last_step=max(steps, default=None),
                tags=len(self._tags),
                files=[job.what for job in self._files],
                dropped_metrics=self._dropped_metrics - self._reported_metrics,
                dropped_files=self._dropped_files - self._reported_files,
                rejected=self._rejected,
            )
            # Whatever happens to the thread now, these are reported as lost: it sends nothing more.
            self._metrics.clear()
            self._tags.clear()
            self._files.clear()
        self._thread = None
        if not left.nothing:
            since = (
                f"; unreachable since {time.strftime('%H:%M:%S', time.localtime(self._down_since))} "
                f"({self._last_error})"
                if self._down_since is not None
                else ""
            )
            steps_text = f" (steps {left.first_step}-{left.last_step})" if left.metrics else ""
            logger.warning(
                "tracking: NOT delivered to %s run %s after waiting %.0f s: %d metric values%s, %d tags, "
                "%d files/params %s; dropped earlier for the queue bound: %d metric values, %d files%s",
                self.tracking_uri, self.run_id, timeout, left.metrics, steps_text, left.tags, len(left.files),
                left.files[:5], left.dropped_metrics, left.dropped_files, since,
            )  # fmt: skip
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
        return left

    # -- the thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        delay = self.first_retry_delay
        files_turn = False  # alternate batches and files: a steady flow of metrics must not starve images
        while True:
            with self._cond:
                while not (self._metrics or self._tags or self._files or self._closing):
                    self._cond.wait()
                if self._gave_up or not (self._metrics or self._tags or self._files):
                    return  # closing, and everything was sent
                metrics: list = []
                tags: list = []
                job = None
                if self._files and (files_turn or not (self._metrics or self._tags)):
                    job = self._files.popleft()
                else:
                    count = min(len(self._metrics), _METRICS_PER_BATCH)
                    metrics = [self._metrics.popleft() for _ in range(count)]
                    tags = [self._tags.popleft() for _ in range(min(len(self._tags), _TAGS_PER_BATCH))]
            try:
                if job is None:
                    sent_metrics, sent_tags = self._send_batch(metrics, tags)
                else:
                    job.send(self._client, self.run_id)
                    sent_metrics, sent_tags = [], []
            except Exception as error:
                if not is_transient(error):
                    self._refused(error, metrics, tags, job)
                    continue
                # Pieces of a split batch already sent are sent again: identical rows and tags.
                self._requeue(metrics, tags, job)
                self._failed(error, delay)
                self._back_off(delay)
                delay = min(2 * delay, self.max_retry_delay)
                continue
            delay = self.first_retry_delay
            files_turn = job is None
            if job is not None or sent_metrics or sent_tags:  # else all refused: nothing to report
                self._delivered(sent_metrics, job)

    def _send_batch(self, metrics: list, tags: list) -> tuple[list, list]:
        """``log_batch``; a refused batch is sent again in halves, down to single entries, so that one
        refused entry (a key MLflow rejects) drops only itself. Returns the metrics and tags delivered;
        a transient error is raised (the caller requeues the whole batch)."""
        try:
            self._client.log_batch(self.run_id, metrics=metrics, tags=tags)
            return metrics, tags
        except Exception as error:
            if is_transient(error):
                raise
            # A run that is gone refuses every entry: no point in splitting.
            if len(metrics) + len(tags) <= 1 or getattr(error, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                self._refused(error, metrics, tags, None)
                return [], []
        half = (len(metrics) + len(tags)) // 2
        cut = max(half - len(metrics), 0)  # where the first half ends within the tags
        sent_metrics, sent_tags = [], []
        for part in ((metrics[:half], tags[:cut]), (metrics[half:], tags[cut:])):
            if part[0] or part[1]:
                part_metrics, part_tags = self._send_batch(*part)
                sent_metrics += part_metrics
                sent_tags += part_tags
        return sent_metrics, sent_tags

    def _back_off(self, delay: float) -> None:
        """Wait ``delay`` seconds (at most 2 s once closing: the close waits a bounded time), whatever is
        logged meanwhile."""
        started = time.monotonic()
        with self._cond:
            while not self._gave_up:
                remaining = started + (min(delay, 2.0) if self._closing else delay) - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)

    def _requeue(self, metrics: list, tags: list, job: _FileJob | None) -> None:
        with self._cond:
            if self._gave_up:  # close() stopped waiting and reported these as lost
                return
            self._metrics.extendleft(reversed(metrics))
            self._tags.extendleft(reversed(tags))
            overflow = len(self._metrics) - self.max_metrics
            for _ in range(max(overflow, 0)):
                self._metrics.popleft()
            self._dropped_metrics += max(overflow, 0)
            if job is not None:
                self._files.appendleft(job)

    def _failed(self, error: Exception, delay: float) -> None:
        self.failed_attempts += 1
        self._last_error = _short(error)
        if self._down_since is None:
            self._down_since = time.time()
            logger.warning(
                "tracking server %s unreachable (%s): training goes on, logging is held in memory "
                "(%d metric values now) and retried with backoff",
                self.tracking_uri, self._last_error, len(self._metrics),
            )  # fmt: skip

    def _refused(self, error: Exception, metrics: list, tags: list, job: _FileJob | None) -> None:
        if job is not None:
            what = job.what
        elif len(metrics) + len(tags) == 1:
            what = f"metric {metrics[0].key} step {metrics[0].step}" if metrics else f"tag {tags[0].key}"
        else:
            what = f"{len(metrics)} metric values and {len(tags)} tags"
        logger.error("tracking: %s refused by %s (%s); dropped", what, self.tracking_uri, _short(error))
        with self._cond:
            self._rejected += 1
        if job is not None:
            job.cleanup()

    def _delivered(self, metrics: list, job: _FileJob | None) -> None:
        self.delivered_metrics += len(metrics)
        if job is not None:
            job.cleanup()
        if self._down_since is not None:
            with self._cond:
                held = len(self._metrics) + len(metrics)
            logger.warning(
                "tracking server %s answers again after %.0f s; sending the %d held metric values",
                self.tracking_uri, time.time() - self._down_since, held,
            )  # fmt: skip
            self._down_since = None
        with self._cond:
            counts = {}
            if self._dropped_metrics > self._reported_metrics:
                counts[DROPPED_METRICS] = self._reported_metrics = self._dropped_metrics
            if self._dropped_files > self._reported_files:
                counts[DROPPED_FILES] = self._reported_files = self._dropped_files
            step = self._last_step
        if counts:
            logger.warning("tracking: the queue bound dropped the oldest entries while away: %s", counts)
            self.log_metrics(counts, step=step)


@contextlib.contextmanager
def system_metrics(
    tracker: BackgroundTracker, node_id: str, step: Callable[[], int], interval: float = 10.0
) -> Iterator[None]:
    """This machine's CPU, memory, disk, network (and GPU with nvidia-ml-py) as ``system/<node_id>/...``
    every ``interval`` seconds meanwhile, through ``tracker``'s queue, at the training iteration
    ``step()``. Nothing for an inactive tracker.

    MLflow's samplers (``mlflow.system_metrics``) with our own delivery: MLflow's ``SystemMetricsMonitor``
    sends with the blocking client, stops for good at the first failed request, and its ``finish`` joins
    a thread that may be minutes into retries.
    """
    if not tracker.active:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    # resume_logging=False: no request here; the steps are training iterations, which a resume continues.
    sampler = SystemMetricsMonitor(tracker.run_id, resume_logging=False, tracking_uri=tracker.tracking_uri)
    stop = threading.Event()
    prefix = f"system/{node_id}/"

    def sample() -> None:
        while True:
            sampler.collect_metrics()
            stopping = stop.wait(interval)  # at the end: the last (partial) interval is logged too
            try:
                values = sampler.aggregate_metrics()
                for monitor in sampler.monitors:
                    monitor.clear_metrics()
            except Exception as error:  # a sampler failing must not end training
                logger.warning("system metrics: sampling failed (%s); stopped", error)
                return
            tracker.log_metrics({prefix + k: v for k, v in values.items()}, step=step())
            if stopping:
                return

    thread = threading.Thread(target=sample, name="system-metrics", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5.0)


def _short(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    return text if len(text) <= 160 else text[:157] + "..."
