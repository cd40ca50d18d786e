"""The workers' process-group rendezvous, kept on loopback when the cluster is (``docs/security.md``).

Ray Train (2.60) starts DDP with ``init_process_group(init_method="tcp://<rank 0's node IP>:<port>")``;
torch then creates rank 0's ``TCPStore`` server, which binds every interface (``::``) whatever the
address, so a local cluster on 127.0.0.1 would still expose the store to the network for the whole run.
:class:`LoopbackTorchConfig` does the same setup but, when rank 0's node address is loopback, rank 0
binds the store's socket to that address itself and hands it to ``TCPStore(master_listen_fd=...)``, and
gloo / NCCL pick the loopback interface (``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME``) for their
own connections. A cluster on real addresses gets Ray's setup unchanged.
"""

from __future__ import annotations

import datetime
import os
import socket
from typing import Any

from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

from pipelines.common.ray_session import is_loopback

LOOPBACK_INTERFACE = "lo"  # Linux's loopback interface, for gloo and NCCL


def _address_and_port() -> tuple[str, int]:
    """This worker's node address and a free port on it (rank 0: where the store will listen)."""
    import ray

    address = ray.util.get_node_ip_address()
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
        probe.bind((address, 0))
        return address, probe.getsockname()[1]


def _join_on_loopback(
    backend: str, world_rank: int, world_size: int, address: str, port: int, timeout_s: int
) -> None:
    """Join the process group through a ``TCPStore`` whose server (rank 0's) listens on ``address`` only."""
    import torch.distributed as dist

    os.environ.setdefault("GLOO_SOCKET_IFNAME", LOOPBACK_INTERFACE)
    os.environ.setdefault("NCCL_SOCKET_IFNAME", LOOPBACK_INTERFACE)
    if backend == "nccl":  # as Ray's own setup: fail on a hung collective instead of waiting forever
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    timeout = datetime.timedelta(seconds=timeout_s)
    listen_fd = None
    if world_rank == 0:
        listener = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen(max(128, world_size))
        listen_fd = listener.detach()  # the store owns it from here
    store = dist.TCPStore(
        address,
        port,
        world_size,
        world_rank == 0,
        timeout,
        wait_for_workers=False,
        master_listen_fd=listen_fd,
    )
    dist.init_process_group(backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout)


class _LoopbackTorchBackend(_TorchBackend):
    def on_start(self, worker_group: Any, backend_config: TorchConfig) -> None:
        import ray

        address, port = worker_group.execute_single(0, _address_and_port)
        if not is_loopback(address) or backend_config.backend not in ("gloo", "nccl"):
            super().on_start(worker_group, backend_config)
            return
        worker_group.execute(_set_torch_distributed_env_vars)  # LOCAL_RANK, RANK, ... as Ray sets them
        ray.get(
            [
                worker_group.execute_single_async(
                    rank,
                    _join_on_loopback,
                    backend=backend_config.backend,
                    world_rank=rank,
                    world_size=len(worker_group),
                    address=address,
                    port=port,
                    timeout_s=backend_config.timeout_s,
                )
                for rank in range(len(worker_group))
            ]
        )


class LoopbackTorchConfig(TorchConfig):
    """``TorchConfig`` whose rendezvous stays on loopback on a loopback cluster (module docstring)."""

    @property
    def backend_cls(self):
        return _LoopbackTorchBackend
