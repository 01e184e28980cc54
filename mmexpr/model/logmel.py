"""A speech encoder for training from scratch: log-mel spectrogram, 1-D convolutions, and
the statistics of the whole context added to every step.

A wav2vec2 feature encoder learns its filterbank from raw samples; with a few hundred
utterances and no pretraining it stays at chance (README, "Learning on real faces and
voices"). A fixed mel filterbank gives the network the representation the MFCC baseline
starts from, and the mean and standard deviation over the window's audio context give
every frame the utterance-level prosody that the baseline's statistics carry.

It plays the role of a Hugging Face backbone inside `encoders.AudioEncoder`: `forward(x,
attention_mask)` returns an object with `last_hidden_state` [B, F, hidden] at 50 steps per
second (wav2vec2's rate, so the alignment to frames is the same), and
`_get_feat_extract_output_lengths` maps valid samples to valid steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torchaudio
from torch import nn

HOP = 320  # samples per step at 16 kHz: 50 steps per second, like wav2vec2


@dataclass(frozen=True)
class LogMelConfig:
    """The fields `AudioEncoder` reads from a Hugging Face speech config, then the network's own."""

    # "layer": AudioEncoder passes the valid-sample mask (the statistics need it).
    feat_extract_norm: str = "layer"
    hidden_size: int = 128
    sample_rate: int = 16000
    # the network: mel bands, convolution layers and their kernel
    n_mels: int = 64
    layers: int = 3
    kernel: int = 5


class LogMelEncoder(nn.Module):
    def __init__(self, config: LogMelConfig | None = None) -> None:
        super().__init__()

        self.config = config or LogMelConfig()
        c = self.config
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=c.sample_rate, n_fft=512, win_length=400, hop_length=HOP, n_mels=c.n_mels
        )
        self.input_norm = nn.BatchNorm1d(c.n_mels)
        self.input = nn.Conv1d(c.n_mels, c.hidden_size, c.kernel, padding=c.kernel // 2)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.GELU(), nn.Conv1d(c.hidden_size, c.hidden_size, c.kernel, padding=c.kernel // 2),
                          nn.BatchNorm1d(c.hidden_size))
            for _ in range(c.layers - 1)
        )
        self.stats = nn.Linear(2 * c.hidden_size, c.hidden_size)
        self.out_norm = nn.LayerNorm(c.hidden_size)

    def _get_feat_extract_output_lengths(self, samples: torch.Tensor) -> torch.Tensor:
        return torch.div(samples, HOP, rounding_mode="floor") + 1  # MelSpectrogram's centred frames

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        self.mel.float()  # its window and filterbank stay float32 when the engine casts the model to bf16
        with torch.autocast(x.device.type, enabled=False):
            spec = torch.log(self.mel(x.float()) + 1e-5)  # [B, n_mels, F]
        h = self.input(self.input_norm(spec.to(self.input.weight.dtype)))
        for block in self.blocks:
            h = h + block(h)
        h = h.transpose(1, 2)  # [B, F, hidden]
        steps = h.shape[1]
        if attention_mask is None:
            valid = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        else:
            lengths = self._get_feat_extract_output_lengths(attention_mask.sum(1)).clamp(max=steps)
            valid = torch.arange(steps, device=h.device)[None, :] < lengths[:, None]
        w = valid.unsqueeze(-1).to(h.dtype)
        count = w.sum(1).clamp(min=1)
        mean = (h * w).sum(1) / count
        std = ((((h - mean[:, None]) * w) ** 2).sum(1) / count + 1e-5).sqrt()
        h = self.out_norm(h + self.stats(torch.cat([mean, std], -1))[:, None])
        return SimpleNamespace(last_hidden_state=h)

    def save_pretrained(self, folder: str) -> None:
        raise NotImplementedError(
            "the log-mel audio encoder has no Hugging Face format; its weights live in the model's checkpoint"
        )
