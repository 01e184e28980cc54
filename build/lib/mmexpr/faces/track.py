"""Detections -> face tracks: one identity per person for as long as it stays in view.

Linking is greedy, frame by frame, and offline (the whole video's detections are known):

- each open track predicts where its face is now from its last boxes (constant velocity),
  so a face moving fast still overlaps its prediction;
- a detection joins the track whose prediction it overlaps most (IoU >= `min_iou`), or,
  when nothing overlaps enough, the nearest one whose centre is within `max_shift` face
  sizes at a similar size: motion and detector jitter on small faces can make IoU small;
- a track missing for up to `max_gap` frames keeps its identity (a blink of the detector,
  a hand in front of the face); after a longer gap the next detection starts a new one;
- a run of at most `fill_gap` missed frames inside a track is filled by interpolating the
  boxes and landmarks on either side (the detector misses single frames of a face it finds
  in the frames around them); longer runs stay without a face;
- tracks with fewer than `min_detections` detections are dropped as false detections.

Boxes and landmarks are then smoothed over time (a centred mean over detections within
`smooth` frames), which removes the frame-to-frame jitter that aligned crops would show.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from mmexpr.faces.detect import Detection


@dataclass(frozen=True)
class TrackerSettings:
    min_iou: float = 0.3
    max_shift: float = 0.5  # centre distance, in face sizes, accepted without overlap
    max_gap: int = 12  # frames a track may miss and keep its identity
    min_detections: int = 3
    fill_gap: int = 4  # missed frames between two detections of a track filled by interpolation
    smooth: int = 2  # half-width, in frames, of the smoothing window

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class FaceTrack:
    id: int
    detections: list[Detection] = field(default_factory=list)

    @property
    def last(self) -> Detection:
        return self.detections[-1]

    def predict(self, frame: int) -> np.ndarray:
        """The box expected at `frame` from the motion over the last few detections."""
        last = self.last
        if len(self.detections) < 2:
            return last.box
        first = self.detections[max(0, len(self.detections) - 4)]
        span = last.frame - first.frame
        velocity = (last.box - first.box) / span if span > 0 else 0.0
        return last.box + velocity * (frame - last.frame)

    def by_frame(self) -> dict[int, Detection]:
        return {d.frame: d for d in self.detections}

    @property
    def mean_x(self) -> float:
        return float(np.mean([d.centre[0] for d in self.detections]))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _affinity(track: FaceTrack, det: Detection, settings: TrackerSettings) -> float:
    """How well `det` continues `track`: IoU with the prediction, else a motion score below
    every accepted IoU; -1 when it cannot be the same face."""
    predicted = track.predict(det.frame)
    overlap = iou(predicted, det.box)
    if overlap >= settings.min_iou:
        return overlap
    size = float(np.sqrt(max((predicted[2] - predicted[0]) * (predicted[3] - predicted[1]), 1e-6)))
    shift = float(np.linalg.norm((predicted[:2] + predicted[2:]) / 2 - det.centre)) / size
    ratio = det.side / size
    if shift <= settings.max_shift and 0.67 <= ratio <= 1.5:
        return settings.min_iou * (1.0 - shift / settings.max_shift) * 0.99
    return -1.0


def link(per_frame: list[list[Detection]], settings: TrackerSettings | None = None) -> list[FaceTrack]:
    """Face tracks from the detections of every frame (index = frame), ids 0, 1, ... by first
    appearance, each with its boxes and landmarks smoothed."""
    settings = settings or TrackerSettings()
    tracks: list[FaceTrack] = []
    open_tracks: list[FaceTrack] = []
    for frame, dets in enumerate(per_frame):
        open_tracks = [t for t in open_tracks if frame - t.last.frame <= settings.max_gap + 1]
        pairs = sorted(
            ((_affinity(t, d, settings), ti, di) for ti, t in enumerate(open_tracks) for di, d in enumerate(dets)),
            reverse=True,
        )
        used_t: set[int] = set()
        used_d: set[int] = set()
        for score, ti, di in pairs:
            if score < 0 or ti in used_t or di in used_d:
                continue
            open_tracks[ti].detections.append(dets[di])
            used_t.add(ti)
            used_d.add(di)
        for di, d in enumerate(dets):
            if di not in used_d:
                track = FaceTrack(len(tracks), [d])
                tracks.append(track)
                open_tracks.append(track)
    kept = [t for t in tracks if len(t.detections) >= settings.min_detections]
    return [FaceTrack(i, smooth(fill(t.detections, settings.fill_gap), settings.smooth)) for i, t in enumerate(kept)]


def fill(detections: list[Detection], max_frames: int) -> list[Detection]:
    """Detections in order, with runs of at most `max_frames` missed frames between two of them
    filled by linear interpolation (score 0 marks a filled frame)."""
    out: list[Detection] = []
    for a, b in zip(detections, detections[1:], strict=False):
        out.append(a)
        missing = b.frame - a.frame - 1
        if 0 < missing <= max_frames:
            for k in range(1, missing + 1):
                w = k / (missing + 1)
                out.append(Detection(a.frame + k, (1 - w) * a.box + w * b.box, 0.0,
                                     (1 - w) * a.landmarks + w * b.landmarks))
    return out + detections[-1:]


def smooth(detections: list[Detection], half_width: int) -> list[Detection]:
    """Each box and landmark set replaced by the mean over the track's detections within
    `half_width` frames; the score stays that of the frame's own detection."""
    if half_width <= 0:
        return list(detections)
    frames = np.array([d.frame for d in detections])
    boxes = np.stack([d.box for d in detections])
    points = np.stack([d.landmarks for d in detections])
    out = []
    for d in detections:
        near = np.abs(frames - d.frame) <= half_width
        out.append(replace(d, box=boxes[near].mean(0), landmarks=points[near].mean(0)))
    return out
