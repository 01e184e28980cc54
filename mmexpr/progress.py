"""Progress people can read: one live bar on a terminal, a line every few seconds in a log.

Every long command (synth, pack, train, predict) reports through `Progress`. On a terminal it
is a tqdm bar that redraws in place; written to a file or a pipe (a SLURM log, `> log`) it
prints one plain line at most every `MMEXPR_PROGRESS_SECONDS` (default 10) seconds and one
at the end, so a log holds a handful of lines instead of one per step.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from tqdm import tqdm

DEFAULT_INTERVAL = 10.0


def log_interval() -> float:
    """Seconds between progress lines in a log (`MMEXPR_PROGRESS_SECONDS`)."""
    try:
        return max(0.0, float(os.environ.get("MMEXPR_PROGRESS_SECONDS", DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Counts `done` of `total` units, with a few named values shown beside them."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str,
        *,
        enabled: bool = True,
        initial: int = 0,
        stream: TextIO | None = None,
        interval: float | None = None,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.enabled = enabled
        self.done = initial
        self.initial = initial
        self.values: dict[str, str] = {}
        self.stream = stream or sys.stderr
        self.interval = log_interval() if interval is None else interval
        self.begin = time.monotonic()
        self.last_line = float("-inf")
        self.printed: tuple | None = None  # (done, values) of the last line printed
        self.bar = None
        if enabled and self.stream.isatty():
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream,
                            dynamic_ncols=True, mininterval=0.5)

    def update(self, n: int = 1, **values: object) -> None:
        self.set(self.done + n, **values)

    def set(self, done: int, **values: object) -> None:
        """Absolute position (e.g. the step a worker reported), and values to show beside it."""
        if not self.enabled:
            return
        step = done - self.done
        self.done = done
        self.values.update({k: str(v) for k, v in values.items()})
        if self.bar is not None:
            if values:
                self.bar.set_postfix(self.values, refresh=False)
            self.bar.update(step)
            return
        now = time.monotonic()
        if now - self.last_line >= self.interval:
            self.last_line = now
            self._line()

    def line(self) -> str:
        """The plain progress line: `desc: done/total unit (pct%) rate ETA | values`."""
        elapsed = time.monotonic() - self.begin
        moved = self.done - self.initial
        rate = moved / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.done}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"]
        if self.total:
            parts.append(f"({100 * self.done / self.total:.0f}%)")
        parts.append(f"{rate:.2f} {self.unit}/s, {_duration(elapsed)} elapsed")
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        text = " ".join(parts)
        if self.values:
            text += " | " + " ".join(f"{k} {v}" for k, v in self.values.items())
        return text

    def _line(self) -> None:
        self.printed = (self.done, tuple(self.values.items()))
        print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.printed != (self.done, tuple(self.values.items())):
            self._line()
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
