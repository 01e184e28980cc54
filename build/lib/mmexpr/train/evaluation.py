"""Validation during training: macro F1 over every validation frame, each counted once.

The loader gives each rank a disjoint part of the validation windows (every frame labelled
in exactly one window across all ranks; padding frames are -1) and the same number of
batches on every rank, so ZeRO-3's gathered forwards stay in lock-step. Each rank counts
its confusion matrix; the matrices are summed with one all_reduce, and the scores come from
mmexpr.metrics.scores_from_confusion, the same code the `evaluate` command uses.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.distributed as dist

from mmexpr.data.batch import Batch
from mmexpr.labels import IGNORE, NUM_CLASSES
from mmexpr.metrics import Scores, scores_from_confusion


def batch_confusion(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """8x8 int64 counts for one batch; padded and ignored frames left out."""
    preds = logits.argmax(-1).reshape(-1)
    truth = labels.masked_fill(~mask.bool(), IGNORE).reshape(-1).to(preds.device)
    keep = truth != IGNORE
    flat = truth[keep] * NUM_CLASSES + preds[keep]
    return torch.bincount(flat, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES).cpu()


def evaluate(engine, batches: Iterable[Batch], to_device) -> Scores:
    """Scores over the whole validation split (collective: every rank calls it)."""
    module = engine.module
    was_training = module.training
    engine.eval()
    matrix = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    try:
        with torch.no_grad():
            for batch in batches:
                batch = to_device(batch)
                out = engine(batch.without_labels())
                matrix += batch_confusion(out["logits"].float(), batch.labels, batch.mask)
    finally:
        engine.train(was_training)
    if dist.is_initialized():
        # NCCL reduces device tensors only; gloo takes CPU ones.
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        summed = matrix.to(device)
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        matrix = summed.cpu()
    return scores_from_confusion(np.asarray(matrix.numpy()))
