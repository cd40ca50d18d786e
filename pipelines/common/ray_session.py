"""The one way every job starts or joins Ray, and the one place that keeps a local Ray on loopback.

With no address, a job joins the cluster ``RAY_ADDRESS`` names (set by ``ray job submit``) or else starts
a new local Ray on this machine that listens on 127.0.0.1 only. Jobs call :func:`init_ray` once, before
any Ray Data, Train or Tune call.

``python -m pipelines.common.ray_session ARGS...`` is Ray's own CLI, ``ray ARGS...``, with the same
loopback fix, so that ``start --node-ip-address 127.0.0.1 [--address 127.0.0.1:PORT]``
(infra/local_cluster.sh) really stays on loopback and ``status --address 127.0.0.1:PORT`` reaches it.

Why a fix is needed (Ray 2.60): ``ray.init(_node_ip_address="127.0.0.1")`` and ``ray start
--node-ip-address 127.0.0.1 [--address 127.0.0.1:PORT]`` pass the address through
``ray._private.services.resolve_ip_for_localhost``, which replaces any loopback address with the
machine's remotely reachable IP (on Linux, where ``ray_constants.ENABLE_RAY_CLUSTER`` is always true).
The GCS, raylets, core workers and the dashboard agent then listen on all interfaces (``::`` /
``0.0.0.0``) and the metrics exporter serves Prometheus data on ``0.0.0.0`` without a token. When the
node IP really is 127.0.0.1, every one of them binds 127.0.0.1 (``::ffff:127.0.0.1``) instead, and the
metrics exporter and the dashboard's metrics server follow the node IP onto loopback too.
:func:`_loopback_node_address` keeps loopback addresses as given while Ray starts or joins, in this
process and in the Ray processes it starts; tests/pipelines/common/test_ray_session.py and
tests/infra/test_loopback.py list the listening sockets of real clusters and fail if a Ray upgrade makes
this ineffective. A plain ``ray.init()`` or ``ray`` command from outside such a cluster cannot join it
(it dials the machine's IP, where nothing listens): use :func:`init_ray` or this module's CLI.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from pipelines.common.console import route_worker_output, verbose

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback IP (127.0.0.0/8, ``::1``, ``::ffff:127.x.y.z``)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


# Read by ray._private.ray_constants when ``ray`` is imported: "0" makes Ray keep loopback addresses.
_KEEP_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _loopback_node_address() -> Iterator[None]:
    """While active, Ray keeps a loopback node or GCS address as given instead of replacing it.

    Works around ``ray._private.services.resolve_ip_for_localhost`` (Ray 2.60), which turns
    ``127.0.0.1`` / ``::1`` / ``localhost`` into the machine's remotely reachable IP whenever
    ``ray_constants.ENABLE_RAY_CLUSTER`` is true (always on Linux), so that Ray processes bind every
    interface, and which a process joining a loopback cluster uses to dial the machine's IP, where
    nothing listens. Two parts:

    - This process: the function is replaced by one that returns loopback hosts as given. ``ray.init``
      (``ray/_private/worker.py``, for ``_node_ip_address``), ``ray start`` (``ray/scripts/scripts.py``,
      for ``--node-ip-address``) and ``services.canonicalize_bootstrap_address`` (for a GCS address such
      as ``127.0.0.1:6379``) look it up as a module attribute when called, so that is enough; other
      hosts still go through Ray's own function. Not ``ENABLE_RAY_CLUSTER=False`` here: ``ray start
      --address`` (a joining node) aborts then.
    - The Ray processes started meanwhile (GCS, raylet, dashboard and its agents, and through the
      raylet every worker and job driver) inherit ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, so Ray's own
      ``ray.init`` calls there (the dashboard agent's when a job is submitted, a job driver's) keep
      127.0.0.1 too. The variable only works at import time, hence not for this process; besides
      ``resolve_ip_for_localhost`` Ray 2.60 reads it only in ``ray start`` (to refuse joining nodes) and
      in ``get_node_ip_address`` (127.0.0.1 for a process not yet connected: the truth on a loopback
      node).

    Raises AttributeError if Ray no longer has the function (revisit this workaround then).
    """
    from ray._private import services

    resolve = services.resolve_ip_for_localhost

    def keep_loopback(host: str) -> str:
        if host and is_loopback(host):
            return LOOPBACK if host == "localhost" else host
        return resolve(host)

    previous_env = os.environ.get(_KEEP_LOOPBACK_ENV)
    services.resolve_ip_for_localhost = keep_loopback
    os.environ[_KEEP_LOOPBACK_ENV] = "0"
    try:
        yield
    finally:
        services.resolve_ip_for_localhost = resolve
        if previous_env is None:
            os.environ.pop(_KEEP_LOOPBACK_ENV, None)
        else:
            os.environ[_KEEP_LOOPBACK_ENV] = previous_env


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Start or join Ray unless this process is already connected.

    Joining: ``address`` or else ``$RAY_ADDRESS`` (``auto``, ``ray://head:10001``, ``head:6379``,
    ``127.0.0.1:PORT`` of a loopback cluster such as infra/local_cluster.sh's).

    Starting: with neither, a new local Ray (``address="local"``: never a ``ray start`` cluster that
    happens to run on this machine) whose every server (GCS, raylet, workers, dashboard and its agent,
    metrics exporter) listens on 127.0.0.1 only. Raises RuntimeError, with the new Ray shut down again, if Ray did
    not keep the node on loopback.

    Args:
        address: the cluster to join; None: ``$RAY_ADDRESS`` or a new local Ray.
        num_cpus: logical CPUs of a new local Ray (ignored when joining a cluster).
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        with _loopback_node_address():
            context = ray.init(address=address)
        print(dashboard_line(context.dashboard_url, route_worker_output()), flush=True)  # stderr: errors only
        return
    # Ray Train's and Tune's helpers (the placement-group cleaner of a stopped trial) ask the State API
    # of "the" local Ray; with a second Ray on this machine they find two and give up, leaving the
    # trial's resources reserved. Naming this Ray's dashboard (the State API server) in the environment
    # the Ray processes inherit gives them the right one (docs/tuning.md#another-ray-on-the-same-machine).
    port = _free_port()
    os.environ[API_SERVER_ENV] = f"http://{LOOPBACK}:{port}"
    with _loopback_node_address():
        context = ray.init(
            address="local",
            num_cpus=num_cpus,
            # The dashboard serves the State API Ray Train's controller polls (without it, every poll
            # logs a warning); on loopback like everything else.
            dashboard_host=LOOPBACK,
            dashboard_port=port,
            _node_ip_address=LOOPBACK,
            # Ray's own INFO lines ("Started a local Ray instance") would precede a job's one error line;
            # the workers' output (training progress) still reaches the console. Its warnings too
            # (token authentication is on: the dashboard line says how to log in), unless --verbose.
            logging_level=logging.WARNING if verbose() else logging.ERROR,
        )
    node_ip = ray.util.get_node_ip_address()
    if not is_loopback(node_ip):
        ray.shutdown()
        raise RuntimeError(
            f"the local Ray started on {node_ip} instead of {LOOPBACK}, so it listens on every interface: "
            "this Ray version no longer honours pipelines.common.ray_session._loopback_node_address"
        )
    print(dashboard_line(context.dashboard_url, route_worker_output()), flush=True)  # stderr: errors only


API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"  # read by Ray's State API client before any auto-detection


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def dashboard_line(dashboard_url: str | None, library_log: Path | None = None) -> str:
    """``Ray dashboard: http://127.0.0.1:8265`` (under Ray's token authentication, how to log in) and
    where the libraries' own messages went (:func:`pipelines.common.console.route_worker_output`)."""
    if not dashboard_url:
        line = "Ray dashboard: not running"
    else:
        line = f"Ray dashboard: {dashboard_url if '://' in dashboard_url else 'http://' + dashboard_url}"
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            where = os.environ.get("RAY_AUTH_TOKEN_PATH") or (
                "$RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else "~/.ray/auth_token"
            )
            line += f" (token authentication: log in with the token in {where})"
    if library_log is not None:
        line += f"; Ray's and MLflow's own messages: {library_log} (--verbose prints them here)"
    return line


def main(argv: list[str] | None = None) -> int:
    """``ARGS...``: run Ray's own CLI (``ray ARGS...``, e.g. ``start --head ...``) with loopback kept."""
    from ray.scripts.scripts import cli

    with _loopback_node_address():
        # click ends with SystemExit (also on success); `start --block` only when signalled.
        return cli.main(args=sys.argv[1:] if argv is None else argv, prog_name="ray")


if __name__ == "__main__":
    sys.exit(main())


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """While active (in the main thread), SIGTERM (``ray job stop``, ``kill``, a node being drained) does
    what Ctrl-C does: Ray Train's SIGINT handler aborts the run gracefully. Without it, the handler
    ``ray.init`` installs exits the driver in the middle of a call into Ray's core worker, which can end
    in SIGABRT and a C++ stack dump."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
