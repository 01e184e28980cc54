"""Audio-visual fusion: audio aligned to frame times, then bi-directional cross-attention.

Direction names say where information flows: `audio_to_video` updates the video stream
with what it reads from the audio (video queries, audio keys) and leaves the audio
stream as it was; `video_to_audio` is the mirror; `bi` does both at once, symmetrically,
from the same inputs (the paper's setting). `concat` is the no-attention baseline.

A window without audio (audio_len == 0, or modality dropout) is masked: its audio tokens
are never attended to and add nothing to the fused output. It is not zero-filled noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmexpr.model.temporal import key_padding

AUDIO_RATE = 16000  # Hz; wav2vec2-family encoders and the shards both use it


def align_audio(
    feats: torch.Tensor,
    feat_len: torch.Tensor,
    audio_len: torch.Tensor,
    fps: torch.Tensor,
    frames: int,
    sample_rate: int = AUDIO_RATE,
    offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio features [B,F,D] -> one vector per video frame [B,T,D], and a [B,T] audio mask.

    Feature j of a window covers its valid audio evenly, so its centre lies at
    (j + 0.5) * duration / feat_len seconds; frame t's centre is (t + 0.5) / fps. Each
    frame linearly interpolates the two features around its centre. Frames after the
    audio ends, and every frame of a window without audio, are masked. Fully masked padding
    windows (end of an evaluation pass, unreadable samples) carry fps 0: any positive rate
    gives them the same, masked, result, so fps is clamped rather than divided by zero.
    `offset` [B] (seconds of audio before the first frame, an audio context) moves every
    frame's centre that much later on the audio's clock.
    """
    batch, steps, _ = feats.shape
    device = feats.device
    duration = audio_len.to(torch.float32) / sample_rate  # [B]
    fps = fps.float().clamp(min=1.0)
    t_centre = (torch.arange(frames, device=device, dtype=torch.float32)[None, :] + 0.5) / fps[
        :, None
    ]
    if offset is not None:
        t_centre = t_centre + offset.to(device, torch.float32)[:, None]
    rate = feat_len.to(torch.float32) / duration.clamp(min=1e-6)  # features per second
    pos = t_centre * rate[:, None] - 0.5
    last = (feat_len - 1).clamp(min=0)[:, None].float()
    pos = pos.clamp(min=0.0).minimum(last)
    lo = pos.floor().long()
    hi = (lo + 1).minimum(last.long())
    weight = (pos - lo.float()).unsqueeze(-1).to(feats.dtype)
    index = lambda i: i.clamp(max=steps - 1).unsqueeze(-1).expand(-1, -1, feats.shape[2])  # noqa: E731
    aligned = (
        torch.gather(feats, 1, index(lo)) * (1 - weight)
        + torch.gather(feats, 1, index(hi)) * weight
    )
    mask = (feat_len[:, None] > 0) & (t_centre < duration[:, None] + 0.5 / fps[:, None])
    return aligned, mask


def modality_dropout(
    video_mask: torch.Tensor,
    audio_mask: torch.Tensor,
    p: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per window, with chance p, hide one modality (audio or video, even odds).

    Only windows that have both are touched, so no window loses its last modality.
    Training with it makes the model usable when a track has no audio at all.
    """
    if p <= 0:
        return video_mask, audio_mask
    batch = video_mask.shape[0]
    both = video_mask.any(1) & audio_mask.any(1)
    u = torch.rand(batch, generator=generator, device=video_mask.device)
    coin = torch.rand(batch, generator=generator, device=video_mask.device) < 0.5
    drop = both & (u < p)
    drop_audio = (drop & coin)[:, None]
    drop_video = (drop & ~coin)[:, None]
    return video_mask & ~drop_video, audio_mask & ~drop_audio


@dataclass
class FusionOutput:
    fused: torch.Tensor  # [B,T,D] what the head sees
    video: torch.Tensor  # [B,T,D] video stream after fusion
    audio: torch.Tensor  # [B,T,D] audio stream after fusion


class CrossAttention(nn.Module):
    """Pre-norm cross-attention update for one stream reading the other.

    Rows with no valid key (no audio in the window) get a zero update: the stream passes
    through unchanged instead of attending to masked tokens.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor
    ) -> torch.Tensor:
        kv = self.norm_kv(keys)
        out, _ = self.attn(
            self.norm_q(query), kv, kv, key_padding_mask=key_padding(key_mask), need_weights=False
        )
        has_keys = key_mask.any(dim=1).to(out.dtype)[:, None, None]
        return self.drop(out) * has_keys


