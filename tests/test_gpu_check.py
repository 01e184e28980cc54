"""tests/gpu/check.sh in its CPU form: the GPU check script runs end to end, so it cannot rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_script_runs_on_cpu_at_tiny_size_and_prints_every_figure(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(REPO / "tests" / "gpu" / "check.sh"), "--tiny", "--steps", "4", "--workdir", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    block = out[out.index("== GPU path check"):]
    for label in ("GPU-marked tests", "samples/s", "MFU", "data wait", "peak GPU memory", "predict", "training"):
        assert f"\n{label}" in block, (label, block)
    assert "4 steps" in block
    figures = dict(line.split(None, 1) for line in block.splitlines()[1:] if line and not line.startswith(" "))
    assert float(figures["samples/s"].split()[0]) > 0
    assert "skipped" in figures["GPU-marked"] or "passed" in figures["GPU-marked"]
    predicted = int(figures["predict"].split()[0])
    assert predicted > 0, block
