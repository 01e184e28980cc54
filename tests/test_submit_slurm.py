"""`train --on slurm`: the rendered sbatch script, and real SLURM (two slurmd in two network
namespaces, so Ray head and worker really run on different addresses)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster_job import tiny_cluster_job
from tests.netns import NetnsPair, netns_missing_reason, wait_until

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
MMEXPR = str(Path(sys.executable).with_name("mmexpr"))


def _dry_run(*overrides: str) -> str:
    from mmexpr.config import load_job
    from mmexpr.submit import slurm

    return slurm.dry_run(load_job(REPO / "jobs" / "demo.yaml", list(overrides)))


def test_dry_run_script_for_4_nodes_x_8_gpus_asks_for_them_and_parses():
    script = _dry_run(
        "slurm.nodes=4", "slurm.gpus_per_node=8", "slurm.cpus_per_node=64", "slurm.mem=480G",
        "slurm.time=2-00:00:00", "slurm.partition=gpu", "slurm.account=vision", "slurm.qos=high",
        "slurm.extra=[--constraint=h100, --exclusive]", "train.use_gpu=true", "train.workers=32",
    )
    for line in ("--nodes=4", "--gpus-per-node=8", "--cpus-per-task=64", "--mem=480G",
                 "--time=2-00:00:00", "--partition=gpu", "--account=vision", "--qos=high",
                 "--constraint=h100", "--exclusive", "--requeue", "--signal=B:USR1@300"):
        assert f"#SBATCH {line}\n" in script
    assert "{{" not in script
    assert "scontrol requeue" in script and "--resume \"${RUN_ID:-latest}\"" in script
    syntax = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


README_4X8 = (
    "slurm.nodes=4", "slurm.gpus_per_node=8", "slurm.cpus_per_node=64", "slurm.mem=480G",
    "slurm.time=2-00:00:00", "slurm.partition=gpu", "slurm.account=myproject", "slurm.signal_seconds=600",
    "train.use_gpu=true", "train.workers=32", "data.shards=/shared/shards/affwild2", "output=/shared/runs",
    "slurm.python=/shared/venvs/mmexpr/bin/python", "slurm.setup=[module load cuda/12.4]",
)


def test_cluster_readme_shows_the_script_the_template_renders_today():
    text = (REPO / "cluster" / "README.md").read_text()
    shown = text.split("```bash\n", 1)[1].split("```\n", 1)[0]
    assert shown == _dry_run(*README_4X8), "regenerate the 4x8 dry-run block in cluster/README.md"


def test_more_gpu_workers_than_gpus_asked_for_is_refused_before_sbatch():
    from mmexpr.submit.slurm import SlurmError

    with pytest.raises(SlurmError, match="train.workers=16 with train.use_gpu needs that many GPUs"):
        _dry_run("slurm.nodes=1", "slurm.gpus_per_node=8", "train.use_gpu=true", "train.workers=16")


def test_cluster_side_names_a_job_file_it_cannot_read(tmp_path):
    missing = tmp_path / "elsewhere" / "job.yaml"
    done = subprocess.run(
        [PYTHON, "-m", "mmexpr.submit.on_cluster", "run", str(missing)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert f"on {socket.gethostname()}: the cluster side cannot use the job file" in done.stderr
    assert str(missing) in done.stderr


def test_cluster_side_names_shards_it_cannot_see(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(f"data: {{shards: {tmp_path}/not-shared}}\noutput: {tmp_path}/runs\n")
    done = subprocess.run(
        [PYTHON, "-m", "mmexpr.submit.on_cluster", "run", str(job)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert f"{tmp_path}/not-shared/train/manifest.json is not readable on {socket.gethostname()}" in done.stderr


# ---------------------------------------------------------------- real SLURM


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = netns_missing_reason()
    if reason:
        pytest.skip(reason)
    from tests.slurm_cluster import ensure_slurm_installed, slurm_two_nodes

    reason = ensure_slurm_installed()
    if reason:
        pytest.skip(reason)
    with slurm_two_nodes(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


def _cli(slurm, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """mmexpr on the login host (the controller's namespace), as a user would run it."""
    env = {**slurm.env(), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
           "GLOO_SOCKET_IFNAME": NetnsPair.IFNAME}  # the "hosts" share a hostname that resolves to loopback
    return subprocess.run(slurm.login.cmd([MMEXPR, *args]), capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def _tiny_job(shards: Path, output: Path, steps: int, every: int) -> list[str]:
    return [
        *tiny_cluster_job(shards, output, steps=steps, checkpoint_every=every, experiment="slurm"),
        "--set", "train.log_every=1",
        "--set", "slurm.nodes=2", "--set", "slurm.cpus_per_node=1", "--set", "slurm.time=15",
        "--set", "slurm.join_timeout=180",
    ]


def test_sbatch_refusal_shows_its_message_and_keeps_the_script(slurm, demo_shards, tmp_path):
    done = _cli(slurm, ["train", *_tiny_job(demo_shards, tmp_path, 2, 2), "--set", "slurm.partition=nosuch", "--on", "slurm"])
    assert done.returncode == 2
    assert "sbatch refused the request: sbatch: error: invalid partition specified: nosuch" in done.stderr
    kept = Path(re.search(r"the script is kept for inspection: (\S+)", done.stderr).group(1))
    assert kept.is_file() and "#SBATCH --partition=nosuch" in kept.read_text()


def _log(slurm, job_id: str) -> str:
    return _cli(slurm, ["jobs", "logs", job_id], timeout=60).stdout


def _steps(slurm, run_id: str, output: Path) -> list[int]:
    from mlflow import MlflowClient

    history = MlflowClient(f"sqlite:///{output}/mlflow.db").get_metric_history(run_id, "train/loss")
    return sorted(m.step for m in history)


@pytest.mark.slow
def test_slurm_job_preempted_mid_run_requeues_and_resumes_into_the_same_run(slurm, demo_shards, tmp_path):
    out = tmp_path / "runs"
    submitted = _cli(slurm, ["train", *_tiny_job(demo_shards, out, 30, 10), "--on", "slurm"])
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = re.search(r"submitted SLURM job (\d+)", submitted.stdout).group(1)

    listed = _cli(slurm, ["jobs"]).stdout
    assert re.search(rf"^\s*{job_id}\s+mmexpr-demo\s+(PENDING|RUNNING)", listed, re.M), listed

    # Signal once training is under way (a few steps logged), as SLURM does near the time limit.
    wait_until(lambda: re.search(r"^run [0-9a-f]{32}: ", _log(slurm, job_id), re.M), 300, "the driver to open its run")
    run_id = re.search(r"^run ([0-9a-f]{32}): ", _log(slurm, job_id), re.M).group(1)
    assert re.search(rf"^\s*{job_id}\s+mmexpr-demo\s+RUNNING\s.*{run_id}", _cli(slurm, ["jobs"]).stdout, re.M)
    wait_until(lambda: len(_steps(slurm, run_id, out)) >= 2, 300, "training steps in MLflow")
    assert slurm.run(["scancel", "--signal=USR1", "--batch", job_id]).returncode == 0

    def finished() -> bool:
        state = slurm.run(["scontrol", "show", "job", "-o", job_id]).stdout
        return "JobState=COMPLETED" in state or "JobState=FAILED" in state

    wait_until(finished, 600, f"SLURM job {job_id} to come back and finish", interval=3)
    log = _log(slurm, job_id)
    assert "JobState=COMPLETED" in slurm.run(["scontrol", "show", "job", "-o", job_id]).stdout, log[-5000:]
    assert "requeueing job" in log and "start 2" in log
    resumed_at = int(re.search(r"resuming from \S+/step-0*(\d+)", log).group(1))
    assert 0 < resumed_at < 30, "the restart did not resume from the preemption checkpoint"
    assert set(re.findall(r"^run ([0-9a-f]{32}): ", log, re.M)) == {run_id}, "resumed into another run"
    assert re.search(rf"ip={slurm.nodes['n2'].ip}", log), "no train worker ran on the second node"

    from mlflow import MlflowClient

    run = MlflowClient(f"sqlite:///{out}/mlflow.db").get_run(run_id)
    assert run.info.status == "FINISHED"
    assert _steps(slurm, run_id, out) == list(range(1, 31)), "steps repeated or missing across the restart"


JOB_FILES = sorted((REPO / "mmexpr" / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("job_file", JOB_FILES, ids=[p.stem for p in JOB_FILES])
def test_every_shipped_job_passes_config_and_a_slurm_dry_run(job_file: Path, capsys, tmp_path, monkeypatch):
    from mmexpr.cli import main

    monkeypatch.chdir(tmp_path)  # the dry run resolves output/ and shards/ relative to here, writing nothing
    assert main(["config", str(job_file)]) == 0
    capsys.readouterr()
    assert main(["train", str(job_file), "--on", "slurm", "--dry-run"]) == 0, capsys.readouterr().err
    script = capsys.readouterr().out
    from mmexpr.config import load_job

    job = load_job(job_file)
    gpus = re.search(r"^#SBATCH --gpus-per-node=(\d+)$", script, re.M)
    if job.train.use_gpu:
        assert gpus is not None and int(gpus.group(1)) * job.slurm.nodes >= job.train.workers
        assert f"NUM_GPUS={gpus.group(1)}\n" in script
    else:
        assert gpus is None and "NUM_GPUS=0\n" in script
    assert not any(tmp_path.iterdir()), "a dry run must write nothing"


def test_gpu_request_follows_the_workers_over_the_nodes_unless_set():
    script = _dry_run("train.use_gpu=true", "train.workers=6", "slurm.nodes=2")
    assert "#SBATCH --gpus-per-node=3\n" in script
    script = _dry_run("train.use_gpu=true", "train.workers=2", "slurm.gpus_per_node=4")
    assert "#SBATCH --gpus-per-node=4\n" in script
