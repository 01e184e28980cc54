"""A speech encoder for training from scratch: log-mel spectrogram, 1-D convolutions, and
the statistics of the whole context added to every step.

A wav2vec2 feature encoder learns its filterbank from raw samples; with a few hundred
utterances and no pretraining it stays at chance (README, "Learning on real faces and
voices"). A fixed mel filterbank gives the network the representation the MFCC baseline
starts from, and the mean and standard deviation over the window's audio context give
every frame the utterance-level prosody that the baseline's statistics carry.

`LogMelStatsEncoder` goes one step further, to the baseline's own form: the mean and
standard deviation of MFCCs and of their deltas over the context's valid frames, standardised
with statistics frozen early in training, through a small MLP; one vector per context, repeated
at every step.
`jobs/from-scratch.yaml` uses it (README, "Learning on real faces and voices").

Each plays the role of a Hugging Face backbone inside `encoders.AudioEncoder`: `forward(x,
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

from mmexpr.errors import UserError

HOP = 320  # samples per step at 16 kHz: 50 steps per second, like wav2vec2
DELTA_WIDTH = 5  # frames a delta coefficient is regressed over (the usual speech-recognition width)


def refuse_save_pretrained(folder: str) -> None:
    """Both log-mel encoders: there is no Hugging Face format to write, and a folder that looked
    like one would later load as a different model; their weights travel in the checkpoint."""
    raise UserError(
        f"{folder}: the log-mel audio encoders have no Hugging Face format; their weights live in the "
        "model's checkpoint (predict and resume read them from there)"
    )


@dataclass(frozen=True)
class SpeechConfig:
    """The fields `AudioEncoder` reads from a Hugging Face speech config, shared by both
    log-mel encoders; "layer" makes AudioEncoder pass the valid-sample mask (the statistics
    need it)."""

    feat_extract_norm: str = "layer"
    hidden_size: int = 128
    sample_rate: int = 16000
    n_mels: int = 64


@dataclass(frozen=True)
class LogMelConfig(SpeechConfig):
    """The convolution network: its layers and their kernel."""

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
        refuse_save_pretrained(folder)


@dataclass(frozen=True)
class LogMelStatsConfig(SpeechConfig):
    """The statistics encoder: `n_mfcc` cepstral coefficients kept (the DCT of the log-mel, as
    MFCC; 0 keeps the bands): the low ones describe the spectral envelope, which carries across
    speakers, the fine detail they drop identifies them. `deltas` adds the mean and standard
    deviation of their change over time (regression over DELTA_WIDTH frames, as the deltas of
    speech recognition): how fast the voice moves, which the mean and spread of its frames do
    not tell (DELTA_WIDTH steps at 50 per second span +-40 ms here, twice the MFCC baseline's
    span at its 100 frames per second). On `bench learn`'s validation actors they lift this
    encoder only when the training voices are not augmented (`data.augment_voices` off, as in
    `jobs/from-scratch.yaml`): additive noise changes from frame to frame, so it likely swells
    the spread of the deltas far more than that of the coefficients, and the encoder learns
    clean test voices from noisy statistics (README, "Learning on real faces and voices").
    `norm_batches` training batches set the feature standardisation, frozen after them."""

    n_mels: int = 40
    n_mfcc: int = 20
    deltas: bool = True  # also the statistics of the coefficients' change over time (see above)
    norm_batches: int = 50
    dropout: float = 0.2

    @property
    def statistics(self) -> int:
        """Length of the statistics vector: mean and standard deviation of each feature."""
        return 2 * (self.n_mfcc or self.n_mels) * (2 if self.deltas else 1)


class FrozenStandardiser(nn.Module):
    """Per-feature standardisation from the first training batches, then fixed.

    BatchNorm's statistics differ between training (the batch) and evaluation (the running
    average), and with few utterances per batch the two disagree enough to move predictions.
    Here every forward, training or evaluation, divides by the same stored statistics; they
    only accumulate (a plain average, summed over ranks) during the first training batches,
    and only over rows that hold audio (a window without any gives a constant vector that
    would pull the mean towards silence).

    The sums are float32 buffers: the engine casts the model's floating buffers to its
    precision, and `forward` brings them back to float32 (bf16 would keep 3 digits). Whether
    the statistics are still accumulating, or exist at all, is cached on the Python side so a
    forward does not wait for the GPU to answer; loading a state dict clears the cache.
    """

    def __init__(self, features: int, batches: int) -> None:
        super().__init__()
        self.batches = batches
        self.register_buffer("seen", torch.zeros(()))
        self.register_buffer("total", torch.zeros(features))
        self.register_buffer("square", torch.zeros(features))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self._state: tuple[bool, bool] | None = None  # (still accumulating, has statistics)

    def _status(self) -> tuple[bool, bool]:
        if self._state is None:
            self._state = (int(self.updates) < self.batches, float(self.seen) > 0)
        return self._state

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._state = None
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """`keep` [B] bool: the rows that count towards the statistics (default all)."""
        for name in ("seen", "total", "square"):
            buffer = getattr(self, name)
            if buffer.dtype != torch.float32:
                setattr(self, name, buffer.float())
        if self.training and self._status()[0]:
            self._accumulate(x.detach().float() if keep is None else x.detach().float()[keep])
        if not self._status()[1]:
            return x
        mean = self.total / self.seen
        std = (self.square / self.seen - mean**2).clamp(min=1e-8).sqrt()
        return ((x.float() - mean) / std).to(x.dtype)

    @torch.no_grad()
    def _accumulate(self, x: torch.Tensor) -> None:
        sums = torch.cat([x.new_tensor([x.shape[0]]), x.sum(0), (x**2).sum(0)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)  # every rank standardises with the same numbers
        features = self.total.shape[0]
        self.seen += sums[0]
        self.total += sums[1 : 1 + features]
        self.square += sums[1 + features :]
        self.updates += 1
        self._state = (int(self.updates) < self.batches, float(self.seen) > 0)


def _masked_stats(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B, 2 * C]: mean and standard deviation over the valid steps of x [B, F, C]."""
    w = valid.unsqueeze(-1).float()
    count = w.sum(1).clamp(min=1)
    mean = (x * w).sum(1) / count
    std = ((((x - mean[:, None]) * w) ** 2).sum(1) / count + 1e-5).sqrt()
    return torch.cat([mean, std], -1)


