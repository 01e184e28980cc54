"""Which cluster each submitted Ray job went to, so `jobs status|logs|stop ID` needs only the id.

One JSON line per submission in ~/.mmexpr/jobs.jsonl (or $MMEXPR_HOME/jobs.jsonl). SLURM
needs no such file: squeue and scontrol know the jobs, and the job name marks ours.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Submission:
    id: str
    address: str
    job: str
    submitted: float


def registry_path() -> Path:
    home = os.environ.get("MMEXPR_HOME") or str(Path.home() / ".mmexpr")
    return Path(home) / "jobs.jsonl"


def record(job_id: str, address: str, job_name: str) -> None:
    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = Submission(job_id, address, job_name, time.time())
    with open(path, "a") as out:
        out.write(json.dumps(asdict(entry)) + "\n")


def lookup(job_id: str) -> Submission | None:
    """The latest record of `job_id`; unreadable lines are skipped (the file is only a cache)."""
    found = None
    for entry in submissions():
        if entry.id == job_id:
            found = entry
    return found


def submissions() -> list[Submission]:
    path = registry_path()
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(Submission(**json.loads(line)))
        except (ValueError, TypeError):
            continue
    return out
