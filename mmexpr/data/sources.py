"""Find what can be packed in an Aff-Wild2-layout tree, and say why the rest cannot.

Layout (see DESIGN.md, section Data):

    SOURCE/videos/**/<name>.(mp4|avi)
    SOURCE/annotations/<SplitFolder>/<name>.txt      (<name>_left.txt / <name>_right.txt
                                                      for videos with two annotated people)
    SOURCE/annotations/VA_Estimation_Challenge/<SplitFolder>/<name>.txt   valence-arousal
    SOURCE/annotations/AU_Detection_Challenge/<SplitFolder>/<name>.txt    action units
    SOURCE/cropped_aligned/<track>/<00001>.jpg        optional face crops, per track
    SOURCE/transcripts/<name>.json                    optional [{"start", "end", "word"}, ...]

Discovery never raises for one bad file: a real corpus always has a few, and stopping
a multi-hour pack for one of them is worse than packing the rest and naming it. Each
problem becomes a `Skipped(path, reason)` that the manifest and the summary report.
Video files are only checked for existence here; whether they decode is found out by the
pack task that opens them anyway.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from mmexpr.errors import UserError
from mmexpr.labels import (
    IGNORE,
    LabelFileError,
    file_task,
    read_annotation,
    read_task_annotation,
    split_track,
    track_name,
)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")

# Aff-Wild2 folder names -> our split names; anything else becomes its lowercase name.
SPLIT_NAMES = {"Train_Set": "train", "Validation_Set": "validation", "Test_Set": "test"}

# Aff-Wild2 challenge folders under annotations/ -> the task their files label.
CHALLENGE_TASKS = {
    "EXPR_Recognition_Challenge": "expr",
    "EXPR_Classification_Challenge": "expr",
    "EXPR_Set": "expr",
    "VA_Estimation_Challenge": "va",
    "AU_Detection_Challenge": "au",
}


class SourceError(UserError, ValueError):
    """A source tree that cannot be packed at all (missing folders, nothing packable)."""


@dataclass(frozen=True)
class Skipped:
    """One input left out of the shards and why; written to the manifest as is."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str


@dataclass(frozen=True)
class TrackSource:
    """One annotated person in one video: its labels and, if present, its face crops."""

    name: str  # e.g. "vid003_left"
    side: str  # "", "left" or "right"
    annotation: str
    labels: np.ndarray  # EXPR [N], -1 unknown (all -1 for a track annotated for VA/AU only)
    crops: str | None  # folder of <00001>.jpg, or None
    va: np.ndarray | None = None  # float32 [N, 2], NaN unknown; None: no VA file
    au: np.ndarray | None = None  # int64 [N, 12], -1 unknown; None: no AU file
    task_files: tuple[tuple[str, str], ...] = ()  # (task, annotation path) of the VA/AU files


@dataclass(frozen=True)
class VideoJob:
    """Everything one pack task needs for one video (picklable, sent to a Ray task)."""

    video: str  # name, e.g. "vid003"
    split: str
    path: str
    tracks: tuple[TrackSource, ...]
    words: tuple[Word, ...] = ()


@dataclass
class Discovery:
    jobs: list[VideoJob] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def splits(self) -> list[str]:
        return sorted({job.split for job in self.jobs})


def split_name(folder: str) -> str:
    return SPLIT_NAMES.get(folder, folder.lower())


def index_videos(root: Path) -> tuple[dict[str, Path], list[Skipped]]:
    """Video files by name (stem); a name found twice is ambiguous and left out."""
    found: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
            found.setdefault(path.stem, []).append(path)
    videos: dict[str, Path] = {}
    skipped: list[Skipped] = []
    for name, paths in found.items():
        if len(paths) > 1:
            others = ", ".join(str(p) for p in paths)
            skipped.append(Skipped(str(paths[0]), f"video name {name!r} is ambiguous: {others}"))
        else:
            videos[name] = paths[0]
    return videos, skipped


def read_transcript(path: Path) -> tuple[Word, ...]:
    """Words of one video; raises SourceError naming the file and entry if malformed."""
    try:
        entries = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(entries, list):
        raise SourceError(f"{path}: expected a list of {{start, end, word}} objects")
    words = []
    for i, entry in enumerate(entries):
        try:
            words.append(Word(float(entry["start"]), float(entry["end"]), str(entry["word"])))
        except (KeyError, TypeError, ValueError):
            raise SourceError(
                f"{path}: entry {i} is {entry!r}; expected {{'start': sec, 'end': sec, 'word': str}}"
            ) from None
    return tuple(words)


def _crops_for(root: Path, track: str) -> str | None:
    folder = root / "cropped_aligned" / track
    return str(folder) if folder.is_dir() and any(folder.glob("*.jpg")) else None


def video_tracks(root: Path, video: str, path: Path, frames: int, split: str = "predict") -> VideoJob:
    """The tracks of one raw video, for prediction: its annotation files in any split folder
    (labels kept, so predictions can be scored), else its `_left`/`_right` crop folders, else
    one track named after the video with every label unknown."""
    ann_root = root / "annotations"
    annotated = {
        ann.stem: ann
        for ann in (sorted(ann_root.glob("*/*.txt")) if ann_root.is_dir() else [])
        if split_track(ann.stem)[0] == video and ann.parent.name not in CHALLENGE_TASKS
    }
    in_challenges = {  # a track annotated for VA or AU only is still a track to predict
        ann.stem
        for challenge in CHALLENGE_TASKS
        for ann in (sorted((ann_root / challenge).glob("*/*.txt")) if (ann_root / challenge).is_dir() else [])
        if split_track(ann.stem)[0] == video
    }
    sides = sorted({split_track(stem)[1] for stem in {*annotated, *in_challenges}})
    if not sides:
        sides = [s for s in ("left", "right") if (root / "cropped_aligned" / track_name(video, s)).is_dir()] or [""]
    tracks = []
    for side in sides:
        name = track_name(video, side)
        ann = annotated.get(name)
        labels = read_annotation(ann) if ann is not None else np.full(frames, -1, np.int64)
        tracks.append(TrackSource(name, side, str(ann or ""), labels, _crops_for(root, name)))
    return VideoJob(video, split, str(path), tuple(tracks))


