"""What the driver hands every worker, and what rank 0 hands back: two typed records, and
the progress file through which rank 0 tells the driver where it stands while it trains.

Ray Train passes the worker a dict (`train_loop_config`) and returns the metrics a worker
reported; both cross that boundary as plain dicts made here, so neither side reads keys
back with defaults and a renamed field fails loudly on both sides at once.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LoopConfig:
    """The driver's decisions, taken once per invocation before any worker starts."""

    job: dict[str, Any]  # the resolved, absolute-path job (JobConfig.to_dict())
    run_dir: str
    run_id: str
    tracking_uri: str
    resume_tag: str | None  # --resume's checkpoint; a Ray restart prefers a newer one of this invocation
    class_counts: list[int]  # train label histogram, for class weights
    au_positive_rates: list[float] | None  # train AU positive rates, for BCE positive weights
    started_at: float  # wall time the invocation started (newer checkpoints are its own)
    driver_pid: int = 0  # local runs: the driver whose death ends the workers (fate.py); 0 = none
    driver_started: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"loop": asdict(self)}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> LoopConfig:
        return cls(**config["loop"])


@dataclass(frozen=True)
class LoopResult:
    """Where a rank stopped: its step, the best and last validation score (train.best_metric's;
    the names keep "f1" from when EXPR was the only task), and why it stopped."""

    step: int
    best_f1: float
    best_step: int | None
    last_f1: float | None
    preempted: bool
    resumed_from: str
    world_size: int
    data_loss: str = ""  # why the loop stopped on lost samples (data_loss.py), "" if it did not

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any]) -> LoopResult:
        """From the metrics Ray returns (which may carry Ray's own keys beside ours)."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in metrics]
        if missing:
            raise KeyError(f"training result lacks {missing}: the workers ended without reporting")
        return cls(**{n: metrics[n] for n in names})


PROGRESS_FILE = "progress.json"


def write_progress(run_dir: Path, step: int, values: dict[str, Any]) -> None:
    """Rank 0's live position, for the driver's one progress display (replaced atomically)."""
    path = Path(run_dir) / PROGRESS_FILE
    tmp = path.with_name(f".{PROGRESS_FILE}.tmp")
    tmp.write_text(json.dumps({"step": step, "time": time.time(), **values}))
    os.replace(tmp, path)


def read_progress(run_dir: Path, since: float) -> dict[str, Any] | None:
    """The last position rank 0 wrote after `since` (an older file is another invocation's)."""
    try:
        report = json.loads((Path(run_dir) / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return report if report.get("time", 0) >= since else None
