"""Preemption signals reach the training loop as a flag (real signals, this process)."""

from __future__ import annotations

import os
import signal

from mmexpr.train import preemption


def test_sigusr1_and_sigterm_set_the_flag_only_while_armed():
    before = {sig: signal.getsignal(sig) for sig in preemption.SIGNALS}
    seen = []
    signal.signal(signal.SIGUSR1, lambda s, f: seen.append(s))  # what was there before install
    try:
        preemption.install()
        preemption.arm()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert preemption.requested()
        preemption.arm()  # a new loop starts with a clear flag
        assert not preemption.requested()
        os.kill(os.getpid(), signal.SIGTERM)
        assert preemption.requested()
        preemption.disarm()
        preemption.arm()
        preemption.disarm()
        os.kill(os.getpid(), signal.SIGUSR1)  # not armed: goes to the previous handler
        assert seen == [signal.SIGUSR1] and not preemption.requested()
    finally:
        preemption.disarm()
        for sig, handler in before.items():
            signal.signal(sig, handler)
