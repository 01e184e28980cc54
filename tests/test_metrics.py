"""Macro F1 equals scikit-learn's on the same frames, -1 frames excluded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from mmexpr.cli import main
from mmexpr.labels import write_annotation, write_submission
from mmexpr.metrics import confusion, score, scores_from_confusion


@pytest.mark.parametrize("seed", range(20))
def test_macro_f1_matches_sklearn_on_random_frames(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    # Skewed class use, so some classes are missing from labels or predictions.
    classes = rng.choice(8, size=int(rng.integers(1, 9)), replace=False)
    labels = rng.choice(np.append(classes, -1), size=n)
    preds = rng.integers(0, 8, size=n)
    keep = labels != -1
    result = score(labels, preds)
    if keep.any():
        expected = f1_score(labels[keep], preds[keep], average="macro", labels=range(8), zero_division=0)
        per_class = f1_score(labels[keep], preds[keep], average=None, labels=range(8), zero_division=0)
        assert result.macro_f1 == pytest.approx(expected, abs=1e-12)
        np.testing.assert_allclose(result.per_class_f1, per_class, atol=1e-12)
        assert result.accuracy == pytest.approx(accuracy_score(labels[keep], preds[keep]))
        np.testing.assert_array_equal(result.matrix, confusion_matrix(labels[keep], preds[keep], labels=range(8)))
    assert result.frames == int(keep.sum())


def test_summed_confusions_score_like_all_frames_at_once() -> None:
    rng = np.random.default_rng(1)
    labels, preds = rng.integers(-1, 8, 500), rng.integers(0, 8, 500)
    parts = confusion(labels[:200], preds[:200]) + confusion(labels[200:], preds[200:])
    assert scores_from_confusion(parts).macro_f1 == score(labels, preds).macro_f1


def test_length_mismatch_and_bad_predictions_are_errors() -> None:
    with pytest.raises(ValueError, match="3 labels but 2 predictions"):
        confusion(np.array([1, 2, 3]), np.array([1, 2]))
    with pytest.raises(ValueError, match="0..7"):
        confusion(np.array([1, 2]), np.array([1, 8]))


def test_evaluate_command_prints_per_class_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(2)
    labels_dir, pred_dir = tmp_path / "labels", tmp_path / "pred"
    all_labels, all_preds = [], []
    for name in ("a", "b_left", "b_right"):
        labels = rng.integers(-1, 8, 50)
        preds = np.where(rng.random(50) < 0.7, np.clip(labels, 0, 7), rng.integers(0, 8, 50))
        write_annotation(labels_dir / f"{name}.txt", labels[:48])  # 2 frames short: padded with -1
        write_submission(pred_dir / f"{name}.txt", name, preds)
        all_labels.append(np.concatenate([labels[:48], [-1, -1]]))
        all_preds.append(preds)
    assert main(["evaluate", str(pred_dir), str(labels_dir)]) == 0
    out = capsys.readouterr().out
    expected = score(np.concatenate(all_labels), np.concatenate(all_preds))
    assert f"{expected.macro_f1:6.3f}" in out
    assert "Happiness" in out and "3 tracks" in out


def test_evaluate_names_a_missing_prediction(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_annotation(tmp_path / "labels" / "a.txt", [1, 2])
    (tmp_path / "pred").mkdir()
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "labels")]) == 2
    assert "no prediction for annotated track a" in capsys.readouterr().err


def test_figures_save_as_png_and_leave_the_importers_matplotlib_backend_alone() -> None:
    """A notebook that imports mmexpr keeps its own backend; the figures still draw to files."""
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import mmexpr.train.figures; "
            "print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "svg"

    import io

    from mmexpr.metrics import au_score, score, va_score
    from mmexpr.train import figures

    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 8, 200), rng.integers(0, 8, 200)
    va = rng.uniform(-1, 1, (50, 2))
    au = rng.integers(0, 2, (50, 12))
    made = [figures.confusion_figure(score(labels, preds), 3), figures.per_class_f1_figure(score(labels, preds), 3),
            figures.au_f1_figure(au_score(au, au[::-1]), 3)]
    made.append(figures.va_scatter_figure(type("Sample", (), {"pred": [va], "true": [va[::-1]]})(),
                                          va_score(va, va[::-1]), 3))
    for fig in made:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
        figures.close(fig)
