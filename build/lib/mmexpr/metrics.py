"""Frame-level EXPR metrics: macro F1 over the 8 classes, the ABAW score.

Lives beside labels.py rather than in train/ because training, prediction and the
`evaluate` command all score frames the same way, and must agree to the last digit.
Definitions match scikit-learn's `f1_score(average="macro", labels=range(8))`: a class
with no true and no predicted frames scores 0 (zero_division=0 there, warn-free here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmexpr.labels import CLASSES, IGNORE, NUM_CLASSES


def confusion(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """8x8 counts, rows = true class, columns = predicted; frames labelled -1 are left out."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    preds = np.asarray(preds, dtype=np.int64).ravel()
    if labels.shape != preds.shape:
        raise ValueError(f"{labels.size} labels but {preds.size} predictions")
    keep = labels != IGNORE
    labels, preds = labels[keep], preds[keep]
    if labels.size and (preds.min() < 0 or preds.max() >= NUM_CLASSES):
        raise ValueError("predictions must be class indices 0..7")
    return np.bincount(labels * NUM_CLASSES + preds, minlength=NUM_CLASSES**2).reshape(
        NUM_CLASSES, NUM_CLASSES
    )


@dataclass(frozen=True)
class Scores:
    macro_f1: float
    per_class_f1: np.ndarray
    accuracy: float
    frames: int
    matrix: np.ndarray

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        out = {f"{prefix}macro_f1": self.macro_f1, f"{prefix}accuracy": self.accuracy}
        for name, f1 in zip(CLASSES, self.per_class_f1, strict=True):
            out[f"{prefix}f1_{name}"] = float(f1)
        return out

    def table(self) -> str:
        support = self.matrix.sum(axis=1)
        lines = [f"{'class':<11} {'F1':>6} {'frames':>8}"]
        for name, f1, n in zip(CLASSES, self.per_class_f1, support, strict=True):
            lines.append(f"{name:<11} {f1:6.3f} {int(n):8d}")
        lines.append(f"{'macro F1':<11} {self.macro_f1:6.3f} {self.frames:8d}")
        lines.append(f"{'accuracy':<11} {self.accuracy:6.3f}")
        return "\n".join(lines)


def scores_from_confusion(matrix: np.ndarray) -> Scores:
    """Scores from summed confusion matrices, so ranks can add counts before scoring."""
    matrix = np.asarray(matrix, dtype=np.int64)
    tp = np.diag(matrix).astype(np.float64)
    true = matrix.sum(axis=1).astype(np.float64)
    pred = matrix.sum(axis=0).astype(np.float64)
    denom = true + pred
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    total = int(matrix.sum())
    accuracy = float(tp.sum() / total) if total else 0.0
    return Scores(float(f1.mean()), f1, accuracy, total, matrix)


def score(labels: np.ndarray, preds: np.ndarray) -> Scores:
    return scores_from_confusion(confusion(labels, preds))
