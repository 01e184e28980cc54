"""The two evaluation figures logged to MLflow: confusion matrix and per-class F1.

matplotlib with the Agg backend: workers have no display, and figures are only ever files.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mmexpr.labels import CLASSES  # noqa: E402
from mmexpr.metrics import Scores  # noqa: E402


def confusion_figure(scores: Scores, step: int):
    """Row-normalised confusion matrix (recall per true class), with the counts written in."""
    matrix = scores.matrix.astype(np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
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
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
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
    plt.close(fig)
