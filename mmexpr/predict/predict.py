"""`mmexpr predict`: a trained model over whole videos -> one ABAW submission file per track.

For each track (decoded in parallel by DataLoader worker processes, see tracks.py) the main
process cuts overlapping windows of T frames (stride T/2 by default), runs the model on
batches of them, averages the logits of every frame over the windows that saw it
(windows.py), and writes

    OUT/<task>/<track>.txt  ABAW submission of each task the model has (a folder per task):
                            expr `image_location,Neutral,...` then `<track>/00001.jpg,k`;
                            va `image_location,valence,arousal`; au `image_location,AU1,...,AU26`
    OUT/<task>/<track>.npy  float32 per frame: expr class probabilities [frames, 8] (softmax of
                            the averaged logits), va values [frames, 2], au probabilities [frames, 12]
    OUT/predict.json        where the model came from, the window settings, counts and scores

AU probabilities become 0/1 at the model's per-AU thresholds (tuned on validation by training
and saved with the checkpoint; 0.5 for a model that never evaluated).

Tracks are streamed chunk by chunk (tracks.py): only the frames of the windows still to
run are held, so a 30-minute video needs no more memory than a short one.

Every frame gets a label: frames without a face (Aff-Wild2's missing crops, flagged face=0)
go through the model as a missing visual input that the audio carries, and frames no
window could read (a corrupt chunk) take their nearest neighbour's logits. `--zip` also
writes OUT/<task>/submission.zip, the archive ABAW uploads for that task's challenge. A track a test list named but pack
could not find is reported in the summary and predict.json. With `stride == window` and shards
packed in chunks that are a multiple of the window, the windows are exactly those of the
training evaluation, so predict -> evaluate reproduces the macro F1 training logged.
"""

from __future__ import annotations

import json
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmexpr.data.batch import Batch, BatchArrays
from mmexpr.data.encode import PackSettings
from mmexpr.data.manifest import ManifestError, manifest_path, read_manifest
from mmexpr.errors import UserError
from mmexpr.labels import NUM_AUS, NUM_CLASSES, write_task_submission
from mmexpr.metrics import Scores, TaskScores, au_score, score, va_score
from mmexpr.model.heads import smooth_probabilities
from mmexpr.predict.tracks import Piece, ShardTracks, TrackBuffer, TrackPieces, VideoTracks
from mmexpr.predict.weights import load_checkpoint
from mmexpr.predict.windows import LogitStitcher, softmax, window_starts
from mmexpr.progress import Progress


@dataclass
class PredictOptions:
    """What `mmexpr predict` was asked; exactly one model source and one input."""

    out: str
    run: str | None = None
    checkpoint: str | None = None
    model_uri: str | None = None
    videos: str | None = None
    shards: str | None = None
    splits: list[str] | None = None
    video_names: list[str] | None = None  # with --videos: only these videos (names without suffix)
    stride: int | None = None
    smooth: int | None = None  # frames of probability smoothing; None: the job's model.smooth
    batch_size: int | None = None
    workers: int = 1
    device: str = "auto"
    tracking_uri: str | None = None
    output: str = "runs"
    progress: bool = True
    zip: bool = False  # also write OUT/submission.zip, the archive ABAW uploads


@dataclass
class PredictSummary:
    out: str
    source: str
    tracks: int
    frames: int
    seconds: float
    window: int
    stride: int
    device: str
    problems: list[str]
    scores: Scores | None  # EXPR, when the inputs carry labels (shards, annotated videos)
    task_scores: TaskScores  # every task with labels in the input
    tasks: tuple[str, ...]
    archive: str = ""

    def __str__(self) -> str:
        rate = self.frames / self.seconds if self.seconds else 0.0
        lines = [
            f"predicted {self.tracks} track(s), {self.frames} frames in {self.seconds:.1f} s "
            f"({rate:.0f} frames/s on {self.device}); window {self.window}, stride {self.stride}",
            f"model: {self.source}",
            f"wrote {', '.join(f'{self.out}/{t}/' for t in self.tasks)}: <track>.txt (ABAW submission) and "
            "<track>.npy (per-frame outputs)",
        ]
        if self.archive:
            lines.append(f"archive(s) to upload: {self.archive}")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  {p}" for p in self.problems[:20]]
        if self.task_scores.present():
            lines.append("against the labels in the input:")
            lines.append(self.task_scores.table())
            lines.append(self.task_scores.line())
        return "\n".join(lines)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return device


