"""Local workers share the fate of their driver.

Ray runs its local cluster in sessions of its own, so killing the driver (or its process
group) left the Train workers running: they trained on and published two more checkpoints
into a run nobody would close. For a run on the local loopback cluster the driver hands its
pid and start time to the workers (LoopConfig), and each worker checks every second that
this very process still lives (a pid reused by another process does not count); when it is
gone the worker ends at once, before it can publish anything else. On a Ray cluster the
driver may live on another host, so nothing is watched there.
"""

from __future__ import annotations

import os
import threading

import psutil

CHECK_SECONDS = 1.0


def identity() -> tuple[int, float]:
    """(pid, start time) of this process, as a worker will check it."""
    me = psutil.Process()
    return me.pid, me.create_time()


def alive(pid: int, started: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - started) < 1e-3
    except psutil.Error:
        return False


def watch(pid: int, started: float) -> threading.Thread | None:
    """End this process when the driver (pid, started) is gone; None when there is none to watch."""
    if not pid:
        return None

    def loop() -> None:
        while alive(pid, started):
            threading.Event().wait(CHECK_SECONDS)
        print(f"driver {pid} is gone; this training worker ({os.getpid()}) stops with it", flush=True)
        os._exit(1)

    thread = threading.Thread(target=loop, name="driver-fate", daemon=True)
    thread.start()
    return thread
