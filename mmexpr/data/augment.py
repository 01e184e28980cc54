"""Training-time augmentation of one window's faces and voice (`data.augment_faces`, `data.augment_voices`).

Tiny encoders trained from scratch on a few hundred people memorise faces and voices; the
same person seen through another crop, light, loudness or background noise is a new
example for them. Each window takes ONE draw, applied to all its frames (and its whole
audio row), so the motion and prosody inside a window stay intact. Only the training
loader calls this; evaluation and prediction see the data as packed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Augment:
    faces: bool = False
    voices: bool = False
    crop_scale: float = 0.75  # smallest side of the random crop, as a share of the frame
    jitter: float = 0.3  # brightness and contrast change up to +-30 %
    grayscale_p: float = 0.2
    gain_db: float = 6.0
    noise_snr_db: tuple[float, float] = (15.0, 40.0)
    mask_share: float = 0.15  # longest time mask, as a share of the audio

    @property
    def active(self) -> bool:
        return self.faces or self.voices


def augment_frames(video: np.ndarray, n: int, rng: np.random.Generator, aug: Augment) -> None:
    """In place on one window's uint8 frames [T, 3, H, W] (the first n are real)."""
    if n == 0:
        return
    frames = video[:n].astype(np.float32)
    _, _, h, w = frames.shape
    side = rng.uniform(aug.crop_scale, 1.0)
    ch, cw = max(2, round(h * side)), max(2, round(w * side))
    y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    rows = y0 + (np.arange(h) * ch // h)
    cols = x0 + (np.arange(w) * cw // w)
    if rng.random() < 0.5:
        cols = cols[::-1]
    frames = frames[:, :, rows][:, :, :, cols]
    if rng.random() < aug.grayscale_p:
        frames[:] = frames.mean(axis=1, keepdims=True)
    mean = frames.mean()
    contrast = rng.uniform(1 - aug.jitter, 1 + aug.jitter)
    brightness = rng.uniform(1 - aug.jitter, 1 + aug.jitter)
    frames = ((frames - mean) * contrast + mean) * brightness
    video[:n] = np.clip(frames, 0, 255).astype(np.uint8)


def augment_audio(row: np.ndarray, n: int, rng: np.random.Generator, aug: Augment) -> None:
    """In place on the first n samples of one window's audio row: gain, a time mask, then noise.

    The mask silences the voice, not the recording: the noise goes on through it. Digital
    silence inside an utterance never occurs in a real recording, and its log spectrum
    (the floor of the log) would jump at both edges of the mask, so the cepstral statistics
    and deltas of a training window would describe the mask rather than the voice.
    """
    if n == 0:
        return
    audio = row[:n] * np.float32(10 ** (rng.uniform(-aug.gain_db, aug.gain_db) / 20))
    power = float(np.mean(audio**2))
    span = int(rng.integers(0, max(1, int(n * aug.mask_share)) + 1))
    if span:
        s0 = int(rng.integers(0, n - span + 1))
        audio[s0 : s0 + span] = 0
    if power > 0:
        snr = rng.uniform(*aug.noise_snr_db)
        audio += rng.normal(0, np.sqrt(power / 10 ** (snr / 10)), n).astype(np.float32)
    row[:n] = np.clip(audio, -1, 1)