def window_batch(buffer: TrackBuffer, starts: list[int], window: int, audio_context_s: float = 0.0) -> Batch:
    """The unlabelled windows of one track starting at `starts`, built as the loader builds them."""
    arrays = BatchArrays(len(starts), window, buffer.frames.shape[1:3], buffer.sample_rate, labelled=False,
                         audio_context_s=audio_context_s)
    for i, s in enumerate(starts):
        e = min(s + window, buffer.total)
        arrays.put(i, buffer.window(s, e), fps=buffer.fps, start=s, track=buffer.name,
                   audio=buffer.audio if buffer.has_audio else None,
                   audio_span=buffer.audio_span(s, e), face=buffer.face[s:e], audio_limit=buffer.chunk_audio(s))
    return arrays.batch()


# Model output of each task, and its width per frame.
OUTPUTS = {"expr": ("logits", NUM_CLASSES), "va": ("va", 2), "au": ("au_logits", NUM_AUS)}


def model_tasks(model: torch.nn.Module) -> tuple[str, ...]:
    return tuple(getattr(model, "tasks", ("expr",)))


def au_thresholds(model: torch.nn.Module) -> np.ndarray:
    buffer = getattr(model, "au_thresholds", None)
    return buffer.detach().float().cpu().numpy() if buffer is not None else np.full(NUM_AUS, 0.5)


