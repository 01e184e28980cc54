"""The three ABAW frame tasks (EXPR, VA, AU) and the file formats Aff-Wild2 and ABAW use.

Annotation files (Aff-Wild2 EXPR): a header line naming the classes, then one integer
per frame, 0..7, or -1 for a frame to ignore. Submission files: a header
`image_location,Neutral,...,Other`, then `video/00001.jpg,3` per frame.
VA: header `valence,arousal`, a `v,a` pair per frame in -1..1, `-5,-5` unknown; AU: header
`AU1,...,AU26`, twelve 0/1 per frame, -1 unknown. Their submissions prefix `image_location`.
A file's task is told by its header (`file_task`), so nothing depends on folder names.
"""

from __future__ import annotations

import math
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
    lines = _lines(path, ANNOTATION_HEADER)
    header = lines[0].strip().lstrip("\ufeff")
    if [h.strip() for h in header.split(",")] != list(CLASSES):
        raise LabelFileError(f"{path}:1: header {header!r}; expected {ANNOTATION_HEADER!r}")
    values: list[int] = []
    for number, cells in _table_rows(path, lines, expected="; expected an integer -1..7"):
        text = ",".join(cells)
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


def fit_to_frames(
    labels: np.ndarray, frames: int, *, tolerance: int = 10, source: str = "", fill: float = IGNORE
) -> FitResult:
    """Pad with `fill` (-1; NaN for VA) or truncate labels (per frame: [N] or [N, K]) to the
    video's frame count.

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
        fitted = np.concatenate([labels, np.full((diff, *labels.shape[1:]), fill, dtype=labels.dtype)])
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


def frame_file(index: int) -> str:
    """The file name of frame `index` (0-based) in Aff-Wild2: cropped_aligned/<track>/ and the
    submission rows name frames 1-based, 5 digits."""
    return f"{index + 1:05d}.jpg"


def write_submission(path: str | os.PathLike, track: str, labels: Sequence[int] | np.ndarray) -> Path:
    """One ABAW submission file for one track; frame names are 1-based, 5 digits."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [SUBMISSION_HEADER]
    for i, value in enumerate(labels):
        value = int(value)
        if not 0 <= value < NUM_CLASSES:
            raise ValueError(f"{path}: frame {i + 1} has label {value}; a submission needs 0..7 for every frame")
        rows.append(f"{track}/{frame_file(i)},{value}")
    path.write_text("\n".join(rows) + "\n")
    return path


def _frame_track(path: Path, number: int, cell: str, track: str, seen: int) -> str:
    """The video of a submission row's `video/NNNNN.jpg`: one video per file, frames 1..N in order."""
    match = _FRAME_RE.match(cell)
    if match is None:
        raise LabelFileError(f"{path}:{number}: {cell!r} is not 'video/NNNNN.jpg'")
    if track and match["video"] != track:
        raise LabelFileError(f"{path}:{number}: video {match['video']!r} differs from {track!r} above")
    if int(match["frame"]) != seen + 1:
        raise LabelFileError(f"{path}:{number}: frame {int(match['frame'])}; expected {seen + 1} (frames in order)")
    return match["video"]


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
        track = _frame_track(path, number, parts[0].strip(), track, len(values))
        try:
            value = int(parts[1])
        except ValueError:
            raise LabelFileError(f"{path}:{number}: label {parts[1]!r} is not an integer 0..7") from None
        if not 0 <= value < NUM_CLASSES:
            raise LabelFileError(f"{path}:{number}: label {value} out of range; expected 0..7")
        values.append(value)
    return track or path.stem, np.asarray(values, dtype=np.int64)


# ---------------------------------------------------------------- VA and AU (the other two ABAW frame tasks)

TASKS: tuple[str, ...] = ("expr", "va", "au")
VA_NAMES: tuple[str, ...] = ("valence", "arousal")
AU_NAMES: tuple[str, ...] = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")
NUM_AUS = len(AU_NAMES)
VA_UNKNOWN = -5.0  # Aff-Wild2 writes -5,-5 for a frame without a valence-arousal label
VA_HEADER = ",".join(VA_NAMES)
AU_HEADER = ",".join(AU_NAMES)
VA_SUBMISSION_HEADER = "image_location," + VA_HEADER
AU_SUBMISSION_HEADER = "image_location," + AU_HEADER

