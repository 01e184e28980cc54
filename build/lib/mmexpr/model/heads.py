"""The per-frame heads, one per task: deliberately light, so the fused features do the work."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mmexpr.labels import NUM_AUS, NUM_CLASSES


class FrameHead(nn.Module):
    """[B,T,D] -> [B,T,8] logits."""

    def __init__(self, dim: int, dropout: float, classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(self.norm(x)))


class VAHead(FrameHead):
    """[B,T,D] -> [B,T,2] valence and arousal in (-1, 1): tanh keeps them in the label range."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__(dim, dropout, classes=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(super().forward(x))


class AUHead(FrameHead):
    """[B,T,D] -> [B,T,12] action-unit logits (independent, one sigmoid each)."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__(dim, dropout, classes=NUM_AUS)
def smooth_probabilities(probs: np.ndarray, frames: int) -> np.ndarray:
    """Centred moving average of per-frame class probabilities [N, C] over `frames` frames.

    Expressions last longer than a frame; averaging the evidence of neighbouring frames
    removes single-frame flips (ABAW winners vote over sliding windows for the same reason).
    At the ends of a track the average covers the frames that exist. 0 or 1: unchanged.
    """
    probs = np.asarray(probs, np.float64)
    if frames <= 1 or len(probs) < 2:
        return probs
    half = frames // 2
    total = np.concatenate([np.zeros((1, probs.shape[1])), np.cumsum(probs, axis=0)])
    idx = np.arange(len(probs))
    lo = np.clip(idx - half, 0, len(probs))
    hi = np.clip(idx + (frames - half), 0, len(probs))
    return (total[hi] - total[lo]) / (hi - lo)[:, None]
