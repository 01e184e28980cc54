"""Frame-level EXPR metrics: macro F1 over the 8 classes, the ABAW score.

Lives beside labels.py rather than in train/ because training, prediction and the
`evaluate` command all score frames the same way, and must agree to the last digit.
Definitions match scikit-learn's `f1_score(average="macro", labels=range(8))`: a class
with no true and no predicted frames scores 0 (zero_division=0 there, warn-free here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmexpr.labels import AU_NAMES, CLASSES, IGNORE, NUM_AUS, NUM_CLASSES


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


# ---------------------------------------------------------------- VA: concordance correlation (CCC)

VA_MOMENTS = ("n", "sum_pred", "sum_true", "sum_pred2", "sum_true2", "sum_cross")


def ccc(pred: np.ndarray, true: np.ndarray) -> float:
    """Lin's concordance correlation coefficient with population (co)variances, as ABAW scores VA."""
    pred, true = np.asarray(pred, np.float64).ravel(), np.asarray(true, np.float64).ravel()
    return ccc_from_moments(va_moments(pred[:, None], true[:, None])[0])


def va_moments(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per dimension [K, 6] sums (VA_MOMENTS) over frames whose truth is known (not NaN): ranks
    add these, then score, and get what one pass over all frames gives."""
    pred = np.asarray(pred, np.float64).reshape(-1, np.shape(true)[-1])
    true = np.asarray(true, np.float64).reshape(pred.shape)
    out = np.zeros((pred.shape[1], len(VA_MOMENTS)), np.float64)
    for k in range(pred.shape[1]):
        keep = ~np.isnan(true[:, k])
        p, t = pred[keep, k], true[keep, k]
        out[k] = (len(p), p.sum(), t.sum(), (p * p).sum(), (t * t).sum(), (p * t).sum())
    return out


def ccc_from_moments(m: np.ndarray) -> float:
    n, sp, st, spp, stt, spt = (float(x) for x in m)
    if n == 0:
        return 0.0
    mp, mt = sp / n, st / n
    vp, vt = spp / n - mp * mp, stt / n - mt * mt
    cov = spt / n - mp * mt
    denom = vp + vt + (mp - mt) ** 2
    return float(2 * cov / denom) if denom > 0 else 0.0


@dataclass(frozen=True)
class VAScores:
    valence: float
    arousal: float
    frames: int  # frames with a known valence

    @property
    def mean(self) -> float:
        """The ABAW VA score: mean of the two CCCs."""
        return (self.valence + self.arousal) / 2

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}va_ccc": self.mean, f"{prefix}va_ccc_valence": self.valence,
                f"{prefix}va_ccc_arousal": self.arousal}

    def table(self) -> str:
        return "\n".join([f"{'VA':<11} {'CCC':>6} {'frames':>8}", f"{'valence':<11} {self.valence:6.3f} {self.frames:8d}",
                          f"{'arousal':<11} {self.arousal:6.3f}", f"{'mean CCC':<11} {self.mean:6.3f}"])


def va_scores_from_moments(m: np.ndarray) -> VAScores:
    m = np.asarray(m, np.float64).reshape(2, len(VA_MOMENTS))
    return VAScores(ccc_from_moments(m[0]), ccc_from_moments(m[1]), int(m[0, 0]))


def va_score(pred: np.ndarray, true: np.ndarray) -> VAScores:
    return va_scores_from_moments(va_moments(pred, true))


# ---------------------------------------------------------------- AU: F1 per action unit

# Thresholds tried per AU on validation; 0.5 is among them, so one pass gives both scores.
AU_THRESHOLDS = np.round(np.linspace(0.05, 0.95, 19), 2)
AU_DEFAULT = int(np.flatnonzero(AU_THRESHOLDS == 0.5)[0])


def au_counts(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """[12, 3] true positives, false positives, false negatives; unknown (-1) entries left out."""
    true = np.asarray(true, np.int64).reshape(-1, NUM_AUS)
    pred = np.asarray(pred, np.int64).reshape(true.shape)
    known = true != IGNORE
    tp = ((pred == 1) & (true == 1) & known).sum(0)
    fp = ((pred == 1) & (true == 0) & known).sum(0)
    fn = ((pred == 0) & (true == 1) & known).sum(0)
    return np.stack([tp, fp, fn], axis=1).astype(np.int64)


def au_threshold_counts(prob: np.ndarray, true: np.ndarray) -> np.ndarray:
    """[len(AU_THRESHOLDS), 12, 3] counts at every candidate threshold (prob >= threshold is 1)."""
    prob = np.asarray(prob, np.float64).reshape(-1, NUM_AUS)
    return np.stack([au_counts((prob >= th).astype(np.int64), true) for th in AU_THRESHOLDS])


def _f1(counts: np.ndarray) -> np.ndarray:
    tp, fp, fn = (counts[..., i].astype(np.float64) for i in range(3))
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


@dataclass(frozen=True)
class AUScores:
    per_au_f1: np.ndarray  # at threshold 0.5
    frames: int  # frames with at least one known AU
    tuned_f1: np.ndarray | None = None  # at the per-AU thresholds below
    thresholds: np.ndarray | None = None  # per AU, tuned on these frames

    @property
    def mean_f1(self) -> float:
        """The ABAW AU score: mean F1 over the 12 AUs."""
        return float(self.per_au_f1.mean())

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        out = {f"{prefix}au_f1": self.mean_f1}
        out.update({f"{prefix}au_f1_{name}": float(f) for name, f in zip(AU_NAMES, self.per_au_f1, strict=True)})
        if self.tuned_f1 is not None:
            out[f"{prefix}au_f1_tuned"] = float(self.tuned_f1.mean())
        return out

    def table(self) -> str:
        lines = [f"{'AU':<11} {'F1':>6}" + ("  tuned  thresh" if self.thresholds is not None else "")]
        for i, name in enumerate(AU_NAMES):
            extra = f"  {self.tuned_f1[i]:5.3f}  {self.thresholds[i]:6.2f}" if self.thresholds is not None else ""
            lines.append(f"{name:<11} {self.per_au_f1[i]:6.3f}{extra}")
        tuned = f"  {self.tuned_f1.mean():5.3f}" if self.tuned_f1 is not None else ""
        lines.append(f"{'mean F1':<11} {self.mean_f1:6.3f}{tuned}  ({self.frames} frames)")
        return "\n".join(lines)


def au_scores_from_counts(counts: np.ndarray, frames: int) -> AUScores:
    """From [12, 3] counts at 0.5, or [len(AU_THRESHOLDS), 12, 3] (then thresholds are tuned too)."""
    counts = np.asarray(counts, np.int64)
    if counts.ndim == 2:
        return AUScores(_f1(counts), frames)
    f1 = _f1(counts)  # [thresholds, 12]
    best = f1.argmax(axis=0)
    tuned = f1[best, np.arange(NUM_AUS)]
    return AUScores(f1[AU_DEFAULT], frames, tuned, AU_THRESHOLDS[best].astype(np.float64))


def au_score(pred: np.ndarray, true: np.ndarray) -> AUScores:
    true = np.asarray(true, np.int64).reshape(-1, NUM_AUS)
    return au_scores_from_counts(au_counts(pred, true), int((true != IGNORE).any(axis=1).sum()))


# ---------------------------------------------------------------- the three tasks together


@dataclass(frozen=True)
class TaskScores:
    """Whichever of the three tasks a model has; `abaw(task)` is that challenge's score."""

    expr: Scores | None = None
    va: VAScores | None = None
    au: AUScores | None = None

    def abaw(self, task: str) -> float:
        value = {"expr": lambda s: s.macro_f1, "va": lambda s: s.mean, "au": lambda s: s.mean_f1}[task]
        scores = getattr(self, task)
        if scores is None:
            raise KeyError(f"no {task} scores: the model has no {task} head")
        return float(value(scores))

    def present(self) -> list[str]:
        return [t for t in ("expr", "va", "au") if getattr(self, t) is not None]

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        out: dict[str, float] = {}
        for task in self.present():
            out.update(getattr(self, task).as_metrics(prefix))
            out[f"{prefix}score_{task}"] = self.abaw(task)
        return out

    def table(self) -> str:
        return "\n\n".join(getattr(self, t).table() for t in self.present())

    def line(self) -> str:
        names = {"expr": "EXPR macro F1", "va": "VA mean CCC", "au": "AU mean F1"}
        return ", ".join(f"{names[t]} {self.abaw(t):.4f}" for t in self.present())
