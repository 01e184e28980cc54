"""A trained model found through MLflow: by run (id or name) or by model URI (`models:/mmexpr/3`).

A run points at its checkpoints with the tags `checkpoint.best` / `checkpoint.latest`
(set by rank 0 as it saves). When that folder is on this machine it is loaded directly
(DeepSpeed's shards, consolidated here); otherwise, e.g. on another host than the one that
trained, the run's registered copy (`best_model/`: consolidated weights + config.yaml, logged
at the end of training) is downloaded from the artifact store instead.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow.artifacts
import yaml
from mlflow.exceptions import MlflowException

from mmexpr import store
from mmexpr.config import job_from_dict
from mmexpr.predict.weights import Loaded, WeightsError, load_checkpoint
from mmexpr.runs.listing import find_run, resolve_tracking_uri


def _load_artifact_folder(uri: str, tracking_uri: str, what: str) -> Loaded:
    """Download `best_model/` (weights.pt + config.yaml) and rebuild the model from it."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=tracking_uri))
        except (MlflowException, OSError) as exc:
            raise WeightsError(f"{what}: cannot download its model ({uri}): {exc}") from None
        weights = local / "weights.pt"
        if not weights.is_file():
            raise WeightsError(f"{what}: {uri} holds no weights.pt")
        loaded = load_checkpoint(weights)
    loaded.source = f"{what} ({uri})"
    return loaded


def _run_job(tracking_uri: str, run_id: str):
    """The resolved job config the run logged (`config.yaml`), or None to look beside the checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = store.client(tracking_uri).download_artifacts(run_id, "config.yaml", tmp)
        except (MlflowException, OSError):
            return None
        return job_from_dict(yaml.safe_load(Path(path).read_text()))


def load_from_mlflow(*, run: str | None, model_uri: str | None, tracking_uri: str | None, output: str) -> Loaded:
    uri = resolve_tracking_uri(tracking_uri, output)
    if model_uri:
        if model_uri.startswith("models:/"):
            name, _, version = model_uri[len("models:/") :].partition("/")
            client = store.client(uri)
            try:
                if version.isdigit():
                    mv = client.get_model_version(name, version)
                else:
                    found = client.get_latest_versions(name)
                    if not found:
                        raise WeightsError(f"{model_uri}: model {name!r} has no versions in {uri}")
                    mv = max(found, key=lambda v: int(v.version))
            except MlflowException as exc:
                raise WeightsError(f"{model_uri}: not in the registry of {uri}: {exc}") from None
            return _load_artifact_folder(mv.source, uri, model_uri)
        return _load_artifact_folder(model_uri, uri, model_uri)
    assert run is not None
    row = find_run(uri, run)
    tags = store.client(uri).get_run(row.run_id).data.tags
    for key in ("checkpoint.best", "checkpoint.latest"):
        path = tags.get(key)
        if path and Path(path).is_dir():
            loaded = load_checkpoint(path, _run_job(uri, row.run_id))
            loaded.source = f"run {row.name} ({row.run_id}) {key} {path}"
            return loaded
    return _load_artifact_folder(f"runs:/{row.run_id}/best_model", uri, f"run {row.name} ({row.run_id})")
