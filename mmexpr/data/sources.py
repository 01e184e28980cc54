"""Find what can be packed in an Aff-Wild2-layout tree, and say why the rest cannot.

Layout, as ABAW hands Aff-Wild2 out (docs/ARCHITECTURE.md has where this sits in the path
of a sample):

    SOURCE/videos/**/<name>.(mp4|avi)                 e.g. videos/batch1/, batch2/, new_vids/
    SOURCE/annotations/[<Challenge>/]<Split_Set>/<name>.txt
                                                      <name>_left.txt / <name>_right.txt for
                                                      videos with two annotated people; the
                                                      challenge folder (CHALLENGE_TASKS) is optional
    SOURCE/annotations/VA_Estimation_Challenge/<Split_Set>/<name>.txt   valence-arousal
    SOURCE/annotations/AU_Detection_Challenge/<Split_Set>/<name>.txt    action units
    SOURCE/cropped_aligned/<track>/<00001>.jpg        optional face crops, per track
    SOURCE/transcripts/<name>.json                    optional [{"start", "end", "word"}, ...]
    a test list (`--test-list FILE`)                  one track name per line, no labels

`annotations=DIR` names the EXPR annotation folder explicitly (a challenge folder or the
folder above it); otherwise SOURCE/annotations is searched.

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
from mmexpr.faces.video import VIDEO_SUFFIXES
from mmexpr.labels import (
    IGNORE,
    LabelFileError,
    file_task,
    read_annotation,
    read_task_annotation,
    split_track,
    track_name,
)

# Aff-Wild2 folder names -> our split names; anything else becomes its lowercase name.
SPLIT_NAMES = {"Train_Set": "train", "Validation_Set": "validation", "Test_Set": "test"}

# ABAW challenge folders (one level above the split folders) -> the task their files label.
CHALLENGE_TASKS = {
    "EXPR_Recognition_Challenge": "expr",
    "EXPR_Classification_Challenge": "expr",
    "EXPR_Set": "expr",
    "VA_Estimation_Challenge": "va",
    "AU_Detection_Challenge": "au",
}


def challenge_folder(task: str) -> str:
    """The challenge folder ABAW's release names first for `task` (where synth writes it)."""
    return next(folder for folder, t in CHALLENGE_TASKS.items() if t == task)

EXPECTED_SHAPE = """expected one of:
    SOURCE/annotations/Train_Set/<video>.txt                      (plain)
    SOURCE/annotations/EXPR_Recognition_Challenge/Train_Set/<video>.txt   (as ABAW hands it out;
        also EXPR_Classification_Challenge/, EXPR_Set/; split folders Train_Set/, Validation_Set/)
    SOURCE/videos/**/<video>.mp4|.avi                             (any depth: batch1/, new_vids/)
  or name the folder with --annotations DIR, or list test videos with --test-list FILE"""


class SourceError(UserError, ValueError):
    """A source tree that cannot be packed at all (missing folders, nothing packable)."""


@dataclass(frozen=True)
class Skipped:
    """One input left out of the shards and why; written to the manifest as is."""

    path: str
    reason: str
    split: str = ""  # the split it was left out of; "" for inputs of no one split

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
    faces: str | None = None  # cached detections of this video (faces.video.VideoFaces json), if any


@dataclass
class Discovery:
    jobs: list[VideoJob] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    test_tracks: list[str] = field(default_factory=list)  # every track the test list names

    def splits(self) -> list[str]:
        return sorted({job.split for job in self.jobs})


FACE_MODES = ("detect", "frame")


def faces_mode(root: str | Path) -> str:
    """Where faces come from for tracks without crops when the user does not say: "frame" for
    a corpus written by `mmexpr synth` (its drawn face is the frame, and no detector is trained
    on drawn faces), "detect" for everything else."""
    from mmexpr.synth.corpus import GENERATOR  # circular: synth.corpus imports this module

    try:
        facts = json.loads((Path(root) / "corpus.json").read_text())
    except (OSError, ValueError):
        return "detect"
    return "frame" if isinstance(facts, dict) and facts.get("generator") == GENERATOR else "detect"


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