def task_predictions(outputs: dict[str, np.ndarray], thresholds: np.ndarray,
                     smooth: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per task (submitted values, saved per-frame outputs): expr (class, probabilities smoothed
    over `smooth` frames), va (values, values), au (0/1 at the thresholds, probabilities)."""
    out = {}
    for task, values in outputs.items():
        if task == "expr":
            probs = smooth_probabilities(softmax(values), smooth).astype(np.float32)
            out[task] = (probs.argmax(axis=1), probs)
        elif task == "va":
            va = np.clip(values, -1, 1).astype(np.float32)
            out[task] = (va, va)
        else:
            probs = (1.0 / (1.0 + np.exp(-values))).astype(np.float32)
            out[task] = ((probs >= thresholds).astype(np.int64), probs)
    return out


class StreamedTrack:
    """One track's windows, run as soon as all their frames have arrived, in batches of the
    same windows a whole-track pass would form; the frames no window still needs are dropped.
    Each of the model's tasks has its own stitcher (expr logits, va values, au logits)."""

    def __init__(self, first: Piece, *, window: int, stride: int, sample_rate: int,
                 tasks: tuple[str, ...] = ("expr",), audio_context_s: float = 0.0) -> None:
        self.buffer = TrackBuffer(first, sample_rate)
        self.window = window
        self.audio_context_s = audio_context_s
        self.starts = window_starts(first.total, window, stride)
        self.next = 0
        self.stitchers = {t: LogitStitcher(first.total, OUTPUTS[t][1]) for t in tasks}

    @property
    def stitcher(self) -> LogitStitcher:
        """The EXPR stitcher (the one a model of the EXPR task alone has)."""
        return self.stitchers["expr"]

    def outputs(self) -> dict[str, np.ndarray]:
        """Each task's output averaged over the windows that saw each frame."""
        return {t: st.logits() for t, st in self.stitchers.items()}

    @property
    def finished(self) -> bool:
        return self.buffer.done and self.next == len(self.starts)

    def _arrived(self) -> int:
        """Windows from `next` on whose frames are all here."""
        b = self.buffer
        n = self.next
        while n < len(self.starts) and (b.done or min(self.starts[n] + self.window, b.total) <= b.received):
            n += 1
        return n - self.next

    @torch.inference_mode()
    def feed(self, piece: Piece, model: torch.nn.Module, batch_size: int, device: torch.device) -> None:
        self.buffer.add(piece)
        while (ready := self._arrived()) >= batch_size or (ready and self.buffer.done):
            part = self.starts[self.next : self.next + min(ready, batch_size)]
            batch = window_batch(self.buffer, part, self.window, self.audio_context_s)
            out = model(batch.to(device))
            values = {t: out[OUTPUTS[t][0]].float().cpu().numpy() for t in self.stitchers}
            for j, s in enumerate(part):
                valid = batch.mask[j].numpy().copy()
                e = min(s + self.window, self.buffer.total)
                valid[: e - s] &= self.buffer.readable[s:e]
                for task, stitcher in self.stitchers.items():
                    stitcher.add(s, values[task][j], valid)
            self.next += len(part)
        self.buffer.drop_before(self.starts[self.next] if self.next < len(self.starts) else self.buffer.total)


def predict_dataset(
    model: torch.nn.Module,
    dataset: TrackPieces,
    out: str | Path,
    *,
    window: int,
    stride: int,
    batch_size: int,
    sample_rate: int,
    device: torch.device,
    workers: int = 1,
    progress: bool = True,
    smooth: int = 0,
    audio_context_s: float = 0.0,
) -> tuple[int, int, list[str], TaskScores]:
    """Predict every track of `dataset` and write each task's files; (tracks, frames, problems,
    scores of every task whose labels the input has).

    Pieces of up to `workers` tracks arrive interleaved; each track keeps its own buffer and
    is written as soon as its last window has run."""
    out = Path(out)
    tasks = model_tasks(model)
    for task in tasks:
        (out / task).mkdir(parents=True, exist_ok=True)
    thresholds = au_thresholds(model)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None)
    tracks = frames = 0
    problems: list[str] = []
    truth: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    guesses: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    open_tracks: dict[str, StreamedTrack] = {}
    with Progress(len(dataset.names), "predict", "track", enabled=progress) as bar:
        for piece in loader:
            track = open_tracks.get(piece.track)
            if track is None:
                track = open_tracks[piece.track] = StreamedTrack(piece, window=window, stride=stride,
                                                                 sample_rate=sample_rate, tasks=tasks,
                                                                 audio_context_s=audio_context_s)
            track.feed(piece, model, batch_size, device)
            if not track.finished:
                continue
            del open_tracks[piece.track]
            buffer = track.buffer
            for task, (values, saved) in task_predictions(track.outputs(), thresholds, smooth).items():
                write_task_submission(out / task / f"{buffer.name}.txt", task, buffer.name, values)
                np.save(out / task / f"{buffer.name}.npy", saved)
                known = buffer.task_labels(task)
                if known is not None:
                    truth[task].append(known)
                    guesses[task].append(values)
            tracks += 1
            frames += buffer.total
            problems += buffer.summary_problems()
            bar.update(1, frames=frames)
    return tracks, frames, problems, _input_scores(truth, guesses)


def _input_scores(truth: dict[str, list[np.ndarray]], guesses: dict[str, list[np.ndarray]]) -> TaskScores:
    scorers = {"expr": lambda t, g: score(t, g), "va": lambda t, g: va_score(g, t), "au": lambda t, g: au_score(g, t)}
    return TaskScores(**{
        task: scorers[task](np.concatenate(truth[task]), np.concatenate(guesses[task]))
        for task in truth if truth[task]
    })


def write_zip(out: Path, tracks: list[str]) -> Path:
    """The archive ABAW uploads for one task's folder: one <track>.txt per track at its root."""
    path = out / "submission.zip"
    tmp = out / ".submission.zip.tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name in tracks:
            z.write(out / f"{name}.txt", f"{name}.txt")
    tmp.replace(path)
    return path


