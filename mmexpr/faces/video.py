"""One video through detection and tracking, and what comes out of it.

- `detect_video`: every frame decoded, detected, then linked into tracks (`VideoFaces`).
- `VideoFaces.to_json` / `from_json`: the cache that `pack` keeps per video, so a re-pack
  does not detect again; it records the detector and tracker settings and the video's size,
  and a cache made with other settings or of another file is not used.
- `write_csv`: `frame,track,x1,y1,x2,y2,score`, one row per detection (the smoothed box the
  crops are cut from), pixels of the source frame, frames counted from 0.
- `write_preview`: a PNG contact sheet of a few frames with their boxes and track ids.
- `faces_for_tracks`: which face track is which annotated person. One person: in each frame
  the face of the longest track present. `_left` / `_right`: the two longest tracks are
  ordered by their mean horizontal position; every other track joins the side whose mean
  position it is nearer; in each frame each side takes its longest track present.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

from mmexpr.errors import UserError
from mmexpr.faces.detect import Detection, Detector, DetectorSettings
from mmexpr.faces.track import FaceTrack, TrackerSettings, link
from mmexpr.progress import Progress

CSV_HEADER = ("frame", "track", "x1", "y1", "x2", "y2", "score")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")
CACHE_VERSION = 1


class VideoReadError(Exception):
    """The video cannot be read to its end; pack skips it and names the reason, the face
    tracker raises FaceVideoError with the file's name."""


class FaceVideoError(UserError, ValueError):
    """A video the detector cannot read; the message names the file."""


