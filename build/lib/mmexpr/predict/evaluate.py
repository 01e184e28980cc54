"""Score ABAW submission files against Aff-Wild2 annotation files.

A prediction file is matched to the annotation file of the same track name. A missing
prediction for an annotated track is an error (the challenge would count it as wrong),
and so is a length mismatch beyond the padding `fit_to_frames` allows. A smaller mismatch
(Aff-Wild2's label counts often differ from the decoded frame count by a frame or two) is
fitted: labels padded with -1 or truncated to the predictions, and the report says which.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmexpr.errors import UserError
from mmexpr.labels import FitResult, fit_to_frames, read_annotation, read_submission
from mmexpr.metrics import Scores, score


@dataclass(frozen=True)
class Report:
    scores: Scores
    tracks: int
    pred_dir: str
    label_dir: str
    fitted: tuple[tuple[str, FitResult], ...] = ()  # tracks whose labels were padded or truncated

    def text(self) -> str:
        lines = [f"{self.tracks} tracks, {self.scores.frames} labelled frames",
                 f"predictions: {self.pred_dir}", f"annotations: {self.label_dir}"]
        changed = [(name, f) for name, f in self.fitted if f.padded or f.truncated]
        if changed:
            lines.append(f"{len(changed)} track(s) have a label count other than their prediction count; "
                         "labels were fitted to the predictions:")
            lines += [f"  {name}: {f.padded} frame(s) padded with -1 (not scored), {f.truncated} label(s) "
                      "truncated" for name, f in changed]
        return "\n".join(lines) + "\n\n" + self.scores.table()


def evaluate_dirs(pred_dir: str | os.PathLike, label_dir: str | os.PathLike) -> Report:
    pred_dir, label_dir = Path(pred_dir), Path(label_dir)
    for folder, what in ((pred_dir, "prediction"), (label_dir, "annotation")):
        if not folder.is_dir():
            raise UserError(f"{folder}: {what} folder not found")
    annotations = sorted(label_dir.glob("*.txt"))
    if not annotations:
        raise UserError(f"{label_dir}: no annotation files (*.txt)")
    all_labels: list[np.ndarray] = []
    all_preds: list[np.ndarray] = []
    fitted: list[tuple[str, FitResult]] = []
    for ann in annotations:
        pred_file = pred_dir / ann.name
        if not pred_file.is_file():
            raise UserError(f"{pred_file}: no prediction for annotated track {ann.stem}")
        labels = read_annotation(ann)
        _, preds = read_submission(pred_file)
        fit = fit_to_frames(labels, len(preds), source=str(ann))
        fitted.append((ann.stem, fit))
        all_labels.append(fit.labels)
        all_preds.append(preds)
    scores = score(np.concatenate(all_labels), np.concatenate(all_preds))
    return Report(scores, len(annotations), str(pred_dir), str(label_dir), tuple(fitted))
