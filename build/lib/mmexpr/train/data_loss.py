"""Samples a training could not use, summed over ranks: printed, logged, and a stop above a limit.

Every rank's loader counts the samples it asked for and the ones it skipped (undecodable,
behind a truncated tar, in a shard whose sha256 differs from the manifest), per shard. The
workers sum those counts at fixed steps (a collective every rank reaches), rank 0 prints and
logs them, and a loss above `data.max_skipped` ends the loop with a message naming the
shards; the driver turns it into an error, so such a run is never FINISHED nor registered.

The fraction is taken over the split's samples until more than that have been read, so
one bad sample among the first few read does not stop a run that would lose 0.1% of its data.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from mmexpr.data.loader import SkipTally


def summed(tally: SkipTally) -> SkipTally:
    """The tallies of every rank added up (all ranks call it)."""
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, tally)
    total = SkipTally()
    for part in parts:
        total = total.add(part)
    return total


def fraction(total: SkipTally, split_samples: int) -> float:
    return total.skipped / max(1, total.read, split_samples)


def metrics(total: SkipTally, split: str, split_samples: int) -> dict[str, float]:
    return {f"data/{split}_read": float(total.read), f"data/{split}_skipped": float(total.skipped),
            f"data/{split}_skipped_fraction": fraction(total, split_samples)}


def describe(total: SkipTally, split: str, split_samples: int) -> str:
    worst = sorted(total.shards.items(), key=lambda kv: (-kv[1], kv[0]))
    shards = "; ".join(f"{url} ({n} skipped: {total.reasons.get(url, '')})" for url, n in worst[:8])
    more = f"; and {len(worst) - 8} more shard(s)" if len(worst) > 8 else ""
    return (f"{split}: skipped {total.skipped} of {total.read} samples read "
            f"({100 * fraction(total, split_samples):.1f}% of the split's {split_samples}) in {shards}{more}")


def problem(total: SkipTally, split: str, split_samples: int, max_skipped: float) -> str:
    """Why the run must stop (too much of the data lost, or nothing usable at all), or ""."""
    if total.skipped and total.skipped >= total.read:
        return f"no sample could be used; {describe(total, split, split_samples)}"
    if fraction(total, split_samples) > max_skipped:
        return f"more than data.max_skipped={max_skipped} lost; {describe(total, split, split_samples)}"
    return ""
