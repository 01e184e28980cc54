"""A local Ray cluster (packing, training) listens on loopback only."""

from __future__ import annotations

import ipaddress
import re

import psutil
import pytest

from mmexpr.local_ray import start_ray


def _listening() -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


@pytest.mark.slow
def test_local_cluster_binds_only_loopback_whatever_the_cluster_flag_says(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # "1" (and unset, on Linux) makes Ray bind every interface; start_ray must undo it.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    before = _listening()
    assert start_ray(None, num_cpus=1, log_to_driver=False)
    import ray  # after start_ray: Ray reads the flag when first imported

    try:
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        opened = _listening() - before
        assert opened, "Ray opened no listening socket?"
        exposed = sorted(f"{ip}:{port}" for ip, port in opened if not _is_loopback(ip))
        assert not exposed, f"listening beyond loopback: {exposed}"
        # The dashboard serves the State API that Ray Train polls; it listens on loopback.
        url = re.search(r"Ray dashboard: http://(127\.0\.0\.1):(\d+)", capsys.readouterr().out)
        assert (url.group(1), int(url.group(2))) in opened
        from ray.util.state import list_nodes

        assert [n.node_ip for n in list_nodes(address=f"http://127.0.0.1:{url.group(2)}", timeout=30)] == ["127.0.0.1"]
    finally:
        ray.shutdown()


def _tree(root: int) -> dict[int, str]:
    """pid -> command line of `root` and every process below it."""
    try:
        procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for p in procs:
        try:
            out[p.pid] = " ".join(p.cmdline())
        except psutil.Error:
            continue
    return out


def _train_cmd(demo_shards, out, *extra: str) -> list[str]:
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "mmexpr.cli", "train", str(repo / "jobs" / "demo.yaml")]
    for s in (f"data.shards={demo_shards}", f"output={out}", "model.preset=tiny", "data.window=8",
              "data.stride=8", "data.image_size=64", "data.batch_size=2", "data.loader_workers=0",
              "train.workers=2", "train.progress=false", "track.experiment=test-loopback",
              "track.register_model=''", *extra):
        cmd += ["--set", s]
    return cmd


@pytest.mark.slow
def test_local_training_listens_only_on_loopback_including_the_torch_store_and_gloo(demo_shards, tmp_path) -> None:
    """A real `mmexpr train` with 2 Ray Train workers (gloo, rank 0 serving the
    torch.distributed store): every socket any process of it listens on, sampled while it
    runs, is on 127.0.0.1, and the train workers' own listeners were among those seen."""
    import os
    import signal
    import subprocess
    import time

    cmd = _train_cmd(demo_shards, tmp_path / "out", "train.max_steps=6", "train.eval_every=6",
                     "train.checkpoint_every=6")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: dict[tuple[str, int], str] = {}
    try:
        deadline = time.time() + 900
        while proc.poll() is None and time.time() < deadline:
            tree = _tree(proc.pid)
            for c in psutil.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN and c.pid in tree:
                    seen[(c.laddr.ip, c.laddr.port)] = tree[c.pid]
            time.sleep(0.2)
        out = proc.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out[-3000:]
    exposed = sorted(f"{ip}:{port} ({cmd[:60]})" for (ip, port), cmd in seen.items() if not _is_loopback(ip))
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert any("RayTrainWorker" in cmd for cmd in seen.values()), f"no train worker listener was seen: {seen}"


def _cmdline(p: psutil.Process) -> str:
    """Read now: Ray retitles a worker process (ray::RayTrainWorker) after it starts."""
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


@pytest.mark.slow
def test_a_killed_driver_takes_its_local_training_workers_with_it(demo_shards, tmp_path) -> None:
    """SIGKILL to the process group of a running `mmexpr train` (its Ray cluster runs in
    sessions of its own): the Ray Train workers end within seconds and publish no further
    checkpoint."""
    import os
    import signal
    import subprocess
    import time

    out = tmp_path / "out"
    cmd = _train_cmd(demo_shards, out, "train.max_steps=2000", "train.eval_every=100000",
                     "train.checkpoint_every=2", "train.keep_last=1000")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tree: dict[int, str] = {}
    held: dict[int, psutil.Process] = {}  # kill() on these checks it is still the same process

    def record() -> None:
        for pid, line in _tree(proc.pid).items():
            if pid not in held:
                try:
                    held[pid], tree[pid] = psutil.Process(pid), line
                except psutil.Error:
                    pass

    def published() -> int:
        return len(list(out.glob("*/*/checkpoints/step-*/meta.json")))

    try:
        deadline = time.time() + 900
        while published() == 0 and time.time() < deadline:
            assert proc.poll() is None, "training ended before it could be killed"
            record()
            time.sleep(0.5)
        record()
        workers = [p for p in held.values() if p.is_running() and "RayTrainWorker" in _cmdline(p)]
        assert workers, f"no Ray Train worker found under the driver: {tree}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"workers outlived their driver: {[p.pid for p in alive]}"
        after = published()
        time.sleep(5)
        assert published() == after, "checkpoints were published after the driver died"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in held.values():  # the Ray cluster the killed driver had started
            try:
                p.kill()
            except psutil.Error:
                pass
