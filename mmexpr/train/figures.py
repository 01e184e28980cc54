"""The evaluation figures logged to MLflow: EXPR confusion matrix and per-class F1, VA over time
and as a scatter, AU F1 bars.

Plain `matplotlib.figure.Figure` objects, never pyplot: workers have no display, the figures
are only ever files, and importing this module leaves the backend of whoever imports mmexpr
(a notebook, say) as it was.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from mmexpr.labels import AU_NAMES, CLASSES, VA_NAMES
from mmexpr.metrics import Scores


def confusion_figure(scores: Scores, step: int):
    """Row-normalised confusion matrix (recall per true class), with the counts written in."""
    matrix = scores.matrix.astype(np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.subplots()
    image = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=45, ha="right")
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"step {step}: macro F1 {scores.macro_f1:.3f}, {scores.frames} frames")
    for i in range(len(CLASSES)):
        for j in range(len(CLASSES)):
            if scores.matrix[i, j]:
                ax.text(j, i, int(scores.matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def per_class_f1_figure(scores: Scores, step: int):
    fig = Figure(figsize=(6.5, 3.5))
    ax = fig.subplots()
    ax.bar(range(len(CLASSES)), scores.per_class_f1, color="tab:blue")
    ax.axhline(scores.macro_f1, color="tab:red", linestyle="--", label=f"macro F1 {scores.macro_f1:.3f}")
    ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title(f"per-class F1, step {step}")
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def close(fig) -> None:
    """Drop the figure's drawing state now (a long run makes a few per evaluation)."""
    fig.clear()


def va_time_figure(sample, step: int):
    """Predicted and true valence/arousal over time for the first few validation tracks."""
    names = sorted(sample.tracks)
    fig = Figure(figsize=(9, 2.2 * max(1, len(names))))
    axes = fig.subplots(max(1, len(names)), 2, squeeze=False)
    for row, name in enumerate(names):
        windows = sorted(sample.tracks[name], key=lambda w: w[0])
        frames = np.concatenate([np.arange(s, s + len(p)) for s, p, _ in windows])
        pred = np.concatenate([p for _, p, _ in windows])
        true = np.concatenate([t for _, _, t in windows])
        for k, dim in enumerate(VA_NAMES):
            ax = axes[row, k]
            ax.plot(frames, true[:, k], ".", markersize=2, color="black", label="true")
            ax.plot(frames, pred[:, k], ".", markersize=2, color="tab:orange", label="predicted")
            ax.set_ylim(-1.05, 1.05)
            ax.set_title(f"{name}: {dim}", fontsize=9)
            if row == 0 and k == 0:
                ax.legend(loc="upper right", fontsize=7, markerscale=4)
    fig.suptitle(f"VA over time, step {step}")
    fig.tight_layout()
    return fig


def va_scatter_figure(sample, scores, step: int):
    """Predicted against true valence and arousal (unknown frames left out), with the CCCs."""
    pred = np.concatenate(sample.pred) if sample.pred else np.zeros((0, 2))
    true = np.concatenate(sample.true) if sample.true else np.zeros((0, 2))
    fig = Figure(figsize=(8, 4))
    axes = fig.subplots(1, 2)
    for k, (dim, value) in enumerate(zip(VA_NAMES, (scores.valence, scores.arousal), strict=True)):
        known = ~np.isnan(true[:, k])
        ax = axes[k]
        ax.scatter(true[known, k], pred[known, k], s=3, alpha=0.4)
        ax.plot([-1, 1], [-1, 1], color="tab:red", linewidth=1)
        ax.set_xlim(-1.05, 1.05)
        ax.set_ylim(-1.05, 1.05)
        ax.set_xlabel(f"true {dim}")
        ax.set_ylabel(f"predicted {dim}")
        ax.set_title(f"{dim}: CCC {value:.3f}")
    fig.suptitle(f"VA, step {step}: mean CCC {scores.mean:.3f}")
    fig.tight_layout()
    return fig


def au_f1_figure(scores, step: int):
    """F1 per AU at 0.5 and at the tuned thresholds."""
    x = np.arange(len(AU_NAMES))
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    ax.bar(x - 0.2, scores.per_au_f1, width=0.4, label="threshold 0.5")
    if scores.tuned_f1 is not None:
        ax.bar(x + 0.2, scores.tuned_f1, width=0.4, label="tuned thresholds")
    ax.axhline(scores.mean_f1, color="tab:red", linestyle="--", label=f"mean F1 {scores.mean_f1:.3f}")
    ax.set_xticks(x, AU_NAMES, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title(f"AU F1, step {step}")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    return fig
