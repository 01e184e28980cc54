"""Find what can be packed in an Aff-Wild2-layout tree, and say why the rest cannot.

Layout (docs/ARCHITECTURE.md has where this sits in the path of a sample):

    SOURCE/videos/**/<name>.(mp4|avi)
    SOURCE/annotations/<SplitFolder>/<name>.txt      (<name>_left.txt / <name>_right.txt
                                                      for videos with two annotated people)
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmexpr.errors import UserError
from mmexpr.labels import LabelFileError, read_annotation, split_track, track_name

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")

# Aff-Wild2 folder names -> our split names; anything else becomes its lowercase name.
SPLIT_NAMES = {"Train_Set": "train", "Validation_Set": "validation", "Test_Set": "test"}


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
    labels: np.ndarray
    crops: str | None  # folder of <00001>.jpg, or None


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
        if split_track(ann.stem)[0] == video
    }
    sides = [split_track(stem)[1] for stem in annotated]
    if not sides:
        sides = [s for s in ("left", "right") if (root / "cropped_aligned" / track_name(video, s)).is_dir()] or [""]
    tracks = []
    for side in sides:
        name = track_name(video, side)
        ann = annotated.get(name)
        labels = read_annotation(ann) if ann is not None else np.full(frames, -1, np.int64)
        tracks.append(TrackSource(name, side, str(ann or ""), labels, _crops_for(root, name)))
    return VideoJob(video, split, str(path), tuple(tracks))


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
    for split_dir in sorted(p for p in ann_root.iterdir() if p.is_dir()):
        split = split_name(split_dir.name)
        if wanted is not None and split not in wanted:
            continue
        by_video: dict[str, list[TrackSource]] = {}
        for ann in sorted(split_dir.glob("*.txt")):
            video, side = split_track(ann.stem)
            if video not in videos:
                found.skipped.append(Skipped(str(ann), f"no video named {video!r} under {root / 'videos'}"))
                continue
            try:
                labels = read_annotation(ann)
            except LabelFileError as exc:
                found.skipped.append(Skipped(str(ann), f"malformed annotation: {exc}"))
                continue
            if len(labels) == 0:
                found.skipped.append(Skipped(str(ann), "annotation has no frames"))
                continue
            name = track_name(video, side)
            by_video.setdefault(video, []).append(
                TrackSource(name, side, str(ann), labels, _crops_for(root, name))
            )
        for video, tracks in sorted(by_video.items()):
            words: tuple[Word, ...] = ()
            transcript = root / "transcripts" / f"{video}.json"
            if transcript.is_file():
                try:
                    words = read_transcript(transcript)
                except SourceError as exc:
                    found.skipped.append(Skipped(str(transcript), f"transcript ignored: {exc}"))
            found.jobs.append(VideoJob(video, split, str(videos[video]), tuple(tracks), words))
    if wanted is not None:
        missing = wanted - {split_name(p.name) for p in ann_root.iterdir() if p.is_dir()}
        if missing:
            raise SourceError(f"{ann_root}: no annotation folder for split(s) {sorted(missing)}")
    return found
