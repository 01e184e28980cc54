"""The batch every stage after the loader sees: B windows of T frames, their audio and labels.

The training loader, prediction and the model's example input all build batches with
`BatchArrays`, so the shapes, the audio buffer size and the padding rules exist once:

    video      uint8   [B, T, 3, H, W]   face frames; zeros past a window's real frames
    audio      float32 [B, S]            the window's waveform from sample 0, zero padded;
                                         S = audio_samples(T, rate) fits the window at MIN_FPS
    audio_len  int64   [B]               valid samples (0: no audio, e.g. a silent track)
    fps        float32 [B]               frame rate of the window's track (0 for padding windows)
    mask       bool    [B, T]            real frames (False: padding past a chunk's end)
    start      int64   [B]               absolute first frame of the window in its track
    track      list[str]                 track name per window ("" for padding windows)
    labels     int64   [B, T] or None    class per frame, -1 = ignore; None when unlabelled
    va         float32 [B, T, 2] or None valence, arousal per frame, NaN = unknown
    au         int64   [B, T, 12] or None the 12 action units (0/1) per frame, -1 = unknown
    face       bool    [B, T] or None    a face is visible (False: no face in that frame, a
                                         missing visual input; its video frame is black);
                                         None = every frame has one
    audio_offset float32 [B] or None     seconds of audio before the window's first frame
                                         (data.audio_context_s > 0); None: the audio starts
                                         with the first frame

A fully masked window (an unreadable sample, or the padding that keeps every evaluation
rank at the same number of batches) is all zeros with mask False.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from mmexpr.data.decode import frames_to_chw
from mmexpr.labels import IGNORE, NUM_AUS

MIN_FPS = 24  # the audio buffer of a window is sized for this frame rate or faster


def audio_samples(window: int, sample_rate: int) -> int:
    """S: samples a window's audio buffer holds (enough for T frames at MIN_FPS)."""
    return math.ceil(window * sample_rate / MIN_FPS)


def context_samples(window: int, sample_rate: int, context_s: float) -> int:
    """S with an audio context: the window's own buffer, or context_s seconds if longer."""
    return max(audio_samples(window, sample_rate), math.ceil(context_s * sample_rate))


def context_span(span: tuple[int, int], context: int, limit: tuple[int, int]) -> tuple[int, int]:
    """A span of `context` samples centred on the window's `span`, shifted and cut to stay
    within `limit` (the audio the window's chunk holds). A short window hears prosody that
    lasts longer than its frames; the loader and predict both cut it here, so they agree."""
    a0, a1 = span
    if context <= a1 - a0:
        return span
    lo = (a0 + a1) // 2 - context // 2
    lo = max(limit[0], min(lo, limit[1] - context))
    return lo, min(lo + context, limit[1])


def frame_sample(frame: int, fps: float, sample_rate: int) -> int:
    """The audio sample at the same instant as `frame` (pack writes chunks on this clock)."""
    return int(round(frame * sample_rate / fps))


@dataclass
class Batch:
    video: torch.Tensor
    audio: torch.Tensor
    audio_len: torch.Tensor
    fps: torch.Tensor
    mask: torch.Tensor
    start: torch.Tensor
    track: list[str]
    labels: torch.Tensor | None = None
    va: torch.Tensor | None = None
    au: torch.Tensor | None = None
    face: torch.Tensor | None = None
    audio_offset: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.track)

    def to(self, device: torch.device | str, audio_dtype: torch.dtype | None = None) -> Batch:
        """Tensors on `device`; the waveform optionally cast (bf16 encoders take bf16 audio,
        while fps stays fp32: 29.97 is 30.0 in bf16)."""
        moved = {
            f.name: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for f in fields(self)
            for value in [getattr(self, f.name)]
        }
        if audio_dtype is not None:
            moved["audio"] = moved["audio"].to(audio_dtype)
        return Batch(**moved)

    def without_labels(self) -> Batch:
        """The same windows as the model sees them at prediction time."""
        return replace(self, labels=None, va=None, au=None)


