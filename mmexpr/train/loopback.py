"""Ray Train's torch process group with every socket on 127.0.0.1, for local trainings.

Ray Train 2.60 (`ray.train.torch.config._TorchBackend.on_start`) sets MASTER_ADDR to the
node's address (127.0.0.1 on our local cluster) and lets `init_process_group("env://")` on
rank 0 start the c10d TCPStore server, which torch 2.14 binds to the wildcard address
whatever MASTER_ADDR says: the store listened on `*:PORT`, reachable from the network.
Gloo's pair listeners bind to the address the host name resolves to unless
GLOO_SOCKET_IFNAME names an interface (NCCL's bootstrap reads NCCL_SOCKET_IFNAME).

So for a local run, rank 0 first serves the store itself from a socket it bound to
127.0.0.1 (TCPStore's `master_listen_fd`), as a multi-tenant server; torch's
`init_process_group` opens its store as multi-tenant too and, finding a server on that
port in the process, reuses it instead of binding a second one. Every rank gets
MASTER_ADDR=127.0.0.1 and the loopback interface for gloo and NCCL. A run on a Ray cluster
keeps Ray's own setup: its ranks must reach each other over the network.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import ray
from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
from ray.train.torch.config import (
    TorchConfig,
    _set_torch_distributed_env_vars,
    _setup_torch_process_group,
    _TorchBackend,
)
from torch.distributed import TCPStore

from mmexpr.local_ray import LOOPBACK

_SERVED: list = []  # rank 0's listening socket and store server, alive as long as the process


def loopback_interface() -> str:
    """The name of the interface that carries 127.0.0.1 ("lo" on Linux, "lo0" on macOS)."""
    names = [name for _, name in socket.if_nameindex()]
    return next((n for n in ("lo", "lo0") if n in names), "lo")


def serve_store(timeout_s: int) -> int:
    """Rank 0: a c10d store server listening on 127.0.0.1 only; returns its port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOOPBACK, 0))
    listener.listen(2048)
    port = listener.getsockname()[1]
    store = TCPStore(LOOPBACK, port, is_master=True, multi_tenant=True, master_listen_fd=listener.fileno(),
                     wait_for_workers=False, timeout=timedelta(seconds=timeout_s))
    _SERVED.append((listener, store))
    return port


def use_loopback(port: int) -> None:
    interface = loopback_interface()
    os.environ.update(MASTER_ADDR=LOOPBACK, MASTER_PORT=str(port),
                      GLOO_SOCKET_IFNAME=interface, NCCL_SOCKET_IFNAME=interface)


class _LoopbackBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        backend = backend_config.backend or ("nccl" if gpus > 0 else "gloo")
        port = worker_group.execute_single(0, serve_store, timeout_s=backend_config.timeout_s)
        worker_group.execute(use_loopback, port=port)
        if not isinstance(worker_group, V1WorkerGroup):
            worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([
            worker_group.execute_single_async(i, _setup_torch_process_group, backend=backend, world_rank=i,
                                              world_size=len(worker_group), init_method="env://",
                                              timeout_s=backend_config.timeout_s)
            for i in range(len(worker_group))
        ])


def cluster_on_loopback() -> bool:
    """True when every live node of the connected Ray cluster is on 127.0.0.1 (a local run)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return bool(nodes) and all(n.get("NodeManagerAddress") == LOOPBACK for n in nodes)


class LoopbackTorchConfig(TorchConfig):
    """TorchConfig whose process group listens on 127.0.0.1 only (see the module docstring)."""

    @property
    def backend_cls(self):
        return _LoopbackBackend
