"""Ray's `worker_process_setup_hook` for training jobs: runs once in every worker process
of the job (train workers, the Train controller and its helpers) before any task.

Two things must be in place there before Ray Train's code runs:

1. Preemption signals are routed to the training loop (`preemption.install`).
2. RAY_ADDRESS names this process's own cluster. Ray Train's placement-group cleaner asks
   the State API whether the controller still lives, and the State API, given no address,
   auto-detects "the" Ray instance on the machine. With two local clusters on one machine
   (two trainings, or a test run beside a demo) it can ask the other cluster, hear that the
   controller does not exist, and remove the placement group of a healthy run (seen here:
   a sweep's workers were destroyed when a second local cluster started).
"""

from __future__ import annotations

import os

import ray

from mmexpr.train import preemption


def setup() -> None:
    preemption.install()
    gcs = ray.get_runtime_context().gcs_address
    if gcs:
        os.environ["RAY_ADDRESS"] = gcs
