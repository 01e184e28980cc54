"""Real labelled recordings (`../shared/data`): FER2013 faces and RAVDESS voices, as EXPR classes.

There is no real audio-visual clip set to test with, so corpora for real-input tests and
benchmarks are built the way a user with separate corpora would: a face track from FER2013
images of one class and a voice from a RAVDESS clip of the same class, muxed into one video
(`write_muxed_video`). The two modalities were NOT recorded together; whatever uses these
corpora must say so where it reports a result.

Every builder of such a corpus (the release-layout tests, the learning benchmark, the face
detector's scenes) reads the recordings through this module, so the class mapping and the
file formats live here once.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from mmexpr.errors import UserError
from mmexpr.labels import CLASSES, frame_file

# Source label -> EXPR class index (Neutral, Anger, Disgust, Fear, Happiness, Sadness, Surprise, Other).
FER_TO_EXPR = {"neutral": 0, "angry": 1, "disgust": 2, "fear": 3, "happy": 4, "sad": 5, "surprise": 6}
RAVDESS_TO_EXPR = {"neutral": 0, "angry": 1, "disgust": 2, "fearful": 3, "happy": 4, "sad": 5,
                   "surprised": 6, "calm": 7}
NOT_TOGETHER = ("faces (FER2013) and voices (RAVDESS) come from separate corpora and were not "
                "recorded together: a result on them says nothing about audio-visual synchrony")


def shared_data_dir(start: Path | None = None) -> Path | None:
    """`$MMEXPR_SHARED_DATA`, else `shared/data` beside the repository; None when absent."""
    env = os.environ.get("MMEXPR_SHARED_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    here = (start or Path(__file__)).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "data"
        if (parent / "pyproject.toml").is_file() and candidate.is_dir():
            return candidate
    return None


def require_shared_data(path: Path | None = None) -> Path:
    found = path or shared_data_dir()
    if found is None or not (found / "fer2013.npz").is_file():
        raise UserError(
            f"{found or 'shared/data'}: real recordings not found (fer2013.npz, ravdess_speech16k/); "
            "set MMEXPR_SHARED_DATA to the folder that holds them"
        )
    return found


@dataclass(frozen=True)
class Faces:
    """FER2013: 48x48 grayscale faces with their EXPR class and original split (0 train, 1 val, 2 test)."""

    images: np.ndarray  # uint8 [N, 48, 48]
    labels: np.ndarray  # int64 [N], EXPR classes 0..6 (FER has no 'Other')
    split: np.ndarray  # int8 [N]

    def of_class(self, label: int, split: int | None = None) -> np.ndarray:
        keep = self.labels == label
        if split is not None:
            keep &= self.split == split
        return np.flatnonzero(keep)


def load_faces(root: Path) -> Faces:
    with np.load(root / "fer2013.npz", allow_pickle=False) as d:
        names = [str(c) for c in d["classes"]]
        to_expr = np.array([FER_TO_EXPR[n] for n in names], np.int64)
        return Faces(d["images"], to_expr[d["labels"].astype(np.int64)], d["split"])


@dataclass(frozen=True)
class Voice:
    """One RAVDESS utterance (16 kHz mono FLAC) with its EXPR class and speaker."""

    path: Path
    label: int
    actor: int
    gender: str
    seconds: float
    statement: str


def load_voices(root: Path) -> list[Voice]:
    folder = root / "ravdess_speech16k"
    with open(folder / "labels.csv", newline="") as f:
        return [
            Voice(folder / row["path"], RAVDESS_TO_EXPR[row["emotion"]], int(row["actor"]), row["gender"],
                  float(row["seconds"]), row["statement_text"])
            for row in csv.DictReader(f)
        ]


def read_voice(voice: Voice) -> tuple[np.ndarray, int]:
    """(float32 mono samples in [-1, 1], sample rate) of one utterance."""
    with av.open(str(voice.path)) as container:
        stream = container.streams.audio[0]
        rate = stream.rate
        parts = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
    samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if samples.dtype.kind in "iu":
        samples = samples.astype(np.float32) / 32768.0
    return samples.astype(np.float32), int(rate)


def write_muxed_video(path: Path, frames: np.ndarray, fps: int, audio: np.ndarray | None, rate: int) -> Path:
    """An H.264 + AAC mp4 of `frames` (uint8 [N, H, W] gray or [N, H, W, 3] RGB, even H and W)
    and, if given, `audio` (float32 mono) starting with the first frame."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=3)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=Fraction(fps))
        vs.height, vs.width = frames.shape[1:3]
        vs.pix_fmt = "yuv420p"
        aus = None
        if audio is not None:
            aus = out.add_stream("aac", rate=rate)
            aus.layout = "mono"
        for i, image in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            for packet in vs.encode(vf):
                out.mux(packet)
        if aus is not None:
            for k in range(0, len(audio), 1024):
                af = av.AudioFrame.from_ndarray(audio[None, k : k + 1024], format="fltp", layout="mono")
                af.sample_rate, af.pts, af.time_base = rate, k, Fraction(1, rate)
                for packet in aus.encode(af):
                    out.mux(packet)
        for stream in (s for s in (aus, vs) if s is not None):
            for packet in stream.encode():
                out.mux(packet)
    return path


def class_name(label: int) -> str:
    return CLASSES[label]


def write_crops(folder: Path, frames: np.ndarray, skip: range = range(0)) -> None:
    """`folder/<00001>.jpg`, one per frame not in `skip`, as Aff-Wild2's cropped_aligned (a frame
    without a face has no file there). A face held for many frames is JPEG-encoded once and its
    bytes written for every frame of the run."""
    folder.mkdir(parents=True, exist_ok=True)
    encoded, data = None, b""
    for i, frame in enumerate(frames):
        if i in skip:
            continue
        if encoded is None or not np.array_equal(frame, encoded):
            buf = io.BytesIO()
            Image.fromarray(frame).convert("RGB").save(buf, format="JPEG", quality=95)
            encoded, data = frame, buf.getvalue()
        (folder / frame_file(i)).write_bytes(data)
