"""The demo pipeline end to end at `--quick` size: real synth, pack, Ray + DeepSpeed ZeRO-2
training with 2 CPU workers, MLflow, predict and evaluate; then a re-run that reuses it all."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mmexpr.labels import CLASSES, read_annotation, read_submission

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    from mmexpr.demo import DemoOptions, run_demo

    work = tmp_path_factory.mktemp("demo")
    opts = DemoOptions(
        workdir=str(work), job=str(REPO / "jobs" / "demo.yaml"), quick=True,
        overrides=[f"output={work / 'runs'}", "track.tracking_uri="], progress=False,
    )
    first = run_demo(opts)
    return opts, first, work


@pytest.mark.slow
def test_demo_predict_then_evaluate_equals_the_f1_training_logged_for_that_checkpoint(quick_demo):
    from mlflow.tracking import MlflowClient

    from mmexpr.train import checkpoint as ckpt

    _, first, _ = quick_demo
    client = MlflowClient(tracking_uri=first.tracking_uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    step = ckpt.read_meta(Path(run.data.tags["checkpoint.best"]))["step"]

    def logged(key: str) -> float:
        history = {m.step: m.value for m in client.get_metric_history(first.run_id, key)}
        assert step in history, f"{key} not logged at step {step}"
        return history[step]

    # The demo's `evaluate` stage predicted the validation shards from this checkpoint and
    # scored the submission files with `evaluate_dirs`: the numbers training logged, per class.
    scores = first.scores
    assert scores.macro_f1 == pytest.approx(logged("val/macro_f1"), abs=1e-9)
    assert scores.accuracy == pytest.approx(logged("val/accuracy"), abs=1e-9)
    for name, f1 in zip(CLASSES, scores.per_class_f1, strict=True):
        assert f1 == pytest.approx(logged(f"val/f1_{name}"), abs=1e-9), name


@pytest.mark.slow
def test_demo_writes_a_submission_for_every_validation_track_and_frame(quick_demo):
    _, first, work = quick_demo
    corpus = next(work.glob("corpus-*"))
    out = work / "predictions" / first.run_id / "validation-videos" / "expr"
    annotations = sorted((corpus / "annotations" / "Validation_Set").glob("*.txt"))
    assert annotations
    for ann in annotations:
        track, preds = read_submission(out / ann.name)
        assert track == ann.stem
        assert len(preds) == len(read_annotation(ann))
    assert "macro F1" in first.report


@pytest.mark.slow
def test_demo_rerun_reuses_corpus_shards_and_run(quick_demo, capsys):
    from mmexpr.demo import run_demo

    opts, first, _ = quick_demo
    begin = time.perf_counter()
    again = run_demo(opts)
    out = capsys.readouterr().out
    assert again.reused_run and again.run_id == first.run_id
    assert "corpus: reusing" in out and "already packed" in out
    assert again.macro_f1 == first.macro_f1 and (again.scores.matrix == first.scores.matrix).all()
    assert time.perf_counter() - begin < first.seconds  # nothing was rebuilt or retrained
