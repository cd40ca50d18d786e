"""How many trials a search runs at once: what one trial holds, and what the cluster can grow to.

Each trial's driver function holds no resources of its own (Ray Train reserves its workers, an
evaluation its Ray task), so Tune would start every trial at once and leave all but a few waiting. The
search bounds ``max_concurrent_trials`` by :func:`concurrent_trials` of the cluster's resources: those
it has now (``ray.cluster_resources()``) or, on an autoscaling cluster whose GPU groups start at zero
nodes, the most it can scale to. That maximum is given as ``--max-cluster-resources GPU=8,CPU=96`` or
read from the cluster's own config (``--cluster-config``) by :func:`autoscaler_maximum`:

- a Ray cluster launcher YAML (``ray_cluster.yaml``): each of ``available_node_types`` declares
  ``resources`` and ``max_workers`` (the head node type counts once);
- a KubeRay ``RayCluster`` or ``RayJob`` manifest: each worker group's ``maxReplicas`` times its
  container's ``limits`` (``cpu``, ``nvidia.com/gpu``), or the ``num-cpus`` / ``num-gpus`` of its
  ``rayStartParams`` where set (the head group counts once).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipelines.common.errors import ConfigError

if TYPE_CHECKING:
    from pipelines.training.config import Experiment

DATA_CPUS_PER_TRIAL = 1  # CPUs left to each training trial's Ray Data crop tasks when sizing concurrency


def training_trial_resources(num_workers: int, cpus_per_worker: float, use_gpu: bool) -> dict[str, float]:
    """What one training trial's Train run holds: its workers, plus a CPU for its Ray Data tasks."""
    resources = {"CPU": num_workers * cpus_per_worker + DATA_CPUS_PER_TRIAL}
    if use_gpu:
        resources["GPU"] = float(num_workers)
    return resources


def trial_resources(cfg: Experiment) -> dict[str, float]:
    """What one training trial of the config ``cfg`` holds (:func:`training_trial_resources`)."""
    scaling = cfg.scaling
    return training_trial_resources(scaling.num_workers, scaling.cpus_per_worker, scaling.use_gpu)


def evaluation_resources(device: str, cluster: Mapping[str, float]) -> dict[str, float]:
    """What one evaluation trial's Ray task holds: a GPU (``cuda``, or ``auto`` with GPUs), else a CPU."""
    on_gpu = device.startswith("cuda") or (device == "auto" and cluster.get("GPU", 0) >= 1)
    return {"GPU": 1.0} if on_gpu else {"CPU": 1.0}


def concurrent_trials(per_trial: Mapping[str, float], cluster: Mapping[str, float]) -> int:
    """How many trials fit on ``cluster`` at once (at least one)."""
    fits = [math.floor(cluster.get(name, 0.0) / amount) for name, amount in per_trial.items() if amount > 0]
    return max(1, min(fits, default=1))


def largest(*clusters: Mapping[str, float] | None) -> dict[str, float]:
    """Per resource, the most any of ``clusters`` holds (e.g. the cluster now and its autoscaling maximum)."""
    names = {name for cluster in clusters if cluster for name in cluster}
    return {name: max(float((c or {}).get(name, 0.0)) for c in clusters) for name in names}


def parse_resources(text: str) -> dict[str, float]:
    """``"GPU=8,CPU=96"`` -> ``{"GPU": 8.0, "CPU": 96.0}`` (``--max-cluster-resources``)."""
    resources = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, amount = part.partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = -1.0
        if not name.strip() or not value >= 0:
            raise ConfigError(
                f"--max-cluster-resources {text!r}: expected NAME=AMOUNT pairs separated by commas, e.g. GPU=8,CPU=96"
            )
        resources[name.strip()] = value
    return resources


def _quantity(value: Any, where: str) -> float:
    """A Kubernetes quantity or a Ray resource amount: ``8``, ``"8"``, ``"500m"`` (0.5)."""
    text = str(value).strip()
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not a CPU / GPU count") from None


def _launcher_maximum(config: dict, path: Path) -> dict[str, float]:
    head = config.get("head_node_type")
    total: dict[str, float] = {}
    for name, node in (config.get("available_node_types") or {}).items():
        count = 1 if name == head else int(node.get("max_workers", 0))
        resources = node.get("resources") or {}
        if count and not resources and name != head:
            raise ConfigError(
                f"{path}: node type {name} declares no resources (Ray detects them when a node starts), "
                f"so its maximum is unknown: declare them (resources: {{CPU: 48, GPU: 4}}) or pass "
                f"--max-cluster-resources instead"
            )
        for resource, amount in resources.items():
            total[resource] = total.get(resource, 0.0) + count * _quantity(
                amount, f"{path}: {name}.resources"
            )
    return total


def _kuberay_group(group: dict, count: int, where: str) -> dict[str, float]:
    params = group.get("rayStartParams") or {}
    containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    limits = (containers[0].get("resources") or {}).get("limits") or {}
    cpus = params.get("num-cpus", limits.get("cpu", 0))
    gpus = params.get("num-gpus", limits.get("nvidia.com/gpu", 0))
    return {"CPU": count * _quantity(cpus, where), "GPU": count * _quantity(gpus, where)}


def _kuberay_maximum(config: dict, path: Path) -> dict[str, float]:
    spec = config.get("spec") or {}
    spec = spec.get("rayClusterSpec", spec)  # a RayJob holds the cluster spec one level down
    total = _kuberay_group(spec.get("headGroupSpec") or {}, 1, f"{path}: headGroupSpec")
    for group in spec.get("workerGroupSpecs") or []:
        count = int(group.get("maxReplicas", group.get("replicas", 0)))
        where = f"{path}: workerGroupSpecs {group.get('groupName', '?')}"
        for name, amount in _kuberay_group(group, count, where).items():
            total[name] += amount
    return total


def autoscaler_maximum(path: str | Path) -> dict[str, float]:
    """The most resources the cluster described by ``path`` can scale to (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--cluster-config {path}: no such file (a ray_cluster.yaml or KubeRay manifest)")
    config = yaml.safe_load(path.read_text()) or {}
    if isinstance(config, dict) and "available_node_types" in config:
        return _launcher_maximum(config, path)
    if isinstance(config, dict) and config.get("kind") in ("RayCluster", "RayJob"):
        return _kuberay_maximum(config, path)
    raise ConfigError(
        f"--cluster-config {path}: neither a Ray cluster launcher config (available_node_types) nor a KubeRay "
        "RayCluster / RayJob manifest"
    )


def cluster_maximum(cluster_config: str | None, max_cluster_resources: str | None) -> dict[str, float] | None:
    """The autoscaler's maximum a search is given: ``--max-cluster-resources NAME=N,...`` if given, else
    read from ``--cluster-config FILE`` (:func:`autoscaler_maximum`), else None."""
    maximum = None
    if cluster_config is not None:
        maximum = autoscaler_maximum(cluster_config)
    if max_cluster_resources is not None:
        maximum = parse_resources(max_cluster_resources)
    return maximum
