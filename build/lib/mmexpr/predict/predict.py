"""`mmexpr predict`: a trained model over whole videos -> one ABAW submission file per track.

For each track (decoded in parallel by DataLoader worker processes, see tracks.py) the main
process cuts overlapping windows of T frames (stride T/2 by default), runs the model on
batches of them, averages the logits of every frame over the windows that saw it
(windows.py), and writes

    OUT/<track>.txt   ABAW submission: `image_location,Neutral,...` then `<track>/00001.jpg,k`
    OUT/<track>.npy   float32 [frames, 8] class probabilities (softmax of the averaged logits)
    OUT/predict.json  where the model came from, the window settings and per-track counts

Every frame gets a label: frames without a face were packed as black frames (Aff-Wild2's
missing crops) and go through the model like any other, and frames no window could read
(a corrupt chunk) take their nearest neighbour's logits. With `stride == window` and shards
packed in chunks that are a multiple of the window, the windows are exactly those of the
training evaluation, so predict -> evaluate reproduces the macro F1 training logged.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mmexpr.data.batch import Batch, BatchArrays
from mmexpr.data.encode import PackSettings
from mmexpr.errors import UserError
from mmexpr.labels import write_submission
from mmexpr.metrics import Scores, score
from mmexpr.predict.tracks import ShardTracks, Track, VideoTracks
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
    batch_size: int | None = None
    workers: int = 1
    device: str = "auto"
    tracking_uri: str | None = None
    output: str = "runs"
    progress: bool = True


@dataclass
class PredictSummary:
    out: str
    source: str
    tracks: int = 0
    frames: int = 0
    seconds: float = 0.0
    window: int = 0
    stride: int = 0
    device: str = "cpu"
    problems: list[str] = field(default_factory=list)
    scores: Scores | None = None  # when the inputs carry labels (shards, annotated videos)

    def __str__(self) -> str:
        rate = self.frames / self.seconds if self.seconds else 0.0
        lines = [
            f"predicted {self.tracks} track(s), {self.frames} frames in {self.seconds:.1f} s "
            f"({rate:.0f} frames/s on {self.device}); window {self.window}, stride {self.stride}",
            f"model: {self.source}",
            f"wrote {self.out}/<track>.txt (ABAW submission) and <track>.npy (probabilities)",
        ]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  {p}" for p in self.problems[:20]]
        if self.scores is not None:
            lines.append(f"against the labels in the input ({self.scores.frames} labelled frames):")
            lines.append(self.scores.table())
        return "\n".join(lines)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return device


def window_batch(track: Track, starts: list[int], window: int, sample_rate: int) -> Batch:
    """The unlabelled windows of one track starting at `starts`, built as the loader builds them."""
    arrays = BatchArrays(len(starts), window, track.frames.shape[1:3], sample_rate, labelled=False)
    n = len(track.frames)
    for i, s in enumerate(starts):
        e = min(s + window, n)
        arrays.put(i, track.frames[s:e], fps=track.fps, start=s, track=track.name,
                   audio=track.audio if track.has_audio else None,
                   audio_span=track.audio_span(s, e, sample_rate))
    return arrays.batch()


@torch.inference_mode()
def track_logits(
    model: torch.nn.Module,
    track: Track,
    *,
    window: int,
    stride: int,
    batch_size: int,
    sample_rate: int,
    device: torch.device,
) -> np.ndarray:
    """Averaged logits [frames, 8] of one track over overlapping windows."""
    stitcher = LogitStitcher(len(track.frames))
    starts = window_starts(len(track.frames), window, stride)
    for i in range(0, len(starts), batch_size):
        part = starts[i : i + batch_size]
        batch = window_batch(track, part, window, sample_rate)
        logits = model(batch.to(device))["logits"].float().cpu().numpy()
        for j, s in enumerate(part):
            stitcher.add(s, logits[j], batch.mask[j].numpy())
    return stitcher.logits()


def _identity(items: list) -> list:
    return items[0]


def predict_dataset(
    model: torch.nn.Module,
    dataset: Dataset,
    out: str | Path,
    *,
    window: int,
    stride: int,
    batch_size: int,
    sample_rate: int,
    device: torch.device,
    workers: int = 1,
    progress: bool = True,
) -> tuple[int, int, list[str], Scores | None]:
    """Predict every track of `dataset` and write its files; (tracks, frames, problems, scores)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loader = DataLoader(dataset, batch_size=1, collate_fn=_identity, num_workers=workers, shuffle=False)
    tracks = frames = 0
    problems: list[str] = []
    all_labels, all_preds = [], []
    with Progress(len(dataset), "predict", "video", enabled=progress) as bar:
        for item in loader:
            for track in item:
                logits = track_logits(
                    model, track, window=window, stride=stride, batch_size=batch_size,
                    sample_rate=sample_rate, device=device,
                )
                probs = softmax(logits).astype(np.float32)
                preds = probs.argmax(axis=1)
                write_submission(out / f"{track.name}.txt", track.name, preds)
                np.save(out / f"{track.name}.npy", probs)
                tracks += 1
                frames += len(preds)
                problems += track.problems
                if (track.labels >= 0).any():
                    all_labels.append(track.labels)
                    all_preds.append(preds)
            bar.update(1, frames=frames)
    scores = score(np.concatenate(all_labels), np.concatenate(all_preds)) if all_labels else None
    return tracks, frames, problems, scores


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


def pack_settings_of(job) -> PackSettings:
    """The settings the model's training shards were packed with, so raw videos are cropped and
    compressed the same way; pack's defaults when those shards are not here."""
    from mmexpr.data.manifest import ManifestError, manifest_path, read_manifest

    try:
        settings = read_manifest(manifest_path(job.data.shards, job.data.train_split)).settings
        return PackSettings(chunk_frames=int(settings["chunk_frames"]), face_size=int(settings["face_size"]))
    except (ManifestError, KeyError, ValueError, OSError):
        return PackSettings()


def load_model(opts: PredictOptions):
    """The model named by --run, --checkpoint or --model-uri, rebuilt from its job config."""
    from mmexpr.predict.weights import load_checkpoint

    if opts.checkpoint:
        return load_checkpoint(opts.checkpoint)
    from mmexpr.predict.from_mlflow import load_from_mlflow

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
    if opts.shards:
        dataset: Dataset = ShardTracks(opts.shards, opts.splits, job.data.image_size)
    else:
        dataset = VideoTracks(opts.videos, job.data.image_size, pack_settings_of(job), opts.video_names)
    tracks, frames, problems, scores = predict_dataset(
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
    )
    summary = PredictSummary(
        out=opts.out, source=loaded.source, tracks=tracks, frames=frames,
        seconds=time.perf_counter() - begin, window=window, stride=stride, device=str(device),
        problems=problems, scores=scores,
    )
    meta = {
        "source": loaded.source, "window": window, "stride": stride, "tracks": tracks, "frames": frames,
        "input": opts.shards or opts.videos, "problems": problems,
        "macro_f1": scores.macro_f1 if scores else None,
    }
    (Path(opts.out) / "predict.json").write_text(json.dumps(meta, indent=1) + "\n")
    return summary
