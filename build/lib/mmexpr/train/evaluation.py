"""Validation during training: every task's score over every validation frame, each counted once.

The loader gives each rank a disjoint part of the validation windows (every frame labelled
in exactly one window across all ranks; padding frames are unknown) and the same number of
batches on every rank, so ZeRO-3's gathered forwards stay in lock-step. Each rank adds up
what scores need and nothing more: the EXPR confusion matrix, the VA moments (mmexpr.metrics.
va_moments) and the AU counts at every candidate threshold; one all_reduce each sums them, and
the scores come from mmexpr.metrics, the same code the `evaluate` command uses. Rank 0 also
keeps a sample of VA frames (for the scatter and per-track figures).

With `model.smooth` > 0 the per-frame EXPR probabilities are smoothed over each whole track, as
predict smooths them: the ranks gather every frame's probabilities, put each track back in
frame order and smooth it before counting, so the logged F1 and predict's files agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from mmexpr.data.batch import Batch
from mmexpr.labels import IGNORE, NUM_AUS, NUM_CLASSES
from mmexpr.metrics import (
    AU_THRESHOLDS,
    VA_MOMENTS,
    TaskScores,
    au_scores_from_counts,
    confusion,
    scores_from_confusion,
    va_scores_from_moments,
)
from mmexpr.model.heads import smooth_probabilities

VA_TRACKS = 3  # tracks drawn over time in the VA figure
VA_POINTS = 4000  # frames kept for the VA scatter

TrackPart = tuple[str, np.ndarray, np.ndarray, np.ndarray]  # track, frames, probabilities, labels


def batch_confusion(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """8x8 int64 counts for one batch; padded and ignored frames left out."""
    preds = logits.argmax(-1).reshape(-1)
    truth = labels.masked_fill(~mask.bool(), IGNORE).reshape(-1).to(preds.device)
    keep = truth != IGNORE
    flat = truth[keep] * NUM_CLASSES + preds[keep]
    return torch.bincount(flat, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES).cpu()


def window_parts(batch: Batch, logits: torch.Tensor) -> list[TrackPart]:
    """The real frames of each window: (track, absolute frame numbers, probabilities, labels)."""
    probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    mask = batch.mask.bool().cpu().numpy()
    labels = batch.labels.cpu().numpy()
    start = batch.start.cpu().numpy()
    return [
        (name, start[b] + np.flatnonzero(mask[b]), probs[b][mask[b]], labels[b][mask[b]])
        for b, name in enumerate(batch.track)
        if name and mask[b].any()
    ]


def smoothed_confusion(parts: list[TrackPart], frames: int) -> np.ndarray:
    """8x8 counts after smoothing each track's probabilities in frame order (a frame seen by
    two windows keeps its first one; its labels were counted once anyway)."""
    by_track: dict[str, list[TrackPart]] = {}
    for part in parts:
        by_track.setdefault(part[0], []).append(part)
    matrix = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for track_parts in by_track.values():
        pos = np.concatenate([p[1] for p in track_parts])
        order = np.argsort(pos, kind="stable")
        _, first = np.unique(pos[order], return_index=True)
        keep = order[first]
        probs = np.concatenate([p[2] for p in track_parts])[keep]
        labels = np.concatenate([p[3] for p in track_parts])[keep]
        matrix += confusion(labels, smooth_probabilities(probs, frames).argmax(axis=1))
    return matrix


def _gather(parts: list[TrackPart]) -> list[TrackPart]:
    if not dist.is_initialized():
        return parts
    everyone: list[list[TrackPart] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, parts)
    return [p for rank_parts in everyone for p in rank_parts or []]


def batch_va_moments(pred: torch.Tensor, true: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[2, 6] float64 sums (metrics.VA_MOMENTS) over known, unpadded frames."""
    pred = pred.double().reshape(-1, 2)
    true = true.to(pred.device).double().masked_fill(~mask.bool().unsqueeze(-1).to(pred.device), float("nan"))
    true = true.reshape(-1, 2)
    rows = []
    for k in range(2):
        known = ~torch.isnan(true[:, k])
        p, t = pred[known, k], true[known, k]
        rows.append(torch.stack([known.sum().double(), p.sum(), t.sum(), (p * p).sum(), (t * t).sum(), (p * t).sum()]))
    return torch.stack(rows).cpu()


