"""track stage: reading runs back out of MLflow (tables, comparisons, sweeps) and its UI."""
