"""SIGTERM / SIGUSR1 in a worker: finish the step, checkpoint, stop (preemption, SLURM).

Ray Train runs the training function in a thread, and Python only lets the main thread
install signal handlers. So `install` runs from Ray's `worker_process_setup_hook`
(worker_setup.py, set by the driver in the job's runtime_env) in each worker process's main
thread at start-up, and records a signal in a process-wide Event. That Event is the one
piece of module state here, because a signal handler can reach nothing else. The training
loop `arm()`s it while it runs and checks `requested()` once per step (agreeing across
ranks with an all-reduce, so every rank saves the same step). Outside an armed loop,
SIGTERM goes to the handler that was there before, so Ray can still shut its workers down
normally.
"""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_requested = threading.Event()
_armed = threading.Event()
_previous: dict[int, object] = {}


def _handler(signum, frame) -> None:
    if _armed.is_set():
        _requested.set()
        return
    previous = _previous.get(signum)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL and signum == signal.SIGTERM:
        raise SystemExit(128 + signum)


def install() -> None:
    """Ray worker_process_setup_hook: route SIGTERM/SIGUSR1 through `_handler`."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in SIGNALS:
        _previous[sig] = signal.getsignal(sig)
        signal.signal(sig, _handler)


def arm() -> None:
    _requested.clear()
    _armed.set()


def disarm() -> None:
    _armed.clear()


def requested() -> bool:
    return _requested.is_set()
