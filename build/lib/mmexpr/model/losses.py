"""Losses: per-frame classification (weighted CE or focal), the text-guided contrastive term, VA (1 - CCC) and AU (weighted BCE).

Frames labelled -1 (ignored in Aff-Wild2, or padding past a chunk's end) count in neither.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmexpr.labels import IGNORE, NUM_AUS, NUM_CLASSES


def class_weights_from_counts(counts: Sequence[int], max_ratio: float = 10.0) -> torch.Tensor:
    """Inverse-frequency weights, normalised so a frame drawn from the data weighs 1 on average.

    Aff-Wild2 is dominated by Neutral and Other; without weights the model learns to say
    those. Weights are capped at `max_ratio` x the smallest so a class seen a handful of
    times cannot dominate a batch. A class never seen gets weight 1 (it is never a target).
    """
    c = torch.as_tensor(list(counts), dtype=torch.float64)
    if c.numel() != NUM_CLASSES or (c < 0).any():
        raise ValueError(
            f"class counts: expected {NUM_CLASSES} non-negative numbers, got {list(counts)}"
        )
    seen = c > 0
    if not seen.any():
        return torch.ones(NUM_CLASSES, dtype=torch.float32)
    w = torch.ones_like(c)
    w[seen] = 1.0 / c[seen]
    w[seen] = w[seen].clamp(max=w[seen].min() * max_ratio)
    w[seen] = w[seen] / ((w[seen] * c[seen]).sum() / c[seen].sum())
    return w.float()


def _valid(labels: torch.Tensor) -> torch.Tensor:
    return labels != IGNORE


class FrameLoss(nn.Module):
    """Cross-entropy (optionally class-weighted) or focal loss over labelled frames."""

    def __init__(
        self, kind: str = "ce", weights: torch.Tensor | None = None, gamma: float = 2.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.gamma = gamma
        self.label_smoothing = label_smoothing if kind == "ce" else 0.0
        self.register_buffer("weights", weights if weights is not None else torch.ones(NUM_CLASSES))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.reshape(-1, logits.shape[-1]).float()
        labels = labels.reshape(-1)
        valid = _valid(labels)
        if not valid.any():
            return logits.sum() * 0.0  # keeps the graph (DeepSpeed expects a loss with grad)
        logits, labels = logits[valid], labels[valid]
        weight = self.weights.float()[labels]
        nll = F.cross_entropy(logits, labels, reduction="none", label_smoothing=self.label_smoothing)
        if self.kind == "focal":
            p_true = torch.exp(-nll)
            nll = (1.0 - p_true).pow(self.gamma) * nll
        return (nll * weight).sum() / weight.sum()

    def extra_repr(self) -> str:
        return f"kind={self.kind}" + (f", gamma={self.gamma}" if self.kind == "focal" else "")


def info_nce(
    frames: torch.Tensor, classes: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """InfoNCE of each labelled frame against the class embeddings: its own class is the positive.

    frames [N,E], classes [C,E] (both normalised here), labels [N] (-1 ignored).
    """
    valid = _valid(labels)
    if not valid.any():  # zero, but every input stays in the graph: ZeRO needs each grad on every rank
        return (frames.sum() + classes.sum() + scale) * 0.0
    f = F.normalize(frames[valid].float(), dim=-1)
    c = F.normalize(classes.float(), dim=-1)
    return F.cross_entropy(scale * f @ c.t(), labels[valid])


class TextGuidedContrastive(nn.Module):
    """Projects frame features and class text embeddings into one space; learnable temperature.

    The temperature starts at CLIP's 0.07 and its inverse is capped at 100, as in CLIP,
    so the logits cannot blow up early in training.
    """

    def __init__(self, frame_dim: int, text_dim: int, dim: int) -> None:
        super().__init__()
        self.frame_proj = nn.Linear(frame_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        # Shape [1], not a 0-dim scalar: DeepSpeed's broadcast and ZeRO-3 partitioning
        # handle 1-element tensors but trip over 0-dim parameters.
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / 0.07)))

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100.0)).exp().squeeze(0)

    def forward(
        self, frames: torch.Tensor, class_text: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        flat = frames.reshape(-1, frames.shape[-1])
        return info_nce(
            self.frame_proj(flat), self.text_proj(class_text), labels.reshape(-1), self.scale()
        )


def class_text_embeddings(encode, prompts_per_class: Sequence[Sequence[str]]) -> torch.Tensor:
    """One embedding per class: the mean of its normalised prompt embeddings (CLIP's prompt ensembling)."""
    counts = {len(p) for p in prompts_per_class}
    if len(counts) != 1:
        raise ValueError("every class needs the same number of prompt templates")
    per_class = counts.pop()
    flat = [text for prompts in prompts_per_class for text in prompts]
    emb = F.normalize(encode(flat).float(), dim=-1)
    return emb.view(len(prompts_per_class), per_class, -1).mean(dim=1)


# ---------------------------------------------------------------- VA and AU


def ccc_loss(pred: torch.Tensor, true: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean over the two dimensions of 1 - CCC on the frames whose truth is known (not NaN).

    CCC is what ABAW scores, and unlike MSE it punishes a model that predicts the mean: the
    training mean has CCC 0. A dimension with no known frame adds 0 with the graph kept.
    """
    pred = pred.reshape(-1, pred.shape[-1]).float()
    true = true.reshape(pred.shape).float()
    losses = []
    for k in range(pred.shape[1]):
        known = ~torch.isnan(true[:, k])
        if not known.any():
            losses.append(pred[:, k].sum() * 0.0)
            continue
        p, t = pred[known, k], true[known, k]
        mp, mt = p.mean(), t.mean()
        cov = ((p - mp) * (t - mt)).mean()
        denom = p.var(unbiased=False) + t.var(unbiased=False) + (mp - mt) ** 2 + eps
        losses.append(1.0 - 2.0 * cov / denom)
    return torch.stack(losses).mean()


def va_mse(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    known = ~torch.isnan(true)
    if not known.any():
        return pred.sum() * 0.0
    return F.mse_loss(pred.float()[known], true.float()[known])


def au_pos_weights(positive_rates: Sequence[float] | None, max_weight: float = 10.0) -> torch.Tensor:
    """negatives / positives per AU, capped, so rare AUs are not learned as always off; 1 where
    the rate is unknown or an AU never (or always) occurs."""
    if positive_rates is None:
        return torch.ones(NUM_AUS)
    r = torch.as_tensor(list(positive_rates), dtype=torch.float64)
    if r.numel() != NUM_AUS or ((r < 0) | (r > 1)).any():
        raise ValueError(f"AU positive rates: expected {NUM_AUS} numbers in 0..1, got {list(positive_rates)}")
    w = torch.ones_like(r)
    seen = (r > 0) & (r < 1)
    w[seen] = ((1 - r[seen]) / r[seen]).clamp(min=1.0 / max_weight, max=max_weight)
    return w.float()


class AULoss(nn.Module):
    """Binary cross-entropy per AU over known entries (-1 left out), with positive weights."""

    def __init__(self, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight if pos_weight is not None else torch.ones(NUM_AUS))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.reshape(-1, NUM_AUS).float()
        labels = labels.reshape(-1, NUM_AUS)
        known = labels != IGNORE
        if not known.any():
            return logits.sum() * 0.0
        weight = self.pos_weight.float().expand_as(logits)
        loss = F.binary_cross_entropy_with_logits(
            logits[known], labels[known].float(), pos_weight=weight[known], reduction="mean"
        )
        return loss