class BatchArrays:
    """Zeroed numpy arrays for one batch, filled window by window, then handed out as a Batch."""

    def __init__(self, batch_size: int, window: int, image_size: int | tuple[int, int], sample_rate: int,
                 labelled: bool = True, audio_context_s: float = 0.0) -> None:
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.window = window
        self.sample_rate = sample_rate
        self.video = np.zeros((batch_size, window, 3, h, w), np.uint8)
        self.audio = np.zeros((batch_size, context_samples(window, sample_rate, audio_context_s)), np.float32)
        self.audio_offset = np.zeros(batch_size, np.float32) if audio_context_s > 0 else None
        self.audio_len = np.zeros(batch_size, np.int64)
        self.fps = np.zeros(batch_size, np.float32)
        self.mask = np.zeros((batch_size, window), bool)
        self.start = np.zeros(batch_size, np.int64)
        self.track = [""] * batch_size
        self.labels = np.full((batch_size, window), IGNORE, np.int64) if labelled else None
        self.va = np.full((batch_size, window, 2), np.nan, np.float32) if labelled else None
        self.au = np.full((batch_size, window, NUM_AUS), IGNORE, np.int64) if labelled else None
        self.face = np.ones((batch_size, window), bool)

    def put(
        self,
        b: int,
        frames: np.ndarray,
        *,
        fps: float,
        start: int,
        track: str,
        labels: np.ndarray | None = None,
        va: np.ndarray | None = None,
        au: np.ndarray | None = None,
        audio: np.ndarray | None = None,
        audio_span: tuple[int, int] = (0, 0),
        face: np.ndarray | None = None,
        audio_limit: tuple[int, int] | None = None,
    ) -> None:
        """Window b: `frames` [n <= T, H, W, 3]; samples [a0, a1) of `audio` (a track's or a
        chunk's waveform, on the clock of `frame_sample`) fill the start of its audio row
        (with an audio context, a longer span around them, within `audio_limit`); `face` [n]
        marks the frames that show a face (None: all do)."""
        n = len(frames)
        if face is not None:
            self.face[b, :n] = face
        frames_to_chw(frames, self.video[b, :n])
        self.mask[b, :n] = True
        self.fps[b] = fps
        self.start[b] = start
        self.track[b] = track
        if labels is not None and self.labels is not None:
            self.labels[b, :n] = labels
        if va is not None and self.va is not None:
            self.va[b, :n] = va
        if au is not None and self.au is not None:
            self.au[b, :n] = au
        if audio is not None:
            if self.audio_offset is not None:
                wide = context_span(audio_span, self.audio.shape[1], audio_limit or (0, len(audio)))
                self.audio_offset[b] = (audio_span[0] - wide[0]) / self.sample_rate
                audio_span = wide
            self.audio_len[b] = fill_audio(self.audio[b], audio, *audio_span)

    def batch(self) -> Batch:
        def tensor(a: np.ndarray | None) -> torch.Tensor | None:
            return torch.from_numpy(a) if a is not None else None

        return Batch(
            video=torch.from_numpy(self.video),
            audio=torch.from_numpy(self.audio),
            audio_len=torch.from_numpy(self.audio_len),
            fps=torch.from_numpy(self.fps),
            mask=torch.from_numpy(self.mask),
            start=torch.from_numpy(self.start),
            track=list(self.track),
            labels=tensor(self.labels),
            va=tensor(self.va),
            au=tensor(self.au),
            face=torch.from_numpy(self.face),
            audio_offset=torch.from_numpy(self.audio_offset) if self.audio_offset is not None else None,
        )


def fill_audio(row: np.ndarray, audio: np.ndarray, a0: int, a1: int) -> int:
    """Copy samples [a0, a1) to the start of a window's zeroed audio row, cut to the row and to
    the waveform; returns the samples copied (the window's audio_len)."""
    a1 = min(a1, len(audio), a0 + len(row))
    if a1 <= a0:
        return 0
    row[: a1 - a0] = audio[a0:a1]
    return a1 - a0