def task_split_folders(ann_root: Path) -> dict[str, dict[str, Path]]:
    """VA and AU annotation folders per split: {split: {task: annotations/<Challenge>/<Split_Set>}}."""
    out: dict[str, dict[str, Path]] = {}
    for challenge, task in CHALLENGE_TASKS.items():
        folder = ann_root / challenge
        if task == "expr" or not folder.is_dir():
            continue
        for split_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            out.setdefault(split_name(split_dir.name), {})[task] = split_dir
    return out


def read_task_file(path: Path, task: str) -> np.ndarray:
    """One VA or AU file; its header must be its folder's task (a file of another task, or of
    none, in a challenge folder is a LabelFileError naming it)."""
    found = file_task(path)
    if found != task:
        raise LabelFileError(f"{path}:1: a {found} annotation in the {task} folder {path.parent}")
    return read_task_annotation(path, task)


def add_task_labels(
    tracks: dict[str, TrackSource], folders: dict[str, Path], videos: dict[str, Path], root: Path,
    skipped: list[Skipped],
) -> None:
    """Attach each split's VA/AU files to its tracks (by track name), adding tracks that have
    no EXPR file: their EXPR labels are all unknown, so only the tasks they have train."""
    for task, folder in sorted(folders.items()):
        for ann in sorted(folder.glob("*.txt")):
            values = _track_file(ann, videos, root, skipped, partial(read_task_file, task=task), f"{task} ")
            if values is None:
                continue
            video, side = split_track(ann.stem)
            name = track_name(video, side)
            track = tracks.get(name) or TrackSource(
                name, side, str(ann), np.full(len(values), IGNORE, np.int64), _crops_for(root, name)
            )
            files = (*track.task_files, (task, str(ann)))
            tracks[name] = replace(track, task_files=files, **{task: values})


def _track_file(
    ann: Path, videos: dict[str, Path], root: Path, skipped: list[Skipped], read, what: str
) -> np.ndarray | None:
    """One annotation file's labels, or None with the reason added to `skipped` (no such video,
    malformed, empty). `what` names the task in the reason ("va ", "au ", "" for EXPR)."""
    video, _ = split_track(ann.stem)
    if video not in videos:
        skipped.append(Skipped(str(ann), f"no video named {video!r} under {root / 'videos'}"))
        return None
    try:
        values = read(ann)
    except LabelFileError as exc:
        skipped.append(Skipped(str(ann), f"malformed {what}annotation: {exc}"))
        return None
    if len(values) == 0:
        skipped.append(Skipped(str(ann), f"{what}annotation has no frames"))
        return None
    return values


def _expr_tracks(split_dir: Path, videos: dict[str, Path], root: Path, skipped: list[Skipped]) -> dict[str, TrackSource]:
    tracks: dict[str, TrackSource] = {}
    for ann in sorted(split_dir.glob("*.txt")):
        labels = _track_file(ann, videos, root, skipped, read_annotation, "")
        if labels is None:
            continue
        video, side = split_track(ann.stem)
        name = track_name(video, side)
        tracks[name] = TrackSource(name, side, str(ann), labels, _crops_for(root, name))
    return tracks


def discover(source: str | Path, splits: list[str] | None = None) -> Discovery:
    """All packable tracks under SOURCE grouped per video, plus every skipped input."""
    root = Path(source)
    if not root.is_dir():
        raise SourceError(f"{root}: source folder not found")
    ann_root = root / "annotations"
    if not ann_root.is_dir():
        raise SourceError(f"{ann_root}: no annotations folder; expected annotations/<Split_Set>/<name>.txt")
    videos, skipped = index_videos(root / "videos")
    found = Discovery(skipped=skipped)
    wanted = set(splits) if splits else None
    expr_dirs = {
        split_name(p.name): p for p in sorted(ann_root.iterdir()) if p.is_dir() and p.name not in CHALLENGE_TASKS
    }
    task_dirs = task_split_folders(ann_root)
    for split in sorted(set(expr_dirs) | set(task_dirs)):
        if wanted is not None and split not in wanted:
            continue
        tracks = _expr_tracks(expr_dirs[split], videos, root, found.skipped) if split in expr_dirs else {}
        add_task_labels(tracks, task_dirs.get(split, {}), videos, root, found.skipped)
        by_video: dict[str, list[TrackSource]] = {}
        for name in sorted(tracks):
            by_video.setdefault(split_track(name)[0], []).append(tracks[name])
        for video, video_tracks_ in sorted(by_video.items()):
            words: tuple[Word, ...] = ()
            transcript = root / "transcripts" / f"{video}.json"
            if transcript.is_file():
                try:
                    words = read_transcript(transcript)
                except SourceError as exc:
                    found.skipped.append(Skipped(str(transcript), f"transcript ignored: {exc}"))
            found.jobs.append(VideoJob(video, split, str(videos[video]), tuple(video_tracks_), words))
    if wanted is not None:
        missing = wanted - set(expr_dirs) - set(task_dirs)
        if missing:
            raise SourceError(f"{ann_root}: no annotation folder for split(s) {sorted(missing)}")
    return found
