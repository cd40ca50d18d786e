"""The background logging queue against a real MLflow SQLite store whose calls a switch makes fail.

The outage is simulated by :class:`Outage`, a proxy in front of a real ``MlflowClient`` that raises what
MLflow's HTTP client raises for a server that is away (a stand-in: a killed ``mlflow server`` is in
tests/pipelines/training/test_tracking_outage.py, a real training run against a real server).
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from pipelines.tracking import RunTracker, mlflow_client
from pipelines.tracking.background import (
    DROPPED_METRICS,
    BackgroundTracker,
    fail_fast_http_requests,
    is_transient,
)


class Outage:
    """A real client whose calls raise while ``down`` is set, as MLflow's does for a dead server."""

    def __init__(self, client):
        self._client = client
        self.down = threading.Event()
        self.failures = 0
        self.calls_while_down = threading.Semaphore(0)

    def __getattr__(self, name):
        method = getattr(self._client, name)

        def call(*args, **kwargs):
            if self.down.is_set():
                self.failures += 1
                self.calls_while_down.release()
                raise MlflowException(
                    "API request to http://127.0.0.1:1/api failed with exception Connection refused"
                )
            return method(*args, **kwargs)

        return call


def wait_for_retries(outage: Outage, count: int) -> None:
    for _ in range(count):
        assert outage.calls_while_down.acquire(timeout=30), "the queue did not retry"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    # One store for the module: creating a SQLite store (its migrations) takes seconds.
    return f"sqlite:///{tmp_path_factory.mktemp('queue') / 'mlflow.db'}"


@pytest.fixture
def run(store, request):
    tracker = RunTracker.start(store, "queue", request.node.name)
    return tracker, Outage(mlflow_client(store))


def test_an_outage_raises_nothing_and_everything_logged_meanwhile_arrives_after_it(run):
    tracker, outage = run
    outage.down.set()
    queue = BackgroundTracker(tracker, client=outage, max_retry_delay=0.05)
    for step in range(1, 51):
        queue.log_metrics({"loss": 1.0 / step, "lr": 1e-3}, step=step)  # returns at once, raises nothing
    queue.set_tags({"phase": "outage"})
    queue.log_params({"optim.lr": 1e-3})
    queue.log_image(np.zeros((8, 8, 3), np.uint8), key="val/clip", step=50)
    queue.log_dict({"a": 1}, "extra/info.json")
    wait_for_retries(outage, 3)  # still failing, still retrying, nothing lost so far
    outage.down.clear()
    left = queue.close(timeout=30)

    assert left.nothing and left.rejected == 0
    assert outage.failures >= 3
    assert [step for step, _ in tracker.metric_history("loss")] == list(range(1, 51))
    assert tracker.metric_history("loss")[9] == (10, pytest.approx(0.1))
    run_data = mlflow_client(tracker.tracking_uri).get_run(tracker.run_id).data
    assert run_data.tags["phase"] == "outage"
    assert run_data.params["optim.lr"] == "0.001"
    client = mlflow_client(tracker.tracking_uri)
    assert {a.path for a in client.list_artifacts(tracker.run_id)} >= {"images", "extra"}


def test_the_bound_drops_the_oldest_values_and_logs_their_count_once_the_server_answers(run):
    tracker, outage = run
    outage.down.set()
    queue = BackgroundTracker(tracker, client=outage, max_metrics=10, max_retry_delay=0.05)
    for step in range(1, 26):
        queue.log_metrics({"loss": float(step)}, step=step)
    wait_for_retries(outage, 1)
    outage.down.clear()
    left = queue.close(timeout=30)

    assert left.nothing
    assert [step for step, _ in tracker.metric_history("loss")] == list(range(16, 26))
    assert tracker.metric_history(DROPPED_METRICS) == [(25, 15.0)]


def test_close_waits_a_bounded_time_and_says_what_was_not_delivered(run, caplog):
    tracker, outage = run
    outage.down.set()
    queue = BackgroundTracker(tracker, client=outage, max_retry_delay=0.05)
    for step in range(1, 6):
        queue.log_metrics({"loss": 0.5}, step=step)
    queue.log_image(np.zeros((4, 4, 3), np.uint8), key="val/a", step=5)
    wait_for_retries(outage, 1)
    with caplog.at_level(logging.WARNING, logger="ray_vsr.tracking"):
        left = queue.close(timeout=0.5)

    assert (left.metrics, left.first_step, left.last_step, left.files) == (5, 1, 5, ["image val/a step 5"])
    (line,) = [r.getMessage() for r in caplog.records if "NOT delivered" in r.getMessage()]
    assert tracker.run_id in line and "5 metric values (steps 1-5)" in line and "unreachable since" in line
    outage.down.clear()
    time.sleep(0.2)  # a thread still running would deliver now: it must not
    assert tracker.metric_history("loss") == []


