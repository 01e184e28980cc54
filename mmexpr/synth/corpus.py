"""A synthetic demo corpus in Aff-Wild2 layout, so that the whole system trains without
the real data.

Layout written under OUT (the same one `pack` reads for Aff-Wild2)::

    videos/<name>.mp4                        H.264 + AAC (16 kHz mono), 25 or 30 fps
    annotations/Train_Set/<name>.txt         per-frame EXPR labels, -1 where no face
    annotations/Validation_Set/<name>.txt    (two-person videos: <name>_left/_right.txt)
    annotations/VA_Estimation_Challenge/<Split_Set>/<track>.txt   valence, arousal per frame
    annotations/AU_Detection_Challenge/<Split_Set>/<track>.txt    12 action units per frame
    transcripts/<name>.json                  [{"start": s, "end": s, "word": w}, ...]
    cropped_aligned/<track>/<00001>.jpg      only with SynthSpec(face_crops=True)
    corpus.json                              seed, settings, the design and per-video facts

The design: fusion must matter
------------------------------
Every video is a sequence of segments (0.6-1.6 s). In each segment a person shows one
of the 8 classes with a cartoon face (synth/face.py) and, unless the segment is silent,
speaks in that class's voice (synth/speech.py). The classes are arranged so that each
modality alone only narrows a frame down to a pair of classes, and the two modalities
pair the classes differently::

    class        face group (what it looks like)        voice group (how it sounds)
    Neutral   0  F0 relaxed                              V0 low, falling, quiet, dark
    Anger     1  F1 lowered brows, frown                 V1 high, arched, loud, bright
    Disgust   2  F1 lowered brows, frown                 V2 mid, tremolo, breathy
    Fear      3  F2 raised brows, wide eyes, open mouth  V2 mid, tremolo, breathy
    Happiness 4  F3 curved wide mouth, worried brows     V1 high, arched, loud, bright
    Sadness   5  F3 curved wide mouth, worried brows     V0 low, falling, quiet, dark
    Surprise  6  F2 raised brows, wide eyes, open mouth  V3 steep rise per syllable
    Other     7  F0 relaxed                              V3 steep rise per syllable

Every face group meets every voice group in at most one class, so (face, voice) names
the class exactly, while face alone or voice alone is right about the pair and at chance
inside it. Silent segments (at least one per video when it has three face segments)
leave only the face, so a fused model must also cope with a missing modality. The
transcript is a weaker third cue (class words mixed with shared valence words and
fillers). In two-person videos (left and right halves, separate `_left`/`_right` label
sequences) only one person speaks at a time: the voice belongs to the `speaker` that
corpus.json names for the segment, whose mouth also moves with the syllables.

Segments begin with a short blend of the face from the previous expression; some
segments show no face at all (labelled -1, no voice). Each video varies the frame size,
the face's size, position, skin tone and sway, the background and the pixel noise, and
each speaker's pitch and loudness, so that a model must read expressions rather than
memorise videos; a small CNN/ViT at 64-112 px still learns the face groups in a few
hundred steps because the features are large, high-contrast shapes.

Everything is drawn from numpy generators seeded by (seed, video), and x264 runs with
one thread and bit-exact muxing, so one seed gives byte-identical files.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from PIL import Image

from mmexpr.data.encode import fixed_fresh_memory
from mmexpr.data.sources import challenge_folder
from mmexpr.errors import UserError
from mmexpr.labels import (
    AU_NAMES,
    CLASSES,
    IGNORE,
    NUM_AUS,
    NUM_CLASSES,
    frame_file,
    track_name,
    write_annotation,
    write_au_annotation,
    write_va_annotation,
)
from mmexpr.progress import Progress
from mmexpr.synth import face as synth_face
from mmexpr.synth import speech as synth_speech

SPLIT_FOLDERS = {"train": "Train_Set", "validation": "Validation_Set"}
GENERATOR = "mmexpr.synth.corpus"
FORMAT_VERSION = 2  # 2: VA and AU annotations beside EXPR
CROP_SIZE = 112  # Aff-Wild2's cropped_aligned size
_BLEND_SECONDS = 0.24  # how long a face takes to move to a new expression
_MOUTH_TALK = 0.3  # how far the mouth opens with each spoken syllable

FrameHook = Callable[[np.ndarray, int], None]  # called with each RGB frame and its index


class SynthError(UserError, ValueError):
    """Bad synth settings or an output folder that must not be touched."""


@dataclass(frozen=True)
class SynthSpec:
    """What corpus to write. Validated here, once, because the CLI passes it straight in."""

    videos: int
    seconds: float
    seed: int
    val_fraction: float = 0.25
    two_person_fraction: float = 0.15  # share of videos with two faces (at least one from 3 videos)
    audio_rate: int = 16000
    face_crops: bool = False  # also write cropped_aligned/<track>/<00001>.jpg
    # Processes writing videos; 0 = one per core for corpora over a minute of video.
    workers: int = 0

    def __post_init__(self) -> None:
        if self.videos < 1:
            raise SynthError(f"videos: {self.videos}; expected at least 1")
        if not 1.0 <= self.seconds <= 3600.0:
            raise SynthError(f"seconds: {self.seconds}; expected 1 to 3600 seconds per video")
        if self.seed < 0:
            raise SynthError(f"seed: {self.seed}; expected a non-negative integer")
        if not 0.0 <= self.val_fraction < 1.0:
            raise SynthError(f"val_fraction: {self.val_fraction}; expected 0 <= fraction < 1")
        if not 0.0 <= self.two_person_fraction <= 1.0:
            raise SynthError(f"two_person_fraction: {self.two_person_fraction}; expected 0..1")
        if self.workers < 0:
            raise SynthError(f"workers: {self.workers}; expected 0 (automatic) or more")
        if self.audio_rate not in (16000, 22050, 44100, 48000):
            raise SynthError(
                f"audio_rate: {self.audio_rate}; expected 16000, 22050, 44100 or 48000"
            )


@dataclass(frozen=True)
class Segment:
    """A stretch of frames [start, end) with one label per track (-1: that face is absent)."""

    start: int
    end: int
    labels: dict[str, int]
    intensity: dict[str, float]
    speaker: str | None  # the track whose voice is heard; None = silence


@dataclass(frozen=True)
class VideoPlan:
    name: str
    index: int
    split: str
    fps: int
    frames: int
    side: int  # each person's square half of the frame, pixels
    tracks: tuple[str, ...]  # track names: (name,) or (name_left, name_right)

    @property
    def width(self) -> int:
        return self.side * len(self.tracks)

    @property
    def height(self) -> int:
        return self.side


@dataclass
class SynthSummary:
    out: Path
    videos: int
    train: int
    validation: int
    two_person: int
    frames: int
    seconds: float  # of video
    elapsed: float = field(default=0.0)

    def __str__(self) -> str:
        return (
            f"wrote {self.videos} videos ({self.train} train, {self.validation} validation, "
            f"{self.two_person} with two people), {self.frames} frames, {self.seconds:.0f} s of video "
            f"to {self.out} in {self.elapsed:.1f} s"
        )


# ---------------------------------------------------------------- output folder safety


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse anything but a missing or empty folder, or (with overwrite) an earlier synth corpus."""
    if out.exists() and not out.is_dir():
        raise SynthError(f"{out}: exists and is not a folder; choose a new output folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise SynthError(f"{out}: folder is not empty; choose an empty folder or pass --overwrite")
    if not _is_synth_corpus(out):
        raise SynthError(
            f"{out}: not a corpus written by `mmexpr synth` (no corpus.json from it); "
            "refusing to replace it even with --overwrite"
        )


def _is_synth_corpus(out: Path) -> bool:
    try:
        facts = json.loads((out / "corpus.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(facts, dict) and facts.get("generator") == GENERATOR


def _publish(staging: Path, out: Path, overwrite: bool) -> None:
    """Move the finished corpus into place; an old synth corpus goes only after the new one is there."""
    _check_out(out, overwrite)  # again: something may have appeared while we worked
    if out.exists() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        staging.rename(out)
        return
    trash = out.parent / f".{out.name}.synth-old-{os.getpid()}"
    out.rename(trash)
    staging.rename(out)
    shutil.rmtree(trash)


# ---------------------------------------------------------------- planning


def plan_corpus(spec: SynthSpec) -> list[VideoPlan]:
    """Names, splits, frame rates, sizes and people per video, from the corpus-level generator."""
    rng = np.random.default_rng([spec.seed])
    n = spec.videos
    n_val = round(n * spec.val_fraction)
    if spec.val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    elif n < 2:
        n_val = 0
    n_two = round(n * spec.two_person_fraction)
    if spec.two_person_fraction > 0 and n >= 3:
        n_two = max(n_two, 1)
    val = set(rng.permutation(n)[:n_val].tolist())
    two = set(rng.permutation(n)[:n_two].tolist())
    fps_order = rng.permutation(n)  # half the videos at 25 fps, half at 30
    plans = []
    for i in range(n):
        name = f"vid{i:03d}"
        fps = 25 if fps_order[i] % 2 == 0 else 30
        side = int(rng.choice([112, 128, 144]))
        tracks = (track_name(name, "left"), track_name(name, "right")) if i in two else (name,)
        split = "validation" if i in val else "train"
        plans.append(VideoPlan(name, i, split, fps, round(spec.seconds * fps), side, tracks))
    return plans


class _Deck:
    """Classes drawn without replacement, reshuffled when used up: balanced labels per video."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.cards: list[int] = []

    def draw(self, avoid: set[int]) -> int:
        if not self.cards:
            self.cards = self.rng.permutation(NUM_CLASSES).tolist()
        for i, card in enumerate(self.cards):
            if card not in avoid:
                return self.cards.pop(i)
        self.cards = []
        return self.draw(avoid)


def plan_segments(plan: VideoPlan, rng: np.random.Generator) -> list[Segment]:
    """Segments covering the video: classes per track, faceless gaps, speakers and silences."""
    n_tracks = len(plan.tracks)
    expected = max(int(plan.frames / plan.fps / 1.1), 1)
    forced_absent = [int(rng.integers(0, expected)) for _ in plan.tracks]
    if n_tracks == 2 and forced_absent[0] == forced_absent[1]:
        forced_absent[1] = (forced_absent[0] + 1) % max(expected, 2)
    decks = [_Deck(rng) for _ in plan.tracks]
    previous = [IGNORE] * n_tracks
    segments: list[Segment] = []
    start = 0
    while start < plan.frames:
        k = len(segments)
        absent = [k == forced_absent[t] or rng.uniform() < 0.05 for t in range(n_tracks)]
        short = all(absent)
        length = round((rng.uniform(0.3, 0.7) if short else rng.uniform(0.6, 1.6)) * plan.fps)
        end = min(start + max(length, 1), plan.frames)
        if plan.frames - end < 0.4 * plan.fps and not short:
            end = plan.frames  # no sliver at the end (a faceless gap stays short)
        labels, intensity = {}, {}
        taken: set[int] = set()
        for t, track in enumerate(plan.tracks):
            label = IGNORE if absent[t] else decks[t].draw({previous[t]} | taken)
            taken.add(label)
            labels[track] = label
            intensity[track] = round(float(rng.uniform(0.65, 1.0)), 3)
            previous[t] = label
        visible = [track for track in plan.tracks if labels[track] != IGNORE]
        speaker = str(rng.choice(visible)) if visible and rng.uniform() < 0.85 else None
        segments.append(Segment(start, end, labels, intensity, speaker))
        start = end
    _force_one_face(segments, plan.tracks, decks)
    _force_one_silence(segments, rng)
    return segments


def _force_one_face(segments: list[Segment], tracks: tuple[str, ...], decks: list[_Deck]) -> None:
    """Give every track a face in its longest segment if chance left it with none
    (possible in very short videos): an all -1 track teaches nothing."""
    for t, track in enumerate(tracks):
        if any(s.labels[track] != IGNORE for s in segments):
            continue
        i = max(range(len(segments)), key=lambda k: segments[k].end - segments[k].start)
        s = segments[i]
        labels = dict(s.labels)
        labels[track] = decks[t].draw(set(labels.values()))
        segments[i] = Segment(s.start, s.end, labels, s.intensity, s.speaker)


def _force_one_silence(segments: list[Segment], rng: np.random.Generator) -> None:
    """Make one face segment silent if none is and there are at least three, so every
    ordinary video shows the face-only case."""
    faces = [i for i, s in enumerate(segments) if any(v != IGNORE for v in s.labels.values())]
    if len(faces) < 3 or any(segments[i].speaker is None for i in faces):
        return
    i = faces[int(rng.integers(len(faces)))]
    s = segments[i]
    segments[i] = Segment(s.start, s.end, s.labels, s.intensity, None)


# ---------------------------------------------------------------- rendering


@dataclass(frozen=True)
class _Person:
    style: synth_face.FaceStyle
    pitch: float
    loudness: float
    blinks: np.ndarray  # blink start times, seconds


def _people(plan: VideoPlan, rng: np.random.Generator) -> dict[str, _Person]:
    people = {}
    for t, track in enumerate(plan.tracks):
        box = (t * plan.side, 0, (t + 1) * plan.side, plan.side)
        style = synth_face.random_style(rng, box)
        seconds = plan.frames / plan.fps
        blinks = np.cumsum(rng.uniform(1.5, 5.0, size=int(seconds / 1.5) + 1))
        people[track] = _Person(
            style, float(rng.uniform(0.85, 1.15)), float(rng.uniform(0.8, 1.2)), blinks
        )
    return people


def _audio(
    plan: VideoPlan,
    segments: list[Segment],
    people: dict[str, _Person],
    rate: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[synth_speech.Utterance | None]]:
    """The soundtrack: hiss everywhere, and the speaker's utterance in each voiced segment."""
    n = round(plan.frames / plan.fps * rate)
    hiss = synth_speech.SILENCE_RMS * rng.uniform(0.5, 1.0)
    audio = (hiss * rng.standard_normal(n)).astype(np.float32)
    utterances: list[synth_speech.Utterance | None] = []
    for s in segments:
        if s.speaker is None:
            utterances.append(None)
            continue
        person = people[s.speaker]
        a, b = round(s.start / plan.fps * rate), round(s.end / plan.fps * rate)
        u = synth_speech.speak(
            s.labels[s.speaker], (b - a) / rate, rate, rng, person.pitch, person.loudness
        )
        audio[a : a + len(u.samples)] += u.samples
        utterances.append(u)
    return np.clip(audio, -1.0, 1.0), utterances


def _face_params(
    plan: VideoPlan, segments: list[Segment], track: str, person: _Person, utterances: list
) -> np.ndarray:
    """Expression parameters per frame for one track (frames x len(PARAMS)); NaN rows = no face."""
    params = np.full((plan.frames, len(synth_face.PARAMS)), np.nan, dtype=np.float32)
    blend = max(round(_BLEND_SECONDS * plan.fps), 1)
    before: np.ndarray | None = None
    times = np.arange(plan.frames) / plan.fps
    for s, utterance in zip(segments, utterances, strict=True):
        label = s.labels[track]
        if label == IGNORE:
            before = None
            continue
        target = synth_face.expression(label, s.intensity[track])
        rows = params[s.start : s.end]
        rows[:] = target
        if before is not None:
            x = np.clip((np.arange(len(rows)) + 1) / blend, 0.0, 1.0)[:, None]
            w = x * x * (3 - 2 * x)  # smoothstep
            rows[:] = before + w * (target - before)
        if utterance is not None and s.speaker == track:
            t = times[s.start : s.end] - s.start / plan.fps
            for a, b in utterance.syllables:
                inside = (t >= a) & (t < b)
                rows[inside, 3] += _MOUTH_TALK * np.sin(np.pi * (t[inside] - a) / (b - a))
        before = target
    for blink in person.blinks:
        shut = (times >= blink) & (times < blink + 0.15)
        params[shut, 2] *= 0.1
    return params


def _frames(
    plan: VideoPlan,
    people: dict[str, _Person],
    params: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> Iterator[np.ndarray]:
    """Yield the video's RGB frames (uint8 H x W x 3)."""
    skins = [p.style.skin for p in people.values()]
    background = synth_face.random_background(rng, plan.height, plan.width, skins)
    sigma = rng.uniform(2.0, 6.0)
    noise_bank = np.round(rng.normal(0.0, sigma, size=(8, plan.height, plan.width, 3))).astype(
        np.int16
    )
    painters = {
        track: synth_face.FacePainter(person.style, background.shape)
        for track, person in people.items()
    }
    order = rng.integers(0, len(noise_bank), size=plan.frames)
    for i in range(plan.frames):
        frame = background.copy()
        for track, painter in painters.items():
            p = params[track][i]
            if not np.isnan(p[0]):
                painter.draw(frame, p, i / plan.fps)
        noisy = frame.astype(np.int16) + noise_bank[order[i]]
        yield np.clip(noisy, 0, 255).astype(np.uint8)


def _encode(
    path: Path,
    frames: Iterable[np.ndarray],
    fps: int,
    size: tuple[int, int],
    audio: np.ndarray,
    rate: int,
    on_frame: FrameHook | None = None,
) -> None:
    """H.264 (x264, one thread: deterministic) and AAC in MP4, interleaved in time order."""
    width, height = size
    with av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"crf": "23", "preset": "veryfast", "threads": "1", "g": str(2 * fps)}
        video.codec_context.flags |= av.codec.context.Flags.bitexact
        sound = container.add_stream("aac", rate=rate, layout="mono")
        sound.options = {"b": "64k", "aac_coder": "fast"}
        sound.codec_context.flags |= av.codec.context.Flags.bitexact
        block = 1024
        done = 0
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
            if on_frame is not None:
                on_frame(rgb, i)
            until = min(round((i + 1) / fps * rate), len(audio))
            while done < until:
                chunk = audio[done : done + block]
                aframe = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                aframe.sample_rate, aframe.pts = rate, done
                container.mux(sound.encode(aframe))
                done += len(chunk)
        container.mux(video.encode(None))
        container.mux(sound.encode(None))


def _crop_writer(out: Path, people: dict[str, _Person], params: dict[str, np.ndarray]) -> FrameHook:
    """A per-frame hook that saves each visible face as cropped_aligned/<track>/<00001>.jpg."""
    boxes = {}
    for track, person in people.items():
        (cx, cy), r = person.style.center, person.style.radius * 1.15
        boxes[track] = (round(cx - r), round(cy - r), round(cx + r), round(cy + r))
        (out / "cropped_aligned" / track).mkdir(parents=True, exist_ok=True)

    def save(rgb: np.ndarray, i: int) -> None:
        image = Image.fromarray(rgb)
        for track, box in boxes.items():
            if not np.isnan(params[track][i][0]):
                crop = image.crop(box).resize((CROP_SIZE, CROP_SIZE), Image.BILINEAR)
                crop.save(out / "cropped_aligned" / track / frame_file(i), quality=90)

    return save


def write_video(out: Path, plan: VideoPlan, spec: SynthSpec) -> dict:
    """Write one video with its annotations and transcript; return its facts for corpus.json.

    x264 reads bytes it has not written, so fresh memory gets a fixed byte first (as in pack):
    otherwise the same seed gives other bytes in another process."""
    fixed_fresh_memory()
    rng = np.random.default_rng([spec.seed, 1, plan.index])
    segments = plan_segments(plan, rng)
    people = _people(plan, rng)
    audio, utterances = _audio(plan, segments, people, spec.audio_rate, rng)
    params = {t: _face_params(plan, segments, t, people[t], utterances) for t in plan.tracks}
    hook = _crop_writer(out, people, params) if spec.face_crops else None
    _encode(
        out / "videos" / f"{plan.name}.mp4",
        _frames(plan, people, params, rng),
        plan.fps,
        (plan.width, plan.height),
        audio,
        spec.audio_rate,
        on_frame=hook,
    )
    folder = out / "annotations" / SPLIT_FOLDERS[plan.split]
    for track in plan.tracks:
        labels = np.full(plan.frames, IGNORE, dtype=np.int64)
        for s in segments:
            labels[s.start : s.end] = s.labels[track]
        write_annotation(folder / f"{track}.txt", labels)
    write_task_annotations(out, plan, segments, spec.seed)
    transcript = []
    for s, u in zip(segments, utterances, strict=True):
        if u is not None:
            transcript += synth_speech.words(
                s.labels[s.speaker], u.syllables, s.start / plan.fps, rng
            )
    (out / "transcripts" / f"{plan.name}.json").write_text(json.dumps(transcript, indent=1) + "\n")
    return _facts(plan, segments, people, utterances, spec.audio_rate)


# Valence and arousal of each class (Russell's circumplex, roughly), and the action units each
# class shows (FACS prototypes, within the 12 AUs of ABAW), so VA and AU follow the expressions.
CLASS_VA = np.array([[0.0, 0.0], [-0.6, 0.7], [-0.6, 0.3], [-0.5, 0.8], [0.7, 0.4], [-0.6, -0.4], [0.3, 0.8],
                     [0.2, -0.3]])
CLASS_AUS: tuple[tuple[str, ...], ...] = (
    (),
    ("AU4", "AU7", "AU23", "AU24"),
    ("AU4", "AU10", "AU15"),
    ("AU1", "AU2", "AU4", "AU7", "AU25"),
    ("AU6", "AU12", "AU25"),
    ("AU1", "AU4", "AU15"),
    ("AU1", "AU2", "AU25", "AU26"),
    ("AU10", "AU25"),
)
UNKNOWN_SEGMENTS = 0.1  # share of face segments left unknown for VA, and for AU (drawn apart)


def task_labels(plan: VideoPlan, segments: list[Segment], track: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """VA [frames, 2] (NaN unknown) and AU [frames, 12] (-1 unknown) of one track: the class's
    VA scaled by the segment's intensity plus a slow wobble, the class's AUs with a few frames
    flipped; unknown where there is no face and on some segments. Drawn from their own
    generator, so the videos and EXPR files stay what they were."""
    rng = np.random.default_rng([seed, 2, plan.index, plan.tracks.index(track)])
    va = np.full((plan.frames, 2), np.nan, np.float32)
    au = np.full((plan.frames, NUM_AUS), IGNORE, np.int64)
    for s in segments:
        label = s.labels[track]
        if label == IGNORE:
            continue
        n = s.end - s.start
        t = np.arange(n) / plan.fps
        wobble = 0.08 * np.sin(2 * np.pi * (0.5 * t[:, None] + rng.random(2)))
        if rng.random() >= UNKNOWN_SEGMENTS:
            scale = 0.6 + 0.4 * s.intensity.get(track, 1.0)
            va[s.start : s.end] = np.clip(CLASS_VA[label] * scale + wobble, -1, 1)
        if rng.random() >= UNKNOWN_SEGMENTS:
            active = np.zeros(NUM_AUS, np.int64)
            active[[AU_NAMES.index(name) for name in CLASS_AUS[label]]] = 1
            flips = rng.random((n, NUM_AUS)) < 0.03
            au[s.start : s.end] = np.where(flips, 1 - active, active)
    return va, au


def write_task_annotations(out: Path, plan: VideoPlan, segments: list[Segment], seed: int) -> None:
    split = SPLIT_FOLDERS[plan.split]
    for track in plan.tracks:
        va, au = task_labels(plan, segments, track, seed)
        write_va_annotation(out / "annotations" / challenge_folder("va") / split / f"{track}.txt", va)
        write_au_annotation(out / "annotations" / challenge_folder("au") / split / f"{track}.txt", au)


def _facts(
    plan: VideoPlan,
    segments: list[Segment],
    people: dict[str, _Person],
    utterances: list,
    rate: int,
) -> dict:
    tracks = []
    for track, person in people.items():
        s = person.style
        tracks.append(
            {
                "name": track,
                "box": [plan.side * len(tracks), 0, plan.side * (len(tracks) + 1), plan.side],
                "center": [round(s.center[0], 2), round(s.center[1], 2)],
                "radius": round(s.radius, 2),
                "skin": [round(c, 1) for c in s.skin],
                "pitch": round(person.pitch, 4),
            }
        )
    segs = []
    for seg, u in zip(segments, utterances, strict=True):
        speaking = seg.labels[seg.speaker] if seg.speaker else IGNORE
        segs.append(
            {
                "start_frame": seg.start,
                "end_frame": seg.end,
                "start": round(seg.start / plan.fps, 4),
                "end": round(seg.end / plan.fps, 4),
                "labels": seg.labels,
                "speaker": seg.speaker,
                "voice_group": synth_speech.voice_group(speaking) if u is not None else None,
                "f0": round(u.f0, 2) if u is not None else None,
                "syllables": [
                    [round(seg.start / plan.fps + a, 4), round(seg.start / plan.fps + b, 4)]
                    for a, b in u.syllables
                ]
                if u is not None
                else [],
            }
        )
    return {
        "name": plan.name,
        "split": plan.split,
        "fps": plan.fps,
        "frames": plan.frames,
        "width": plan.width,
        "height": plan.height,
        "audio_rate": rate,
        "two_person": len(plan.tracks) == 2,
        "tracks": tracks,
        "segments": segs,
    }


# ---------------------------------------------------------------- entry point


def _worker_count(spec: SynthSpec) -> int:
    """Processes to use. Starting one costs about a second (imports), so corpora under a
    minute of video are written in this process."""
    if spec.workers:
        return min(spec.workers, spec.videos)
    if spec.videos * spec.seconds < 60:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), spec.videos))


def _write_videos(
    staging: Path, plans: list[VideoPlan], spec: SynthSpec, progress: bool
) -> list[dict]:
    """Write every video, in parallel where it pays; facts come back in plan order.
    Each video draws from its own generator, so the files do not depend on the workers."""
    bar = Progress(len(plans), "synth", "video", enabled=progress)
    workers = _worker_count(spec)
    try:
        if workers == 1:
            facts = []
            for plan in plans:
                facts.append(write_video(staging, plan, spec))
                bar.update()
            return facts
        # spawn, not fork: the caller may hold threads (torch, pytest plugins).
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(write_video, staging, plan, spec) for plan in plans]
            for _ in as_completed(futures):
                bar.update()
            return [f.result() for f in futures]
    finally:
        bar.close()


