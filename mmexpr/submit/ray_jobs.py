"""Submit a job to an existing Ray cluster through the Ray Jobs API, follow it, stop it.

The runtime environment carries this package (py_modules) and the resolved job file
(working_dir), so the cluster needs only the Python dependencies installed, not a checkout.
Shards and run output must be paths every node reads (a shared filesystem) or URIs; they
are made absolute here and checked on the cluster before any worker starts.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

import mmexpr
from mmexpr.config import JobConfig, with_absolute_paths
from mmexpr.errors import UserError
from mmexpr.submit import registry

FINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# Passed through to the job when set here: they change how the job behaves, not where it runs.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE", "RAY_AUTH_MODE")


class RayUnreachable(UserError):
    """No Ray dashboard answers at the address given."""


class RayJobError(UserError):
    """The Jobs API refused a request (unknown id, bad runtime env...)."""


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail within `timeout` seconds, not after a TCP hang, when the dashboard is not there."""
    parts = urlsplit(address)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise RayUnreachable(
            f"cannot reach the Ray dashboard at {address} ({reason} after at most {timeout:.0f} s): "
            "is the cluster up, and does its head run the dashboard on that host and port "
            "(ray start --head --dashboard-host=0.0.0.0)?"
        ) from None


def client(address: str):
    """A JobSubmissionClient, after a bounded reachability check."""
    check_reachable(address)
    # lazy: the CLI imports this module at start-up
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError) as exc:
        raise RayUnreachable(f"Ray Jobs API at {address}: {exc}") from None


def new_submission_id(job: JobConfig) -> str:
    return f"mmexpr-{job.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def runtime_env(stage: Path) -> dict:
    """working_dir: the job file; py_modules: this package, so the cluster runs this code."""
    env_vars = {"PYTHONUNBUFFERED": "1"}
    env_vars.update({k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)})
    return {
        "working_dir": str(stage),
        "py_modules": [str(Path(mmexpr.__file__).parent)],
        "excludes": ["__pycache__/", "*.pyc"],
        "env_vars": env_vars,
    }


def entrypoint(job_file: str, resume: str | None) -> str:
    cmd = f"python -m mmexpr.submit.on_cluster run {job_file}"
    return cmd + (f" --resume {resume}" if resume else "")


def submit(job: JobConfig, address: str, resume: str | None = None) -> str:
    """Submit; return the job id (also recorded for `jobs status|logs|stop`)."""
    jobs = client(address)
    job = with_absolute_paths(job)
    job_id = new_submission_id(job)
    with tempfile.TemporaryDirectory(prefix="mmexpr-submit-") as stage:
        job.write(Path(stage) / "job.yaml")
        try:
            jobs.submit_job(
                entrypoint=entrypoint("job.yaml", resume),
                submission_id=job_id,
                runtime_env=runtime_env(Path(stage)),
                metadata={"mmexpr_job": job.name, "mmexpr_output": job.output},
            )
        except RuntimeError as exc:
            raise RayJobError(f"the Ray Jobs API at {address} refused the job: {exc}") from None
    registry.record(job_id, address, job.name)
    return job_id


def follow(address: str, job_id: str, out: TextIO = sys.stdout) -> str:
    """Print the job's logs as they come; return its final status."""
    jobs = client(address)

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())
    return wait_final(address, job_id, timeout=60)


def wait_final(address: str, job_id: str, timeout: float) -> str:
    """Poll until the job reaches a final status; return the status seen last."""
    jobs = client(address)
    deadline = time.monotonic() + timeout
    status = str(jobs.get_job_status(job_id).value)
    while status not in FINAL and time.monotonic() < deadline:
        time.sleep(1)
        status = str(jobs.get_job_status(job_id).value)
    return status


def address_for(job_id: str, address: str | None) -> str:
    """The address given, else the one this job was submitted to (from the registry)."""
    if address:
        return address
    entry = registry.lookup(job_id)
    if entry is None:
        raise RayJobError(
            f"job {job_id}: not submitted from this machine ({registry.registry_path()} has no record); "
            "name the cluster with --on http://HOST:8265"
        )
    return entry.address


def status(address: str, job_id: str) -> dict:
    info = _get(address, job_id)
    return {
        "id": job_id,
        "status": str(info.status.value),
        "message": info.message or "",
        "entrypoint": info.entrypoint,
        "driver_node": getattr(info, "driver_node_id", "") or "",
        "address": address,
    }


def logs(address: str, job_id: str) -> str:
    _get(address, job_id)
    return client(address).get_job_logs(job_id)


def stop(address: str, job_id: str, timeout: float = 60) -> str:
    """Ask Ray to stop the job and wait (bounded) until it is in a final state."""
    _get(address, job_id)
    client(address).stop_job(job_id)
    return wait_final(address, job_id, timeout)


def _get(address: str, job_id: str):
    try:
        return client(address).get_job_info(job_id)
    except RuntimeError as exc:
        raise RayJobError(f"job {job_id} at {address}: {exc}") from None
