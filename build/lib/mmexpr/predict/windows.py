"""Sliding windows over a whole track, and stitching their logits back into one per frame.

The model sees fixed windows of T frames, but a submission needs one label for every frame
of a video. Windows overlap (stride < T) so that each frame is seen with context on both
sides in at least one window; where windows overlap their logits are averaged. Pure
functions over numpy arrays, so the arithmetic is tested without a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmexpr.labels import NUM_CLASSES


def window_starts(frames: int, window: int, stride: int) -> list[int]:
    """First frames of the windows that cover frames 0..frames-1.

    Starts go 0, stride, 2*stride, ... while a window still begins inside the track. The last
    window may run past the end: its extra frames are padding (masked), exactly as the training
    loader pads a short chunk, so that stride == window reproduces evaluation windows.
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window ({window}) and stride ({stride}) must be >= 1")
    if stride > window:
        raise ValueError(f"stride {stride} > window {window} would leave frames unseen")
    if frames <= 0:
        return []
    starts = list(range(0, max(frames - window, 0) + 1, stride))
    if starts[-1] + window < frames:
        starts.append(starts[-1] + stride)
    return starts


@dataclass
class LogitStitcher:
    """Sums window logits per frame and counts how many windows saw each frame."""

    frames: int
    classes: int = NUM_CLASSES
    total: np.ndarray = field(init=False)
    count: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.total = np.zeros((self.frames, self.classes), dtype=np.float64)
        self.count = np.zeros(self.frames, dtype=np.int64)

    def add(self, start: int, logits: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add one window's logits [T, C]; frames where `valid` is False (padding) are dropped."""
        logits = np.asarray(logits, dtype=np.float64)
        t = logits.shape[0]
        keep = np.ones(t, dtype=bool) if valid is None else np.asarray(valid, dtype=bool).copy()
        idx = np.arange(start, start + t)
        keep &= (idx >= 0) & (idx < self.frames)
        np.add.at(self.total, idx[keep], logits[keep])
        np.add.at(self.count, idx[keep], 1)

    def logits(self) -> np.ndarray:
        """Mean logits per frame [N, C]; a frame no window covered copies its nearest covered one."""
        seen = self.count > 0
        out = np.zeros_like(self.total)
        out[seen] = self.total[seen] / self.count[seen, None]
        if not seen.all() and seen.any():
            covered = np.flatnonzero(seen)
            pos = np.searchsorted(covered, np.arange(self.frames))
            left = covered[np.clip(pos - 1, 0, len(covered) - 1)]
            right = covered[np.clip(pos, 0, len(covered) - 1)]
            idx = np.arange(self.frames)
            nearest = np.where(np.abs(idx - left) <= np.abs(right - idx), left, right)
            out[~seen] = out[nearest[~seen]]
        return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities per frame, computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
