"""Checkpoint folder rules (publish, pointers, pruning), on real folders, without Ray.

The DeepSpeed writes themselves are exercised by tests/test_train.py; here the rules that
decide which checkpoint a resume uses after a crash at any point of a save.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

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


# ---------------------------------------------------------------- integrity: sizes and sha256 recorded at publish


def _publish_recorded(root: Path, step: int, when: float, f1: float | None = None) -> Path:
    """A checkpoint as save() publishes it: shards and portable copy first, then meta.json
    with the size and sha256 of each of them."""
    tag = root / ckpt.tag_for(step)
    tag.mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(bytes(range(256)) * 40)
    (tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"\1" * 9000)
    (tag / ckpt.PORTABLE).write_bytes(b"\2" * 5000)
    ckpt.write_meta(tag, {"step": step, "time": when, "val_macro_f1": f1})
    return tag


def _truncate(path: Path, fraction: float = 0.3) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * (1 - fraction))])


def test_a_truncated_shard_of_the_newest_checkpoint_is_named_and_the_previous_one_resumed(tmp_path):
    from mmexpr.config import load_job
    from mmexpr.train.driver import TrainSetupError, resolve_resume

    run_dir = tmp_path / "run"
    now = time.time()
    _publish_recorded(run_dir / "checkpoints", 10, now)
    newest = _publish_recorded(run_dir / "checkpoints", 20, now + 1)
    ckpt._write_pointer(run_dir / "checkpoints", "latest", newest.name)
    assert ckpt.problem(newest) is None and ckpt.latest_intact(run_dir / "checkpoints").name == newest.name
    shard = newest / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    _truncate(shard)
    said: list[str] = []
    assert ckpt.latest_intact(run_dir / "checkpoints", said.append).name == ckpt.tag_for(10)
    assert len(said) == 1 and str(shard) in said[0] and "6300 bytes, 9000 recorded" in said[0]
    job = load_job(None, [f"output={tmp_path}"])
    assert resolve_resume(job, str(run_dir)).tag.name == ckpt.tag_for(10)
    with pytest.raises(TrainSetupError, match="corrupt checkpoint.*optim_states.pt"):
        resolve_resume(job, str(newest))  # asked for by name: refused, not swapped


def test_flipped_bytes_of_same_size_fail_verification_naming_the_file(tmp_path):
    tag = _publish_recorded(tmp_path, 10, time.time())
    data = bytearray((tag / ckpt.PORTABLE).read_bytes())
    data[100:300] = bytes(b ^ 0xFF for b in data[100:300])
    (tag / ckpt.PORTABLE).write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=r"portable\.pt: sha256 differs"):
        ckpt.verify(tag)
    (tag / ckpt.PORTABLE).unlink()
    assert ckpt.problem(tag).endswith("portable.pt: missing")


def test_best_and_latest_pointers_move_off_a_corrupt_checkpoint(tmp_path):
    now = time.time()
    _publish_recorded(tmp_path, 10, now, f1=0.4)
    _publish_recorded(tmp_path, 20, now + 1, f1=0.6)
    third = _publish_recorded(tmp_path, 30, now + 2, f1=0.8)
    for name in ("best", "latest"):
        ckpt._write_pointer(tmp_path, name, third.name)
    _truncate(third / ckpt.PORTABLE)
    said: list[str] = []
    assert ckpt.best_intact(tmp_path, said.append).name == ckpt.tag_for(20)  # next best F1, intact
    ckpt.repoint(tmp_path, said.append)
    assert ckpt.best(tmp_path).name == ckpt.tag_for(20)
    assert ckpt.latest(tmp_path).name == ckpt.tag_for(20)
    assert any("portable.pt" in line for line in said)
    for tag in (ckpt.tag_for(10), ckpt.tag_for(20)):
        _truncate(tmp_path / tag / ckpt.PORTABLE)
    ckpt.repoint(tmp_path, said.append)
    assert not (tmp_path / "best").exists() and not (tmp_path / "latest").exists()  # nothing intact to point at
    assert ckpt.latest_intact(tmp_path, said.append) is None and ckpt.best_intact(tmp_path, said.append) is None


def test_checkpoints_saved_before_files_were_recorded_still_load(tmp_path):
    old = _publish(tmp_path, 10, time.time())  # meta.json without a record of files
    assert ckpt.problem(old) is None and ckpt.latest_intact(tmp_path).name == old.name


def test_client_state_reads_rank_zeros_model_states_under_zero3_naming(tmp_path):
    """ZeRO-3 names its model states per rank; a resume on another layout reads rank 0's."""
    import torch

    tag = tmp_path / "step-00000002"
    tag.mkdir()
    with pytest.raises(ckpt.CheckpointError, match="no DeepSpeed model-states file"):
        ckpt.load_client_state(tag)
    torch.save({"module": {}, "step": 2, "best_f1": 0.5}, tag / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    torch.save({"module": {}, "step": 99}, tag / "zero_pp_rank_1_mp_rank_00_model_states.pt")
    assert ckpt.load_client_state(tag) == {"step": 2, "best_f1": 0.5}


def test_weights_of_another_shape_are_refused_naming_the_tensor_and_both_shapes():
    """A run resumed, or a model predicted, with a tensor saved at another shape (a `model.*` key
    or an encoder's code changed since): resume and predict both say which tensor and both
    shapes, through one rule, and load nothing."""
    import torch

    from mmexpr.config import load_job
    from mmexpr.model.model import build_model
    from mmexpr.predict.weights import WeightsError, build_from_state

    job = load_job(None, ["model.preset=tiny", "model.hidden=32", "model.fusion_heads=4"])
    weights = build_model(job.model).state_dict()
    name = next(k for k, v in weights.items() if v.dim() == 2)
    rows, cols = weights[name].shape
    weights[name] = torch.zeros(rows, cols + 3)
    expected = f"{name} [{rows}, {cols + 3}] saved, [{rows}, {cols}] here"
    target = build_model(job.model)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ckpt.CheckpointError, match="other shape: " + re.escape(expected)):
        ckpt.load_module_weights(target, weights)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items()), "nothing loaded"
    with pytest.raises(WeightsError, match=r"run\.pt: weights do not fit .*" + name):
        build_from_state(job, weights, "run.pt")
    weights[name] = "not a tensor"
    with pytest.raises(ckpt.CheckpointError, match=re.escape(f"{name} str saved, [{rows}, {cols}] here")):
        ckpt.load_module_weights(build_model(job.model), weights)
    del weights[name]
    with pytest.raises(ckpt.CheckpointError, match=f"missing {re.escape(name)}"):
        ckpt.load_module_weights(build_model(job.model), weights)
