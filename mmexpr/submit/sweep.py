"""`mmexpr sweep JOB --grid key=a,b --grid key2=x,y`: every combination, one MLflow run each.

All variants are validated before the first one trains (a typo in the third value should
not surface an hour in). They run one after another in this process, each a normal
`run_training` (so each is its own Ray Train job with its own checkpoints), named
`<sweep>-<key=value,...>` and tagged `mmexpr.sweep=<sweep id>` and `mmexpr.variant=...`,
so `mmexpr runs --sweep ID` and the MLflow UI (filter `tags.mmexpr.sweep = 'ID'`) show the
set together. A variant that fails is recorded as failed and the sweep goes on.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import yaml

from mmexpr.config import ConfigError, JobConfig, load_job
from mmexpr.runs.listing import SWEEP_TAG, VARIANT_TAG, list_runs, runs_table
from mmexpr.store import job_tracking_uri
from mmexpr.train.driver import run_training


@dataclass(frozen=True)
class Variant:
    label: str  # e.g. "model.fusion=bi,model.modalities=video"
    overrides: tuple[str, ...]
    job: JobConfig


def split_values(raw: str) -> list[str]:
    """Commas outside brackets separate values, so a value may be a YAML list:
    `[expr],[expr,va,au]` -> ["[expr]", "[expr,va,au]"]."""
    values, depth, current = [], 0, ""
    for ch in raw:
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += ch
    return [v.strip() for v in [*values, current] if v.strip()]


def parse_grid(text: str) -> tuple[str, list[str]]:
    """`model.fusion=bi,concat` -> ("model.fusion", ["bi", "concat"]); list values keep their
    commas: `model.tasks=[expr],[expr,va,au]`."""
    if "=" not in text:
        raise ConfigError(f"--grid {text!r}: expected KEY=V1,V2,..., e.g. model.fusion=bi,concat")
    key, raw = text.split("=", 1)
    values = split_values(raw)
    if not key.strip() or not values:
        raise ConfigError(f"--grid {text!r}: needs a key and at least one value")
    return key.strip(), values


def expand(job_path: str, grids: list[str], overrides: list[str], sweep_id: str) -> list[Variant]:
    """Every combination of grid values, each a fully validated job."""
    if not grids:
        raise ConfigError("sweep: give at least one --grid KEY=V1,V2")
    axes = [parse_grid(g) for g in grids]
    keys = [k for k, _ in axes]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"sweep: a key appears in two --grid options: {keys}")
    variants = []
    for values in itertools.product(*(vals for _, vals in axes)):
        pairs = [f"{k}={v}" for k, v in zip(keys, values, strict=True)]
        label = ",".join(pairs)
        name = f"{sweep_id}-" + "-".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, values, strict=True))
        extra = (*overrides, *pairs, f"track.run_name={yaml.safe_dump(name).strip()}")
        variants.append(Variant(label, tuple(extra), load_job(job_path, list(extra))))
    return variants


def new_sweep_id(job: JobConfig) -> str:
    return f"{job.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_sweep(job_path: str, grids: list[str], overrides: list[str], *, dry_run: bool = False,
              sweep_id: str | None = None) -> tuple[str, list[tuple[Variant, str | None]]]:
    """Train each variant in turn; returns the sweep id and (variant, run id or None if failed)."""
    sweep_id = sweep_id or new_sweep_id(load_job(job_path, overrides))
    variants = expand(job_path, grids, overrides, sweep_id)
    print(f"sweep {sweep_id}: {len(variants)} variant(s)")
    for i, v in enumerate(variants, 1):
        print(f"  {i}. {v.label}")
    if dry_run:
        return sweep_id, [(v, None) for v in variants]
    done: list[tuple[Variant, str | None]] = []
    for i, v in enumerate(variants, 1):
        print(f"\n== sweep {sweep_id}: variant {i}/{len(variants)}: {v.label}", flush=True)
        try:
            result = run_training(v.job, tags={SWEEP_TAG: sweep_id, VARIANT_TAG: v.label})
        except Exception as exc:  # one broken variant must not cost the others
            print(f"variant {v.label} failed: {exc}", flush=True)
            done.append((v, None))
            continue
        done.append((v, result.run_id))

    uri = job_tracking_uri(variants[0].job)
    print(f"\nsweep {sweep_id} ({uri}):")
    print(runs_table(list_runs(uri, sweep=sweep_id)))
    print(f"again: mmexpr runs --sweep {sweep_id}" + (f" --output {variants[0].job.output}" if variants[0].job.output != "runs" else ""))
    return sweep_id, done
