"""The per-frame classifier: deliberately light, so the fused features do the work."""

from __future__ import annotations

import torch
from torch import nn

from mmexpr.labels import NUM_CLASSES


class FrameHead(nn.Module):
    """[B,T,D] -> [B,T,8] logits."""

    def __init__(self, dim: int, dropout: float, classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(self.norm(x)))
