"""Progress people can read: a live bar on a terminal, a few lines in a log, and a training
that writes a handful of progress lines to its log instead of one per step per worker."""

from __future__ import annotations

import fcntl
import io
import os
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from mmexpr.progress import Progress

REPO = Path(__file__).resolve().parents[1]


def test_a_log_gets_a_line_at_most_every_interval_and_one_at_the_end():
    log = io.StringIO()
    with Progress(1000, "pack", "frame", stream=log, interval=3600) as bar:
        for _ in range(1000):
            bar.update(1, videos="3/4")
    lines = log.getvalue().splitlines()
    assert len(lines) == 2  # the first update, then the end
    assert lines[-1].startswith("pack: 1000/1000 frame (100%)") and lines[-1].endswith("| videos 3/4")


def test_a_log_line_says_how_far_and_how_long_is_left():
    log = io.StringIO()
    bar = Progress(40, "train", "step", stream=log, interval=0, initial=10)
    bar.set(20, loss="1.234")
    line = log.getvalue().splitlines()[-1]
    assert re.match(r"train: 20/40 step \(50%\) [0-9.]+ step/s, 0:00 elapsed ETA 0:00 \| loss 1.234", line), line


def test_a_terminal_gets_one_live_bar_redrawn_in_place():
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    with os.fdopen(slave, "w") as tty:
        bar = Progress(5, "predict", "video", stream=tty)
        assert bar.bar is not None  # tqdm on a terminal
        for _ in range(5):
            bar.update(1)
        bar.close()
    chunks = []
    while select.select([master], [], [], 2.0)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal's other end is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    out = b"".join(chunks).decode(errors="replace")
    assert "\r" in out and "predict" in out and "5/5" in out


def test_a_disabled_display_prints_nothing():
    log = io.StringIO()
    with Progress(3, "synth", "video", stream=log, interval=0, enabled=False) as bar:
        bar.update(3)
    assert log.getvalue() == ""


@pytest.mark.slow
def test_a_training_writes_a_handful_of_progress_lines_to_its_log(demo_shards: Path, tmp_path: Path):
    """40 steps of the demo job with stdout and stderr in a file: the driver's progress lines
    (a line at most every 10 s) and no per-step bar from any worker."""
    log = tmp_path / "log"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "mmexpr.cli", "train", str(REPO / "jobs" / "demo.yaml"),
             "--set", f"data.shards={demo_shards}", "--set", f"output={tmp_path / 'runs'}",
             "--set", "train.max_steps=40", "--set", "train.eval_every=20", "--set", "train.checkpoint_every=40",
             "--set", "data.batch_size=4", "--set", "track.register_model=''"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, timeout=900,
        )
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    progress = [line for line in text.splitlines() if re.search(r"\btrain: \d+/40 step", line)]
    assert 1 <= len(progress) <= 15, progress
    assert progress[-1].startswith("train: 40/40 step (100%)")
    assert not re.search(r"RayTrainWorker.*\d+/40", text), "a worker printed its own progress"
