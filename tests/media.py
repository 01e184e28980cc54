"""Tiny real media files for pack/loader tests: H.264 videos with AAC audio, written by PyAV.

Every frame carries its own index in its pixels (a grey level per frame and a bar whose
position moves), so a test can tell which frame it got back after encode -> decode.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mmexpr.labels import write_annotation


def frame_pixels(index: int, width: int, height: int) -> np.ndarray:
    """A frame whose mean brightness encodes its index (period 50) for tests to check."""
    level = 40 + 4 * (index % 50)
    img = np.full((height, width, 3), level, np.uint8)
    x = (index * 3) % max(1, width - 8)
    img[:, x : x + 8] = 255 - level
    return img


def write_video(
    path: Path,
    frames: int,
    *,
    fps: int = 25,
    size: tuple[int, int] = (96, 64),
    audio_rate: int | None = 22050,
    pixels=frame_pixels,
) -> Path:
    """An mp4 with `frames` frames (and a sine tone if audio_rate is given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=Fraction(fps))
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.options = {"preset": "ultrafast", "threads": "1"}
        streams = [vs]
        if audio_rate:
            aus = out.add_stream("aac", rate=audio_rate)
            aus.layout = "mono"
            streams.append(aus)
        for i in range(frames):
            vf = av.VideoFrame.from_ndarray(pixels(i, width, height), format="rgb24")
            vf.pts = i
            vf.time_base = Fraction(1, fps)
            for p in vs.encode(vf):
                out.mux(p)
        if audio_rate:
            total = int(frames * audio_rate / fps)
            t = np.arange(total) / audio_rate
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            step = 1024
            for k in range(0, total, step):
                af = av.AudioFrame.from_ndarray(tone[None, k : k + step], format="fltp", layout="mono")
                af.sample_rate = audio_rate
                af.pts = k
                af.time_base = Fraction(1, audio_rate)
                for p in aus.encode(af):
                    out.mux(p)
            for p in aus.encode():
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
    return path


def labels_for(frames: int, seed: int = 0) -> np.ndarray:
    """Labels in runs of 10 frames, some -1, deterministic per seed."""
    rng = np.random.default_rng(seed)
    runs = rng.integers(-1, 8, size=frames // 10 + 1)
    return np.repeat(runs, 10)[:frames].astype(np.int64)


def small_corpus(root: Path, videos: dict[str, tuple[str, int]], *, audio: bool = True) -> Path:
    """videos: name -> (split folder, frames). One annotated track per video."""
    for i, (name, (split, frames)) in enumerate(sorted(videos.items())):
        write_video(root / "videos" / f"{name}.mp4", frames, audio_rate=22050 if audio else None)
        write_annotation(root / "annotations" / split / f"{name}.txt", labels_for(frames, seed=i))
    return root
