"""A corpus laid out exactly as ABAW hands Aff-Wild2 out, built from real recordings.

    OUT/videos/batch1/<name>.mp4, videos/batch2/..., videos/new_vids/...   (any depth)
    OUT/annotations/EXPR_Recognition_Challenge/Train_Set/<name>.txt, Validation_Set/...
    OUT/cropped_aligned/<track>/<00001>.jpg       one crop per frame, with gaps: runs of
                                                  frames where "no face was found"
    OUT/test_set.txt                              the test videos' track names, no labels
    OUT/release.json                              what was written, and the caveat below

Each video is a run of segments; a segment shows one FER2013 face of one class (drifting a
few pixels per frame, so frames differ) while a RAVDESS clip of the same class speaks.
The two modalities come from separate corpora and were NOT recorded together
(`real.NOT_TOGETHER`): anything measured on this corpus must say so. In a gap the video
shows no face (a dim, empty frame) and `cropped_aligned/` has no jpg, as in Aff-Wild2; the
label stays. One test video holds two people side by side: tracks `<name>_left` and
`<name>_right`, each with its own crops.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mmexpr.errors import UserError
from mmexpr.labels import write_annotation
from mmexpr.synth.real import (
    NOT_TOGETHER,
    load_faces,
    load_voices,
    read_voice,
    require_shared_data,
    write_crops,
    write_muxed_video,
)

CHALLENGE = "EXPR_Recognition_Challenge"
BATCHES = ("batch1", "batch2", "new_vids")
RATE = 16000


@dataclass(frozen=True)
class ReleaseSpec:
    train: int = 4
    validation: int = 2
    test: int = 2  # the last test video has two people
    seconds: float = 3.0
    segment_seconds: float = 1.0
    fps: int = 25
    face_px: int = 64  # crops and the face in the video frame, square, even
    gap_frames: int = 12  # one run of frames without a face per track
    seed: int = 0


@dataclass
class ReleaseCorpus:
    root: Path
    test_list: Path
    tracks: dict[str, dict] = field(default_factory=dict)  # track -> {split, frames, faceless}

    def faceless(self, split: str) -> int:
        return sum(t["faceless"] for t in self.tracks.values() if t["split"] == split)


def _segments(rng: np.random.Generator, frames: int, per: int) -> np.ndarray:
    """Per-frame classes 0..6 (FER has no Other) in segments of `per` frames."""
    classes = rng.integers(0, 7, size=-(-frames // per))
    return np.repeat(classes, per)[:frames].astype(np.int64)


def _face_frames(rng, faces, labels: np.ndarray, px: int, per: int, gap: range) -> np.ndarray:
    """uint8 [N, px, px] gray: one FER face per segment, drifting; dim and empty in the gap."""
    out = np.zeros((len(labels), px, px), np.uint8)
    pad = px // 8
    for start in range(0, len(labels), per):
        pool = faces.of_class(int(labels[start]), split=0)
        image = Image.fromarray(faces.images[int(rng.choice(pool))]).resize((px - 2 * pad, px - 2 * pad))
        face = np.asarray(image)
        for i in range(start, min(start + per, len(labels))):
            dx, dy = (i - start) % (2 * pad), (i - start) // 2 % (2 * pad)
            out[i] = 20
            out[i, dy : dy + face.shape[0], dx : dx + face.shape[1]] = face
    out[gap.start : gap.stop] = 20
    return out


def _voice(rng, voices, labels: np.ndarray, fps: int, per: int) -> np.ndarray:
    """One RAVDESS clip per segment, of the segment's class, cut or padded to its length."""
    by_class: dict[int, list] = {}
    for v in voices:
        by_class.setdefault(v.label, []).append(v)
    parts = []
    for start in range(0, len(labels), per):
        n = min(per, len(labels) - start)
        samples, rate = read_voice(by_class[int(labels[start])][int(rng.integers(len(by_class[int(labels[start])])))])
        if rate != RATE:
            raise UserError(f"RAVDESS clip at {rate} Hz; expected {RATE} Hz")
        length = int(round(n * RATE / fps))
        piece = samples[:length]
        parts.append(np.concatenate([piece, np.zeros(length - len(piece), np.float32)]))
    return np.concatenate(parts)


def write_release(out: str | Path, spec: ReleaseSpec = ReleaseSpec(), shared: Path | None = None) -> ReleaseCorpus:
    """Write the corpus (see the module docstring); refuses a non-empty OUT."""
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root}: not empty; the release corpus is written into a new folder")
    data = require_shared_data(shared)
    faces, voices = load_faces(data), load_voices(data)
    rng = np.random.default_rng(spec.seed)
    frames = int(round(spec.seconds * spec.fps))
    per = max(1, int(round(spec.segment_seconds * spec.fps)))
    corpus = ReleaseCorpus(root, root / "test_set.txt")
    names = [("Train_Set", f"{i + 1}-{30 + i}-1920x1080") for i in range(spec.train)]
    names += [("Validation_Set", f"{100 + i}-{60 + i}-1280x720") for i in range(spec.validation)]
    names += [("", f"{200 + i}-{90 + i}-640x360") for i in range(spec.test)]
    listed: list[str] = []
    for k, (split_folder, name) in enumerate(names):
        duo = split_folder == "" and k == len(names) - 1
        sides = ("left", "right") if duo else ("",)
        tiles, audio_labels = [], None
        for s, side in enumerate(sides):
            labels = _segments(rng, frames, per)
            at = int(rng.integers(1, max(2, frames - spec.gap_frames - 1)))
            gap = range(at, min(frames, at + spec.gap_frames))
            tile = _face_frames(rng, faces, labels, spec.face_px, per, gap)
            track = f"{name}_{side}" if side else name
            write_crops(root / "cropped_aligned" / track, tile, gap)
            split = {"Train_Set": "train", "Validation_Set": "validation"}.get(split_folder, "test")
            if split_folder:
                write_annotation(root / "annotations" / CHALLENGE / split_folder / f"{track}.txt", labels)
            else:
                listed.append(track)
            corpus.tracks[track] = {"split": split, "frames": frames, "faceless": len(gap),
                                    "labels": labels.tolist()}
            tiles.append(tile)
            audio_labels = labels if s == 0 else audio_labels
        picture = np.concatenate(tiles, axis=2)
        audio = _voice(rng, voices, audio_labels, spec.fps, per)
        write_muxed_video(root / "videos" / BATCHES[k % len(BATCHES)] / f"{name}.mp4", picture, spec.fps, audio, RATE)
    corpus.test_list.write_text("\n".join(listed) + "\n")
    (root / "release.json").write_text(json.dumps(
        {"spec": asdict(spec), "note": NOT_TOGETHER, "tracks": {t: {k: v for k, v in d.items() if k != "labels"}
                                                              for t, d in corpus.tracks.items()}}, indent=1) + "\n")
    return corpus
