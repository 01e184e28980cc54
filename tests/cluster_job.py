"""The command-line arguments of a job small enough for two "hosts" sharing 2 cores:
tiny encoders, one worker per node, batches of two 8-frame windows, no evaluation."""

from __future__ import annotations

from pathlib import Path


def tiny_cluster_job(shards: Path, output: Path, *, steps: int, checkpoint_every: int, experiment: str) -> list[str]:
    settings = {
        "data.shards": shards, "output": output,
        "model.preset": "tiny", "train.workers": 2, "train.cpus_per_worker": 1,
        "train.max_steps": steps, "train.warmup_steps": 1,
        "train.eval_every": 1000, "train.checkpoint_every": checkpoint_every,
        "data.batch_size": 2, "data.window": 8, "data.loader_workers": 0,
        "track.tracking_uri": f"sqlite:///{output}/mlflow.db", "track.register_model": "''",
        "track.experiment": experiment,
    }
    return ["jobs/demo.yaml", *(arg for key, value in settings.items() for arg in ("--set", f"{key}={value}"))]
