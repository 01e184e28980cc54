"""VA and AU beside EXPR: their annotation and submission files, CCC and AU F1 against numpy and
scikit-learn references, and `evaluate` telling the task of a folder by its headers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from mmexpr.cli import main
from mmexpr.labels import (
    AU_HEADER,
    NUM_AUS,
    LabelFileError,
    file_task,
    fit_to_frames,
    read_au_annotation,
    read_task_submission,
    read_va_annotation,
    write_annotation,
    write_au_annotation,
    write_submission,
    write_task_submission,
    write_va_annotation,
)
from mmexpr.metrics import (
    AU_THRESHOLDS,
    au_counts,
    au_score,
    au_scores_from_counts,
    au_threshold_counts,
    ccc,
    va_moments,
    va_score,
    va_scores_from_moments,
)
from mmexpr.predict.evaluate import evaluate_dirs


def numpy_ccc(x: np.ndarray, y: np.ndarray) -> float:
    """The textbook definition, written independently of mmexpr.metrics."""
    cov = np.cov(x, y, bias=True)[0, 1]
    return 2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def test_va_annotation_round_trip_keeps_unknown_frames_as_nan(tmp_path: Path) -> None:
    va = np.array([[0.5, -0.25], [np.nan, np.nan], [-1.0, 1.0]], np.float32)
    path = write_va_annotation(tmp_path / "a.txt", va)
    assert path.read_text().splitlines()[:3] == ["valence,arousal", "0.5000,-0.2500", "-5,-5"]
    np.testing.assert_array_equal(read_va_annotation(path), va)
    assert file_task(path) == "va"


def test_au_annotation_round_trip(tmp_path: Path) -> None:
    au = np.random.default_rng(0).integers(-1, 2, (5, NUM_AUS))
    path = write_au_annotation(tmp_path / "a.txt", au)
    np.testing.assert_array_equal(read_au_annotation(path), au)
    assert file_task(path) == "au"


@pytest.mark.parametrize(
    ("reader", "text", "message"),
    [
        (read_va_annotation, "valence,arousal\n0.1,0.2\n3.2,0.1\n", r"a\.txt:3: valence 3\.2 out of range"),
        (read_va_annotation, "valence,arousal\n0.1\n", r"a\.txt:2: 1 column\(s\); expected 2"),
        (read_va_annotation, "valence,arousal\n0.1,x\n", r"a\.txt:2: '0\.1,x' is not two numbers"),
        (read_au_annotation, AU_HEADER + "\n" + ",".join(["0"] * 11) + "\n", r"a\.txt:2: 11 column\(s\); expected 12"),
        (read_au_annotation, AU_HEADER + "\n" + ",".join(["0"] * 11 + ["2"]) + "\n", r"a\.txt:2: AU26 is 2"),
        (read_va_annotation, AU_HEADER + "\n", r"a\.txt:1: header .*\(that is the au header\); expected 'valence,arousal'"),
    ],
)
def test_malformed_va_and_au_files_name_file_and_line(tmp_path: Path, reader, text: str, message: str) -> None:
    path = tmp_path / "a.txt"
    path.write_text(text)
    with pytest.raises(LabelFileError, match=message):
        reader(path)


def test_a_header_of_no_task_is_named(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("happy,sad\n1,0\n")
    with pytest.raises(LabelFileError, match=r"a\.txt:1: header 'happy,sad' matches no task"):
        file_task(path)


def test_va_and_au_submissions_round_trip_and_refuse_unknown_values(tmp_path: Path) -> None:
    va = np.array([[0.1, -0.2], [0.3, 0.9]])
    path = write_task_submission(tmp_path / "va" / "t.txt", "va", "t", va)
    assert path.read_text().splitlines()[:2] == ["image_location,valence,arousal", "t/00001.jpg,0.1000,-0.2000"]
    track, back = read_task_submission(path, "va")
    assert track == "t" and np.allclose(back, va)
    assert file_task(path, submission=True) == "va"
    au = np.eye(2, NUM_AUS, dtype=np.int64)
    path = write_task_submission(tmp_path / "au" / "t.txt", "au", "t", au)
    assert (read_task_submission(path, "au")[1] == au).all()
    with pytest.raises(ValueError, match="0 or 1 for every AU"):
        write_task_submission(tmp_path / "x.txt", "au", "t", -au)
    with pytest.raises(ValueError, match="for every frame"):
        write_task_submission(tmp_path / "x.txt", "va", "t", np.full((2, 2), np.nan))


def test_va_labels_are_padded_with_nan_and_au_labels_with_minus_one() -> None:
    va = fit_to_frames(np.zeros((3, 2), np.float32), 5, fill=np.nan).labels
    assert va.shape == (5, 2) and np.isnan(va[3:]).all() and (va[:3] == 0).all()
    au = fit_to_frames(np.zeros((3, NUM_AUS), np.int64), 4).labels
    assert au.shape == (4, NUM_AUS) and (au[3] == -1).all()


@pytest.mark.parametrize("seed", range(10))
def test_ccc_matches_numpy_with_unknown_frames_left_out(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 500))
    true = rng.uniform(-1, 1, (n, 2))
    pred = np.clip(true * rng.uniform(0.2, 1.0) + rng.normal(0, 0.3, (n, 2)) + rng.uniform(-0.3, 0.3), -1, 1)
    true[rng.random(n) < 0.2] = np.nan
    keep = ~np.isnan(true[:, 0])
    scores = va_score(pred, true)
    assert scores.valence == pytest.approx(numpy_ccc(pred[keep, 0], true[keep, 0]), abs=1e-9)
    assert scores.arousal == pytest.approx(numpy_ccc(pred[keep, 1], true[keep, 1]), abs=1e-9)
    assert scores.mean == pytest.approx((scores.valence + scores.arousal) / 2)
    assert scores.frames == int(keep.sum())
    assert ccc(pred[keep, 0], true[keep, 0]) == pytest.approx(scores.valence, abs=1e-12)
    # Ranks add moments, then score: the same as one pass.
    halves = va_moments(pred[: n // 2], true[: n // 2]) + va_moments(pred[n // 2 :], true[n // 2 :])
    assert va_scores_from_moments(halves).mean == pytest.approx(scores.mean, abs=1e-9)


def test_ccc_of_the_training_mean_is_zero() -> None:
    true = np.random.default_rng(0).uniform(-1, 1, 100)
    assert ccc(np.full(100, true.mean()), true) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_au_f1_matches_sklearn_per_au_with_unknown_frames_left_out(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    true = (rng.random((n, NUM_AUS)) < rng.uniform(0.05, 0.5, NUM_AUS)).astype(np.int64)
    pred = np.where(rng.random((n, NUM_AUS)) < 0.7, true, 1 - true)
    true[rng.random(n) < 0.2] = -1  # whole unknown frames
    true[rng.random((n, NUM_AUS)) < 0.05] = -1  # and single unknown AUs
    result = au_score(pred, true)
    expected = []
    for k in range(NUM_AUS):
        keep = true[:, k] != -1
        expected.append(f1_score(true[keep, k], pred[keep, k], zero_division=0) if keep.any() else 0.0)
    np.testing.assert_allclose(result.per_au_f1, expected, atol=1e-12)
    assert result.mean_f1 == pytest.approx(float(np.mean(expected)), abs=1e-12)


def test_tuned_thresholds_are_the_best_per_au_and_0_5_is_the_default() -> None:
    rng = np.random.default_rng(3)
    true = (rng.random((300, NUM_AUS)) < 0.3).astype(np.int64)
    prob = np.clip(true * 0.3 + rng.random((300, NUM_AUS)) * 0.6, 0, 1)  # positives score higher, below 0.5 often
    scores = au_scores_from_counts(au_threshold_counts(prob, true), 300)
    at_half = au_score((prob >= 0.5).astype(np.int64), true)
    np.testing.assert_allclose(scores.per_au_f1, at_half.per_au_f1)
    for k in range(NUM_AUS):
        best = max(f1_score(true[:, k], (prob[:, k] >= th).astype(int), zero_division=0) for th in AU_THRESHOLDS)
        assert scores.tuned_f1[k] == pytest.approx(best, abs=1e-12)
        assert f1_score(true[:, k], (prob[:, k] >= scores.thresholds[k]).astype(int)) == pytest.approx(best)
    assert scores.tuned_f1.mean() >= scores.mean_f1
    assert au_counts(true, true)[:, 1:].sum() == 0


def _write_task_folders(tmp_path: Path, rng: np.random.Generator) -> tuple[dict, dict]:
    """Annotations and perturbed predictions of three tracks for each task; returns the references."""
    truth: dict[str, list] = {"va": [[], []], "au": [[], []]}
    for name in ("a", "b_left", "b_right"):
        n = 60
        va = rng.uniform(-1, 1, (n, 2))
        va[rng.random(n) < 0.2] = np.nan
        va_pred = np.clip(np.nan_to_num(va) + rng.normal(0, 0.3, (n, 2)), -1, 1)
        write_va_annotation(tmp_path / "va_labels" / f"{name}.txt", va[:58])  # 2 short: padded unknown
        write_task_submission(tmp_path / "va_pred" / f"{name}.txt", "va", name, va_pred)
        au = (rng.random((n, NUM_AUS)) < 0.3).astype(np.int64)
        au[rng.random(n) < 0.2] = -1
        au_pred = np.where(rng.random((n, NUM_AUS)) < 0.75, np.clip(au, 0, 1), 1 - np.clip(au, 0, 1))
        write_au_annotation(tmp_path / "au_labels" / f"{name}.txt", au)
        write_task_submission(tmp_path / "au_pred" / f"{name}.txt", "au", name, au_pred)
        va[58:] = np.nan
        truth["va"][0].append(np.round(va, 4))
        truth["va"][1].append(np.round(va_pred, 4))
        truth["au"][0].append(au)
        truth["au"][1].append(au_pred)
    return {k: np.concatenate(v[0]) for k, v in truth.items()}, {k: np.concatenate(v[1]) for k, v in truth.items()}


def test_evaluate_tells_va_and_au_by_header_and_equals_numpy_and_sklearn(tmp_path: Path, capsys) -> None:
    labels, preds = _write_task_folders(tmp_path, np.random.default_rng(5))
    va = evaluate_dirs(tmp_path / "va_pred", tmp_path / "va_labels")
    keep = ~np.isnan(labels["va"][:, 0])
    expected = [numpy_ccc(preds["va"][keep, k], labels["va"][keep, k]) for k in range(2)]
    assert va.task == "va"
    assert va.scores.valence == pytest.approx(expected[0], abs=1e-6)
    assert va.scores.arousal == pytest.approx(expected[1], abs=1e-6)
    assert va.abaw == pytest.approx(np.mean(expected), abs=1e-6)
    au = evaluate_dirs(tmp_path / "au_pred", tmp_path / "au_labels")
    per_au = []
    for k in range(NUM_AUS):
        known = labels["au"][:, k] != -1
        per_au.append(f1_score(labels["au"][known, k], preds["au"][known, k], zero_division=0))
    assert au.task == "au"
    assert au.abaw == pytest.approx(float(np.mean(per_au)), abs=1e-12)
    assert main(["evaluate", str(tmp_path / "au_pred"), str(tmp_path / "au_labels")]) == 0
    out = capsys.readouterr().out
    assert "AU: 3 tracks" in out and f"ABAW AU score {np.mean(per_au):.4f}" in out


def test_evaluate_refuses_predictions_and_annotations_of_different_tasks(tmp_path: Path, capsys) -> None:
    _write_task_folders(tmp_path, np.random.default_rng(6))
    assert main(["evaluate", str(tmp_path / "va_pred"), str(tmp_path / "au_labels")]) == 2
    assert "holds VA submissions but" in capsys.readouterr().err
    write_annotation(tmp_path / "mixed" / "a.txt", [1, 2])
    write_va_annotation(tmp_path / "mixed" / "b.txt", np.zeros((2, 2)))
    write_submission(tmp_path / "expr_pred" / "a.txt", "a", [1, 2])
    assert main(["evaluate", str(tmp_path / "expr_pred"), str(tmp_path / "mixed")]) == 2
    assert "files of several tasks in one folder" in capsys.readouterr().err


# ---------------------------------------------------------------- packing VA and AU


def _task_source(root: Path) -> Path:
    """Track `both` has EXPR, VA and AU; `va_only` has VA only; three bad VA/AU files."""
    from media import labels_for, write_video

    for name, frames in (("both", 20), ("va_only", 16), ("bad", 12)):
        write_video(root / "videos" / f"{name}.mp4", frames, audio_rate=None)
    write_annotation(root / "annotations" / "Train_Set" / "both.txt", labels_for(20))
    va_dir = root / "annotations" / "VA_Estimation_Challenge" / "Train_Set"
    au_dir = root / "annotations" / "AU_Detection_Challenge" / "Train_Set"
    va = np.tile(np.linspace(-0.5, 0.5, 20, dtype=np.float32)[:, None], (1, 2))
    va[:3] = np.nan
    write_va_annotation(va_dir / "both.txt", va)
    write_va_annotation(va_dir / "va_only.txt", va[:16])
    au = (np.arange(20)[:, None] + np.arange(NUM_AUS)) % 3 == 0
    au = au.astype(np.int64)
    au[5] = -1
    write_au_annotation(au_dir / "both.txt", au)
    (va_dir / "bad.txt").write_text("valence,arousal\n0.1,0.2\n3.2,0.1\n")
    (au_dir / "bad.txt").write_text(AU_HEADER + "\n" + ",".join(["0"] * 11) + "\n")
    (au_dir / "bad_left.txt").write_text("happy,sad\n1,0\n")
    return root


def test_va_and_au_are_packed_beside_expr_with_unknown_frames_masked_per_task(tmp_path: Path, ray_local) -> None:
    import webdataset as wds

    from mmexpr.data.manifest import read_manifest
    from mmexpr.data.pack import pack_corpus

    src = _task_source(tmp_path / "src")
    summary = pack_corpus(src, tmp_path / "out", chunk_frames=8, face_size=32, shard_mb=1, progress=False)
    reasons = {Path(s.path).parent.parent.name + "/" + Path(s.path).name: s.reason for s in summary.skipped}
    assert "bad.txt:3: valence 3.2 out of range" in reasons["VA_Estimation_Challenge/bad.txt"]
    assert "bad.txt:2: 11 column(s); expected 12" in reasons["AU_Detection_Challenge/bad.txt"]
    assert "bad_left.txt:1: header 'happy,sad' matches no task" in reasons["AU_Detection_Challenge/bad_left.txt"]
    manifest = read_manifest(tmp_path / "out" / "train" / "manifest.json")
    assert {Path(s["path"]).name for s in manifest.skipped} == {"bad.txt", "bad_left.txt"}
    assert manifest.tracks == ("both", "va_only")  # a track with VA only is packed too
    tasks = manifest.task_stats()
    assert tasks["expr"]["tracks"] == 1 and tasks["va"]["tracks"] == 2 and tasks["au"]["tracks"] == 1
    line = np.linspace(-0.5, 0.5, 20)
    known = np.concatenate([line[3:], line[3:16]])  # both: frames 3..19; va_only: 3..15
    assert tasks["va"]["frames"] == 17 + 13
    assert tasks["va"]["mean"][0] == pytest.approx(known.mean(), abs=1e-3)
    assert tasks["va"]["std"][0] == pytest.approx(known.std(), abs=1e-3)
    assert tasks["au"]["frames"] == 19
    au = ((np.arange(20)[:, None] + np.arange(NUM_AUS)) % 3 == 0).astype(np.int64)
    rates = np.delete(au, 5, axis=0).mean(axis=0)
    np.testing.assert_allclose(manifest.au_positive_rates(), rates, atol=1e-5)
    assert "va 2 tracks 30 frames" in str(summary)
    va_rows, au_rows, expr = {}, {}, {}
    for sample in wds.WebDataset(str(tmp_path / "out" / "train" / "shard-000000.tar"), shardshuffle=False):
        meta = json.loads(sample["json"])
        first = meta["first_frame"]
        for i, label in enumerate(meta["labels"]):
            expr[(meta["track"], first + i)] = label
            va_rows[(meta["track"], first + i)] = meta["va"][i]
            if "au" in meta:
                au_rows[(meta["track"], first + i)] = meta["au"][i]
        if meta["track"] == "va_only":
            assert "au" not in meta and set(meta["labels"]) == {-1}
    assert va_rows[("both", 0)] is None and va_rows[("both", 10)] == pytest.approx([np.linspace(-0.5, 0.5, 20)[10]] * 2, abs=1e-4)
    assert au_rows[("both", 5)] == [-1] * NUM_AUS and au_rows[("both", 6)] == au[6].tolist()
    assert len(va_rows) == 20 + 16


def test_adding_va_files_to_a_packed_expr_corpus_changes_its_fingerprint(tmp_path: Path, ray_local) -> None:
    from media import small_corpus

    from mmexpr.data.pack import PackError, pack_corpus

    src = small_corpus(tmp_path / "src", {"a": ("Train_Set", 20)}, audio=False)
    out = tmp_path / "out"
    pack_corpus(src, out, chunk_frames=16, face_size=32, shard_mb=1, progress=False)
    write_va_annotation(src / "annotations" / "VA_Estimation_Challenge" / "Train_Set" / "a.txt", np.zeros((20, 2)))
    with pytest.raises(PackError, match="inputs: packed"):
        pack_corpus(src, out, chunk_frames=16, face_size=32, shard_mb=1, progress=False)
    summary = pack_corpus(src, out, chunk_frames=16, face_size=32, shard_mb=1, progress=False, overwrite=True)
    assert summary.splits["train"].tasks["va"]["frames"] == 20


# ---------------------------------------------------------------- runs and sweeps over model.tasks


def test_runs_and_compare_show_the_three_scores(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from mmexpr.runs.listing import compare_table, find_run, list_runs, runs_table

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("tasks", artifact_location=str(tmp_path / "art"))
    for name, tasks, history in (
        ("expr-only", "['expr']", {"val/macro_f1": [0.5, 0.6]}),
        ("all-three", "['expr', 'va', 'au']", {"val/macro_f1": [0.4, 0.55], "val/va_ccc": [0.3, 0.71, 0.65],
                                               "val/au_f1": [0.62, 0.58]}),
    ):
        rid = client.create_run(exp, run_name=name).info.run_id
        client.log_param(rid, "model.tasks", tasks)
        for key, values in history.items():
            for step, value in enumerate(values, start=1):
                client.log_metric(rid, key, value, step=step)
        client.set_terminated(rid)
    text = runs_table(list_runs(uri))
    header = text.splitlines()[0]
    assert "best macro F1" in header and "best VA CCC" in header and "best AU F1" in header
    row = next(line for line in text.splitlines() if line.split()[1:2] == ["all-three"])
    assert "0.5500" in row and "0.7100" in row and "0.6200" in row  # the best of each, not the last
    compare = compare_table(find_run(uri, "expr-only"), find_run(uri, "all-three"))
    va = next(line for line in compare.splitlines() if line.startswith("best VA CCC"))
    assert "-" in va and "0.7100" in va


def test_a_sweep_over_model_tasks_expands_list_values() -> None:
    from mmexpr.submit.sweep import expand

    job = str(Path(__file__).resolve().parents[1] / "jobs" / "demo.yaml")
    variants = expand(job, ["model.tasks=[expr],[expr,va,au],[va]"], ["train.max_steps=5"], "sw")
    assert [v.job.model.tasks for v in variants] == [["expr"], ["expr", "va", "au"], ["va"]]
    assert len({v.job.track.run_name for v in variants}) == 3


def test_best_metric_must_be_a_task_of_the_model(capsys) -> None:
    from mmexpr.config import ConfigError, load_job

    with pytest.raises(ConfigError, match="train.best_metric: 'au' is not in model.tasks"):
        load_job(None, ["model.tasks=[expr,va]", "train.best_metric=au"])
    with pytest.raises(ConfigError, match="model.tasks"):
        load_job(None, ["model.tasks=[expr,expr]"])
    assert load_job(None, ["model.tasks=[va,au]", "train.best_metric=mean"]).model.tasks == ["va", "au"]


def test_va_and_au_challenge_folders_sit_beside_the_release_expr_folder_or_alone(tmp_path: Path) -> None:
    """CHALLENGE_TASKS routes VA_Estimation_Challenge/AU_Detection_Challenge to their tasks: beside
    an EXPR challenge folder (also when --annotations names that folder), and with no EXPR files
    at all, where the tracks still pack with every EXPR label unknown."""
    from media import labels_for, write_video

    from mmexpr.data.sources import CHALLENGE_TASKS, discover, video_tracks

    assert CHALLENGE_TASKS["VA_Estimation_Challenge"] == "va" and CHALLENGE_TASKS["AU_Detection_Challenge"] == "au"
    src = tmp_path / "src"
    write_video(src / "videos" / "batch1" / "a.mp4", 12, audio_rate=None)
    write_video(src / "videos" / "batch2" / "b.mp4", 12, audio_rate=None)
    ann = src / "annotations"
    write_annotation(ann / "EXPR_Recognition_Challenge" / "Train_Set" / "a.txt", labels_for(12))
    write_va_annotation(ann / "VA_Estimation_Challenge" / "Train_Set" / "a.txt", np.zeros((12, 2)))
    write_va_annotation(ann / "VA_Estimation_Challenge" / "Validation_Set" / "b.txt", np.full((12, 2), 0.25))
    write_au_annotation(ann / "AU_Detection_Challenge" / "Validation_Set" / "b.txt", np.zeros((12, NUM_AUS), np.int64))
    for found in (discover(src), discover(src, annotations=ann / "EXPR_Recognition_Challenge")):
        tracks = {(j.split, t.name): t for j in found.jobs for t in j.tracks}
        assert sorted(tracks) == [("train", "a"), ("validation", "b")]
        assert (tracks["train", "a"].labels >= 0).all() and tracks["train", "a"].va.shape == (12, 2)
        assert (tracks["validation", "b"].labels == -1).all() and tracks["validation", "b"].au.shape == (12, NUM_AUS)
        assert not found.skipped
    only = tmp_path / "only_va"
    write_video(only / "videos" / "b.mp4", 12, audio_rate=None)
    write_va_annotation(only / "annotations" / "VA_Estimation_Challenge" / "Train_Set" / "b.txt", np.zeros((12, 2)))
    found = discover(only, ["train"])
    assert [t.name for j in found.jobs for t in j.tracks] == ["b"]
    assert [t.name for t in video_tracks(src, "b", src / "videos" / "batch2" / "b.mp4", 12).tracks] == ["b"]