def _split_folders(folder: Path) -> list[Path]:
    """Child folders of `folder` that hold annotation files directly."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and any(p.glob("*.txt")))


def annotation_roots(folder: Path, task: str = "expr") -> list[Path]:
    """Folders whose <Split_Set>/<name>.txt label `task`: `folder` itself when its own split
    folders hold the files (plain layout, or a challenge folder named directly), and each
    challenge folder of that task inside it (the ABAW release)."""
    roots = []
    if task == CHALLENGE_TASKS.get(folder.name, task) and any(
        p.name not in CHALLENGE_TASKS for p in _split_folders(folder)
    ):
        roots.append(folder)
    if folder.is_dir():
        roots += [p for p in sorted(folder.iterdir())
                  if CHALLENGE_TASKS.get(p.name) == task and _split_folders(p)]
    return roots


def expr_split_folders(root: Path, annotations: str | Path | None = None, *, required: bool = True) -> list[Path]:
    """The EXPR split folders of a source tree: one annotation root, found or named.

    Two challenge folders that both hold EXPR files are ambiguous: the error names them and
    asks for --annotations. With `required`, finding none is an error that lists what was
    searched and shows the expected shape; without, it is an empty list (predict --videos).
    """
    searched = Path(annotations) if annotations is not None else root / "annotations"
    if annotations is not None and not searched.is_dir():
        raise SourceError(f"{searched}: --annotations folder not found\n  {EXPECTED_SHAPE}")
    roots = annotation_roots(searched)
    if len(roots) > 1:
        names = "\n".join(f"    {r}" for r in roots)
        raise SourceError(
            f"{searched}: {len(roots)} folders hold EXPR annotation files:\n{names}\n"
            f"  say which with --annotations DIR (e.g. --annotations {roots[-1]})"
        )
    if not roots:
        if not required:
            return []
        looked = [searched] + ([searched / name for name in CHALLENGE_TASKS] if searched.is_dir() else [])
        lines = "\n".join(
            f"    {p}{'' if p.is_dir() else ' (missing)'}" for p in looked if p == searched or p.is_dir()
        )
        present = sorted(p.name for p in searched.iterdir()) if searched.is_dir() else []
        there = f"\n  found there: {', '.join(present)}" if present else ""
        loose = [p for p in looked if p.is_dir() and any(p.glob("*.txt"))]
        there += "".join(
            f"\n  {p} holds .txt files directly; they belong in a split folder (Train_Set/, Validation_Set/)"
            for p in loose
        )
        raise SourceError(
            f"{root}: no EXPR annotation files; searched for <Split_Set>/<name>.txt in:\n{lines}{there}\n"
            f"  {EXPECTED_SHAPE}"
        )
    return _split_folders(roots[0])


def _crops_for(root: Path, track: str) -> str | None:
    folder = root / "cropped_aligned" / track
    return str(folder) if folder.is_dir() and any(folder.glob("*.jpg")) else None


def video_tracks(root: Path, video: str, path: Path, frames: int, split: str = "predict") -> VideoJob:
    """The tracks of one raw video, for prediction: its annotation files in any split folder
    (labels kept, so predictions can be scored), else its `_left`/`_right` crop folders, else
    one track named after the video with every label unknown."""
    annotated = {
        ann.stem: ann
        for folder in expr_split_folders(root, required=False)
        for ann in sorted(folder.glob("*.txt"))
        if split_track(ann.stem)[0] == video
    }
    in_tasks = {  # a track annotated for VA or AU only is still a track to predict
        ann.stem
        for folders in task_split_folders(root).values()
        for folder in folders.values()
        for ann in sorted(folder.glob("*.txt"))
        if split_track(ann.stem)[0] == video
    }
    sides = sorted({split_track(stem)[1] for stem in {*annotated, *in_tasks}})
    if not sides:
        sides = [s for s in ("left", "right") if (root / "cropped_aligned" / track_name(video, s)).is_dir()] or [""]
    tracks = []
    for side in sides:
        name = track_name(video, side)
        ann = annotated.get(name)
        labels = read_annotation(ann) if ann is not None else np.full(frames, -1, np.int64)
        tracks.append(TrackSource(name, side, str(ann or ""), labels, _crops_for(root, name)))
    return VideoJob(video, split, str(path), tuple(tracks))


def task_split_folders(root: Path, annotations: str | Path | None = None) -> dict[str, dict[str, Path]]:
    """VA and AU split folders: {split: {task: <Challenge>/<Split_Set>}}, from the challenge
    folders of that task in the searched annotation folder (or beside a challenge folder
    named with --annotations)."""
    searched = Path(annotations) if annotations is not None else root / "annotations"
    if searched.name in CHALLENGE_TASKS:
        searched = searched.parent
    out: dict[str, dict[str, Path]] = {}
    if not searched.is_dir():
        return out
    for challenge in sorted(p for p in searched.iterdir() if CHALLENGE_TASKS.get(p.name) not in (None, "expr")):
        for split_dir in _split_folders(challenge):
            out.setdefault(split_name(split_dir.name), {})[CHALLENGE_TASKS[challenge.name]] = split_dir
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
    skipped: list[Skipped], split: str = "",
) -> None:
    """Attach each split's VA/AU files to its tracks (by track name), adding tracks that have
    no EXPR file: their EXPR labels are all unknown, so only the tasks they have train."""
    for task, folder in sorted(folders.items()):
        for ann in sorted(folder.glob("*.txt")):
            values = _track_file(ann, videos, root, skipped, partial(read_task_file, task=task), f"{task} ", split)
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
    ann: Path, videos: dict[str, Path], root: Path, skipped: list[Skipped], read, what: str, split: str
) -> np.ndarray | None:
    """One annotation file's labels, or None with the reason added to `skipped` (no such video,
    malformed, empty). `what` names the task in the reason ("va ", "au ", "" for EXPR)."""
    video, _ = split_track(ann.stem)
    if video not in videos:
        skipped.append(Skipped(str(ann), f"no video named {video!r} under {root / 'videos'}", split))
        return None
    try:
        values = read(ann)
    except LabelFileError as exc:
        skipped.append(Skipped(str(ann), f"malformed {what}annotation: {exc}", split))
        return None
    if len(values) == 0:
        skipped.append(Skipped(str(ann), f"{what}annotation has no frames", split))
        return None
    return values


def _expr_tracks(
    split_dir: Path | None, videos: dict[str, Path], root: Path, skipped: list[Skipped], split: str
) -> dict[str, TrackSource]:
    tracks: dict[str, TrackSource] = {}
    for ann in sorted(split_dir.glob("*.txt")) if split_dir is not None else []:
        labels = _track_file(ann, videos, root, skipped, read_annotation, "", split)
        if labels is None:
            continue
        video, side = split_track(ann.stem)
        name = track_name(video, side)
        tracks[name] = TrackSource(name, side, str(ann), labels, _crops_for(root, name))
    return tracks


def read_test_list(path: str | Path) -> list[tuple[int, str]]:
    """(line number, track name) of an ABAW test list: one name per line, two-person videos
    as `<name>_left` / `<name>_right`; blank lines are skipped, a trailing `.mp4`/`.avi` dropped."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: test list not found; expected a text file with one video name per line")
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not a text file ({exc.reason}); expected one video name per line") from None
    names = []
    for number, line in enumerate(lines, start=1):
        name = line.strip().lstrip("\ufeff")
        if Path(name).suffix.lower() in VIDEO_SUFFIXES:
            name = Path(name).stem
        if name:
            names.append((number, name))
    if not names:
        raise SourceError(f"{path}: test list holds no names; expected one video name per line")
    return names


