"""Runs as MLflow holds them: a table of runs, a side-by-side of two, a sweep's variants.

Everything is read straight from the tracking store (no cache of our own), so the table
agrees with the MLflow UI. A run's config lives in its params as dotted keys
(`model.fusion`, ...); the table shows only the keys that differ between the listed runs,
because twenty identical columns hide the one that matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlflow.exceptions import MlflowException

from mmexpr import store
from mmexpr.errors import UserError

SWEEP_TAG = "mmexpr.sweep"
VARIANT_TAG = "mmexpr.variant"


class RunNotFound(UserError, LookupError):
    """A run id or name that the store does not hold."""


@dataclass(frozen=True)
class RunRow:
    """One run, reduced to what the table shows."""

    run_id: str
    name: str
    experiment: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    best_f1: float | None
    best_f1_key: str
    steps: int | None
    sweep: str
    best_scores: dict[str, float] | None = None  # best VA CCC and AU F1 over the run, where logged


def resolve_tracking_uri(explicit: str | None, output: str = store.DEFAULT_OUTPUT) -> str:
    """The store a command reads: --tracking-uri, else the rule training writes by (store.py)."""
    return store.tracking_uri(explicit or "", output)


def f1_key(metrics: dict[str, float]) -> str:
    """The validation macro-F1 metric of a run, whatever prefix the trainer gave it."""
    keys = sorted(k for k in metrics if k.endswith("macro_f1"))
    preferred = [k for k in keys if "val" in k and "best" not in k]
    return (preferred or keys or [""])[0]


def _best_and_steps(client, run, key: str) -> tuple[float | None, int | None]:
    """Best F1 over the run's history, and the last step any loss or F1 was logged at."""
    best = None
    steps: int | None = None
    if key:
        history = client.get_metric_history(run.info.run_id, key)
        if history:
            best = max(m.value for m in history)
            steps = max(m.step for m in history)
    loss_keys = [k for k in run.data.metrics if "loss" in k]
    if loss_keys:
        history = client.get_metric_history(run.info.run_id, sorted(loss_keys)[0])
        if history:
            steps = max(steps or 0, max(m.step for m in history))
    return best, steps


# The ABAW scores beside EXPR's macro F1: metric -> column title.
TASK_SCORES = {"val/va_ccc": "best VA CCC", "val/au_f1": "best AU F1"}


def _best_task_scores(client, run) -> dict[str, float]:
    out = {}
    for key in TASK_SCORES:
        if key in run.data.metrics:
            history = client.get_metric_history(run.info.run_id, key)
            if history:
                out[key] = max(m.value for m in history)
    return out


def _row(client, run, experiment: str) -> RunRow:
    key = f1_key(run.data.metrics)
    best, steps = _best_and_steps(client, run, key)
    return RunRow(
        run_id=run.info.run_id,
        name=run.info.run_name or run.data.tags.get("mlflow.runName", ""),
        experiment=experiment,
        status=run.info.status,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        best_f1=best,
        best_f1_key=key,
        steps=steps,
        sweep=run.data.tags.get(SWEEP_TAG, ""),
        best_scores=_best_task_scores(client, run),
    )


def list_runs(
    tracking_uri: str,
    *,
    experiment: str | None = None,
    sweep: str | None = None,
    limit: int = 50,
) -> list[RunRow]:
    """Runs newest first, across all experiments unless one is named; optionally one sweep's."""
    client = store.client(tracking_uri)
    experiments = client.search_experiments()
    if experiment:
        experiments = [e for e in experiments if e.name == experiment or e.experiment_id == experiment]
        if not experiments:
            raise RunNotFound(f"{tracking_uri}: no experiment named {experiment!r}")
    if not experiments:
        return []
    names = {e.experiment_id: e.name for e in experiments}
    filt = f"tags.`{SWEEP_TAG}` = '{sweep}'" if sweep else ""
    runs = client.search_runs(
        list(names), filter_string=filt, order_by=["attributes.start_time DESC"], max_results=limit
    )
    return [_row(client, r, names[r.info.experiment_id]) for r in runs]


def find_run(tracking_uri: str, ref: str) -> RunRow:
    """A run by id, or by name (the newest run of that name)."""
    client = store.client(tracking_uri)
    try:
        run = client.get_run(ref)
    except MlflowException:
        run = None
    if run is None:
        experiments = [e.experiment_id for e in client.search_experiments()]
        found = client.search_runs(
            experiments,
            filter_string=f"attributes.run_name = '{ref}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        ) if experiments else []
        if not found:
            raise RunNotFound(f"{tracking_uri}: no run with id or name {ref!r} (see `mmexpr runs`)")
        run = found[0]
    experiment = client.get_experiment(run.info.experiment_id).name
    return _row(client, run, experiment)


def differing_params(rows: list[RunRow], limit: int = 6) -> list[str]:
    """Config keys with more than one value among the listed runs.

    A key only some runs have (a config section added after older runs were made) differs
    only by its absence; that is a schema change, not a setting anyone chose, so it is left out.
    """
    keys = sorted({k for r in rows for k in r.params})
    differ = [k for k in keys if len({r.params[k] for r in rows if k in r.params}) > 1]
    # Bookkeeping params (paths, names) differ between any two runs and say nothing about the model.
    noise = ("name", "output", "track.run_name", "data.shards")
    return [k for k in differ if k not in noise][:limit]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _render(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(line.rstrip() for line in lines)


def runs_table(rows: list[RunRow]) -> str:
    """Name, status, the config keys that differ, best macro F1 (and VA CCC, AU F1 where a run has
    them) and steps; one line per run."""
    if not rows:
        return "no runs"
    keys = differing_params(rows)
    tasks = [k for k in TASK_SCORES if any(k in (r.best_scores or {}) for r in rows)]
    header = ["run", "name", "status", *keys, "best macro F1", *(TASK_SCORES[k] for k in tasks), "steps"]
    body = [
        [r.run_id[:8], r.name, r.status, *(r.params.get(k, "-") for k in keys), _fmt(r.best_f1),
         *(_fmt((r.best_scores or {}).get(k)) for k in tasks), _fmt(r.steps)]
        for r in rows
    ]
    return _render(header, body)


def compare_table(a: RunRow, b: RunRow, *, all_params: bool = False) -> str:
    """Two runs side by side: identity, then params and final metrics; `*` marks a difference."""
    header = ["", a.name or a.run_id[:8], b.name or b.run_id[:8], ""]
    body: list[list[str]] = [
        ["run id", a.run_id, b.run_id, ""],
        ["experiment", a.experiment, b.experiment, ""],
        ["status", a.status, b.status, ""],
        ["steps", _fmt(a.steps), _fmt(b.steps), ""],
        ["best macro F1", _fmt(a.best_f1), _fmt(b.best_f1), ""],
    ]
    for key, title in TASK_SCORES.items():
        sa, sb = (a.best_scores or {}).get(key), (b.best_scores or {}).get(key)
        if sa is not None or sb is not None:
            body.append([title, _fmt(sa), _fmt(sb), ""])
    keys = sorted(set(a.params) | set(b.params))
    for k in keys:
        va, vb = a.params.get(k, "-"), b.params.get(k, "-")
        if all_params or va != vb:
            body.append([k, va, vb, "*" if va != vb else ""])
    for k in sorted(set(a.metrics) | set(b.metrics)):
        va, vb = a.metrics.get(k), b.metrics.get(k)
        body.append([k, _fmt(va), _fmt(vb), "*" if va != vb else ""])
    return _render(header, body)