def batch_au_counts(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[thresholds, 12, 3] int64 TP/FP/FN at every AU_THRESHOLDS value; unknown and padding left out."""
    prob = torch.sigmoid(logits.float()).reshape(-1, NUM_AUS)
    truth = labels.to(prob.device).masked_fill(~mask.bool().unsqueeze(-1).to(prob.device), IGNORE).reshape(-1, NUM_AUS)
    known, pos = truth != IGNORE, truth == 1
    out = []
    for th in AU_THRESHOLDS:
        hit = prob >= float(th)
        out.append(torch.stack([(hit & pos & known).sum(0), (hit & ~pos & known).sum(0), (~hit & pos & known).sum(0)], 1))
    return torch.stack(out).long().cpu()


@dataclass
class VASample:
    """Rank 0's VA frames for figures: per track (start frame -> pred, true), and a scatter sample."""

    tracks: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = field(default_factory=dict)
    pred: list[np.ndarray] = field(default_factory=list)
    true: list[np.ndarray] = field(default_factory=list)

    def add(self, batch: Batch, pred: torch.Tensor) -> None:
        pred_np, true_np, mask = pred.float().cpu().numpy(), batch.va.cpu().numpy(), batch.mask.cpu().numpy()
        for b, name in enumerate(batch.track):
            if not name or not mask[b].any():
                continue
            n = int(mask[b].sum())
            if name in self.tracks or len(self.tracks) < VA_TRACKS:
                self.tracks.setdefault(name, []).append((int(batch.start[b]), pred_np[b, :n], true_np[b, :n]))
            if sum(len(p) for p in self.pred) < VA_POINTS:
                self.pred.append(pred_np[b, :n])
                self.true.append(true_np[b, :n])


@dataclass
class Evaluation:
    scores: TaskScores
    va_sample: VASample | None = None


def _sum(tensor: torch.Tensor) -> torch.Tensor:
    if not dist.is_initialized():
        return tensor
    # NCCL reduces device tensors only; gloo takes CPU ones.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    summed = tensor.to(device)
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed.cpu()


def evaluate(engine, batches: Iterable[Batch], to_device, keep_va_sample: bool = False,
             smooth: int = 0) -> Evaluation:
    """Scores of every task the model has over the whole validation split (collective: every
    rank calls it)."""
    module = engine.module
    tasks = tuple(getattr(module, "tasks", ("expr",)))
    was_training = module.training
    engine.eval()
    matrix = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    moments = torch.zeros(2, len(VA_MOMENTS), dtype=torch.float64)
    counts = torch.zeros(len(AU_THRESHOLDS), NUM_AUS, 3, dtype=torch.int64)
    au_frames = torch.zeros(1, dtype=torch.int64)
    sample = VASample() if keep_va_sample and "va" in tasks else None
    parts: list[TrackPart] = []
    try:
        with torch.no_grad():
            for batch in batches:
                batch = to_device(batch)
                out = engine(batch.without_labels())
                if "expr" in tasks and smooth > 1:
                    parts += window_parts(batch, out["logits"])
                elif "expr" in tasks:
                    matrix += batch_confusion(out["logits"].float(), batch.labels, batch.mask)
                if "va" in tasks:
                    moments += batch_va_moments(out["va"], batch.va, batch.mask)
                    if sample is not None:
                        sample.add(batch, out["va"])
                if "au" in tasks:
                    counts += batch_au_counts(out["au_logits"], batch.au, batch.mask)
                    known = (batch.au != IGNORE).any(-1) & batch.mask.bool()
                    au_frames += known.sum().cpu()
    finally:
        engine.train(was_training)
    if smooth > 1 and "expr" in tasks:
        expr = scores_from_confusion(smoothed_confusion(_gather(parts), smooth))
    else:
        expr = scores_from_confusion(np.asarray(_sum(matrix).numpy())) if "expr" in tasks else None
    scores = TaskScores(
        expr=expr,
        va=va_scores_from_moments(_sum(moments).numpy()) if "va" in tasks else None,
        au=au_scores_from_counts(_sum(counts).numpy(), int(_sum(au_frames)[0])) if "au" in tasks else None,
    )
    return Evaluation(scores, sample)


def best_score(scores: TaskScores, best_metric: str, tasks: list[str]) -> float:
    """The number train.best_metric names: a task's ABAW score, their mean, or the first task's."""
    if best_metric == "mean":
        return float(np.mean([scores.abaw(t) for t in tasks]))
    return scores.abaw(tasks[0] if best_metric == "auto" else best_metric)
