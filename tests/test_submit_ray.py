"""`train --on http://HEAD:8265` against a real two-host Ray cluster (two network namespaces).

The client commands run in the head's namespace: it is the only place that reaches the
cluster, so no test traffic leaves loopback or the namespaces made here.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmexpr.submit.target import TargetError, parse_target
from tests.cluster_job import tiny_cluster_job
from tests.netns import netns_missing_reason, wait_until

MMEXPR = str(Path(sys.executable).with_name("mmexpr"))


def test_on_accepts_local_slurm_ray_and_dashboard_addresses():
    assert parse_target("local").kind == "local"
    assert parse_target("slurm").kind == "slurm"
    assert parse_target("ray://10.0.0.5:10001").address == "http://10.0.0.5:8265"
    assert parse_target("http://head:9000").address == "http://head:9000"
    assert parse_target("https://head").address == "https://head:8265"
    with pytest.raises(TargetError, match="expected local, slurm, ray://HOST:PORT"):
        parse_target("kubernetes")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_ray_address_fails_in_seconds_with_a_plain_message(tmp_path):
    port = _closed_port()
    started = time.monotonic()
    done = subprocess.run(
        [MMEXPR, "jobs", "status", "mmexpr-x", "--on", f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=60, env={"MMEXPR_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert time.monotonic() - started < 20
    assert done.returncode == 2
    assert f"cannot reach the Ray dashboard at http://127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def _tiny_job(shards: Path, output: Path, steps: int) -> list[str]:
    return tiny_cluster_job(shards, output, steps=steps, checkpoint_every=steps, experiment="ray-jobs")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    reason = netns_missing_reason()
    if reason:
        pytest.skip(reason)
    from tests.ray_two_hosts import ray_two_hosts

    with ray_two_hosts(tmp_path_factory.mktemp("ray2")) as cluster:
        yield cluster


@pytest.mark.slow
def test_job_trains_on_both_ray_hosts_and_a_second_job_is_stopped(ray_cluster, demo_shards, tmp_path):
    from tests.ray_two_hosts import ray_env

    env = {**ray_env(), "MMEXPR_HOME": str(tmp_path / "home")}
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "runs"

    def cli(args: list[str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            ray_cluster.client_cmd([MMEXPR, *args]), capture_output=True, text=True,
            timeout=timeout, env=env, cwd=repo,
        )

    # 1. a short job, followed to the end
    done = cli(["train", *_tiny_job(demo_shards, out, 4), "--on", ray_cluster.dashboard], timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "SUCCEEDED" in log
    assert f"ip={ray_cluster.net.b.ip}" in log, "no train worker ran on the second host"
    assert f"ip={ray_cluster.net.a.ip}" in log or "world size 2" in log
    from mlflow import MlflowClient

    store = MlflowClient(f"sqlite:///{out}/mlflow.db")
    runs = store.search_runs([store.get_experiment_by_name("ray-jobs").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert runs[0].info.run_id in log

    # 2. a long job, detached, stopped mid-run with `jobs stop`
    started = cli(["train", *_tiny_job(demo_shards, out, 100000), "--on", ray_cluster.dashboard, "--detach"], 120)
    assert started.returncode == 0, started.stderr[-3000:]
    job_id = started.stdout.split("submitted Ray job ")[1].split()[0]

    def training() -> bool:
        logs = cli(["jobs", "logs", job_id], timeout=60).stdout
        return re.search(r"^run [0-9a-f]{32}: ", logs, re.M) is not None and "RayTrainWorker" in logs

    wait_until(training, 300, f"job {job_id} to start training")
    stopped = cli(["jobs", "stop", job_id], timeout=120)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert "STOPPED" in stopped.stdout
    status = cli(["jobs", "status", job_id], timeout=60)
    assert "STOPPED" in status.stdout