@dataclass
class VideoFaces:
    video: str
    frames: int
    width: int
    height: int
    size_bytes: int
    settings: dict  # detector and tracker settings
    tracks: list[FaceTrack]

    @property
    def detections(self) -> int:
        return sum(len(t.detections) for t in self.tracks)

    def rows(self) -> list[tuple]:
        rows = [
            (d.frame, t.id, *(round(float(v), 2) for v in d.box), round(d.score, 4))
            for t in self.tracks
            for d in t.detections
        ]
        return sorted(rows)

    def to_json(self) -> str:
        return json.dumps({
            "version": CACHE_VERSION, "video": self.video, "frames": self.frames, "width": self.width,
            "height": self.height, "size_bytes": self.size_bytes, "settings": self.settings,
            "tracks": [
                [[d.frame, *np.round(d.box, 3).tolist(), round(d.score, 6), *np.round(d.landmarks, 3).reshape(-1).tolist()]
                 for d in t.detections]
                for t in self.tracks
            ],
        }, sort_keys=True, separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> VideoFaces:
        d = json.loads(text)
        if d.get("version") != CACHE_VERSION:
            raise ValueError(f"face cache version {d.get('version')!r}, expected {CACHE_VERSION}")
        tracks = [
            FaceTrack(i, [Detection(int(r[0]), np.array(r[1:5]), float(r[5]), np.array(r[6:16]).reshape(5, 2))
                          for r in rows])
            for i, rows in enumerate(d["tracks"])
        ]
        return VideoFaces(d["video"], d["frames"], d["width"], d["height"], d["size_bytes"], d["settings"], tracks)


def face_settings(detector: DetectorSettings, tracker: TrackerSettings) -> dict:
    return {"detector": detector.to_dict(), "tracker": tracker.to_dict()}


def cache_matches(faces: VideoFaces, path: str, detector: DetectorSettings, tracker: TrackerSettings) -> bool:
    """True when a cached result is of this file, with these settings."""
    return faces.settings == face_settings(detector, tracker) and faces.size_bytes == os.path.getsize(path)


def source_frames(path: str, decode: bool) -> Iterator[av.VideoFrame | None]:
    """Every frame of the first video stream in order (None per frame when not decoding).

    Without decoding, packets are counted instead: enough when every track has crops.
    A decode error or a container that ends early raises VideoReadError.
    """
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoReadError(f"cannot open: {exc}") from None
    with container:
        if not container.streams.video:
            raise VideoReadError("no video stream")
        stream = container.streams.video[0]
        declared = stream.frames
        count = 0
        try:
            if decode:
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    count += 1
                    yield frame
            else:
                for packet in container.demux(stream):
                    if packet.size:
                        count += 1
                        yield None
        except av.error.FFmpegError as exc:
            raise VideoReadError(f"decoding stopped after {count} frames: {exc}") from None
        if count == 0:
            raise VideoReadError("no frames decoded")
        if declared and declared - count > max(2, declared // 100):
            raise VideoReadError(f"truncated: decoded {count} of the {declared} frames the container declares")


def rgb_frames(path: str) -> Iterator[np.ndarray]:
    """Every frame of the first video stream as RGB uint8 [H, W, 3]; errors name the file."""
    try:
        for frame in source_frames(path, decode=True):
            yield frame.to_ndarray(format="rgb24")
    except VideoReadError as exc:
        raise FaceVideoError(f"{path}: {exc}") from None


def detect_video(
    path: str | os.PathLike,
    detector: Detector | None = None,
    tracker: TrackerSettings | None = None,
    progress: bool = False,
) -> VideoFaces:
    """Detections of every frame of one video, linked into smoothed face tracks."""
    detector = detector or Detector()
    tracker = tracker or TrackerSettings()
    path = str(path)
    per_frame: list[list[Detection]] = []
    width = height = 0
    with Progress(None, f"faces {Path(path).name}", "frame", enabled=progress) as bar:
        for index, rgb in enumerate(rgb_frames(path)):
            height, width = rgb.shape[:2]
            per_frame.append(detector(rgb, index))
            bar.update(1)
    tracks = link(per_frame, tracker)
    return VideoFaces(Path(path).stem, len(per_frame), width, height, os.path.getsize(path),
                      face_settings(detector.settings, tracker), tracks)


def write_csv(faces: VideoFaces, out: str | os.PathLike) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_HEADER)
        writer.writerows(faces.rows())
    tmp.replace(path)
    return path


def read_csv(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_preview(video_path: str | os.PathLike, faces: VideoFaces, out: str | os.PathLike, count: int = 12,
                  columns: int = 4, thumb_width: int = 320) -> Path:
    """A contact sheet of `count` frames spread over the video, each with its boxes and ids."""
    wanted = set(np.linspace(0, max(faces.frames - 1, 0), min(count, max(faces.frames, 1))).round().astype(int).tolist())
    boxes: dict[int, list[tuple[int, Detection]]] = {}
    for t in faces.tracks:
        for d in t.detections:
            if d.frame in wanted:
                boxes.setdefault(d.frame, []).append((t.id, d))
    scale = thumb_width / max(faces.width, 1)
    thumb_h = max(1, int(round(faces.height * scale)))
    thumbs = []
    for index, rgb in enumerate(rgb_frames(str(video_path))):
        if index not in wanted:
            continue
        image = Image.fromarray(rgb).resize((thumb_width, thumb_h), Image.BILINEAR)
        draw = ImageDraw.Draw(image)
        for track_id, d in boxes.get(index, []):
            x1, y1, x2, y2 = (float(v) * scale for v in d.box)
            draw.rectangle((x1, y1, x2, y2), outline=(255, 40, 40), width=2)
            draw.text((x1 + 2, max(0.0, y1 - 12)), f"{track_id}", fill=(255, 255, 0))
        draw.text((4, 4), f"frame {index}", fill=(255, 255, 255))
        thumbs.append(image)
    rows = max(1, -(-len(thumbs) // columns))
    sheet = Image.new("RGB", (columns * thumb_width, rows * thumb_h))
    for k, image in enumerate(thumbs):
        sheet.paste(image, ((k % columns) * thumb_width, (k // columns) * thumb_h))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def _sides_of(tracks: list[FaceTrack], width: int) -> dict[int, str]:
    by_length = sorted(tracks, key=lambda t: (-len(t.detections), t.id))
    if not by_length:
        return {}
    if len(by_length) == 1:
        return {by_length[0].id: "left" if by_length[0].mean_x < width / 2 else "right"}
    a, b = by_length[0], by_length[1]
    anchors = {"left": min(a.mean_x, b.mean_x), "right": max(a.mean_x, b.mean_x)}
    return {t.id: min(anchors, key=lambda s: abs(anchors[s] - t.mean_x)) for t in tracks}


def faces_for_tracks(faces: VideoFaces, sides: list[str]) -> dict[str, dict[int, Detection]]:
    """For each annotated side ("" for a one-person video, else "left" / "right"): frame ->
    the detection its face crop is cut from; a frame missing from the dict has no face."""
    order = sorted(faces.tracks, key=lambda t: (-len(t.detections), t.id))
    side_of = _sides_of(faces.tracks, faces.width) if any(sides) else {t.id: "" for t in faces.tracks}
    out: dict[str, dict[int, Detection]] = {}
    for side in sides:
        chosen: dict[int, Detection] = {}
        for t in order:  # longest first: it keeps the frames it has
            if side_of.get(t.id) != side:
                continue
            for d in t.detections:
                chosen.setdefault(d.frame, d)
        out[side] = chosen
    return out


def faces_command(source: str | os.PathLike, out: str | os.PathLike, *, preview: bool = False,
                  min_face: int = DetectorSettings.min_face) -> str:
    """`mmexpr faces`: every video of SOURCE -> OUT/<video>.csv (and .png); returns the summary."""
    root = Path(source)
    if root.is_file():
        videos = [root]
    elif root.is_dir():
        videos = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    else:
        raise FaceVideoError(f"{root}: no such video file or folder")
    if not videos:
        raise FaceVideoError(f"{root}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    stems = [v.stem for v in videos]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise FaceVideoError(f"{root}: video name(s) {twice} found more than once; OUT/<video>.csv would clash")
    if min_face < 12:
        raise UserError(f"--min-face {min_face}: must be at least 12 pixels")
    detector = Detector(DetectorSettings(min_face=min_face))
    lines = [f"{'video':<32}{'frames':>8}{'tracks':>8}{'detections':>12}  csv"]
    for video in videos:
        faces = detect_video(video, detector, progress=True)
        csv_path = write_csv(faces, Path(out) / f"{video.stem}.csv")
        if preview:
            write_preview(video, faces, Path(out) / f"{video.stem}.png")
        note = "  (no face found)" if not faces.tracks else ""
        lines.append(f"{video.stem:<32}{faces.frames:>8}{len(faces.tracks):>8}{faces.detections:>12}  {csv_path}{note}")
    return "\n".join(lines)
