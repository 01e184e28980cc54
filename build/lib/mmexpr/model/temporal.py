"""Temporal modules over a window of per-frame features: TCN (the paper), none, transformer.

All take [B,T,D] features and a [B,T] mask of real frames and return [B,T,D]. Padded
frames (past a short chunk's end) are zeroed before every convolution or masked as
attention keys, so what fills the padding can never change a real frame's output.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TCNBlock(nn.Module):
    """Dilated 1-D convolution -> norm -> GELU -> pointwise, with a residual connection.

    Non-causal ('same' padding): recognition is offline, so a frame may look ahead.
    """

    def __init__(self, dim: int, kernel: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel, dilation=dilation, padding="same")
        self.norm = nn.LayerNorm(dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = (x * mask.unsqueeze(-1)).transpose(1, 2)
        h = self.conv(h).transpose(1, 2)
        h = self.proj(self.drop(self.act(self.norm(h))))
        return x + self.drop(h)


class TCN(nn.Module):
    """Stack of residual blocks with dilation 1, 2, 4, ...: receptive field grows exponentially."""

    def __init__(self, dim: int, layers: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TCNBlock(dim, kernel, 2**i, dropout) for i in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return x

    def receptive_field(self) -> int:
        return 1 + sum((b.conv.kernel_size[0] - 1) * b.conv.dilation[0] for b in self.blocks)


class NoTemporal(nn.Module):
    """Frames stay independent (the 'no temporal' ablation)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x


def sinusoidal_positions(
    length: int, dim: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Fixed positions, so any window length works without a learned table."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table.to(dtype)


def key_padding(mask: torch.Tensor) -> torch.Tensor:
    """Attention key padding mask (True = ignore) that never masks a whole row.

    A row with no valid key would make softmax produce NaN; such rows are all padding
    (their outputs are ignored downstream), so letting them attend everywhere is harmless.
    """
    empty = ~mask.any(dim=1, keepdim=True)
    return ~(mask | empty)


class TransformerTemporal(nn.Module):
    """Pre-norm self-attention over the window's frames."""

    def __init__(self, dim: int, layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + sinusoidal_positions(x.shape[1], x.shape[2], x.device, x.dtype)
        return self.encoder(x, src_key_padding_mask=key_padding(mask))


def build_temporal(
    kind: str, dim: int, layers: int, kernel: int, heads: int, dropout: float
) -> nn.Module:
    if kind == "tcn":
        return TCN(dim, layers, kernel, dropout)
    if kind == "transformer":
        return TransformerTemporal(dim, layers, heads, dropout)
    if kind == "none":
        return NoTemporal()
    raise ValueError(f"model.temporal: unknown kind {kind!r}; expected tcn, none or transformer")
