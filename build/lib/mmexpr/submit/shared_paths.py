"""Paths every node of a cluster must see: the shards, the run output, the job file.

A job submitted to a cluster runs somewhere else: a relative path would resolve against
the job's working folder over there, and a folder on this laptop's disk does not exist on
the nodes. So before submitting, local paths become absolute; and on the cluster side,
before any worker starts, each one is checked and a missing one is named with the host
that cannot see it (instead of a FileNotFoundError deep inside a Ray worker).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from mmexpr.config import JobConfig, is_uri
from mmexpr.data.manifest import manifest_path
from mmexpr.errors import UserError


class NotShared(UserError):
    """A path the cluster side cannot read or write."""


def check_visible(job: JobConfig) -> None:
    """Raise NotShared naming this host if the shards are not readable or output not writable."""
    host = socket.gethostname()
    hint = "every node must see it: use a shared filesystem path or an s3:// URI"
    if not is_uri(job.data.shards):
        manifest = Path(manifest_path(job.data.shards, job.data.train_split))
        if not os.access(manifest, os.R_OK):
            raise NotShared(f"data.shards: {manifest} is not readable on {host}; {hint}")
    if not is_uri(job.output):
        out = Path(job.output)
        probe = out if out.exists() else next((p for p in out.parents if p.exists()), out)
        if not os.access(probe, os.W_OK):
            raise NotShared(f"output: {job.output} is not writable on {host}; {hint}")
