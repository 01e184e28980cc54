"""Score ABAW submission files against Aff-Wild2 annotation files, for any of the three tasks.

A prediction file is matched to the annotation file of the same track name. Which task a
folder holds is read from the files' headers (EXPR, VA or AU, labels.file_task), not from
folder names, so `evaluate preds/va annotations/VA_Estimation_Challenge/Validation_Set`
and the EXPR pair work alike; a folder mixing tasks, or annotations of another task than
the predictions, is an error naming a file of each. A missing prediction for an annotated
track is an error (the challenge would count it as wrong), and so is a length mismatch
beyond the padding `fit_to_frames` allows. A smaller mismatch (Aff-Wild2's label counts
often differ from the decoded frame count by a frame or two) is fitted: labels padded as
unknown or truncated to the predictions, and the report says which. Unknown frames (-1,
-5,-5) are left out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmexpr.errors import UserError
from mmexpr.labels import (
    IGNORE,
    file_task,
    fit_to_frames,
    read_task_annotation,
    read_task_submission,
)
from mmexpr.metrics import AUScores, Scores, TaskScores, VAScores, au_score, score, va_score

TASK_NAMES = {"expr": "EXPR", "va": "VA", "au": "AU"}


@dataclass(frozen=True)
class Report:
    task: str
    scores: Scores | VAScores | AUScores  # the task's own scores (Scores for EXPR)
    tracks: int
    frames: int
    pred_dir: str
    label_dir: str
    mismatches: tuple[str, ...] = ()  # one line per track whose lengths differ

    def text(self) -> str:
        warnings = "".join(f"warning: {line}\n" for line in self.mismatches)
        return (
            f"{warnings}{TASK_NAMES[self.task]}: {self.tracks} tracks, {self.frames} labelled frames\n"
            f"predictions: {self.pred_dir}\nannotations: {self.label_dir}\n\n{self.scores.table()}\n"
            f"ABAW {TASK_NAMES[self.task]} score {self.abaw:.4f}"
        )

    @property
    def abaw(self) -> float:
        return TaskScores(**{self.task: self.scores}).abaw(self.task)


def folder_task(files: list[Path], submission: bool) -> str:
    """The one task every file of a folder holds, by header."""
    tasks = {f: file_task(f, submission=submission) for f in files}
    found = sorted(set(tasks.values()))
    if len(found) > 1:
        examples = ", ".join(f"{next(f for f, t in tasks.items() if t == task)} ({task})" for task in found)
        raise UserError(f"{files[0].parent}: files of several tasks in one folder: {examples}")
    return found[0]


def _score(task: str, labels: np.ndarray, preds: np.ndarray) -> Scores | VAScores | AUScores:
    if task == "expr":
        return score(labels, preds)
    if task == "va":
        return va_score(preds, labels)
    return au_score(preds, labels)


def _known_frames(task: str, labels: np.ndarray) -> int:
    if task == "expr":
        return int((labels != IGNORE).sum())
    if task == "va":
        return int((~np.isnan(labels)).any(axis=1).sum())
    return int((labels != IGNORE).any(axis=1).sum())


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
    predictions = sorted(pred_dir.glob("*.txt"))
    label_task = folder_task(annotations, submission=False)
    task = folder_task(predictions, submission=True) if predictions else label_task
    if label_task != task:
        raise UserError(
            f"{pred_dir} holds {TASK_NAMES[task]} submissions but {label_dir} holds {TASK_NAMES[label_task]} "
            f"annotations (e.g. {annotations[0].name}); give the annotation folder of the same task"
        )
    fill = np.nan if task == "va" else IGNORE
    all_labels: list[np.ndarray] = []
    all_preds: list[np.ndarray] = []
    mismatches: list[str] = []
    for ann in annotations:
        pred_file = pred_dir / ann.name
        if not pred_file.is_file():
            raise UserError(f"{pred_file}: no prediction for annotated track {ann.stem}")
        labels = read_task_annotation(ann, task)
        _, preds = read_task_submission(pred_file, task)
        note = length_mismatch(pred_file, len(preds), ann, len(labels))
        if note is not None:
            mismatches.append(note)
        all_labels.append(fit_to_frames(labels, len(preds), source=str(ann), fill=fill).labels)
        all_preds.append(preds)
    labels, preds = np.concatenate(all_labels), np.concatenate(all_preds)
    return Report(task, _score(task, labels, preds), len(annotations), _known_frames(task, labels),
                  str(pred_dir), str(label_dir), tuple(mismatches))