ANNOTATION_HEADERS = {"expr": ANNOTATION_HEADER, "va": VA_HEADER, "au": AU_HEADER}
SUBMISSION_HEADERS = {"expr": SUBMISSION_HEADER, "va": VA_SUBMISSION_HEADER, "au": AU_SUBMISSION_HEADER}


def _lines(path: Path, header: str = "") -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as exc:
        raise LabelFileError(f"{path}: not a text file ({exc.reason})") from None
    if not lines:
        raise LabelFileError(f"{path}: empty file; expected header {header!r}" if header else f"{path}: empty file")
    return lines


def _columns(header: str) -> list[str]:
    return [h.strip() for h in header.strip().lstrip("\ufeff").split(",")]


def header_task(header: str, headers: dict[str, str]) -> str | None:
    """The task whose header this is (`headers`: annotation or submission headers), or None."""
    columns = _columns(header)
    return next((task for task, h in headers.items() if columns == h.split(",")), None)


def file_task(path: str | os.PathLike, submission: bool = False) -> str:
    """Which task a file holds, read from its header; a header of no task is an error naming it."""
    path = Path(path)
    headers = SUBMISSION_HEADERS if submission else ANNOTATION_HEADERS
    header = _lines(path)[0]
    task = header_task(header, headers)
    if task is None:
        known = "; ".join(f"{t}: {h!r}" for t, h in headers.items())
        raise LabelFileError(f"{path}:1: header {header.strip()!r} matches no task; expected one of {known}")
    return task


def _check_header(path: Path, header: str, task: str, headers: dict[str, str]) -> None:
    if _columns(header) != headers[task].split(","):
        other = header_task(header, headers)
        hint = f" (that is the {other} header)" if other else ""
        raise LabelFileError(f"{path}:1: header {header.strip()!r}{hint}; expected {headers[task]!r}")


def _va_row(path: Path, number: int, cells: list[str]) -> tuple[float, float]:
    if len(cells) != 2:
        raise LabelFileError(f"{path}:{number}: {len(cells)} column(s); expected 2 (valence,arousal)")
    try:
        v, a = (float(c) for c in cells)
    except ValueError:
        raise LabelFileError(f"{path}:{number}: {','.join(cells)!r} is not two numbers") from None
    if v == VA_UNKNOWN and a == VA_UNKNOWN:
        return math.nan, math.nan
    for name, x in (("valence", v), ("arousal", a)):
        if not -1.0 <= x <= 1.0:
            raise LabelFileError(f"{path}:{number}: {name} {x:g} out of range; expected -1..1, or -5,-5 for unknown")
    return v, a


def _au_row(path: Path, number: int, cells: list[str]) -> list[int]:
    if len(cells) != NUM_AUS:
        raise LabelFileError(f"{path}:{number}: {len(cells)} column(s); expected {NUM_AUS} ({AU_HEADER})")
    try:
        values = [int(c) for c in cells]
    except ValueError:
        raise LabelFileError(f"{path}:{number}: {','.join(cells)!r} is not {NUM_AUS} integers 0, 1 or -1") from None
    bad = [(AU_NAMES[i], x) for i, x in enumerate(values) if x not in (-1, 0, 1)]
    if bad:
        raise LabelFileError(f"{path}:{number}: {bad[0][0]} is {bad[0][1]}; expected 0, 1 or -1 (unknown)")
    return values


def _table_rows(path: Path, lines: list[str], expected: str = "") -> list[tuple[int, list[str]]]:
    """(line number, cells) of the body after the header; trailing blank lines are allowed,
    inner ones are an error (`expected` says what the line should have held)."""
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        text = line.strip()
        if not text:
            if all(not rest.strip() for rest in lines[number - 1 :]):
                break
            raise LabelFileError(f"{path}:{number}: empty line{expected}")
        rows.append((number, [c.strip() for c in text.split(",")]))
    return rows


