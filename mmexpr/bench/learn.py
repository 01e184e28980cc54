"""`mmexpr bench learn`: does a job learn real faces and voices, measured on people it never saw?

1. corpus: RAVDESS voices with FER2013 faces of the same class, in Aff-Wild2 layout with its
   face crops, split by actor (synth/muxed.py); the modalities were NOT recorded together,
   and the output says so;
2. pack it at the job's window and image size (from the crops; `--detect-faces`: from the
   raw video through the face detector and tracker);
3. baselines, fitted in this run on the same training tracks: MFCC and delta statistics, face pixels,
   and both, each with logistic regression (bench/baselines.py);
4. train the job's fusion, video-only and audio-only variants (the real path: Ray Train,
   DeepSpeed, MLflow), each predicting the test actors with its best checkpoint (chosen on
   the validation actors) with the evaluation windows and the job's smoothing;
5. print macro F1 on the test actors side by side, and the ratios against the baselines.

`--small` is the same path on 9 actors (5 train, 2 validation, 2 test); the default builds all 24.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

from mmexpr.bench.baselines import BaselineResult, run_baseline, track_features
from mmexpr.bench.table import Ratio, print_table
from mmexpr.config import add_overrides_arg, load_job
from mmexpr.data.pack import pack_corpus
from mmexpr.predict.predict import PredictOptions, predict
from mmexpr.predict.tracks import ShardTracks, TrackBuffer
from mmexpr.store import job_tracking_uri
from mmexpr.synth.muxed import MuxedSpec, write_muxed_corpus
from mmexpr.synth.real import NOT_TOGETHER
from mmexpr.train.driver import run_training

FULL = MuxedSpec()
SMALL = MuxedSpec(actors=9, val_actors=2, test_actors=2, clips_per_actor=20)
# The small version trains one worker for fewer steps (its corpus is a quarter of the full one).
SMALL_OVERRIDES = ["train.workers=1", "train.max_steps=300", "train.eval_every=100", "train.checkpoint_every=100"]
VARIANTS = ("audio_video", "video", "audio")
BASELINE_OF = {"audio_video": "both", "video": "face", "audio": "audio"}
BASELINE_EVERY = 4  # baselines fit on every 4th training frame (neighbours are near copies)


@dataclass(frozen=True)
class NeuralResult:
    variant: str
    run_id: str
    val_f1: float
    test_f1: float
    seconds: float


def _tracks(shards: Path, split: str, image_size: int) -> list:
    """Whole tracks of a split (predict streams pieces; the baselines need each track at once)."""
    data = ShardTracks(shards, [split], image_size)
    tracks = []
    for i in range(len(data.names)):
        pieces = data.pieces(i)
        first = next(pieces)
        track = TrackBuffer(first, data.manifests[0].sample_rate)
        track.add(first)
        for piece in pieces:
            track.add(piece)
        tracks.append(track)
    return tracks


def run_baselines(shards: Path, image_size: int, context_s: float) -> dict:
    feats = {
        split: track_features(_tracks(shards, split, image_size), context_s, BASELINE_EVERY if split == "train" else 1)
        for split in ("train", "validation", "test")
    }
    print(f"baselines: {len(feats['train'].labels)} training frames (every {BASELINE_EVERY}th), "
          f"MFCC context {context_s:g} s", flush=True)
    return {kind: run_baseline(kind, feats["train"], feats["validation"], feats["test"])
            for kind in ("audio", "face", "both")}


def train_variant(job_file: str, overrides: list[str], variant: str, shards: Path, work: Path) -> NeuralResult:
    begin = time.perf_counter()
    single = [] if variant == "audio_video" else ["model.unimodal_weight=0"]  # a fusion-only loss
    job = load_job(job_file, [*overrides, *single, f"data.shards={shards}", f"output={work / 'runs'}",
                              f"model.modalities={variant}", f"name=learn-{variant}",
                              "track.experiment=bench-learn", "track.register_model=", "train.progress=false"])
    result = run_training(job)
    out = work / "predictions" / result.run_id
    summary = predict(PredictOptions(out=str(out), run=result.run_id, shards=str(shards), splits=["test"],
                                     stride=job.data.window, tracking_uri=job_tracking_uri(job),
                                     output=job.output, progress=False))
    test_f1 = summary.scores.macro_f1 if summary.scores else float("nan")
    return NeuralResult(variant, result.run_id, result.best_f1, test_f1, time.perf_counter() - begin)


def learn_table(neural: list[NeuralResult], baselines: dict) -> tuple[list[Ratio], list[str]]:
    """Ratio rows (each neural variant / its baseline; fusion over the best single modality)
    and the plain F1 table as notes."""
    rows = []
    for n in (n for n in neural if BASELINE_OF[n.variant] in baselines):
        base = baselines[BASELINE_OF[n.variant]]
        rows.append(Ratio(f"{n.variant} / {base.kind} baseline (test F1)", n.test_f1 / max(base.test_f1, 1e-9), 1.0,
                          detail=f"{n.test_f1:.3f} vs {base.test_f1:.3f}"))
    by = {n.variant: n for n in neural}
    if all(v in by for v in VARIANTS):
        single = max(by["video"].test_f1, by["audio"].test_f1)
        rows.append(Ratio("fusion - best single modality (test F1)", by["audio_video"].test_f1 - single, 0.03,
                          detail=f"{by['audio_video'].test_f1:.3f} vs {single:.3f}"))
    notes = ["macro F1 (8 classes)              validation   test (unseen actors)"]
    notes += [f"  {n.variant:<31}  {n.val_f1:>10.3f}   {n.test_f1:.3f}   ({n.seconds / 60:.1f} min, run {n.run_id[:8]})"
              for n in neural]
    notes += [f"  baseline {b.kind:<22}  {b.val_f1:>10.3f}   {b.test_f1:.3f}   (logistic regression, L2 {b.l2:g})"
              for b in baselines.values()]
    notes.append(f"  {'chance (8 outputs)':<31}  {'':>10}   0.125")
    return rows, notes


@dataclass(frozen=True)
class LearnOutcome:
    neural: list[NeuralResult]
    baselines: dict[str, BaselineResult]
    overrides: list[str]
    seconds: float


def run_learn(job_file: str, spec: MuxedSpec, overrides: list[str], work: Path, variants: list[str],
              baselines: bool = True) -> LearnOutcome:
    """Corpus, shards, baselines and each variant's training and test prediction, in `work`."""
    begin = time.perf_counter()
    job = load_job(job_file, overrides)
    # Crops and detected faces give different shards from the same videos: separate folders.
    name = f"{spec.actors}actors-{spec.clips_per_actor}clips{'' if spec.face_crops else '-detected'}"
    corpus = work / f"corpus-{name}"
    written = write_muxed_corpus(corpus, spec)
    print(written, flush=True)
    shards = work / f"shards-{name}-{job.data.image_size}px"
    chunk = job.data.window * max(1, 64 // job.data.window)
    # Shards of an earlier corpus in this folder (another spec) would be reused as they are: replace them.
    pack_corpus(corpus, shards, chunk_frames=chunk, face_size=job.data.image_size, shard_mb=64, progress=False,
                overwrite=not written.reused)
    print(f"corpus and shards ready in {time.perf_counter() - begin:.0f} s", flush=True)
    context = max(job.data.audio_context_s, job.data.window / spec.fps)
    fitted = run_baselines(shards, job.data.image_size, context) if baselines else {}
    neural = []
    for variant in variants:
        neural.append(train_variant(job_file, overrides, variant, shards, work))
        print(f"{variant}: test macro F1 {neural[-1].test_f1:.3f}", flush=True)
    return LearnOutcome(neural, fitted, overrides, time.perf_counter() - begin)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="mmexpr bench learn", description=__doc__.split("\n\n")[0])
    p.add_argument("--job", default="jobs/from-scratch.yaml", help="job whose variants are trained")
    p.add_argument("--small", action="store_true",
                   help=f"{SMALL.actors} actors x {SMALL.clips_per_actor} utterances instead of {FULL.actors} x "
                        f"{FULL.clips_per_actor}, one worker ({' '.join(SMALL_OVERRIDES)})")
    p.add_argument("--dir", default="bench-learn", help="working folder: corpus, shards, runs, predictions")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated model.modalities to train")
    add_overrides_arg(p, help="override a key of the job for every variant (repeatable)")
    p.add_argument("--no-baselines", action="store_true", help="skip the baselines")
    p.add_argument("--detect-faces", action="store_true",
                   help="build the corpus without cropped_aligned/, so pack finds the faces with its detector "
                        "(the raw-video path; packing takes several times longer)")
    args = p.parse_args(argv)
    spec = replace(SMALL if args.small else FULL, face_crops=not args.detect_faces)
    overrides = (SMALL_OVERRIDES if args.small else []) + args.overrides
    outcome = run_learn(args.job, spec, overrides, Path(args.dir).absolute(),
                        [v for v in args.variants.split(",") if v], baselines=not args.no_baselines)
    rows, notes = learn_table(outcome.neural, outcome.baselines)
    notes += [f"note: {NOT_TOGETHER}",
              f"job {args.job} {' '.join('--set ' + o for o in overrides)}; {outcome.seconds:.0f} s in all"]
    if rows:
        print_table("bench learn (test actors unseen in training and validation)", rows, notes)
    else:
        print("\n".join(notes))
    return 0
