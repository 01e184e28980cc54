"""Pass a preemption signal from the job's driver to every Ray Train worker, on every node.

SLURM delivers `--signal=B:USR1@...` (and `scancel --signal=USR1 --batch`) to the batch
script only; the sbatch script hands it to the driver; but the training loop listens in
the workers (mmexpr/train/preemption.py), which run on other hosts. So the driver looks
the live RayTrainWorker actors up in the GCS (no dashboard needed) and sends the signal
with a tiny task pinned to each worker's node, where that pid means that process.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import defaultdict

WORKER_CLASS = "RayTrainWorker"


def train_workers() -> dict[str, list[int]]:
    """node id -> pids of the live Ray Train workers in this cluster."""
    from ray._private import state  # lazy: on_cluster imports this module before Ray is needed

    found: dict[str, list[int]] = defaultdict(list)
    for info in state.actors(actor_state_name="ALIVE").values():
        if str(info.get("ActorClassName", "")).endswith(WORKER_CLASS) and info.get("Pid"):
            found[info["Address"]["NodeID"]].append(int(info["Pid"]))
    return dict(found)


def _kill_on_node(pids: list[int], signum: int) -> list[int]:
    sent = []
    for pid in pids:
        try:
            os.kill(pid, signum)
            sent.append(pid)
        except ProcessLookupError:
            pass
    return sent


def send(signum: int, timeout: float = 60.0) -> int:
    """Signal every train worker; retry until some exist (they may still be starting). Returns count."""
    import ray  # lazy: as in train_workers
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    kill = ray.remote(num_cpus=0, max_retries=0)(_kill_on_node)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = train_workers() if ray.is_initialized() else {}
        if workers:
            refs = [
                kill.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(pids, signum)
                for node, pids in workers.items()
            ]
            sent = sum(len(r) for r in ray.get(refs, timeout=max(5.0, deadline - time.monotonic())))
            print(f"mmexpr: sent {signal.Signals(signum).name} to {sent} train worker(s) on {len(workers)} node(s)", flush=True)
            return sent
        time.sleep(1)
    print(f"mmexpr: no train worker to signal within {timeout:.0f} s", flush=True)
    return 0


def forward_signals(signums: tuple[int, ...] = (signal.SIGUSR1, signal.SIGTERM)) -> threading.Event:
    """Install handlers in this (main) thread that forward to the workers; the Event records a signal."""
    received = threading.Event()

    def handler(signum, frame) -> None:
        received.set()
        threading.Thread(target=send, args=(signum,), daemon=True, name="mmexpr-signal").start()

    for signum in signums:
        signal.signal(signum, handler)
    return received