def write_corpus(
    out: str | os.PathLike, spec: SynthSpec, overwrite: bool = False, progress: bool = True
) -> SynthSummary:
    """Write the demo corpus to `out` (see the module docstring).

    The corpus is built in a hidden sibling folder and moved into place at the end, so an
    interrupted run leaves nothing half-written in OUT, and with `overwrite` an earlier
    synth corpus is replaced only once the new one is complete. A folder that holds
    anything else is never touched.
    """
    began = time.perf_counter()
    out = Path(out).absolute()
    _check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.synth-tmp-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)  # our own leftover: the name carries this process's id
    try:
        for sub in ("videos", "transcripts", *(f"annotations/{f}" for f in SPLIT_FOLDERS.values())):
            (staging / sub).mkdir(parents=True)
        plans = plan_corpus(spec)
        facts = _write_videos(staging, plans, spec, progress)
        corpus = {
            "generator": GENERATOR,
            "format": FORMAT_VERSION,
            "seed": spec.seed,
            "settings": {
                "videos": spec.videos,
                "seconds": float(spec.seconds),
                "val_fraction": spec.val_fraction,
                "two_person_fraction": spec.two_person_fraction,
                "audio_rate": spec.audio_rate,
                "face_crops": spec.face_crops,
            },
            "design": {
                "classes": list(CLASSES),
                "face_groups": [list(g) for g in synth_face.FACE_GROUPS],
                "voice_groups": [list(g) for g in synth_speech.VOICE_GROUPS],
                "face_params": list(synth_face.PARAMS),
                "silence_rms": synth_speech.SILENCE_RMS,
            },
            "videos": facts,
        }
        (staging / "corpus.json").write_text(json.dumps(corpus, indent=1, sort_keys=True) + "\n")
        _publish(staging, out, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    frames = sum(p.frames for p in plans)
    return SynthSummary(
        out=out,
        videos=len(plans),
        train=sum(p.split == "train" for p in plans),
        validation=sum(p.split == "validation" for p in plans),
        two_person=sum(len(p.tracks) == 2 for p in plans),
        frames=frames,
        seconds=sum(p.frames / p.fps for p in plans),
        elapsed=time.perf_counter() - began,
    )
