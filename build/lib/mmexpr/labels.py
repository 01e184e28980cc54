"""The 8 EXPR classes and the two file formats ABAW uses for them.

Annotation files (Aff-Wild2 EXPR): a header line naming the classes, then one integer
per frame, 0..7, or -1 for a frame to ignore. Submission files: a header
`image_location,Neutral,...,Other`, then `video/00001.jpg,3` per frame.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmexpr.errors import UserError

CLASSES: tuple[str, ...] = (
    "Neutral",
    "Anger",
    "Disgust",
    "Fear",
    "Happiness",
    "Sadness",
    "Surprise",
    "Other",
)
NUM_CLASSES = len(CLASSES)
IGNORE = -1
ANNOTATION_HEADER = ",".join(CLASSES)
SUBMISSION_HEADER = "image_location," + ",".join(CLASSES)

# Words used inside text prompts: "Other" is not an expression a text encoder knows.
PROMPT_NAMES: tuple[str, ...] = (
    "a neutral expression",
    "anger",
    "disgust",
    "fear",
    "happiness",
    "sadness",
    "surprise",
    "some other expression",
)

TRACK_SUFFIXES = ("_left", "_right")


class LabelFileError(UserError, ValueError):
    """A malformed annotation or submission file; the message names file and line."""


def prompts(templates: Sequence[str]) -> list[list[str]]:
    """Prompt texts per class: templates x class names, for the text-guided loss."""
    return [[t.format(name) for t in templates] for name in PROMPT_NAMES]


def split_track(stem: str) -> tuple[str, str]:
    """`video_left` -> (`video`, `left`); `video` -> (`video`, ``). Two-person videos have two tracks."""
    for suffix in TRACK_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)], suffix[1:]
    return stem, ""


def track_name(video: str, track: str) -> str:
    return f"{video}_{track}" if track else video


def read_annotation(path: str | os.PathLike) -> np.ndarray:
    """Per-frame labels of one track (int64, -1 = ignore)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as exc:
        raise LabelFileError(f"{path}: not a text file ({exc.reason})") from None
    if not lines:
        raise LabelFileError(f"{path}: empty file; expected header {ANNOTATION_HEADER!r}")
    header = lines[0].strip().lstrip("\ufeff")
    if [h.strip() for h in header.split(",")] != list(CLASSES):
        raise LabelFileError(f"{path}:1: header {header!r}; expected {ANNOTATION_HEADER!r}")
    values: list[int] = []
    for number, line in enumerate(lines[1:], start=2):
        text = line.strip()
        if not text:
            if all(not rest.strip() for rest in lines[number - 1 :]):
                break  # trailing blank lines
            raise LabelFileError(f"{path}:{number}: empty line; expected an integer -1..7")
        try:
            value = int(text)
        except ValueError:
            raise LabelFileError(f"{path}:{number}: {text!r} is not an integer -1..7") from None
        if not IGNORE <= value < NUM_CLASSES:
            raise LabelFileError(f"{path}:{number}: label {value} out of range; expected -1..7")
        values.append(value)
    return np.asarray(values, dtype=np.int64)


def write_annotation(path: str | os.PathLike, labels: Sequence[int] | np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join(str(int(v)) for v in labels)
    path.write_text(ANNOTATION_HEADER + "\n" + body + ("\n" if len(labels) else ""))
    return path


@dataclass(frozen=True)
class FitResult:
    labels: np.ndarray
    padded: int
    truncated: int


def fit_to_frames(labels: np.ndarray, frames: int, *, tolerance: int = 10, source: str = "") -> FitResult:
    """Pad with -1 or truncate labels to the video's frame count.

    Aff-Wild2 annotation counts often differ from the decoded frame count by a few
    frames; a larger mismatch means the wrong file and is an error.
    """
    diff = frames - len(labels)
    if abs(diff) > tolerance:
        raise LabelFileError(
            f"{source or 'labels'}: {len(labels)} labels for {frames} frames; "
            f"more than {tolerance} frames apart, probably the wrong annotation file"
        )
    if diff > 0:
        fitted = np.concatenate([labels, np.full(diff, IGNORE, dtype=np.int64)])
        return FitResult(fitted, padded=diff, truncated=0)
    if diff < 0:
        return FitResult(labels[:frames].copy(), padded=0, truncated=-diff)
    return FitResult(labels, padded=0, truncated=0)


def warn_fitted(results: Sequence[tuple[str, FitResult]]) -> None:
    """One warning that counts every padded or truncated track, rather than one per file."""
    changed = [(name, r) for name, r in results if r.padded or r.truncated]
    if changed:
        padded = sum(r.padded for _, r in changed)
        truncated = sum(r.truncated for _, r in changed)
        names = ", ".join(name for name, _ in changed[:5]) + (" ..." if len(changed) > 5 else "")
        warnings.warn(
            f"{len(changed)} track(s) had a label count different from their frame count: "
            f"{padded} frame(s) padded with -1, {truncated} label(s) truncated ({names})",
            stacklevel=2,
        )


_FRAME_RE = re.compile(r"^(?P<video>.+)/(?P<frame>\d+)\.jpg$")


def write_submission(path: str | os.PathLike, track: str, labels: Sequence[int] | np.ndarray) -> Path:
    """One ABAW submission file for one track; frame names are 1-based, 5 digits."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [SUBMISSION_HEADER]
    for i, value in enumerate(labels):
        value = int(value)
        if not 0 <= value < NUM_CLASSES:
            raise ValueError(f"{path}: frame {i + 1} has label {value}; a submission needs 0..7 for every frame")
        rows.append(f"{track}/{i + 1:05d}.jpg,{value}")
    path.write_text("\n".join(rows) + "\n")
    return path


def read_submission(path: str | os.PathLike) -> tuple[str, np.ndarray]:
    """(track, labels) from one submission file; frames must be 1..N in order."""
    path = Path(path)
    lines = path.read_text().splitlines()
    if not lines:
        raise LabelFileError(f"{path}: empty file; expected header {SUBMISSION_HEADER!r}")
    header = lines[0].strip().lstrip("\ufeff")
    if [h.strip() for h in header.split(",")] != SUBMISSION_HEADER.split(","):
        raise LabelFileError(f"{path}:1: header {header!r}; expected {SUBMISSION_HEADER!r}")
    track = ""
    values: list[int] = []
    for number, line in enumerate(lines[1:], start=2):
        text = line.strip()
        if not text:
            continue
        parts = text.split(",")
        if len(parts) != 2:
            raise LabelFileError(f"{path}:{number}: {text!r}; expected 'video/00001.jpg,LABEL'")
        match = _FRAME_RE.match(parts[0].strip())
        if match is None:
            raise LabelFileError(f"{path}:{number}: {parts[0]!r} is not 'video/NNNNN.jpg'")
        if track and match["video"] != track:
            raise LabelFileError(f"{path}:{number}: video {match['video']!r} differs from {track!r} above")
        track = match["video"]
        if int(match["frame"]) != len(values) + 1:
            raise LabelFileError(
                f"{path}:{number}: frame {int(match['frame'])}; expected {len(values) + 1} (frames in order)"
            )
        try:
            value = int(parts[1])
        except ValueError:
            raise LabelFileError(f"{path}:{number}: label {parts[1]!r} is not an integer 0..7") from None
        if not 0 <= value < NUM_CLASSES:
            raise LabelFileError(f"{path}:{number}: label {value} out of range; expected 0..7")
        values.append(value)
    return track or path.stem, np.asarray(values, dtype=np.int64)
