"""`mmexpr` commands. The path of one sample, stage by stage:

    synth     -> mmexpr/synth/corpus.py     demo corpus in Aff-Wild2 layout
    faces     -> mmexpr/faces/video.py      raw video -> face tracks (detector, tracker, aligned crops)
    pack      -> mmexpr/data/pack.py        videos + labels -> WebDataset shards + manifest
    (load)    -> mmexpr/data/loader.py      shards -> decode.py (PyAV, OpenCV) -> windows (inside training)
    describe  -> mmexpr/model/model.py      the model a job builds
    train     -> mmexpr/train/driver.py     Ray Train workers with DeepSpeed, MLflow
    predict   -> mmexpr/predict/predict.py  sliding windows -> ABAW submission files
    evaluate  -> mmexpr/predict/evaluate.py submission files vs annotations
    submit    -> mmexpr/submit/             where a job runs: local, Ray cluster, SLURM
    runs, ui  -> mmexpr/runs/listing.py, ui.py  runs read back from MLflow; the MLflow UI on loopback
    sweep     -> mmexpr/submit/sweep.py     grid of job variants, one MLflow run each, one sweep tag
    bench     -> mmexpr/bench/              speed and learning, as ratios against a baseline of the same run
    demo      -> mmexpr/demo.py             all of the above on a synthetic corpus, end to end

Each handler imports its stage lazily so that `--help` answers at once, and returns an exit
status or the summary to print (success).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import fields

from mmexpr.bench import NAMES
from mmexpr.config import JobConfig, add_overrides_arg, load_job
from mmexpr.errors import UserError
from mmexpr.submit.commands import add_jobs_args, add_target_args, jobs_command, submit_elsewhere


def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job file, e.g. jobs/demo.yaml")
    add_overrides_arg(p)


def _synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic demo corpus in Aff-Wild2 layout")
    p.add_argument("out", help="output folder")
    p.add_argument("--videos", type=int, default=40, help="number of videos")
    p.add_argument("--seconds", type=float, default=15.0, help="length of each video")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.25, help="share of videos in the validation split")
    p.add_argument("--face-crops", action="store_true", help="also write cropped_aligned/<track>/<frame>.jpg")
    p.add_argument("--workers", type=int, default=0, help="processes writing videos (0: one per core)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing corpus in OUT")
    p.add_argument("--release", action="store_true",
                   help="instead: the ABAW release layout from real recordings in shared/data (FER2013 faces with "
                   "gaps in cropped_aligned/, RAVDESS voices, a two-person video, test_set.txt); --videos is per split")

    def run(args: argparse.Namespace) -> object:
        if args.release:
            from mmexpr.synth.real import NOT_TOGETHER
            from mmexpr.synth.release import ReleaseSpec, write_release

            corpus = write_release(args.out, ReleaseSpec(train=args.videos, validation=max(1, args.videos // 2),
                                                         test=max(2, args.videos // 2), seconds=args.seconds,
                                                         seed=args.seed))
            print(f"wrote {corpus.root}: {len(corpus.tracks)} tracks, test list {corpus.test_list}")
            print(f"note: {NOT_TOGETHER}")
            return 0
        from mmexpr.synth.corpus import SynthSpec, write_corpus

        spec = SynthSpec(videos=args.videos, seconds=args.seconds, seed=args.seed, val_fraction=args.val_fraction,
                         face_crops=args.face_crops, workers=args.workers)
        return write_corpus(args.out, spec, overwrite=args.overwrite)

    p.set_defaults(func=run)


def _evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score ABAW submission files against annotation files (macro F1)")
    p.add_argument("pred_dir", help="folder of submission files, one per track")
    p.add_argument("label_dir", help="folder of Aff-Wild2 EXPR annotation files")

    def run(args: argparse.Namespace) -> object:
        from mmexpr.predict.evaluate import evaluate_dirs

        return evaluate_dirs(args.pred_dir, args.label_dir).text()

    p.set_defaults(func=run)


def _print_config(job: JobConfig) -> None:
    print(job.to_yaml(), end="")


def _print_model(job: JobConfig) -> None:
    from mmexpr.model.model import build_model

    model = build_model(job.model, class_counts=None)
    print(f"job: {job.name}")
    print(model.describe(window=job.data.window, image_size=job.data.image_size))


def _job_printers(sub: argparse._SubParsersAction) -> None:
    """`config` and `describe`: load a job (with its overrides) and print what it resolves to."""
    for name, help, show in (
        ("config", "print a job's resolved config (after overrides), or its error", _print_config),
        ("describe", "print the model a job builds: modules, parameters, FLOPs per window", _print_model),
    ):
        p = sub.add_parser(name, help=help)
        _job_args(p)
        p.set_defaults(func=lambda args, show=show: show(load_job(args.job, args.overrides)))


def _tracking_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else the local store under --output)",
    )
    p.add_argument("--output", default="runs", help="job output folder holding the local MLflow store")


def _predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="sliding-window predictions for every frame -> ABAW submission files")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--run", help="MLflow run id or name: its best (or latest) checkpoint")
    model.add_argument("--checkpoint", help="checkpoint folder (DeepSpeed sharded or consolidated) or model file")
    model.add_argument("--model-uri", help="MLflow model URI, e.g. models:/mmexpr/1")
    inputs = p.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--videos", help="folder of raw videos (decoded and cropped as pack does)")
    inputs.add_argument("--shards", help="packed shards root (or one split folder)")
    p.add_argument("--split", dest="splits", action="append", default=None,
                   help="shard split(s) to predict (default: all)")
    p.add_argument("--out", required=True, help="output folder: <track>.txt submissions + <track>.npy probabilities")
    p.add_argument("--stride", type=int, default=None, help="frames between window starts (default: window/2)")
    p.add_argument("--smooth", type=int, default=None, metavar="FRAMES",
                   help="centred moving average of per-frame probabilities over FRAMES (default: the job's "
                   "model.smooth; 0: off)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per forward pass")
    p.add_argument("--workers", type=int, default=1, help="decoding processes (tracks in parallel)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--zip", action="store_true", help="also write OUT/<task>/submission.zip, the archive ABAW uploads per task")
    _tracking_arg(p)

    def run(args: argparse.Namespace) -> object:
        from mmexpr.predict.predict import PredictOptions, predict

        return predict(PredictOptions(**{f.name: getattr(args, f.name) for f in fields(PredictOptions)
                                         if hasattr(args, f.name)}))

    p.set_defaults(func=run)


def _demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job end to end: corpus, pack, train (2 workers, ZeRO-2), evaluate, predict")
    p.add_argument("--dir", default="demo", help="working folder for the corpus and predictions")
    p.add_argument("--job", default="jobs/demo.yaml", help="job file to train")
    p.add_argument("--quick", action="store_true", help="a small corpus and a short run (minutes -> seconds)")
    p.add_argument("--retrain", action="store_true", help="train again even if this exact job already finished")
    add_overrides_arg(p)

    def run(args: argparse.Namespace) -> object:
        from mmexpr.demo import DemoOptions, run_demo

        run_demo(
            DemoOptions(
                workdir=args.dir, job=args.job, quick=args.quick, overrides=args.overrides, retrain=args.retrain
            )
        )
        return 0

    p.set_defaults(func=run)


def _ui(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="start the MLflow UI for the local store on 127.0.0.1")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default loopback only)")
    p.add_argument("--port", type=int, default=5000)
    _tracking_arg(p)

    def run(args: argparse.Namespace) -> object:
        from mmexpr.runs.listing import resolve_tracking_uri
        from mmexpr.runs.ui import serve_forever

        serve_forever(resolve_tracking_uri(args.tracking_uri, args.output), host=args.host, port=args.port)
        return 0

    p.set_defaults(func=run)


def _runs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="table of MLflow runs (config differences, best macro F1); --compare A B")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two runs (id or name) side by side")
    p.add_argument("--sweep", help="only the runs of this sweep id")
    p.add_argument("--experiment", help="only this experiment (name or id)")
    p.add_argument("--all-params", action="store_true", help="with --compare: show equal params too")
    p.add_argument("--limit", type=int, default=50)
    _tracking_arg(p)

    def run(args: argparse.Namespace) -> object:
        from mmexpr.runs.listing import (
            compare_table,
            find_run,
            list_runs,
            resolve_tracking_uri,
            runs_table,
        )

        uri = resolve_tracking_uri(args.tracking_uri, args.output)
        if args.compare:
            a, b = (find_run(uri, ref) for ref in args.compare)
            print(compare_table(a, b, all_params=args.all_params))
        else:
            rows = list_runs(uri, experiment=args.experiment, sweep=args.sweep, limit=args.limit)
            print(f"store: {uri}")
            print(runs_table(rows))
        return 0

    p.set_defaults(func=run)


def _sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="train every combination of --grid values as runs tagged with one sweep id")
    _job_args(p)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="values to sweep for one config key, e.g. --grid model.fusion=bi,concat (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the variants and stop")
    p.add_argument("--id", dest="sweep_id", help="sweep id (default: job name + time); reuse one to add variants")

    def run(args: argparse.Namespace) -> object:
        from mmexpr.submit.sweep import run_sweep

        run_sweep(args.job, args.grid, args.overrides, dry_run=args.dry_run, sweep_id=args.sweep_id)
        return 0

    p.set_defaults(func=run)


def _pack(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pack", help="pack videos + labels (Aff-Wild2 layout) into WebDataset shards + manifest")
    p.add_argument("source", help="folder with videos/**, annotations/[<Challenge>/]<Split_Set>/, optional "
                   "cropped_aligned/, transcripts/ (the ABAW release layout)")
    p.add_argument("out", help="output folder: OUT/<split>/shard-NNNNNN.tar + manifest.json")
    p.add_argument("--split", dest="splits", action="append", default=None, help="pack only this split (repeatable)")
    p.add_argument("--chunk-frames", type=int, default=None, help="frames per sample (default 64)")
    p.add_argument("--face-size", type=int, default=None, help="face frames are stored at this square size (default 112)")
    p.add_argument("--shard-mb", type=float, default=256, help="target shard size in MB")
    p.add_argument("--overwrite", action="store_true", help="replace splits already packed in OUT")
    p.add_argument("--ray-address", default=None, help="existing Ray cluster (default: a local one on 127.0.0.1)")
    p.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    p.add_argument("--annotations", default=None, metavar="DIR",
                   help="the EXPR annotation folder (a challenge folder such as "
                   "annotations/EXPR_Recognition_Challenge); default: found under SOURCE/annotations")
    p.add_argument("--test-list", default=None, metavar="FILE",
                   help="ABAW test-set list (one name per line, name_left/name_right for two people): "
                   "packs split 'test' with every label -1")
    p.add_argument("--faces", choices=("detect", "frame"), default=None,
                   help="faces of tracks without cropped_aligned/: the face tracker, or the whole frame "
                        "(default: frame for a `mmexpr synth` corpus, else detect)")
    p.add_argument("--min-face", type=int, default=None, help="smallest face side the detector searches for, pixels (default 24)")

    def run(args: argparse.Namespace) -> object:
        from mmexpr.data.pack import pack_corpus

        return pack_corpus(
            args.source,
            args.out,
            splits=args.splits,
            **{k: v for k, v in (("chunk_frames", args.chunk_frames), ("face_size", args.face_size)) if v is not None},
            shard_mb=args.shard_mb,
            overwrite=args.overwrite,
            ray_address=args.ray_address,
            num_cpus=args.cpus,
            annotations=args.annotations,
            test_list=args.test_list,
            faces=args.faces,
            **({"min_face": args.min_face} if args.min_face is not None else {}),
        )

    p.set_defaults(func=run)


def _faces(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("faces", help="detect and track faces in videos: DIR/<video>.csv (+ a PNG contact sheet)")
    p.add_argument("input", help="a video file, or a folder of videos (searched recursively)")
    p.add_argument("--out", required=True, help="output folder: <video>.csv, one row per detection")
    p.add_argument("--preview", action="store_true", help="also write <video>.png: frames with their boxes")
    p.add_argument("--min-face", type=int, default=24, help="smallest face side searched for, pixels (default 24)")

    def run(args: argparse.Namespace) -> object:
        from mmexpr.faces.video import faces_command

        return faces_command(args.input, args.out, preview=args.preview, min_face=args.min_face)

    p.set_defaults(func=run)


def _train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a job: Ray Train workers with DeepSpeed ZeRO, MLflow tracking")
    _job_args(p)
    p.add_argument(
        "--resume",
        metavar="latest|RUN_ID|PATH",
        help="continue a run (same MLflow run, same step count): this job's latest, a run id, or a "
        "run / checkpoints / checkpoint folder",
    )
    add_target_args(p)

    def run(args: argparse.Namespace) -> object:
        job = load_job(args.job, args.overrides)
        code = submit_elsewhere(job, args)
        if code is not None:
            return code
        from mmexpr.train.driver import run_training

        result = run_training(job, resume=args.resume)
        return 0 if result.step >= job.train.max_steps or job.train.stop_after else 3

    p.set_defaults(func=run)


def _bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark (mmexpr/bench/NAME.py) and print its ratio table")
    p.add_argument("name", choices=NAMES, help="benchmark: " + ", ".join(NAMES))
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark (NAME --help lists them)")

    def run(args: argparse.Namespace) -> object:
        module = importlib.import_module(f"mmexpr.bench.{args.name}")
        return int(module.main(list(args.args)) or 0)

    p.set_defaults(func=run)


def _jobs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "jobs", help="jobs sent elsewhere: list this project's SLURM jobs (state, run id); status|logs|stop ID"
    )
    add_jobs_args(p)

    def run(args: argparse.Namespace) -> object:
        return jobs_command(args)

    p.set_defaults(func=run)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _synth,
    _pack,
    _faces,
    _job_printers,
    _train,
    _evaluate,
    _predict,
    _demo,
    _ui,
    _runs,
    _sweep,
    _bench,
    _jobs,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmexpr",
        description="Multimodal expression recognition (ABAW EXPR): pack, train, predict, compare.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.add_parser("test", help="run the test suite (handled by ./launch: ./launch test [pytest args])")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        shown = args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if shown is None or isinstance(shown, int):  # an exit status
        return int(shown or 0)
    print(shown)  # a command's summary: success
    return 0


if __name__ == "__main__":
    sys.exit(main())
