"""Checkpoint folder rules (publish, pointers, pruning), on real folders, without Ray.

The DeepSpeed writes themselves are exercised by tests/test_train.py; here the rules that
decide which checkpoint a resume uses after a crash at any point of a save.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mmexpr.train import checkpoint as ckpt


def _publish(root: Path, step: int, when: float) -> Path:
    tag = root / ckpt.tag_for(step)
    tag.mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"x")
    (tag / ckpt.META).write_text(json.dumps({"step": step, "time": when}))
    return tag


def test_half_written_checkpoints_are_never_chosen(tmp_path):
    now = time.time()
    _publish(tmp_path, 10, now)
    (tmp_path / (ckpt.TMP_PREFIX + ckpt.tag_for(20))).mkdir()  # killed before the rename
    no_meta = tmp_path / ckpt.tag_for(30)  # renamed by hand, meta never written
    no_meta.mkdir()
    assert [p.name for p in ckpt.published_tags(tmp_path)] == [ckpt.tag_for(10)]
    assert ckpt.latest(tmp_path).name == ckpt.tag_for(10)


def test_latest_pointer_wins_and_a_lost_target_falls_back_to_last_saved(tmp_path):
    now = time.time()
    _publish(tmp_path, 10, now)
    _publish(tmp_path, 20, now + 1)
    ckpt._write_pointer(tmp_path, "latest", ckpt.tag_for(10))  # crash between rename and pointer move
    assert ckpt.latest(tmp_path).name == ckpt.tag_for(10)
    ckpt._write_pointer(tmp_path, "latest", ckpt.tag_for(99))  # pointer to a folder that is gone
    assert ckpt.latest(tmp_path).name == ckpt.tag_for(20)


def test_prune_keeps_last_k_saved_and_best_and_removes_temp_folders(tmp_path):
    now = time.time()
    for i, step in enumerate((10, 20, 30, 40)):
        _publish(tmp_path, step, now + i)
    # Resumed from step 20 and saved step 25 afterwards: 25 is newer than 30 and 40.
    _publish(tmp_path, 25, now + 10)
    ckpt._write_pointer(tmp_path, "latest", ckpt.tag_for(25))
    ckpt._write_pointer(tmp_path, "best", ckpt.tag_for(10))
    (tmp_path / (ckpt.TMP_PREFIX + ckpt.tag_for(50))).mkdir()
    ckpt.prune(tmp_path, keep_last=2)
    left = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert left == [ckpt.tag_for(10), ckpt.tag_for(25), ckpt.tag_for(40)]
    assert ckpt.latest(tmp_path).name == ckpt.tag_for(25)
    assert ckpt.best(tmp_path).name == ckpt.tag_for(10)


def test_warmup_cosine_schedule_rises_then_decays_to_floor():
    from mmexpr.train.engine import warmup_cosine

    f = warmup_cosine(warmup=4, total=20, floor=0.05)
    rising = [f(s) for s in range(4)]
    assert rising == sorted(rising) and rising[-1] == 1.0
    falling = [f(s) for s in range(4, 21)]
    assert falling == sorted(falling, reverse=True)
    assert abs(f(20) - 0.05) < 1e-9
