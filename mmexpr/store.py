"""Where runs are recorded: the MLflow store rule and the one way to get a client for it.

The store is `track.tracking_uri` of the job, else $MLFLOW_TRACKING_URI, else a SQLite file
plus an artifact folder under the job's output folder (`<output>/mlflow.db`,
`<output>/mlartifacts`), so `mlflow ui` works with no server. Training writes there and
`runs`, `ui`, `predict --run` and the demo read there; every one of them asks this module,
so reader and writer can never disagree about the place.

A tracking server that cannot be reached when training starts is reported and replaced by
the local store (`choose_store`), so training never waits on it.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

DEFAULT_OUTPUT = "runs"


def local_store(output: str | os.PathLike = DEFAULT_OUTPUT) -> tuple[str, Path]:
    """The default store of an output folder: `<output>/mlflow.db` and `<output>/mlartifacts`."""
    root = Path(output).resolve()
    return f"sqlite:///{root / 'mlflow.db'}", root / "mlartifacts"


def tracking_uri(configured: str = "", output: str | os.PathLike = DEFAULT_OUTPUT) -> str:
    """The store to use: the configured URI, else $MLFLOW_TRACKING_URI, else the local store."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI", "") or local_store(output)[0]


def job_tracking_uri(job) -> str:
    """The store a job writes to (before any reachability check)."""
    return tracking_uri(job.track.tracking_uri, job.output)


def server_reachable(uri: str, timeout: float = 5.0) -> str:
    """'' when an http(s) tracking server answers, else the reason; other stores are local."""
    if not uri.startswith(("http://", "https://")):
        return ""
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return ""  # it answered, just not to /health
    except (OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))
    return ""


@dataclass(frozen=True)
class Store:
    uri: str
    artifact_root: Path | None  # set for the local store: experiments keep artifacts there
    note: str  # what was decided and why, printed by the driver


def choose_store(job) -> Store:
    """The job's configured store if usable, else the local one with a note saying why."""
    uri = job_tracking_uri(job)
    local_uri, artifacts = local_store(job.output)
    if uri == local_uri:
        artifacts.mkdir(parents=True, exist_ok=True)
        return Store(uri, artifacts, f"MLflow: local store {uri}")
    problem = server_reachable(uri)
    if problem:
        artifacts.mkdir(parents=True, exist_ok=True)
        return Store(
            local_uri,
            artifacts,
            f"MLflow: tracking server {uri} unreachable ({problem}); training goes on and logs to the "
            f"local store {local_uri} instead",
        )
    return Store(uri, None, f"MLflow: {uri}")


def client(uri: str):
    """An MlflowClient whose tracking and registry are both `uri` (the registry lives beside the runs)."""
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
