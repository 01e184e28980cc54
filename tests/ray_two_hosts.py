"""A real two-node Ray cluster: head in one network namespace, worker in the other.

Used by the Ray Jobs tests. Each node gets its own temp dir (they share a filesystem),
RAY_AUTH_MODE is set identically on every node and on the client (a token file left by
another cluster otherwise makes the worker's join fail), and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.netns import Daemons, NetnsPair, kill_processes_mentioning, wait_until

RAY = str(Path(sys.executable).with_name("ray"))
GCS_PORT = 6379
DASHBOARD_PORT = 8265


def ray_env() -> dict[str, str]:
    """Environment for every Ray node and client in the tests: no auth, no telemetry, quiet."""
    env = dict(os.environ)
    env.update(
        GLOO_SOCKET_IFNAME=NetnsPair.IFNAME,
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        # as if the venv were activated when `ray start` ran: job entrypoints call `python`
        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    )
    env.pop("RAY_ADDRESS", None)
    return env


@dataclass
class RayCluster:
    net: NetnsPair
    root: Path

    @property
    def dashboard(self) -> str:
        return f"http://{self.net.a.ip}:{DASHBOARD_PORT}"

    def client_cmd(self, argv: list[str]) -> list[str]:
        """Run a client command on the head's host (the only place that reaches the cluster)."""
        return self.net.a.cmd(argv)

    def nodes_alive(self) -> list[dict]:
        out = subprocess.run(
            self.client_cmd([sys.executable, "-c", _LIST_NODES, f"{self.net.a.ip}:{GCS_PORT}"]),
            capture_output=True, text=True, timeout=60, env=ray_env(),
        )
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        return json.loads(out.stdout.strip().splitlines()[-1])


_LIST_NODES = """
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(json.dumps([{"ip": n["NodeManagerAddress"], "cpus": n["Resources"].get("CPU", 0)}
                  for n in ray.nodes() if n["Alive"]]))
"""


@contextmanager
def ray_two_hosts(root: Path, cpus_per_node: int = 1) -> Iterator[RayCluster]:
    """Start head (namespace a) and worker (namespace b); yield when both joined; stop by pid."""
    root.mkdir(parents=True, exist_ok=True)
    # Ray's unix sockets live under --temp-dir and AF_UNIX paths stop at 107 bytes: a deep pytest
    # temp folder (pytest-113/ray20/...) made the dashboard fail to start, so the nodes get a short one.
    short = Path(tempfile.mkdtemp(prefix="mmxr-", dir="/tmp"))
    daemons = Daemons()
    with NetnsPair("r") as net:
        cluster = RayCluster(net, root)
        try:
            head = [
                RAY, "start", "--head", "--block", "--disable-usage-stats",
                f"--node-ip-address={net.a.ip}", f"--port={GCS_PORT}",
                "--include-dashboard=true", f"--dashboard-host={net.a.ip}",
                f"--dashboard-port={DASHBOARD_PORT}", f"--num-cpus={cpus_per_node}",
                f"--temp-dir={short}/a",
            ]
            daemons.start(net.a.cmd(head), root / "head.log", env=ray_env())
            wait_until(lambda: _port_open(net.a, GCS_PORT), 90, "the Ray head's GCS port")
            worker = [
                RAY, "start", "--block", "--disable-usage-stats",
                f"--address={net.a.ip}:{GCS_PORT}", f"--node-ip-address={net.b.ip}",
                f"--num-cpus={cpus_per_node}", f"--temp-dir={short}/b",
            ]
            daemons.start(net.b.cmd(worker), root / "worker.log", env=ray_env())
            wait_until(lambda: len(cluster.nodes_alive()) == 2, 120, "both Ray nodes to join")
            wait_until(lambda: _port_open(net.a, DASHBOARD_PORT), 60, "the Ray dashboard (Jobs API)")
            yield cluster
        finally:
            daemons.stop_all()
            kill_processes_mentioning(str(root))
            kill_processes_mentioning(str(short))
            shutil.rmtree(short, ignore_errors=True)


def _port_open(host, port: int) -> bool:
    probe = f"import socket; socket.create_connection(('{host.ip}', {port}), timeout=2).close()"
    return subprocess.run(host.cmd([sys.executable, "-c", probe]), capture_output=True, timeout=20).returncode == 0
