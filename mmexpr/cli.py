"""`mmexpr` commands. The path of one sample, stage by stage:

    synth     -> mmexpr/data/synth.py       demo corpus in Aff-Wild2 layout
    pack      -> mmexpr/data/pack.py        videos + labels -> WebDataset shards + manifest
    (load)    -> mmexpr/data/loader.py      shards -> decord -> windows (inside training)
    describe  -> mmexpr/model/model.py      the model a job builds
    train     -> mmexpr/train/driver.py     Ray Train workers with DeepSpeed, MLflow
    predict   -> mmexpr/predict/predict.py  sliding windows -> ABAW submission files
    evaluate  -> mmexpr/predict/evaluate.py submission files vs annotations
    submit    -> mmexpr/submit/             where a job runs: local, Ray cluster, SLURM

Each handler imports its stage lazily so that `--help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from mmexpr.errors import UserError


def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job file, e.g. jobs/demo.yaml")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set model.fusion=concat (repeatable)",
    )


def _synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic demo corpus in Aff-Wild2 layout")
    p.add_argument("out", help="output folder")
    p.add_argument("--videos", type=int, default=20, help="number of videos")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each video")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.25, help="share of videos in the validation split")
    p.add_argument("--overwrite", action="store_true", help="replace an existing corpus in OUT")

    def run(args: argparse.Namespace) -> int:
        from mmexpr.data.synth import SynthSpec, write_corpus

        spec = SynthSpec(videos=args.videos, seconds=args.seconds, seed=args.seed, val_fraction=args.val_fraction)
        summary = write_corpus(args.out, spec, overwrite=args.overwrite)
        print(summary)
        return 0

    p.set_defaults(func=run)


def _evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score ABAW submission files against annotation files (macro F1)")
    p.add_argument("pred_dir", help="folder of submission files, one per track")
    p.add_argument("label_dir", help="folder of Aff-Wild2 EXPR annotation files")

    def run(args: argparse.Namespace) -> int:
        from mmexpr.predict.evaluate import evaluate_dirs

        report = evaluate_dirs(args.pred_dir, args.label_dir)
        print(report.text())
        return 0

    p.set_defaults(func=run)


def _show_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print a job's resolved config (after overrides), or its error")
    _job_args(p)

    def run(args: argparse.Namespace) -> int:
        from mmexpr.config import load_job

        print(load_job(args.job, args.overrides).to_yaml(), end="")
        return 0

    p.set_defaults(func=run)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _synth,
    _show_config,
    _evaluate,
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
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