def _test_jobs(root: Path, test_list: str | Path, videos: dict[str, Path], found: Discovery) -> set[str]:
    """Split `test` from a test list: every listed track with every label unknown (pack sizes
    them to the video). A name without a video is skipped and reported, never dropped silently."""
    by_video: dict[str, list[TrackSource]] = {}
    listed: set[str] = set()
    for number, name in read_test_list(test_list):
        video, side = split_track(name)
        listed.add(name)
        if video not in videos:
            found.skipped.append(Skipped(
                f"{test_list}:{number}",
                f"listed track {name!r}: no video named {video!r} under {root / 'videos'} "
                f"(expected videos/**/{video}.mp4 or .avi)",
                "test",
            ))
            continue
        tracks = by_video.setdefault(video, [])
        if all(t.name != name for t in tracks):
            tracks.append(TrackSource(name, side, "", np.zeros(0, np.int64), _crops_for(root, name)))
    for video, tracks in sorted(by_video.items()):
        found.jobs.append(VideoJob(video, "test", str(videos[video]), tuple(tracks), _words(root, video, found)))
    found.test_tracks = sorted(listed)
    return listed


def _words(root: Path, video: str, found: Discovery) -> tuple[Word, ...]:
    transcript = root / "transcripts" / f"{video}.json"
    if transcript.is_file():
        try:
            return read_transcript(transcript)
        except SourceError as exc:
            found.skipped.append(Skipped(str(transcript), f"transcript ignored: {exc}"))
    return ()


