"""A real-input corpus in Aff-Wild2 layout: RAVDESS voices with FER2013 faces of the same class.

Each video strings together utterances of ONE RAVDESS actor; while an utterance plays, the
picture shows FER2013 faces of the utterance's class (a new face every `face_seconds`), and
every frame is labelled with that class. RAVDESS `calm` is EXPR `Other`, for which FER has no
faces: its frames show neutral faces, so only the voice tells Neutral from Other.

Splits are disjoint in people, so a score on them is a score on unseen people:

- actors: each RAVDESS actor is in exactly one of train / validation / test;
- faces: each split draws its faces from its own FER2013 subset (train from FER's training
  split, validation from its validation split, test from its test split).

Like the Aff-Wild2 release, the corpus ships `cropped_aligned/<video>/<00001>.jpg`, one face
crop per frame (FER's own 48-pixel face), so `pack` reads the crops and runs no detector;
`face_crops=False` leaves them out, and the faces then come from pack's detector and tracker
on the raw video (the path for users whose videos come without crops).

The modalities were NOT recorded together (`real.NOT_TOGETHER`); `corpus.json` says so and
so must anything that reports a result on such a corpus. Same spec and same data, same
bytes: the draws come from one seeded generator.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mmexpr.errors import UserError
from mmexpr.labels import write_annotation
from mmexpr.synth.real import (
    NOT_TOGETHER,
    Faces,
    Voice,
    load_faces,
    load_voices,
    read_voice,
    require_shared_data,
    write_crops,
    write_muxed_video,
)

GENERATOR = "mmexpr.synth.muxed"
FORMAT_VERSION = 1
SPLIT_FOLDERS = {"train": "Train_Set", "validation": "Validation_Set", "test": "Test_Set"}
FER_SPLIT = {"train": 0, "validation": 1, "test": 2}
CALM_FACE = 0  # faces shown for RAVDESS calm (EXPR Other): neutral ones


@dataclass(frozen=True)
class MuxedSpec:
    """What corpus to build; `actors`/`clips_per_actor` make the small versions for tests."""

    actors: int = 24  # RAVDESS actors used (the first N of a seeded order)
    val_actors: int = 4
    test_actors: int = 4
    clips_per_actor: int = 60  # utterances per actor (all of RAVDESS: 60)
    clips_per_video: int = 12
    fps: int = 25
    size: int = 48  # frame side in pixels (FER's own resolution)
    face_seconds: float = 1.0  # a new face of the class this often
    seed: int = 0
    face_crops: bool = True  # write cropped_aligned/ as Aff-Wild2 does; False: pack detects the faces

    def __post_init__(self) -> None:
        if self.val_actors < 1 or self.test_actors < 1 or self.actors < self.val_actors + self.test_actors + 1:
            raise UserError(
                f"muxed corpus: {self.actors} actors cannot give train, {self.val_actors} validation and "
                f"{self.test_actors} test actor(s); each split needs at least one"
            )
        if not 1 <= self.actors <= 24:
            raise UserError(f"muxed corpus: actors={self.actors}; RAVDESS has 24")


@dataclass(frozen=True)
class MuxedSummary:
    out: Path
    videos: dict[str, int]  # split -> videos
    actors: dict[str, list[int]]
    frames: int
    reused: bool
    face_crops: bool

    def __str__(self) -> str:
        how = "reused" if self.reused else "wrote"
        parts = ", ".join(f"{s}: {n} videos (actors {self.actors[s]})" for s, n in self.videos.items())
        faces = "face crops in cropped_aligned/" if self.face_crops else "no face crops (pack detects the faces)"
        return f"{how} {self.out}: {parts}; {self.frames} frames; {faces}\nnote: {NOT_TOGETHER}"


def split_actors(spec: MuxedSpec, voices: list[Voice]) -> dict[str, list[int]]:
    """Actor ids per split; the seeded order alternates men and women (RAVDESS: odd ids men),
    so every split with two or more actors holds both."""
    rng = np.random.default_rng([spec.seed, 11])
    ids = sorted({v.actor for v in voices})
    men = [a for a in ids if a % 2 == 1]
    women = [a for a in ids if a % 2 == 0]
    rng.shuffle(men)
    rng.shuffle(women)
    order = [a for pair in zip(men, women, strict=False) for a in pair][: spec.actors]
    test = order[: spec.test_actors]
    val = order[spec.test_actors : spec.test_actors + spec.val_actors]
    train = order[spec.test_actors + spec.val_actors :]
    return {"train": sorted(train), "validation": sorted(val), "test": sorted(test)}


def _face_pool(faces: Faces, label: int, split: str) -> np.ndarray:
    pool = faces.of_class(CALM_FACE if label == 7 else label, FER_SPLIT[split])
    if not len(pool):
        raise UserError(f"fer2013.npz: no faces of class {label} in FER split {FER_SPLIT[split]}")
    return pool


def _video(
    clips: list[Voice], faces: Faces, split: str, spec: MuxedSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(frames [N,S,S] uint8, labels [N], audio float32, rate) of one video of these clips."""
    audio_parts, labels = [], []
    rate = 0
    for clip in clips:
        samples, rate = read_voice(clip)
        audio_parts.append(samples)
        labels.append(clip.label)
    audio = np.concatenate(audio_parts)
    edges = np.cumsum([0] + [len(p) for p in audio_parts])
    bounds = np.round(edges * spec.fps / rate).astype(int)  # frame where each clip starts
    frames = np.zeros((bounds[-1], spec.size, spec.size), np.uint8)
    per_frame = np.zeros(bounds[-1], np.int64)
    step = max(1, round(spec.face_seconds * spec.fps))
    for label, lo, hi in zip(labels, bounds[:-1], bounds[1:], strict=True):
        per_frame[lo:hi] = label
        pool = _face_pool(faces, label, split)
        for f in range(lo, hi, step):
            face = faces.images[rng.choice(pool)]
            if face.shape[0] != spec.size:
                face = _resize(face, spec.size)
            frames[f : min(f + step, hi)] = face
    return frames, per_frame, audio[: round(bounds[-1] * rate / spec.fps)], rate


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def _same_corpus(out: Path, spec: MuxedSpec) -> bool:
    facts = out / "corpus.json"
    if not facts.is_file():
        return False
    try:
        return json.loads(facts.read_text()).get("spec") == asdict(spec)
    except ValueError:
        return False