def test_values_logged_during_an_outage_do_not_cut_the_backoff_short(run):
    tracker, outage = run
    outage.down.set()
    queue = BackgroundTracker(tracker, client=outage, first_retry_delay=600.0)
    queue.log_metrics({"loss": 1.0}, step=1)
    wait_for_retries(outage, 1)  # the first attempt failed: the thread now waits 600 s
    for step in range(2, 101):  # a training loop logging meanwhile: each call notifies the thread
        queue.log_metrics({"loss": 1.0}, step=step)
    # No second attempt: a retry woken by a logged value would come within milliseconds.
    assert not outage.calls_while_down.acquire(timeout=0.5)
    assert outage.failures == 1
    outage.down.clear()
    left = queue.close(timeout=30)  # closing shortens the wait to 2 s
    assert left.nothing and len(tracker.metric_history("loss")) == 100


def test_a_refused_request_is_dropped_not_retried_forever(run, caplog):
    tracker, _ = run
    queue = BackgroundTracker(tracker)
    with caplog.at_level(logging.ERROR, logger="ray_vsr.tracking"):
        queue.log_metrics({"bad?key": 1.0}, step=1)  # the store refuses this name (INVALID_PARAMETER_VALUE)
        left = queue.close(timeout=30)  # retried forever, it would still be queued after the wait
    assert left.nothing and left.rejected == 1
    assert any("refused" in r.getMessage() for r in caplog.records)


def test_a_refused_key_drops_only_its_own_values_not_the_rest_of_its_batch(run, caplog):
    tracker, _ = run
    queue = BackgroundTracker(tracker, client=mlflow_client(tracker.tracking_uri))
    with caplog.at_level(logging.ERROR, logger="ray_vsr.tracking"):
        for step in range(1, 41):
            # "bad?key" is a name the store refuses; it shares its log_batch with 80 other values.
            queue.log_metrics({"loss": 1.0 / step, "bad?key": 1.0, "lr": 1e-3}, step=step)
        queue.set_tags({"phase": "train"})
        left = queue.close(timeout=30)

    assert left.nothing and left.rejected == 40
    assert [step for step, _ in tracker.metric_history("loss")] == list(range(1, 41))
    assert len(tracker.metric_history("lr")) == 40
    assert mlflow_client(tracker.tracking_uri).get_run(tracker.run_id).data.tags["phase"] == "train"
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 40 and all("metric bad?key step" in line for line in refused)


def test_registration_makes_one_attempt_with_mlflows_usual_timeout():
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

    default = MLFLOW_HTTP_REQUEST_TIMEOUT.get()
    with fail_fast_http_requests():  # the training loop: an outage is noticed within 10 s
        assert (MLFLOW_HTTP_REQUEST_MAX_RETRIES.get(), MLFLOW_HTTP_REQUEST_TIMEOUT.get()) == (0, 10)
    with fail_fast_http_requests(short_timeout=False):  # registration: model.pt may upload for minutes
        assert (MLFLOW_HTTP_REQUEST_MAX_RETRIES.get(), MLFLOW_HTTP_REQUEST_TIMEOUT.get()) == (0, default)
    assert default == 120 and MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 7


def test_only_server_side_failures_and_lost_connections_are_retried():
    assert is_transient(MlflowException("API request to http://h/api failed with exception refused"))
    assert is_transient(ConnectionError("reset"))
    assert not is_transient(MlflowException.invalid_parameter_value("changed param"))


def test_an_inactive_tracker_starts_no_thread_and_ignores_every_call(store):
    queue = BackgroundTracker(RunTracker.attach(store, "x", active=False))
    queue.log_metrics({"loss": 1.0}, step=1)
    queue.log_image(np.zeros((2, 2, 3), np.uint8), key="k", step=1)
    assert not queue.active and queue.close().nothing
