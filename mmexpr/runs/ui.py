"""The MLflow UI for a tracking store, on loopback, started and stopped as one process group.

`mlflow server` forks web workers; starting it in its own session lets `stop` end exactly
the processes it started (by process-group id) and nothing else on the machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mmexpr import store
from mmexpr.errors import UserError


class UIError(UserError, RuntimeError):
    """The UI server did not come up; the message carries the tail of its log."""


@dataclass
class UIServer:
    """A running `mlflow server`: its address, process and log file."""

    url: str
    process: subprocess.Popen
    log: Path

    def stop(self, timeout: float = 10.0) -> None:
        """End the server's process group (SIGTERM, then SIGKILL after `timeout`)."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=timeout)
        except ProcessLookupError:
            pass

    def __enter__(self) -> UIServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def artifact_root_for(tracking_uri: str) -> str | None:
    """Local artifact folder next to a SQLite store (`.../mlflow.db` -> `.../mlartifacts`)."""
    if tracking_uri.startswith("sqlite:///"):
        return str(Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts")
    return None


def start_ui(
    tracking_uri: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    artifact_root: str | None = None,
    log: str | os.PathLike | None = None,
    timeout: float = 300.0,
) -> UIServer:
    """Start `mlflow server` on host:port (0 picks a free port) and wait until /health answers.

    MLflow's GenAI job runner (a huey consumer process per server) is switched off: browsing
    runs does not use it, and on a small machine it doubles the server's start time.
    """
    port = port or free_port(host)
    artifact_root = artifact_root or artifact_root_for(tracking_uri)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri]
    cmd += ["--host", host, "--port", str(port), "--workers", "1", "--no-serve-artifacts"]
    if artifact_root:
        cmd += ["--default-artifact-root", artifact_root]
    log_path = Path(log) if log else Path(os.environ.get("TMPDIR", "/tmp")) / f"mmexpr-ui-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as out:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    server = UIServer(f"http://{host}:{port}", proc, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UIError(f"mlflow server exited with {proc.returncode}:\n{_tail(log_path)}")
        if _healthy(server.url):
            return server
        time.sleep(0.5)
    server.stop()
    raise UIError(f"mlflow server not answering at {server.url} after {timeout:.0f}s:\n{_tail(log_path)}")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def runs_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table (in MLflow 3 the bare experiment page is a GenAI overview)."""
    return f"{base}/#/experiments/{experiment_id}/runs"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def compare_url(base: str, experiment_id: str, run_ids: list[str]) -> str:
    runs = urllib.parse.quote(json.dumps(run_ids))
    exps = urllib.parse.quote(json.dumps([experiment_id]))
    return f"{base}/#/compare-runs?runs={runs}&experiments={exps}"


def serve_forever(tracking_uri: str, *, host: str = "127.0.0.1", port: int = 5000) -> None:
    """`mmexpr ui`: start the server, print where to look, stop it on Ctrl-C."""
    server = start_ui(tracking_uri, host=host, port=port)
    previous = _interrupt_on_termination()
    try:
        print(f"MLflow UI for {tracking_uri}\n  {server.url}")
        for exp in store.client(tracking_uri).search_experiments():
            print(f"  {exp.name}: {runs_url(server.url, exp.experiment_id)}")
        print(f"log: {server.log}\nCtrl-C stops it.", flush=True)
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _interrupt_on_termination() -> dict:
    """SIGTERM and SIGHUP stop `ui` as Ctrl-C does, through the `finally` that stops the server.

    The server runs in its own session (so a Ctrl-C reaches it only through us); Python's
    default SIGTERM ends the process without unwinding, which left mlflow and uvicorn running.
    """
    return {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