def check_out(out: Path) -> None:
    """Refuse a non-empty folder that predict did not write (e.g. the annotation folder, whose
    <track>.txt files a submission of the same name would overwrite)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "predict.json").is_file():
        raise UserError(
            f"--out {out}: folder holds files that `predict` did not write (no predict.json); "
            "choose an empty or new folder so nothing there is overwritten"
        )


def pack_settings_of(job) -> PackSettings | None:
    """The settings the model's training shards were packed with, so raw videos are cropped and
    compressed the same way (shards from before the face tracker took the whole frame); None
    when those shards are not here."""
    try:
        settings = read_manifest(manifest_path(job.data.shards, job.data.train_split)).settings
        return PackSettings(chunk_frames=int(settings["chunk_frames"]), face_size=int(settings["face_size"]),
                            faces=str(settings.get("faces", "frame")),
                            min_face=int(settings.get("min_face", PackSettings.min_face)))
    except (ManifestError, KeyError, ValueError, OSError):
        return None


def load_model(opts: PredictOptions):
    """The model named by --run, --checkpoint or --model-uri, rebuilt from its job config."""
    if opts.checkpoint:
        return load_checkpoint(opts.checkpoint)

    from mmexpr.predict.from_mlflow import load_from_mlflow  # lazy: --checkpoint needs no MLflow

    return load_from_mlflow(run=opts.run, model_uri=opts.model_uri, tracking_uri=opts.tracking_uri, output=opts.output)


def predict(opts: PredictOptions) -> PredictSummary:
    """The `mmexpr predict` command: load, decode in parallel, slide windows, write files."""
    if not (opts.videos or opts.shards):
        raise UserError("predict: give --videos DIR or --shards DIR")
    check_out(Path(opts.out))
    begin = time.perf_counter()
    loaded = load_model(opts)
    job = loaded.job
    device = pick_device(opts.device)
    model = loaded.model.to(device)
    window = job.data.window
    stride = opts.stride or max(1, window // 2)
    if not 1 <= stride <= window:
        raise UserError(f"--stride {stride}: must be between 1 and the window ({window})")
    missing: list[str] = []
    smooth = job.model.smooth if opts.smooth is None else opts.smooth
    if smooth < 0:
        raise UserError(f"--smooth {smooth}: must be 0 (off) or a number of frames")
    if opts.shards:
        dataset: TrackPieces = ShardTracks(opts.shards, opts.splits, job.data.image_size)
        missing = dataset.missing_listed()
    else:
        dataset = VideoTracks(opts.videos, job.data.image_size, pack_settings_of(job), opts.video_names)
    tracks, frames, problems, task_scores = predict_dataset(
        model,
        dataset,
        opts.out,
        window=window,
        stride=stride,
        batch_size=opts.batch_size or job.data.batch_size,
        sample_rate=job.data.sample_rate,
        device=device,
        workers=opts.workers,
        progress=opts.progress,
        smooth=smooth,
        audio_context_s=job.data.audio_context_s,
    )
    summary = PredictSummary(
        out=opts.out, source=loaded.source, tracks=tracks, frames=frames,
        seconds=time.perf_counter() - begin, window=window, stride=stride, device=str(device),
        problems=missing + problems, scores=task_scores.expr, task_scores=task_scores, tasks=model_tasks(model),
    )
    if opts.zip:
        summary.archive = ", ".join(str(write_zip(Path(opts.out) / t, dataset.names)) for t in model_tasks(model))
    meta = {
        "source": loaded.source, "window": window, "stride": stride, "smooth": smooth, "tracks": tracks,
        "frames": frames, "input": opts.shards or opts.videos, "problems": missing + problems, "not_predicted": missing,
        "tasks": list(model_tasks(model)),
        "macro_f1": task_scores.expr.macro_f1 if task_scores.expr else None,
        "scores": {t: task_scores.abaw(t) for t in task_scores.present()},
        "au_thresholds": au_thresholds(model).tolist() if "au" in model_tasks(model) else None,
    }
    (Path(opts.out) / "predict.json").write_text(json.dumps(meta, indent=1) + "\n")
    return summary
