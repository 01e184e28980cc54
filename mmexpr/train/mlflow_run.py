"""MLflow: where a run is recorded, and what goes into it.

Split of work, and why: the *driver* opens the run (or re-opens it on --resume), logs the
resolved config as params and as `config.yaml`, the versions, git commit, world size and
accelerator, and at the end closes the run and registers the best model. It owns the run's
life so that a run id exists before any worker starts (workers restarted by Ray, and a later
--resume, write into the same run), and so registration happens once, after the workers are
gone. *Rank 0* logs what only the workers see, as it happens: per-step losses, learning
rates, samples/s, data-wait fraction, evaluations with their figures, checkpoint locations.
Sending those through Ray to the driver would add a hop and lose them if the driver dies.

Where the store is, and the fallback when a server is down at start, is mmexpr/store.py. If
the store fails mid-run, rank 0 keeps the metrics buffered, says so once, and retries at
the next flush.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import mlflow
import torch
import transformers
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from mmexpr.config import JobConfig, flatten
from mmexpr.store import Store, client
from mmexpr.train import figures

MAX_BUFFER = 100_000  # metric points kept while a server is down


def _experiment_id(mlflow_client, name: str, artifact_root: Path | None) -> str:
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (artifact_root / name).as_uri() if artifact_root is not None else None
    return mlflow_client.create_experiment(name, artifact_location=location)


def git_commit() -> str:
    repo = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def versions() -> dict[str, str]:
    # Read from the installed metadata, not by importing: the driver opens the run before Ray
    # starts (Ray reads its loopback setting at import) and never builds a DeepSpeed engine.
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "deepspeed": importlib.metadata.version("deepspeed"),
        "ray": importlib.metadata.version("ray"),
        "mlflow": mlflow.__version__,
        "transformers": transformers.__version__,
    }


def open_run(store: Store, job: JobConfig, run_id: str | None, tags: dict[str, str]) -> str:
    """Create the run (params, config file, tags) or re-open an existing one for --resume.

    Params are written only when the run is created: MLflow params are immutable, and a
    resumed run may legitimately change e.g. train.workers (that goes into a tag instead).
    """
    c = client(store.uri)
    if run_id is not None:
        try:
            c.get_run(run_id)
        except MlflowException as exc:
            raise LookupError(f"run {run_id} not found in the MLflow store {store.uri}") from exc
        c.update_run(run_id, status="RUNNING")
        resumes = int(c.get_run(run_id).data.tags.get("mmexpr.resumes", "0")) + 1
        tags = {**tags, "mmexpr.resumes": str(resumes)}
        c.log_text(run_id, job.to_yaml(), f"config_resume_{resumes}.yaml")
    else:
        exp = _experiment_id(c, job.track.experiment, store.artifact_root)
        run = c.create_run(exp, run_name=job.track.run_name or job.name)
        run_id = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flatten(job.to_dict()).items()]
        for i in range(0, len(params), 100):
            c.log_batch(run_id, params=params[i : i + 100])
        c.log_text(run_id, job.to_yaml(), "config.yaml")
    all_tags = {**tags, "git_commit": git_commit(), **{f"version.{k}": v for k, v in versions().items()}}
    for key, value in all_tags.items():
        c.set_tag(run_id, key, value)
    return run_id


def finish_run(store: Store, run_id: str, status: str) -> None:
    client(store.uri).set_terminated(run_id, status=status)


def register_model(store: Store, run_id: str, name: str, weights: dict[str, Any], job: JobConfig, meta: dict) -> str:
    """Log consolidated weights + config as `best_model/` and register them as a new version."""
    c = client(store.uri)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "best_model"
        folder.mkdir()
        torch.save(weights, folder / "weights.pt")
        job.write(folder / "config.yaml")
        (folder / "checkpoint.txt").write_text(
            f"step {meta.get('step')}\nval macro F1 {meta.get('val_macro_f1')}\nval scores {meta.get('val_scores')}\n"
            f"checkpoint {meta.get('path')}\n"
        )
        c.log_artifacts(run_id, str(folder), "best_model")
    source = f"{c.get_run(run_id).info.artifact_uri.rstrip('/')}/best_model"
    try:
        c.create_registered_model(name)
    except MlflowException:
        pass  # already registered: add a version
    version = c.create_model_version(name, source, run_id=run_id, tags={"step": str(meta.get("step"))})
    return str(version.version)


class RunLogger:
    """Rank 0's side: buffered metrics, evaluation figures, checkpoint references.

    Every MLflow call is guarded: a failing store never stops training. Metrics stay in the
    buffer until a flush succeeds (bounded by MAX_BUFFER points).
    """

    def __init__(self, uri: str, run_id: str) -> None:
        self.uri = uri
        self.run_id = run_id
        self._client = client(uri)
        self._buffer: list[Any] = []
        self._warned = False

    def _guard(self, what: str, fn, *args, **kwargs) -> bool:
        try:
            fn(*args, **kwargs)
            return True
        except Exception as exc:  # any store failure: report once, keep training
            if not self._warned:
                warnings.warn(f"MLflow ({self.uri}) failed to {what}: {exc}; training goes on", stacklevel=3)
                self._warned = True
            return False

    def metrics(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), now, step) for k, v in values.items()]
        del self._buffer[:-MAX_BUFFER]

    def flush(self) -> None:
        while self._buffer:
            chunk = self._buffer[:1000]
            if not self._guard("log metrics", self._client.log_batch, self.run_id, metrics=chunk):
                return
            del self._buffer[: len(chunk)]

    def evaluation(self, evaluation, step: int) -> None:
        """Every task's scores (val/macro_f1, val/va_ccc, val/au_f1, val/score_<task>, ...), its
        figures and the score table."""
        scores = evaluation.scores
        self.metrics(scores.as_metrics("val/"), step)
        self.flush()
        made = []
        if scores.expr is not None:
            made += [("confusion", lambda: figures.confusion_figure(scores.expr, step)),
                     ("per_class_f1", lambda: figures.per_class_f1_figure(scores.expr, step))]
        if scores.va is not None and evaluation.va_sample is not None:
            made += [("va_time", lambda: figures.va_time_figure(evaluation.va_sample, step)),
                     ("va_scatter", lambda: figures.va_scatter_figure(evaluation.va_sample, scores.va, step))]
        if scores.au is not None:
            made.append(("au_f1", lambda: figures.au_f1_figure(scores.au, step)))
        for name, make in made:
            fig = make()
            self._guard("log a figure", self._client.log_figure, self.run_id, fig, f"eval/{name}_step_{step:08d}.png")
            figures.close(fig)
        self._guard("log a table", self._client.log_text, self.run_id, scores.table(), f"eval/scores_step_{step:08d}.txt")

    def checkpoint(self, path: Path, step: int, seconds: float, size: int, is_best: bool, f1: float | None) -> None:
        record = {"step": step, "path": str(path), "seconds": seconds, "bytes": size, "best": is_best, "val_score": f1}
        self._guard("log a checkpoint record", self._client.log_dict, self.run_id, record, f"checkpoints/{path.name}.json")
        self._guard("tag the checkpoint", self._client.set_tag, self.run_id, "checkpoint.latest", str(path))
        if is_best:
            self._guard("tag the checkpoint", self._client.set_tag, self.run_id, "checkpoint.best", str(path))
        self.metrics({"checkpoint/save_s": seconds, "checkpoint/gb": size / 1e9}, step)
