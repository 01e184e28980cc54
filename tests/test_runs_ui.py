"""`mmexpr runs` / `ui` against a real MLflow store, and the UI checked in a real headless Chromium."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mmexpr.cli import main
from mmexpr.runs.listing import (
    SWEEP_TAG,
    RunNotFound,
    compare_table,
    find_run,
    list_runs,
    runs_table,
)
from mmexpr.runs.ui import UIError, compare_url, free_port, run_url, start_ui


def _populate(root: Path) -> tuple[str, str, dict[str, str]]:
    """Three finished runs: two of one sweep (bi vs concat fusion), one outside it."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("unit-exp", artifact_location=str(root / "mlartifacts"))
    ids: dict[str, str] = {}
    for name, fusion, sweep, f1s in (
        ("fusion-bi", "bi", "sw1", [0.2, 0.7, 0.6]),
        ("fusion-concat", "concat", "sw1", [0.1, 0.4, 0.5]),
        ("lonely", "bi", "", [0.3]),
    ):
        tags = {SWEEP_TAG: sweep} if sweep else {}
        run = client.create_run(exp, run_name=name, tags=tags)
        rid = run.info.run_id
        for key, value in {"model.fusion": fusion, "train.lr": "0.002", "model.hidden": "128"}.items():
            client.log_param(rid, key, value)
        if name == "lonely":  # a run made after a config section was added
            client.log_param(rid, "slurm.port", "8265")
        for i, f1 in enumerate(f1s):
            client.log_metric(rid, "val/macro_f1", f1, step=10 * (i + 1))
            client.log_metric(rid, "train/loss", 1.0 / (i + 1), step=10 * (i + 1))
        client.set_terminated(rid)
        ids[name] = rid
    return uri, exp, ids


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, dict[str, str]]:
    return _populate(tmp_path_factory.mktemp("mlstore"))


def test_runs_table_shows_differing_config_best_f1_and_steps(store):
    uri, _, ids = store
    rows = list_runs(uri)
    assert {r.name for r in rows} == set(ids)
    by_name = {r.name: r for r in rows}
    assert by_name["fusion-bi"].best_f1 == pytest.approx(0.7)  # best, not last (0.6)
    assert by_name["fusion-concat"].steps == 30
    text = runs_table(rows)
    assert "model.fusion" in text  # differs between runs
    assert "train.lr" not in text  # same everywhere: not a column
    assert "slurm.port" not in text  # differs only by being absent from older runs
    assert "0.7000" in text and "fusion-concat" in text


def test_runs_sweep_filter_keeps_only_that_sweeps_runs(store):
    uri, _, _ = store
    names = {r.name for r in list_runs(uri, sweep="sw1")}
    assert names == {"fusion-bi", "fusion-concat"}
    assert list_runs(uri, sweep="nope") == []


def test_compare_marks_differences_side_by_side(store):
    uri, _, ids = store
    a, b = find_run(uri, "fusion-bi"), find_run(uri, ids["fusion-concat"])
    text = compare_table(a, b)
    fusion = next(line for line in text.splitlines() if line.startswith("model.fusion"))
    assert "bi" in fusion and "concat" in fusion and fusion.rstrip().endswith("*")
    assert "train.lr" not in text  # equal params hidden unless asked
    assert "train.lr" in compare_table(a, b, all_params=True)
    with pytest.raises(RunNotFound, match="no-such-run"):
        find_run(uri, "no-such-run")


