"""The command-line side of "where a job runs": `train --on/--detach/--dry-run` and `jobs`.

`train` calls `submit_elsewhere` first; it returns None for `--on local` (the caller then
trains in-process, as before) and an exit code when the job went to Ray or SLURM.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from mmexpr.config import with_absolute_paths
from mmexpr.errors import UserError
from mmexpr.submit import ray_jobs, slurm
from mmexpr.submit.target import Target, parse_target

if TYPE_CHECKING:
    from mmexpr.config import JobConfig


def add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--on", default="local", metavar="WHERE",
        help="local (default), ray://HOST:PORT or http://HOST:8265 (Ray Jobs API), or slurm",
    )
    p.add_argument("--detach", action="store_true", help="submit and return at once (Ray, SLURM)")
    p.add_argument("--dry-run", action="store_true", help="print what would be submitted (the sbatch script)")


def submit_elsewhere(job: JobConfig, args: argparse.Namespace) -> int | None:
    """Submit to Ray/SLURM per `args.on`; None means: run here."""
    target = parse_target(args.on)
    resume = getattr(args, "resume", None)
    if target.kind == "local":
        if args.dry_run:
            raise UserError("--dry-run shows what --on slurm or --on ray://... would submit")
        return None
    if target.kind == "slurm":
        return _to_slurm(job, resume, args.dry_run, args.detach)
    return _to_ray(job, target, resume, args.dry_run, args.detach)


def _to_slurm(job: JobConfig, resume: str | None, dry: bool, detach: bool) -> int:
    if dry:
        print(slurm.dry_run(job, resume), end="")
        return 0
    job_id, script = slurm.submit(job, resume)
    print(f"submitted SLURM job {job_id} (script {script})")
    print(f"  follow: ./launch jobs logs {job_id}   stop: ./launch jobs stop {job_id}")
    return 0


def _to_ray(job: JobConfig, target: Target, resume: str | None, dry: bool, detach: bool) -> int:
    if dry:
        print(f"address:    {target.address}\nentrypoint: {ray_jobs.entrypoint('job.yaml', resume)}")
        print("job.yaml:\n" + with_absolute_paths(job).to_yaml(), end="")
        return 0
    job_id = ray_jobs.submit(job, target.address, resume)
    print(f"submitted Ray job {job_id} to {target.address}", flush=True)
    if detach:
        print(f"  follow: ./launch jobs logs {job_id}   stop: ./launch jobs stop {job_id}")
        return 0
    try:
        status = ray_jobs.follow(target.address, job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job goes on. Stop it with ./launch jobs stop {job_id}", file=sys.stderr)
        return 130
    print(f"Ray job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def add_jobs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=["list", "status", "logs", "stop"], default="list")
    p.add_argument("id", nargs="?", help="a SLURM job id (digits) or a Ray job id")
    p.add_argument("--on", default=None, metavar="ADDRESS",
                   help="Ray cluster for a Ray job id (default: where it was submitted from here)")


def jobs_command(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _list(args.on)
    if not args.id:
        raise UserError(f"jobs {args.action}: give a job id (./launch jobs lists them)")
    if args.id.isdigit():
        return _slurm_action(args.action, args.id)
    return _ray_action(args.action, args.id, args.on)


def _list(on: str | None) -> int:
    if on:
        return _list_ray(parse_target(on).address)

    jobs = slurm.list_jobs()
    print(f"{'JOBID':>8}  {'NAME':<28} {'STATE':<11} {'TIME':>10}  {'RESTARTS':>8}  {'RUN':<32}  NODES")
    for j in jobs:
        print(f"{j.id:>8}  {j.name:<28} {j.state:<11} {j.elapsed:>10}  {j.restarts:>8}  {j.run_id or '-':<32}  {j.nodes}")
    if not jobs:
        print("(no mmexpr jobs in the SLURM queue)")
    return 0


def _list_ray(address: str) -> int:
    for info in ray_jobs.client(address).list_jobs():
        print(f"{info.submission_id or info.job_id:<40} {info.status.value:<10} {info.entrypoint}")
    return 0


def _slurm_action(action: str, job_id: str) -> int:
    if action == "status":
        fields = slurm.show(job_id)
        for key in ("JobId", "JobName", "JobState", "Reason", "RunTime", "TimeLimit", "Restarts", "NodeList", "StdOut"):
            print(f"{key:<10} {fields.get(key, '')}")
        print(f"{'RunId':<10} {slurm.run_id_from_log(fields.get('StdOut', '')) or '-'}")
    elif action == "logs":
        print(slurm.logs(job_id), end="")
    else:
        slurm.stop(job_id)
        print(f"cancelled SLURM job {job_id}")
    return 0


def _ray_action(action: str, job_id: str, on: str | None) -> int:
    address = ray_jobs.address_for(job_id, parse_target(on).address if on else None)
    if action == "status":
        for key, value in ray_jobs.status(address, job_id).items():
            print(f"{key:<12} {value}")
    elif action == "logs":
        print(ray_jobs.logs(address, job_id), end="")
    else:
        final = ray_jobs.stop(address, job_id)
        print(f"Ray job {job_id}: {final}")
        return 0 if final in ray_jobs.FINAL else 1
    return 0