def read_va_annotation(path: str | os.PathLike) -> np.ndarray:
    """Valence and arousal per frame of one track: float32 [N, 2], NaN where unknown."""
    path = Path(path)
    lines = _lines(path)
    _check_header(path, lines[0], "va", ANNOTATION_HEADERS)
    rows = [_va_row(path, n, cells) for n, cells in _table_rows(path, lines)]
    return np.asarray(rows, dtype=np.float32).reshape(-1, 2)


def read_au_annotation(path: str | os.PathLike) -> np.ndarray:
    """The 12 action units per frame of one track: int64 [N, 12], 0/1, -1 where unknown."""
    path = Path(path)
    lines = _lines(path)
    _check_header(path, lines[0], "au", ANNOTATION_HEADERS)
    rows = [_au_row(path, n, cells) for n, cells in _table_rows(path, lines)]
    return np.asarray(rows, dtype=np.int64).reshape(-1, NUM_AUS)


def read_task_annotation(path: str | os.PathLike, task: str) -> np.ndarray:
    """The labels of one task's annotation file (expr [N], va [N, 2], au [N, 12])."""
    readers = {"expr": read_annotation, "va": read_va_annotation, "au": read_au_annotation}
    return readers[task](path)


def _write_rows(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


def _va_cells(va: np.ndarray) -> list[str]:
    return [f"{VA_UNKNOWN:g},{VA_UNKNOWN:g}" if np.isnan(row).any() else f"{row[0]:.4f},{row[1]:.4f}" for row in va]


def write_va_annotation(path: str | os.PathLike, va: np.ndarray) -> Path:
    """NaN rows are written as -5,-5 (unknown), as Aff-Wild2 does."""
    return _write_rows(Path(path), VA_HEADER, _va_cells(np.asarray(va, np.float64).reshape(-1, 2)))


def write_au_annotation(path: str | os.PathLike, au: np.ndarray) -> Path:
    rows = [",".join(str(int(x)) for x in row) for row in np.asarray(au).reshape(-1, NUM_AUS)]
    return _write_rows(Path(path), AU_HEADER, rows)


def write_task_submission(path: str | os.PathLike, task: str, track: str, values: np.ndarray) -> Path:
    """One ABAW submission file of `task` for one track: expr [N] classes, va [N, 2] in -1..1,
    au [N, 12] 0/1; every frame must have a value."""
    if task == "expr":
        return write_submission(path, track, values)
    path = Path(path)
    if task == "va":
        va = np.asarray(values, np.float64).reshape(-1, 2)
        if not np.isfinite(va).all():
            raise ValueError(f"{path}: a VA submission needs a valence and arousal for every frame")
        cells = [f"{v:.4f},{a:.4f}" for v, a in np.clip(va, -1.0, 1.0)]
    else:
        au = np.asarray(values).reshape(-1, NUM_AUS)
        if not np.isin(au, (0, 1)).all():
            raise ValueError(f"{path}: an AU submission needs 0 or 1 for every AU of every frame")
        cells = [",".join(str(int(x)) for x in row) for row in au]
    rows = [f"{track}/{frame_file(i)},{c}" for i, c in enumerate(cells)]
    return _write_rows(path, SUBMISSION_HEADERS[task], rows)


def read_task_submission(path: str | os.PathLike, task: str) -> tuple[str, np.ndarray]:
    """(track, values) from one submission file of `task`; frames must be 1..N in order."""
    if task == "expr":
        return read_submission(path)
    path = Path(path)
    lines = _lines(path)
    _check_header(path, lines[0], task, SUBMISSION_HEADERS)
    track = ""
    values: list = []
    for number, cells in _table_rows(path, lines):
        track = _frame_track(path, number, cells[0], track, len(values))
        if task == "va":
            row = _va_row(path, number, cells[1:])
            if math.isnan(row[0]):
                raise LabelFileError(f"{path}:{number}: -5,-5 (unknown) in a submission; every frame needs a value")
        else:
            row = _au_row(path, number, cells[1:])
            if -1 in row:
                raise LabelFileError(f"{path}:{number}: -1 (unknown) in a submission; every AU needs 0 or 1")
        values.append(row)
    shape = (-1, 2) if task == "va" else (-1, NUM_AUS)
    dtype = np.float32 if task == "va" else np.int64
    return track or path.stem, np.asarray(values, dtype=dtype).reshape(shape)