def test_runs_command_lists_runs_and_compares(store, capsys):
    uri, _, _ = store
    assert main(["runs", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "fusion-bi" in out and "lonely" in out and "best macro F1" in out
    assert main(["runs", "--tracking-uri", uri, "--sweep", "sw1"]) == 0
    out = capsys.readouterr().out
    assert "fusion-bi" in out and "lonely" not in out
    assert main(["runs", "--tracking-uri", uri, "--compare", "fusion-bi", "fusion-concat"]) == 0
    out = capsys.readouterr().out
    assert "model.fusion" in out and "val/macro_f1" in out
    assert main(["runs", "--tracking-uri", uri, "--compare", "fusion-bi", "missing"]) == 2


def _chromium() -> str:
    """Debian's chromium; installed with apt-get when missing, or the test is skipped."""
    found = shutil.which("chromium")
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and apt-get is not available to install it")
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    for cmd in (["apt-get", *lock, "update", "-qq"], ["apt-get", *lock, "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode:
            pytest.skip(f"chromium missing and `{' '.join(cmd)}` failed: {done.stderr.strip()[-300:]}")
    return shutil.which("chromium") or pytest.skip("apt-get installed chromium but it is not on PATH")


def _dump_dom(chromium: str, url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran (the MLflow UI is a JS app), loopback only."""
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_mlflow_ui_shows_finished_run_and_compare_view_in_chromium(store, tmp_path):
    """`mmexpr ui` serves the store on loopback; Chromium renders the run page and the compare view."""
    uri, exp, ids = store
    chromium = _chromium()
    port = free_port()
    cmd = [sys.executable, "-m", "mmexpr.cli", "ui", "--tracking-uri", uri, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        lines = []
        for line in proc.stdout:  # the command prints its address once the server answers
            lines.append(line)
            if "Ctrl-C" in line:
                break
        printed = "".join(lines)
        assert base in printed and f"{base}/#/experiments/{exp}/runs" in printed, printed
        page = _dump_dom(chromium, run_url(base, exp, ids["fusion-bi"]), tmp_path / "p1")
        assert "fusion-bi" in page
        assert "val/macro_f1" in page and "train/loss" in page
        both = [ids["fusion-bi"], ids["fusion-concat"]]
        page = _dump_dom(chromium, compare_url(base, exp, both), tmp_path / "p2")
        assert "fusion-bi" in page and "fusion-concat" in page
        assert "val/macro_f1" in page and "train/loss" in page
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does: the command stops its server
        proc.wait(timeout=60)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more


def test_start_ui_reports_a_server_that_cannot_start(tmp_path):
    with pytest.raises(UIError, match="mlflow server exited"):
        start_ui("notascheme://nowhere", log=tmp_path / "ui.log", timeout=120)


def test_sweep_expands_every_combination_into_validated_named_jobs():
    from mmexpr.submit.sweep import expand

    job = str(Path(__file__).resolve().parents[1] / "jobs" / "demo.yaml")
    variants = expand(job, ["model.fusion=bi,concat", "model.modalities=audio_video,video"], ["train.max_steps=5"], "sw")
    assert [v.label for v in variants] == [
        "model.fusion=bi,model.modalities=audio_video",
        "model.fusion=bi,model.modalities=video",
        "model.fusion=concat,model.modalities=audio_video",
        "model.fusion=concat,model.modalities=video",
    ]
    assert {(v.job.model.fusion, v.job.model.modalities) for v in variants} == {
        ("bi", "audio_video"), ("bi", "video"), ("concat", "audio_video"), ("concat", "video")
    }
    assert all(v.job.train.max_steps == 5 for v in variants)
    assert len({v.job.track.run_name for v in variants}) == 4 and all(v.job.track.run_name.startswith("sw-") for v in variants)


def test_sweep_rejects_a_bad_value_before_anything_trains(capsys):
    job = str(Path(__file__).resolve().parents[1] / "jobs" / "demo.yaml")
    assert main(["sweep", job, "--grid", "model.fusion=bi,sideways"]) == 2
    err = capsys.readouterr().err
    assert "model.fusion" in err and "sideways" in err
    assert main(["sweep", job, "--grid", "model.fusion"]) == 2
    assert "KEY=V1,V2" in capsys.readouterr().err


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_ui_stops_its_mlflow_server_on_sigterm_and_sigint(tmp_path, sig):
    """`mmexpr ui` runs `mlflow server` (and its uvicorn workers) in a session of its own;
    a SIGTERM or SIGINT to `ui` must end them too, not leave them serving."""
    import signal
    import subprocess
    import sys

    import psutil

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "mmexpr.cli", "ui", "--tracking-uri", uri, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server: list = []
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops it" in line:
                break
        assert "http://127.0.0.1:" in "".join(lines), "".join(lines)
        server = psutil.Process(proc.pid).children(recursive=True)
        assert server, "no mlflow server process under ui"
        proc.send_signal(getattr(signal, sig))
        proc.wait(timeout=60)
        gone, alive = psutil.wait_procs(server, timeout=30)
        assert not alive, f"left running after {sig}: {[p.pid for p in alive]}"
    finally:
        for p in [*server, proc]:
            if p.poll() is None if p is proc else p.is_running():
                p.kill()
