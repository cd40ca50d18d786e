"""Storage every node of a Ray cluster can reach, proven when a job starts instead of found out mid-run.

Ray Train and Tune workers write checkpoints to the run storage, and Ray Data tasks read the prepared
dataset, on whichever node they run. A plain path, and a ``file://`` URI just as much, names the
filesystem of the node that opens it: on a cluster of several nodes it must be a shared mount (NFS, a
cluster filesystem) at the same path on every node. Left unchecked, a node-local path is found out only
when the first checkpoint is reported, after ``checkpoint_every`` iterations on every worker, and again
on every retry of ``max_failures``.

:func:`check_visible_from_nodes` proves it in seconds before anything trains: the driver writes a marker
holding a random token into each folder the job writes (and reads the files the job reads), then one
small task pinned to each alive node reads the same paths back and returns their sha256. A node that
finds nothing, or other bytes, is refused in one line naming the path and the fix (``docs/cluster.md``).
Object-store URIs (``s3://``, ``gs://``, ...) are the same bucket from every node and are not probed; a
single-node cluster has nothing to prove.

Nodes that join later (an autoscaling cluster whose workers scale from zero) are not there to be probed:
for them the driver keeps a :class:`StorageMarker` in the run storage while the job runs, and every
training worker checks it before its first iteration (:meth:`StorageMarker.check_here`), so a node that
does not see the storage fails in its setup, not at its first checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from pipelines.common.errors import ConfigError
from pipelines.common.storage import resolve

logger = logging.getLogger(__name__)

MARKER_PREFIX = ".ray-vsr-visible-"  # hidden file the driver writes into a storage folder, deleted after
DEFAULT_TIMEOUT_S = 60.0  # a healthy node answers in a second or two; this only bounds a node that hangs
FIX = (
    "put it on storage every node mounts at the same path (NFS or another shared filesystem) "
    "or use an object-store URI such as s3://bucket/prefix (docs/cluster.md)"
)


def _read_digests(paths: list[str]) -> list[str]:
    """On one node: the sha256 of each file as this node reads it, or why it cannot be read."""
    digests = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                digests.append(hashlib.sha256(f.read()).hexdigest())
        except FileNotFoundError:
            digests.append("missing")
        except OSError as error:
            digests.append(f"unreadable ({error.strerror or error})")
    return digests


def _node_name(node: Mapping) -> str:
    return f"{node['NodeManagerAddress']} (node {node['NodeID'][:8]})"


def _refusal(name: str, uri: str, where: str, what: str, found: str) -> ConfigError:
    seen = "is missing" if found == "missing" else "holds other bytes" if len(found) == 64 else found
    return ConfigError(f"{name} {uri} is not visible from {where}: {what} {seen}; {FIX}")


@dataclass(frozen=True)
class StorageMarker:
    """A hidden file with a random token that the driver writes into a storage folder: a node that reads
    the same token sees the driver's folder. Small and picklable: travels to the training workers."""

    name: str  # the config key, for the error line: "run.storage_path"
    uri: str  # the folder as resolved on the driver
    path: str  # the marker file
    sha256: str  # of the token

    def check_here(self) -> None:
        """In a Ray task or worker: raise the one-line :class:`ConfigError` unless this node sees the marker."""
        import ray

        found = _read_digests([self.path])[0]
        if found != self.sha256:
            context = ray.get_runtime_context()
            node = {"NodeManagerAddress": ray.util.get_node_ip_address(), "NodeID": context.get_node_id()}
            where = f"the Ray node {_node_name(node)} this worker runs on"
            raise _refusal(self.name, self.uri, where, "the marker the driver wrote there", found)

    def remove(self) -> None:
        resolve(self.path).delete()


def place_marker(name: str, folder: str) -> StorageMarker | None:
    """Write a fresh marker into ``folder`` (created if needed); None for an object-store URI (not probed)."""
    location = resolve(folder)
    if not location.is_local:
        return None
    token = secrets.token_hex(16).encode()
    location.mkdirs()
    marker = location.join(MARKER_PREFIX + token.decode()[:12])
    marker.write_bytes_atomic(token)
    return StorageMarker(name, location.uri, marker.path, hashlib.sha256(token).hexdigest())


def check_visible_from_nodes(
    writes: Mapping[str, str] = {},
    reads: Mapping[str, str] = {},
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> int:
    """Refuse a local path that some alive node of the connected Ray cluster does not see as this one does.

    Args:
        writes: what the job's workers write, ``{name: folder}``, e.g. ``{"run.storage_path": "/runs"}``:
            a marker with a random token is written there and every node must read the same token.
        reads: what the workers read, ``{name: file}``, e.g. ``{"data.path": "/data/reds/manifest.json"}``:
            every node must read the bytes this process reads (a file this process cannot read is
            skipped: its own check reports it).
        timeout_s: how long to wait for the nodes' answers; a node that has not answered by then is
            logged as not checked (a slow node is not a storage fault) and the job goes on.

    Returns:
        The number of nodes that proved every path visible (0 when nothing needed proving: object-store
        URIs only, or a single-node cluster).

    Raises:
        ConfigError: one line naming the first path a node does not see, the node, and the fix.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    local = {name: resolve(where) for name, where in {**writes, **reads}.items()}
    local = {name: location for name, location in local.items() if location.is_local}
    nodes = [node for node in ray.nodes() if node["Alive"]]
    if not local or len(nodes) < 2:
        return 0

    probes: dict[str, tuple[str, str]] = {}  # name -> (file every node reads, its expected sha256)
    markers = []
    try:
        for name, location in local.items():
            if name in writes:
                marker = place_marker(name, writes[name])
                markers.append(marker)
                probes[name] = (marker.path, marker.sha256)
            else:
                digest = _read_digests([location.path])[0]
                if len(digest) == 64:  # unreadable here: the job's own dataset check says why
                    probes[name] = (location.path, digest)
        if not probes:
            return 0
        paths = [path for path, _ in probes.values()]
        # No CPU: a node whose CPUs are all taken (or a head started with --num-cpus 0) still answers.
        probe = ray.remote(num_cpus=0, max_retries=0)(_read_digests)
        pending = {
            probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
                name="storage-visibility-check",
            ).remote(paths): node
            for node in nodes
        }
        ready, late = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
        for ref in late:
            ray.cancel(ref, force=True)
            logger.warning(
                "storage check: Ray node %s did not answer within %.0f s; not checked",
                _node_name(pending[ref]), timeout_s,
            )  # fmt: skip
        answers = {}
        for ref in ready:
            try:
                answers[ref] = ray.get(ref)
            except ray.exceptions.RayError as error:  # the node died meanwhile: nothing will run there
                logger.warning(
                    "storage check: Ray node %s failed the check (%s)", _node_name(pending[ref]), error
                )
        for column, (name, (_, expected)) in enumerate(probes.items()):
            blind = [
                (pending[ref], found[column]) for ref, found in answers.items() if found[column] != expected
            ]
            if blind:
                node, found = blind[0]
                what = "the marker the driver wrote there" if name in writes else "this file"
                where = f"{len(blind)} of {len(nodes)} Ray nodes"
                raise _refusal(name, local[name].uri, where, f"on {_node_name(node)} {what}", found)
        return len(answers)
    finally:
        for marker in markers:
            marker.remove()
