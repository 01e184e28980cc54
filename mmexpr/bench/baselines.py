"""Simple per-frame baselines for `bench learn`: hand-made features + logistic regression.

A neural recipe is worth its cost only where it beats these on people it has not seen:

- audio: mean and standard deviation of MFCCs and of their deltas over `context_s` seconds
  centred on the frame (the deltas make it the strongest of the simple audio baselines
  tried; `LogMelStatsConfig.deltas` in model/logmel.py gives them to `tiny-logmel-stats`);
- face: the frame's pixels, grayscale, pooled to 16x16, each image standardised;
- both: the two feature vectors side by side.

They read the same packed tracks the models train on (`predict.tracks.ShardTracks`), fit on
every `every`-th labelled training frame, pick the L2 strength on the validation split
(the neural runs pick their best checkpoint there too), and are scored on every labelled
test frame with the same macro F1 (`mmexpr.metrics.score`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio

from mmexpr.labels import NUM_CLASSES
from mmexpr.metrics import score
from mmexpr.model.logmel import DELTA_WIDTH

MFCC_RATE = 100  # MFCC frames per second (hop 10 ms)
L2_GRID = (1e-4, 1e-3, 1e-2)


@dataclass
class Features:
    audio: np.ndarray  # float32 [N, 4 * n_mfcc]
    face: np.ndarray  # float32 [N, pixels]
    labels: np.ndarray  # int64 [N]

    def of(self, kind: str) -> np.ndarray:
        if kind == "audio":
            return self.audio
        if kind == "face":
            return self.face
        return np.concatenate([self.audio, self.face], axis=1)


def mfcc(audio: np.ndarray, sample_rate: int, n_mfcc: int = 20) -> np.ndarray:
    """[frames at MFCC_RATE, n_mfcc] of one waveform."""
    transform = torchaudio.transforms.MFCC(
        sample_rate=sample_rate, n_mfcc=n_mfcc,
        melkwargs={"n_fft": 400, "hop_length": sample_rate // MFCC_RATE, "n_mels": 40},
    )
    with torch.no_grad():
        return transform(torch.from_numpy(np.ascontiguousarray(audio, np.float32))).T.numpy()


def mfcc_and_deltas(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """[frames at MFCC_RATE, 2 * n_mfcc]: each frame's MFCCs, then their deltas."""
    coeffs = mfcc(audio, sample_rate)
    deltas = torchaudio.functional.compute_deltas(torch.from_numpy(coeffs.T.copy()), DELTA_WIDTH).T.numpy()
    return np.concatenate([coeffs, deltas], axis=1)


def context_stats(coeffs: np.ndarray, frames: int, fps: float, context_s: float) -> np.ndarray:
    """Mean and std of the feature frames (MFCC_RATE per second) within context_s/2 of each video frame's centre."""
    c = np.concatenate([np.zeros((1, coeffs.shape[1])), np.cumsum(coeffs, 0)])
    c2 = np.concatenate([np.zeros((1, coeffs.shape[1])), np.cumsum(coeffs**2, 0)])
    centre = (np.arange(frames) + 0.5) / fps * MFCC_RATE
    half = context_s * MFCC_RATE / 2
    lo = np.clip(np.floor(centre - half), 0, len(coeffs)).astype(int)
    hi = np.clip(np.ceil(centre + half), 0, len(coeffs)).astype(int)
    n = np.maximum(hi - lo, 1)[:, None]
    mean = (c[hi] - c[lo]) / n
    var = np.maximum((c2[hi] - c2[lo]) / n - mean**2, 0)
    return np.concatenate([mean, np.sqrt(var)], axis=1).astype(np.float32)


def face_pixels(frames: np.ndarray, side: int = 16) -> np.ndarray:
    """[N, side*side] standardised grayscale pixels of uint8 frames [N, H, W, 3], average-pooled."""
    gray = frames.astype(np.float32).mean(axis=3)
    n, h, w = gray.shape
    k = max(1, min(h, w) // side)
    pooled = gray[:, : h // k * k, : w // k * k].reshape(n, h // k, k, w // k, k).mean(axis=(2, 4))
    flat = pooled.reshape(n, -1)
    flat -= flat.mean(axis=1, keepdims=True)
    flat /= flat.std(axis=1, keepdims=True) + 1e-6
    return flat


def track_features(tracks, context_s: float, every: int = 1) -> Features:
    """Features of every `every`-th labelled frame of whole tracks (frames, labels, audio, fps)."""
    audio, face, labels = [], [], []
    for track in tracks:
        keep = np.flatnonzero(track.labels >= 0)[::every]
        if not len(keep):
            continue
        rate = round(len(track.audio) * track.fps / max(len(track.frames), 1))
        stats = context_stats(mfcc_and_deltas(track.audio, rate), len(track.frames), track.fps, context_s)
        audio.append(stats[keep])
        face.append(face_pixels(track.frames[keep]))
        labels.append(track.labels[keep])
    return Features(np.concatenate(audio), np.concatenate(face), np.concatenate(labels))


@dataclass
class LogisticRegression:
    """Multinomial logistic regression on standardised features, class-balanced, L2."""

    mean: np.ndarray
    std: np.ndarray
    weight: torch.Tensor
    bias: torch.Tensor

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = torch.from_numpy((x - self.mean) / self.std)
        return (z @ self.weight + self.bias).argmax(1).numpy()


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, steps: int = 60) -> LogisticRegression:
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = torch.from_numpy((x - mean) / std)
    t = torch.from_numpy(y)
    counts = torch.bincount(t, minlength=NUM_CLASSES).float()
    cw = torch.where(counts > 0, counts.sum() / (counts.clamp(min=1) * (counts > 0).sum()), torch.zeros(()))
    w = torch.zeros(z.shape[1], NUM_CLASSES, requires_grad=True)
    b = torch.zeros(NUM_CLASSES, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w + b, t, weight=cw) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LogisticRegression(mean, std, w.detach(), b.detach())


@dataclass(frozen=True)
class BaselineResult:
    kind: str
    l2: float
    val_f1: float
    test_f1: float


def run_baseline(kind: str, train: Features, val: Features, test: Features) -> BaselineResult:
    """Fit at each L2 of the grid, keep the one best on validation, score it on test."""
    best: tuple[float, float, LogisticRegression] | None = None
    for l2 in L2_GRID:
        model = fit_logistic(train.of(kind), train.labels, l2)
        f1 = score(val.labels, model.predict(val.of(kind))).macro_f1
        if best is None or f1 > best[0]:
            best = (f1, l2, model)
    f1, l2, model = best
    return BaselineResult(kind, l2, f1, score(test.labels, model.predict(test.of(kind))).macro_f1)
