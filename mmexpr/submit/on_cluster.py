"""What runs on the cluster side of `--on ray://...` and `--on slurm`.

    python -m mmexpr.submit.on_cluster run JOB_FILE [--resume R] [--address HOST:PORT]
    python -m mmexpr.submit.on_cluster wait-nodes --address HOST:PORT --nodes N --timeout S

`run` reads the resolved job file, checks that this host sees the shards and the output
(a plain message naming the host, instead of a traceback from a worker), then runs the
training driver against the cluster that is already up. SIGUSR1/SIGTERM reaching it are
passed on to the train workers (they checkpoint and stop); it then exits 75. `wait-nodes` is how the sbatch
script knows every node joined before training starts.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

from mmexpr.config import load_job
from mmexpr.errors import UserError
from mmexpr.submit.shared_paths import check_visible
from mmexpr.submit.signal_workers import forward_signals

PREEMPTED = 75  # exit status after a preemption checkpoint (EX_TEMPFAIL): the sbatch script requeues


def _run(args: argparse.Namespace) -> int:
    try:
        job = load_job(args.job_file)
    except UserError as exc:
        raise UserError(f"on {socket.gethostname()}: the cluster side cannot use the job file: {exc}") from None
    check_visible(job)
    from mmexpr.train.driver import run_training  # lazy: wait-nodes needs neither torch nor MLflow

    forward_signals()
    result = run_training(job, resume=args.resume, address=args.address)
    return PREEMPTED if result.preempted else 0


def _wait_nodes(args: argparse.Namespace) -> int:
    """Poll the cluster until `--nodes` nodes are alive; exit 3 naming what joined on timeout."""
    import ray  # lazy: heavy; `run` gets it through the driver, after its checks

    deadline = time.monotonic() + args.timeout
    alive = 0
    while time.monotonic() < deadline:
        try:
            ray.init(address=args.address, logging_level="ERROR", log_to_driver=False)
            try:
                while time.monotonic() < deadline:
                    alive = sum(1 for n in ray.nodes() if n["Alive"])
                    if alive >= args.nodes:
                        print(f"mmexpr: {alive} Ray node(s) joined", flush=True)
                        return 0
                    time.sleep(2)
            finally:
                ray.shutdown()
        except (ConnectionError, RuntimeError, TimeoutError):
            time.sleep(2)  # head not up yet
    print(f"mmexpr: error: only {alive} of {args.nodes} Ray nodes joined {args.address} "
          f"within {args.timeout} s; see the Ray logs on the missing nodes", file=sys.stderr)
    return 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmexpr.submit.on_cluster")
    sub = parser.add_subparsers(dest="what", required=True)
    run = sub.add_parser("run")
    run.add_argument("job_file")
    run.add_argument("--resume", default=None)
    run.add_argument("--address", default=None, help="Ray cluster (default: the one this job runs in)")
    run.add_argument("--slurm-job", default=None, help="SLURM job id (names the job in ps and the log)")
    run.set_defaults(func=_run)
    wait = sub.add_parser("wait-nodes")
    wait.add_argument("--address", required=True)
    wait.add_argument("--nodes", type=int, required=True)
    wait.add_argument("--timeout", type=float, default=300)
    wait.set_defaults(func=_wait_nodes)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
