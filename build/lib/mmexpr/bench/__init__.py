"""Benchmarks (`mmexpr bench NAME`): ratios against a baseline measured in the same run.

Each module has `main(argv) -> int` and prints one table (table.py). They live inside the
package so that an installed mmexpr runs them; tests import them from here.
"""

NAMES = ("faces", "learn", "loader", "model", "predict_memory", "train")
