"""train stage: Ray Train workers with DeepSpeed ZeRO, atomic sharded checkpoints, MLflow.

    driver.py      run_training(job, resume): checks, MLflow run, Ray, TorchTrainer
    worker.py      the loop every rank runs (steps, evaluation, checkpoints, preemption)
    engine.py      model -> optimizer, warmup+cosine schedule, DeepSpeed engine and config
    checkpoint.py  publish / find / prune checkpoints; the portable (any world size) copy
    evaluation.py  macro F1 over all validation frames, confusion matrices summed over ranks
    tracking.py    where runs are recorded and what goes into them
    figures.py     confusion-matrix and per-class F1 figures
    preemption.py  SIGTERM/SIGUSR1 -> checkpoint and stop
"""
