"""The one table every benchmark prints: a measured ratio against a baseline taken in the
same run, its goal, and whether it met it. Absolute numbers differ between machines;
ratios measured side by side mostly do not, which is why benchmarks report ratios.

    from table import Ratio, print_table
    print_table("loader", [Ratio("shards vs decode bound", 0.83, 0.7, higher_is_better=True,
                                 detail="4100 vs 4900 frames/s/core")])
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ratio:
    name: str
    value: float
    goal: float
    higher_is_better: bool = True
    detail: str = ""  # the two measurements the ratio came from

    @property
    def met(self) -> bool:
        return self.value >= self.goal if self.higher_is_better else self.value <= self.goal


def format_table(title: str, rows: list[Ratio], notes: list[str] = ()) -> str:
    width = max(len(r.name) for r in rows)
    lines = [title, f"  {'measure':<{width}}  {'ratio':>8}  {'goal':>8}  met  detail"]
    for r in rows:
        goal = (">= " if r.higher_is_better else "<= ") + f"{r.goal:g}"
        lines.append(f"  {r.name:<{width}}  {r.value:>8.3f}  {goal:>8}  {'yes' if r.met else 'NO ':<3}  {r.detail}")
    lines += [f"  {n}" for n in notes]
    return "\n".join(lines)


def print_table(title: str, rows: list[Ratio], notes: list[str] = ()) -> None:
    print(format_table(title, rows, notes), flush=True)