class LogMelStatsEncoder(nn.Module):
    """The MFCC baseline's inductive bias, learned end to end: one vector per audio context.

    The mean and standard deviation of the cepstrum over the context's valid
    frames describe an utterance's timbre and prosody; a convolutional front end trained from
    scratch on a few actors fits their voices instead. Only frames whose whole analysis window
    lies in the valid samples count, so a clip gives the same vector however much padding
    follows it. The vector, standardised, goes through a small MLP and is repeated at every
    step, so the temporal model and fusion see the usual [B, F, hidden] sequence.
    """

    def __init__(self, config: LogMelStatsConfig | None = None) -> None:
        super().__init__()
        self.config = config or LogMelStatsConfig()
        c = self.config
        self.window = 400
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=c.sample_rate, n_fft=512, win_length=self.window, hop_length=HOP, n_mels=c.n_mels
        )
        self.register_buffer("dct", torchaudio.functional.create_dct(c.n_mfcc, c.n_mels, "ortho") if c.n_mfcc
                             else torch.eye(c.n_mels), persistent=False)
        self.norm = FrozenStandardiser(c.statistics, c.norm_batches)
        self.head = nn.Sequential(
            nn.Dropout(c.dropout), nn.Linear(c.statistics, c.hidden_size), nn.GELU(),
            nn.Linear(c.hidden_size, c.hidden_size), nn.LayerNorm(c.hidden_size),
        )

    def _get_feat_extract_output_lengths(self, samples: torch.Tensor) -> torch.Tensor:
        return torch.div(samples, HOP, rounding_mode="floor") + 1  # MelSpectrogram's centred frames

    def _inside(self, samples: torch.Tensor, steps: int) -> torch.Tensor:
        """[B, F]: frames whose analysis window ends within the valid samples (at least one)."""
        last = torch.div(samples - self.window // 2, HOP, rounding_mode="floor").clamp(min=0)
        return torch.arange(steps, device=samples.device)[None, :] <= last[:, None]

    def statistics(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """[B, config.statistics]: mean and standard deviation of the cepstrum (and of its
        deltas) over valid frames."""
        self.mel.float()
        with torch.autocast(x.device.type, enabled=False):
            spec = torch.log(self.mel(x.float()) + 1e-5).transpose(1, 2)  # [B, F, n_mels]
            samples = torch.full((x.shape[0],), x.shape[1], device=x.device) if attention_mask is None \
                else attention_mask.sum(1)
            cepstrum = spec @ self.dct.float()
            stats = _masked_stats(cepstrum, self._inside(samples, spec.shape[1]))
            if self.config.deltas:
                deltas = torchaudio.functional.compute_deltas(cepstrum.transpose(1, 2), DELTA_WIDTH).transpose(1, 2)
                # a delta reaches DELTA_WIDTH // 2 frames ahead: only those whose reach is valid count
                # (none at all in a clip too short for one: its delta statistics are then zero)
                reach = DELTA_WIDTH // 2 * HOP
                valid = self._inside(samples - reach, spec.shape[1]) & (samples >= reach + self.window // 2)[:, None]
                stats = torch.cat([stats, _masked_stats(deltas, valid)], -1)
            return self.norm(stats, keep=samples > 0)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        stats = self.statistics(x, attention_mask)
        h = self.head(stats.to(self.head[1].weight.dtype))
        steps = int(self._get_feat_extract_output_lengths(torch.tensor(x.shape[1])))
        return SimpleNamespace(last_hidden_state=h[:, None].expand(-1, steps, -1))

    def save_pretrained(self, folder: str) -> None:
        refuse_save_pretrained(folder)