class FeedForward(nn.Module):
    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(4 * dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CrossBlock(nn.Module):
    """One layer: each enabled direction reads the other stream's *input* (symmetric), then FFNs."""

    def __init__(
        self, dim: int, heads: int, dropout: float, to_video: bool, to_audio: bool
    ) -> None:
        super().__init__()
        self.video_reads_audio = CrossAttention(dim, heads, dropout) if to_video else None
        self.audio_reads_video = CrossAttention(dim, heads, dropout) if to_audio else None
        self.ffn_video = FeedForward(dim, dropout)
        self.ffn_audio = FeedForward(dim, dropout)

    def forward(self, v: torch.Tensor, a: torch.Tensor, v_mask: torch.Tensor, a_mask: torch.Tensor):
        v_new = (
            v + self.video_reads_audio(v, a, a_mask) if self.video_reads_audio is not None else v
        )
        a_new = (
            a + self.audio_reads_video(a, v, v_mask) if self.audio_reads_video is not None else a
        )
        return v_new + self.ffn_video(v_new), a_new + self.ffn_audio(a_new)


class CrossAttentionFusion(nn.Module):
    """L cross blocks; the fused output is the sum of the present streams, normalised."""

    def __init__(
        self, dim: int, heads: int, layers: int, dropout: float, direction: str = "bi"
    ) -> None:
        super().__init__()
        if direction not in ("bi", "audio_to_video", "video_to_audio"):
            raise ValueError(f"model.fusion: unknown direction {direction!r}")
        to_video = direction in ("bi", "audio_to_video")
        to_audio = direction in ("bi", "video_to_audio")
        self.direction = direction
        self.blocks = nn.ModuleList(
            CrossBlock(dim, heads, dropout, to_video, to_audio) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, v: torch.Tensor, a: torch.Tensor, v_mask: torch.Tensor, a_mask: torch.Tensor
    ) -> FusionOutput:
        for block in self.blocks:
            v, a = block(v, a, v_mask, a_mask)
        fused = v * v_mask.unsqueeze(-1).to(v.dtype) + a * a_mask.unsqueeze(-1).to(a.dtype)
        return FusionOutput(self.norm(fused), v, a)

    def extra_repr(self) -> str:
        return f"direction={self.direction}"


class ConcatFusion(nn.Module):
    """No attention: [video, audio (masked), audio-present flag] -> linear. The ablation baseline."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Linear(2 * dim + 1, dim), nn.GELU(), nn.Dropout(dropout), nn.LayerNorm(dim)
        )

    def forward(
        self, v: torch.Tensor, a: torch.Tensor, v_mask: torch.Tensor, a_mask: torch.Tensor
    ) -> FusionOutput:
        vm = v_mask.unsqueeze(-1).to(v.dtype)
        am = a_mask.unsqueeze(-1).to(a.dtype)
        return FusionOutput(self.proj(torch.cat([v * vm, a * am, am], dim=-1)), v, a)


def build_fusion(kind: str, dim: int, heads: int, layers: int, dropout: float) -> nn.Module:
    if kind == "concat":
        return ConcatFusion(dim, dropout)
    return CrossAttentionFusion(dim, heads, layers, dropout, kind)
