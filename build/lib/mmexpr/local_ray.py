"""The local target: an in-process Ray cluster on this machine, on loopback only.

Packing and training both start Ray through here, so the loopback rule lives in one place.
On Linux, Ray 2.60 takes the host's routable address and binds gcs_server and raylet to
every interface, even with `_node_ip_address="127.0.0.1"` (seen here: 192.0.2.2 and *:PORT).
What keeps it on loopback is RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER set false: Ray then runs in
its single-machine mode, which binds 127.0.0.1. Ray reads the variable when it is imported.
"""

from __future__ import annotations

import os
from typing import Any

LOOPBACK = "127.0.0.1"


def start_ray(address: str | None, *, num_cpus: int | None = None, **init_kwargs: Any) -> bool:
    """Connect to `address`, or start a loopback-only local cluster; True if this call connected.

    `address="local"` is passed for the local case so that a RAY_ADDRESS in the environment or
    a `ray start` elsewhere on the machine is never joined by accident.
    """
    if not address:
        # Read by Ray when it is imported, so this must go first.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, **init_kwargs)
        return True
    # The dashboard is on: Ray Train's placement-group cleaner asks the State API (served by
    # the dashboard) whether the controller lives, and warns every few seconds without it.
    context = ray.init(
        address="local",
        _node_ip_address=LOOPBACK,
        include_dashboard=True,
        dashboard_host=LOOPBACK,
        num_cpus=num_cpus or os.cpu_count() or 1,
        **init_kwargs,
    )
    if context.dashboard_url:
        print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)
    return True
