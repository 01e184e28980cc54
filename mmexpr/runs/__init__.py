"""Runs as MLflow holds them, read back: tables, comparisons, and the MLflow UI."""