def _orphan_crops(root: Path, named: set[str], folders: list[Path], found: Discovery) -> None:
    """A crop folder whose track no annotation file and no test-list line names is reported:
    it usually means a renamed or missing annotation file."""
    crops = root / "cropped_aligned"
    if not crops.is_dir():
        return
    where = ", ".join(str(f) for f in folders) or str(root / "annotations")
    for folder in sorted(p for p in crops.iterdir() if p.is_dir()):
        if folder.name not in named:
            found.skipped.append(Skipped(
                str(folder),
                f"face crops for track {folder.name!r}, but no annotation file {folder.name}.txt in {where} "
                f"and no line {folder.name!r} in a test list; expected <Split_Set>/{folder.name}.txt",
            ))


def discover(
    source: str | Path,
    splits: list[str] | None = None,
    *,
    annotations: str | Path | None = None,
    test_list: str | Path | None = None,
) -> Discovery:
    """All packable tracks under SOURCE grouped per video, plus every skipped input."""
    root = Path(source)
    if not root.is_dir():
        raise SourceError(f"{root}: source folder not found")
    wanted = set(splits) if splits else None
    use_test_list = test_list is not None and (wanted is None or "test" in wanted)
    task_dirs = task_split_folders(root, annotations)
    folders = expr_split_folders(root, annotations, required=not use_test_list and not task_dirs)
    videos, skipped = index_videos(root / "videos")
    found = Discovery(skipped=skipped)
    named: set[str] = {
        ann.stem
        for folder in [*folders, *(d for tasks in task_dirs.values() for d in tasks.values())]
        for ann in folder.glob("*.txt")
    }
    if use_test_list:
        if not videos:
            raise SourceError(f"{root / 'videos'}: no video files (.mp4, .avi) for the test list {test_list}")
        named |= _test_jobs(root, test_list, videos, found)
    elif test_list is not None:  # not packed this time, but its tracks' crops are not strays
        named |= {name for _, name in read_test_list(test_list)}
    expr_dirs = {split_name(p.name): p for p in folders}
    for split in sorted(set(expr_dirs) | set(task_dirs)):
        if wanted is not None and split not in wanted or (use_test_list and split == "test"):
            continue
        tracks = _expr_tracks(expr_dirs.get(split), videos, root, found.skipped, split)
        add_task_labels(tracks, task_dirs.get(split, {}), videos, root, found.skipped, split)
        by_video: dict[str, list[TrackSource]] = {}
        for name in sorted(tracks):
            by_video.setdefault(split_track(name)[0], []).append(tracks[name])
        for video, video_tracks_ in sorted(by_video.items()):
            found.jobs.append(
                VideoJob(video, split, str(videos[video]), tuple(video_tracks_), _words(root, video, found))
            )
    _orphan_crops(root, named, folders, found)
    if wanted is not None:
        have = set(expr_dirs) | set(task_dirs) | ({"test"} if use_test_list else set())
        missing = wanted - have
        if missing:
            where = folders[0].parent if folders else root / "annotations"
            raise SourceError(
                f"{where}: no annotation folder for split(s) {sorted(missing)}; found {sorted(have)}"
                + ("; the test split comes from --test-list FILE" if "test" in missing else "")
            )
    return found
