"""`--on slurm`: render the sbatch script from ray_train.sbatch (beside this file), submit it,
and answer `jobs` (list, status, logs, stop) with SLURM's own commands.

The script and the resolved job file are written next to each other under the job's
output folder (`<output>/slurm/`), which every node must see anyway; the script is kept
there when sbatch refuses it, for inspection.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mmexpr.config import JobConfig, is_uri, with_absolute_paths
from mmexpr.errors import UserError

TEMPLATE = Path(__file__).with_name("ray_train.sbatch")  # cluster/slurm/ray_train.sbatch links here
JOB_PREFIX = "mmexpr-"


class SlurmError(UserError):
    """sbatch/squeue/scontrol refused a request or are missing; the message is SLURM's own."""


@dataclass(frozen=True)
class Rendered:
    script: str
    job: JobConfig  # absolutized: what the nodes read


def _lines(options: list[tuple[str, str]]) -> str:
    return "\n".join(f"#SBATCH --{k}={v}" for k, v in options if v)


def gpus_per_node(job: JobConfig) -> int:
    """GPUs to ask each node for: the job's own setting, else enough for one GPU per training
    worker (train.use_gpu) spread over the nodes, else none. A job that trains on GPUs thus
    submits as it is, without a second number to keep in step with train.workers."""
    s = job.slurm
    if s.gpus_per_node is not None:
        return s.gpus_per_node
    return -(-job.train.workers // s.nodes) if job.train.use_gpu else 0


def render(job: JobConfig, job_file: str, resume: str | None = None, python: str | None = None) -> str:
    """The sbatch script for `job`, whose resolved config the nodes read from `job_file`."""
    s = job.slurm
    gpus = gpus_per_node(job)
    if job.train.use_gpu and job.train.workers > s.nodes * gpus:
        raise SlurmError(
            f"train.workers={job.train.workers} with train.use_gpu needs that many GPUs, but "
            f"slurm asks for {s.nodes} node(s) x {gpus} GPU(s) (slurm.gpus_per_node)"
        )
    optional = _lines(
        [("gpus-per-node", str(gpus) if gpus else ""), ("mem", s.mem),
         ("partition", s.partition), ("account", s.account), ("qos", s.qos)]
    )
    extra = [f"#SBATCH {line.strip().removeprefix('#SBATCH').strip()}" for line in s.extra]
    values = {
        "job_name": JOB_PREFIX + job.name,
        "nodes": str(s.nodes),
        "cpus_per_node": str(s.cpus_per_node),
        "gpus_per_node": str(gpus),
        "time": s.time,
        "signal_seconds": str(s.signal_seconds),
        "log_dir": shlex.quote(str(Path(job_file).parent)),
        "optional_lines": "\n".join(x for x in [optional, *extra] if x),
        "job_file": shlex.quote(job_file),
        "python": shlex.quote(python or s.python or sys.executable),
        "ray_port": str(s.ray_port),
        "dashboard_port": str(s.dashboard_port),
        "join_timeout": str(s.join_timeout),
        "setup_lines": "\n".join(s.setup),
        "resume_args": f"--resume {shlex.quote(resume)}" if resume else "",
    }
    text = TEMPLATE.read_text()
    missing = set(re.findall(r"\{\{(\w+)\}\}", text)) - values.keys()
    if missing:
        raise SlurmError(f"{TEMPLATE}: unknown placeholders {sorted(missing)}")
    text = re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], text)
    return re.sub(r"\n{3,}", "\n\n", text)


def submit_dir(job: JobConfig) -> Path:
    if is_uri(job.output):
        raise SlurmError(
            f"output={job.output}: --on slurm keeps the script and job file under the output "
            "folder, which must be a shared filesystem path here"
        )
    return Path(job.output) / "slurm"


def prepare(job: JobConfig, resume: str | None = None) -> tuple[Path, str]:
    """Write the resolved job file; return (script path to write, script text)."""
    job = with_absolute_paths(job)
    folder = submit_dir(job)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    job_file = folder / f"{job.name}-{stamp}.yaml"
    script = render(job, str(job_file), resume)
    job.write(job_file)
    return folder / f"{job.name}-{stamp}.sbatch", script


def dry_run(job: JobConfig, resume: str | None = None) -> str:
    """The script as it would be submitted, writing nothing."""
    job = with_absolute_paths(job)
    return render(job, str(submit_dir(job) / f"{job.name}-STAMP.yaml"), resume)


def submit(job: JobConfig, resume: str | None = None) -> tuple[str, Path]:
    """sbatch the rendered script; return (SLURM job id, script path)."""
    path, script = prepare(job, resume)
    path.write_text(script)
    out = _slurm(["sbatch", "--parsable", str(path)], what="sbatch", keep=path)
    return out.strip().split(";")[0], path


def _slurm(argv: list[str], what: str, keep: Path | None = None, timeout: float = 60) -> str:
    if shutil.which(argv[0]) is None:
        raise SlurmError(f"{argv[0]} not found: SLURM client commands must be on PATH (slurm-client)")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{what} did not answer within {timeout:.0f} s (is slurmctld up?)") from None
    if done.returncode:
        kept = f"\nthe script is kept for inspection: {keep}" if keep else ""
        raise SlurmError(f"{what} refused the request: {done.stderr.strip() or done.stdout.strip()}{kept}")
    return done.stdout


@dataclass(frozen=True)
class SlurmJob:
    id: str
    name: str
    state: str
    elapsed: str
    nodes: str
    restarts: str
    run_id: str
    log: str


def list_jobs() -> list[SlurmJob]:
    """This project's jobs (name mmexpr-*) that SLURM still knows, with the MLflow run id."""
    out = _slurm(["squeue", "-h", "-o", "%i|%j|%T|%M|%R"], what="squeue")
    jobs = []
    for line in out.splitlines():
        job_id, name, state, elapsed, nodes = (line.split("|") + [""] * 5)[:5]
        if name.startswith(JOB_PREFIX):
            jobs.append(_with_details(job_id, name, state, elapsed, nodes))
    return jobs


def _with_details(job_id: str, name: str, state: str, elapsed: str, nodes: str) -> SlurmJob:
    fields = show(job_id)
    log = fields.get("StdOut", "")
    return SlurmJob(job_id, name, state, elapsed, nodes, fields.get("Restarts", "0"), run_id_from_log(log), log)


def show(job_id: str) -> dict[str, str]:
    """`scontrol show job -o ID` as a dict."""
    out = _slurm(["scontrol", "show", "job", "-o", job_id], what=f"scontrol show job {job_id}")
    fields = {}
    for token in out.split():
        key, sep, value = token.partition("=")
        if sep:
            fields[key] = value
    return fields


RUN_ID = re.compile(r"^run ([0-9a-f]{32}): ", re.MULTILINE)  # printed by mmexpr.train.driver


def run_id_from_log(log: str) -> str:
    """The driver prints the MLflow run id; the job log keeps it across requeues."""
    try:
        text = Path(log).read_text(errors="replace")
    except OSError:
        return ""
    found = RUN_ID.findall(text)
    return found[-1] if found else ""


def logs(job_id: str) -> str:
    path = show(job_id).get("StdOut", "")
    try:
        return Path(path).read_text(errors="replace")
    except OSError as exc:
        raise SlurmError(f"job {job_id}: cannot read its log {path}: {exc.strerror}") from None


def stop(job_id: str) -> None:
    _slurm(["scancel", job_id], what=f"scancel {job_id}")
