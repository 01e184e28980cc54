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
from mmexpr.labels import fit_to_frames, read_annotation, read_submission
from mmexpr.metrics import Scores, score


@dataclass(frozen=True)
class Report:
    scores: Scores
    tracks: int
    pred_dir: str
    label_dir: str
    mismatches: tuple[str, ...] = ()  # one line per track whose lengths differ

    def text(self) -> str:
        warnings = "".join(f"warning: {line}\n" for line in self.mismatches)
        return (
            f"{warnings}{self.tracks} tracks, {self.scores.frames} labelled frames\n"
            f"predictions: {self.pred_dir}\nannotations: {self.label_dir}\n\n{self.scores.table()}"
        )


def length_mismatch(pred_file: Path, predicted: int, ann: Path, annotated: int) -> str | None:
    """A line saying which frames a length difference leaves unscored or unlabelled, or None.

    A few frames' difference is allowed (Aff-Wild2's annotations and videos disagree by that
    much), but it is never silent: a prediction file that lost its last lines scores well
    on the frames it kept.
    """
    if predicted == annotated:
        return None
    if predicted < annotated:
        return (f"{pred_file}: {predicted} frames, {annotated - predicted} fewer than {ann}; "
                f"its last {annotated - predicted} annotated frame(s) are not scored")
    return f"{pred_file}: {predicted} frames, {predicted - annotated} more than {ann}; those are scored as unlabelled"


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
    mismatches: list[str] = []
    for ann in annotations:
        pred_file = pred_dir / ann.name
        if not pred_file.is_file():
            raise UserError(f"{pred_file}: no prediction for annotated track {ann.stem}")
        labels = read_annotation(ann)
        _, preds = read_submission(pred_file)
        fitted = fit_to_frames(labels, len(preds), source=str(ann)).labels
        note = length_mismatch(pred_file, len(preds), ann, len(labels))
        if note is not None:
            mismatches.append(note)
        all_labels.append(fitted)
        all_preds.append(preds)
    scores = score(np.concatenate(all_labels), np.concatenate(all_preds))
    return Report(scores, len(annotations), str(pred_dir), str(label_dir), tuple(mismatches))
