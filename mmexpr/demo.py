"""`mmexpr demo`: the main job end to end on a machine with nothing set up.

    synthetic corpus -> shards -> training (Ray, 2 workers, DeepSpeed ZeRO-2, CPU)
      -> evaluation (predict the validation shards with the evaluation windows, score the files)
      -> prediction (overlapping windows over the raw validation videos -> ABAW files)
      -> where the run is in MLflow, and how to open the UI

Each stage reuses what an earlier demo left behind when it was built with the same settings:
the corpus (its corpus.json records the spec), the shards (pack skips a split already packed
with these settings) and the trained run (a FINISHED run in MLflow tagged with the hash of
the resolved job). So a second `demo` takes seconds and prints the same numbers; `--retrain`
trains again. `--quick` is the same path on a small corpus and a short run, for tests.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from mmexpr import store
from mmexpr.config import JobConfig, load_job
from mmexpr.data.pack import PackError, pack_corpus
from mmexpr.data.sources import challenge_folder
from mmexpr.errors import UserError
from mmexpr.labels import split_track
from mmexpr.metrics import Scores
from mmexpr.predict.evaluate import evaluate_dirs
from mmexpr.predict.predict import PredictOptions, predict
from mmexpr.runs.ui import runs_url
from mmexpr.store import job_tracking_uri
from mmexpr.synth.corpus import FORMAT_VERSION, SynthSpec, write_corpus
from mmexpr.train import checkpoint as ckpt
from mmexpr.train.driver import run_training

DEMO_TAG = "mmexpr.demo_job"
SCORE_NAMES = {"expr": "EXPR macro F1", "va": "VA mean CCC", "au": "AU mean F1"}


# Corpus sizes: 40 videos give the model enough faces and voices to reach macro F1 0.8 on
# the 10 held-out videos within the demo's 600 steps (20 videos plateaued at 0.80).
FULL = SynthSpec(videos=40, seconds=15.0, seed=0, val_fraction=0.25)
QUICK = SynthSpec(videos=6, seconds=4.0, seed=0, val_fraction=0.34)
QUICK_OVERRIDES = ["train.max_steps=12", "train.eval_every=6", "train.checkpoint_every=6", "train.warmup_steps=2"]


@dataclass
class DemoOptions:
    workdir: str = "demo"
    job: str = "jobs/demo.yaml"
    quick: bool = False
    overrides: list[str] = field(default_factory=list)
    retrain: bool = False
    progress: bool = True


@dataclass
class DemoResult:
    run_id: str
    experiment_id: str
    tracking_uri: str
    macro_f1: float
    scores: Scores  # validation, from the submission files of the evaluate stage
    predict_f1: float | None
    report: str
    seconds: float
    reused_run: bool
    task_scores: dict[str, float] = field(default_factory=dict)  # ABAW score per task, from the files


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def corpus_dir(workdir: Path, size: SynthSpec) -> Path:
    return workdir / f"corpus-{size.videos}x{size.seconds:g}s-seed{size.seed}"


def make_corpus(workdir: Path, size: SynthSpec) -> Path:
    """The synthetic corpus, written once per size; an existing one is reused as is."""
    out = corpus_dir(workdir, size)
    facts = out / "corpus.json"
    if facts.is_file():
        written = json.loads(facts.read_text())
        settings = written.get("settings", {})
        same = settings.get("videos") == size.videos and settings.get("seconds") == size.seconds
        if same and written.get("format") == FORMAT_VERSION:
            print(f"corpus: reusing {out}")
            return out
    print(write_corpus(out, size, overwrite=facts.is_file()))
    return out


def pack(corpus: Path, job: JobConfig, progress: bool) -> None:
    """Shards where the job reads them, chunked in whole windows and cropped at the model's size."""
    chunk = job.data.window * max(1, 64 // job.data.window)
    try:
        print(pack_corpus(corpus, job.data.shards, chunk_frames=chunk, face_size=job.data.image_size, progress=progress))
    except PackError as exc:  # the demo never replaces shards it did not just write
        raise UserError(
            f"{exc}\nThe demo packs into the job's data.shards ({job.data.shards}); remove that folder, "
            "or pass --set data.shards=ANOTHER_FOLDER"
        ) from None


def job_key(job: JobConfig) -> str:
    """Identity of a demo training: the resolved job and the manifests of the shards it reads
    (same job on other shards -> another run)."""
    h = hashlib.sha256(job.to_yaml().encode())
    for split in (job.data.train_split, job.data.val_split):
        manifest = Path(job.data.shards) / split / "manifest.json"
        h.update(manifest.read_bytes() if manifest.is_file() else b"")
    return h.hexdigest()[:16]


def finished_run(job: JobConfig) -> str | None:
    """An earlier run of exactly this job that reached max_steps, its checkpoints still on disk."""
    uri = job_tracking_uri(job)
    client = store.client(uri)
    exp = client.get_experiment_by_name(job.track.experiment)
    if exp is None:
        return None

    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{DEMO_TAG}` = '{job_key(job)}'",
        order_by=["attributes.start_time DESC"],
    )
    for run in runs:
        latest = run.data.tags.get("checkpoint.latest")
        if not latest or not Path(latest).is_dir():
            continue
        try:
            complete = ckpt.read_meta(Path(latest)).get("step", 0) >= job.train.max_steps
        except ckpt.CheckpointError:
            complete = False
        if complete:
            return run.info.run_id
    return None


def train(job: JobConfig, retrain: bool) -> tuple[str, bool]:
    """(run id, reused?) — trains unless an identical finished run exists."""
    if not retrain:
        found = finished_run(job)
        if found:
            print(f"training: reusing finished run {found} of this exact job (--retrain trains again)")
            return found, True
    result = run_training(job)
    if result.best_step is None and result.latest_checkpoint is None:
        raise UserError(f"training run {result.run_id} produced no checkpoint")
    store.client(job_tracking_uri(job)).set_tag(result.run_id, DEMO_TAG, job_key(job))
    return result.run_id, False


def run_demo(opts: DemoOptions) -> DemoResult:
    """Every stage in order; prints what it does and the final scores."""
    begin = time.perf_counter()
    workdir = Path(opts.workdir)
    size = QUICK if opts.quick else FULL
    overrides = (QUICK_OVERRIDES if opts.quick else []) + list(opts.overrides)
    if opts.quick and not any(o.startswith("data.shards=") for o in overrides):
        overrides.append(f"data.shards={workdir / 'shards-quick'}")
    job = load_job(opts.job, overrides)

    _say(f"1/5 synthetic corpus ({size.videos} videos x {size.seconds:g} s)")
    corpus = make_corpus(workdir, size)
    _say(f"2/5 pack into {job.data.shards}")
    pack(corpus, job, opts.progress)
    _say(f"3/5 train: {job.train.workers} workers, ZeRO-{job.train.zero_stage}, {job.train.max_steps} steps")
    run_id, reused = train(job, opts.retrain)

    uri = job_tracking_uri(job)
    _say("4/5 evaluate: predict the validation shards with the training evaluation's windows, score the files")
    val_pred = workdir / "predictions" / run_id / "validation-eval"
    common = {"run": run_id, "tracking_uri": uri, "output": job.output, "progress": opts.progress}
    predict(PredictOptions(out=str(val_pred), shards=job.data.shards, splits=[job.data.val_split],
                           stride=job.data.window, **common))
    labels = corpus / "annotations" / "Validation_Set"
    report = evaluate_dirs(val_pred / "expr", labels)
    reports = {"expr": report}
    for task in job.model.tasks:
        if task != "expr":
            reports[task] = evaluate_dirs(val_pred / task, corpus / "annotations" / challenge_folder(task) / "Validation_Set")

    _say("5/5 predict: overlapping windows over the raw validation videos -> ABAW submission files")
    video_pred = workdir / "predictions" / run_id / "validation-videos"
    val_names = sorted({split_track(p.stem)[0] for p in labels.glob("*.txt")})
    summary = predict(PredictOptions(out=str(video_pred), videos=str(corpus), video_names=val_names, **common))
    print(summary)

    client = store.client(uri)
    run = client.get_run(run_id)
    seconds = time.perf_counter() - begin
    _say(f"demo done in {seconds / 60:.1f} min")
    print(f"validation macro F1 (training's evaluation windows): {report.scores.macro_f1:.4f}")
    print(report.scores.table())
    for task, other in reports.items():
        if task != "expr":
            print(other.scores.table())
    print("validation ABAW scores: " + ", ".join(f"{SCORE_NAMES[t]} {r.abaw:.4f}" for t, r in reports.items()))
    if summary.scores is not None:
        print(f"overlapping windows over the raw videos (stride {summary.stride}): macro F1 {summary.scores.macro_f1:.4f}")
        if len(summary.task_scores.present()) > 1:
            print(f"  {summary.task_scores.line()}")
    print(f"submission files: {video_pred}")
    print(f"MLflow run: {run.info.run_name} ({run_id}), experiment {job.track.experiment!r} "
          f"(id {run.info.experiment_id}), store {uri}")
    print("open the UI:  ./launch ui" + (f" --output {job.output}" if job.output != "runs" else ""))
    print(f"  then {runs_url('http://127.0.0.1:5000', run.info.experiment_id)}")
    return DemoResult(
        run_id=run_id, experiment_id=run.info.experiment_id, tracking_uri=uri, macro_f1=report.scores.macro_f1, scores=report.scores,
        predict_f1=summary.scores.macro_f1 if summary.scores else None, report=report.text(),
        seconds=seconds, reused_run=reused, task_scores={t: r.abaw for t, r in reports.items()},
    )
