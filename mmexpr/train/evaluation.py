"""Validation during training: macro F1 over every validation frame, each counted once.

The loader gives each rank a disjoint part of the validation windows (every frame labelled
in exactly one window across all ranks; padding frames are -1) and the same number of
batches on every rank, so ZeRO-3's gathered forwards stay in lock-step. Each rank counts
its confusion matrix; the matrices are summed with one all_reduce, and the scores come from
mmexpr.metrics.scores_from_confusion, the same code the `evaluate` command uses.

With `model.smooth` > 0 the per-frame probabilities are smoothed over each whole track, as
predict smooths them: the ranks gather every frame's probabilities, put each track back in
frame order and smooth it before counting, so the logged F1 and predict's files agree.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.distributed as dist

from mmexpr.data.batch import Batch
from mmexpr.labels import IGNORE, NUM_CLASSES
from mmexpr.metrics import Scores, confusion, scores_from_confusion
from mmexpr.model.heads import smooth_probabilities

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


def evaluate(engine, batches: Iterable[Batch], to_device, smooth: int = 0) -> Scores:
    """Scores over the whole validation split (collective: every rank calls it)."""
    module = engine.module
    was_training = module.training
    engine.eval()
    matrix = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    parts: list[TrackPart] = []
    try:
        with torch.no_grad():
            for batch in batches:
                batch = to_device(batch)
                out = engine(batch.without_labels())
                if smooth > 1:
                    parts += window_parts(batch, out["logits"])
                else:
                    matrix += batch_confusion(out["logits"].float(), batch.labels, batch.mask)
    finally:
        engine.train(was_training)
    if smooth > 1:
        return scores_from_confusion(smoothed_confusion(_gather(parts), smooth))
    if dist.is_initialized():
        # NCCL reduces device tensors only; gloo takes CPU ones.
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        summed = matrix.to(device)
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        matrix = summed.cpu()
    return scores_from_confusion(np.asarray(matrix.numpy()))