def write_muxed_corpus(out: str | os.PathLike, spec: MuxedSpec, data: Path | None = None) -> MuxedSummary:
    """Build the corpus in `out` (Aff-Wild2 layout), or reuse one built there with this spec.

    Written in a hidden sibling folder and renamed at the end: an interrupted build leaves
    nothing half-written, and a folder holding anything else is never replaced.
    """
    out = Path(out).absolute()
    if _same_corpus(out, spec):
        facts = json.loads((out / "corpus.json").read_text())
        return MuxedSummary(out, facts["videos"], facts["actors"], facts["frames"], reused=True,
                            face_crops=spec.face_crops)
    if out.exists() and any(out.iterdir()) and not (out / "corpus.json").is_file():
        raise UserError(f"{out}: exists and is not a corpus this builder wrote (no corpus.json); choose another folder")
    root = require_shared_data(data)
    faces, voices = load_faces(root), load_voices(root)
    actors = split_actors(spec, voices)
    rng = np.random.default_rng([spec.seed, 13])
    staging = out.parent / f".{out.name}.muxed-tmp-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    counts: dict[str, int] = {}
    total = 0
    for split, ids in actors.items():
        counts[split] = 0
        for actor in ids:
            clips = [v for v in voices if v.actor == actor]
            clips = [clips[i] for i in rng.permutation(len(clips))[: spec.clips_per_actor]]
            for k in range(0, len(clips), spec.clips_per_video):
                name = f"actor{actor:02d}_{k // spec.clips_per_video:02d}"
                frames, labels, audio, rate = _video(clips[k : k + spec.clips_per_video], faces, split, spec, rng)
                write_muxed_video(staging / "videos" / f"{name}.mp4", frames, spec.fps, audio, rate)
                if spec.face_crops:
                    write_crops(staging / "cropped_aligned" / name, frames)
                write_annotation(staging / "annotations" / SPLIT_FOLDERS[split] / f"{name}.txt", labels)
                counts[split] += 1
                total += len(labels)
    facts = {"generator": GENERATOR, "format": FORMAT_VERSION, "spec": asdict(spec), "actors": actors,
             "videos": counts, "frames": total, "note": NOT_TOGETHER,
             "faces": "FER2013, per split from its own FER subset; calm (Other) shows neutral faces"}
    (staging / "corpus.json").write_text(json.dumps(facts, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)  # an earlier corpus of this builder with another spec
    out.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(out)
    return MuxedSummary(out, counts, actors, total, reused=False, face_crops=spec.face_crops)
