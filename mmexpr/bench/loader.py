"""`./launch bench loader`: is reading windows from shards as fast and small as it should be?

One run, one synthetic corpus, the same frames for every contender, all single-core
(CPU seconds of this process, one decoding thread):

- loader: training windows delivered by `make_loader` (no DataLoader workers, so the
  whole pipeline runs in this process: tar reading, decord decode, windows, audio,
  batching), counted as real (mask=True) frames per CPU second;
- decode bound: the loader's decoder (`data.decode.decode_video`: PyAV + OpenCV's YUV
  4:2:0 -> RGB) decoding every frame of every chunk once, straight from the in-memory mp4
  bytes, with nothing else to do; and decord doing the same (the decoder used before);
- workers matched to the cores: the same loader with one DataLoader worker per core,
  frames per wall second against cores x the single-process frames per CPU second;
- JPEG folder: the same frames written as one JPEG per frame (how Aff-Wild2 ships face
  crops, OpenCV's default quality 95), delivered as the same training windows (same
  count per chunk, random starts, [B, T, 3, H, W] batches) reading each frame's file with
  OpenCV, and with PIL;
- packing: seconds of source video packed per CPU second by `encode.pack_video`, the
  body of one Ray task (the Ray start-up of a whole `pack` run is reported separately).

Bytes per frame compare the video members of the shards with the JPEG folder: the JPEG
folder holds no audio, while a shard also stores 16 kHz PCM16 audio (about 1 kB per
frame at 30 fps), so the whole-shard figure is printed as a note.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path

import cv2
import decord
import numpy as np
import torch
from PIL import Image

from mmexpr.bench.table import Ratio, print_table
from mmexpr.config import DataConfig
from mmexpr.data import loader as loader_module
from mmexpr.data.decode import decode_video
from mmexpr.data.encode import PackSettings, pack_video
from mmexpr.data.loader import make_loader, train_window_count
from mmexpr.data.pack import pack_corpus
from mmexpr.data.sources import discover, faces_mode
from mmexpr.synth.corpus import SynthSpec, write_corpus


def _cpu() -> float:
    return time.process_time()


def _shard_members(shards: Path, split: str) -> list[dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted((shards / split).glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for info in tar:
                key, ext = info.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(info).read()
    return list(samples.values())


def measure_decode_bound(samples: list[dict[str, bytes]]) -> tuple[float, int, list]:
    """Frames/s decoding every frame once with the loader's decoder; also returns the frames."""
    decode_video(samples[0]["mp4"])  # warm-up: imports (PyAV, OpenCV) and codec set-up stay out of the time
    begin = _cpu()
    frames = 0
    decoded = []
    for sample in samples:
        batch = decode_video(sample["mp4"])
        frames += len(batch)
        decoded.append(batch)
    return frames / (_cpu() - begin), frames, decoded


def measure_decord(samples: list[dict[str, bytes]]) -> float:
    """Frames/s of decord reading every frame to RGB, one thread (the decoder used before)."""
    decord.VideoReader(io.BytesIO(samples[0]["mp4"]), num_threads=1).get_batch([0])  # warm-up
    begin = _cpu()
    frames = 0
    for sample in samples:
        reader = decord.VideoReader(io.BytesIO(sample["mp4"]), num_threads=1)
        frames += len(reader.get_batch(list(range(len(reader)))).asnumpy())
    return frames / (_cpu() - begin)


def measure_loader(shards: Path, face_size: int, window: int, batch_size: int, epochs: int,
                   workers: int = 0, verify: bool = True) -> tuple[float, int]:
    """Real frames delivered per CPU second of this process (workers=0), or per wall second
    with `workers` DataLoader processes; `verify` hashes every shard against the manifest."""
    loader_module._VERIFIED.clear()  # hash every shard again, as a fresh DataLoader worker would
    data = DataConfig(window=window, image_size=face_size, batch_size=batch_size, loader_workers=workers,
                      shuffle_buffer=16, verify_shards=verify)
    loader = make_loader(str(shards), "train", data, train=True, seed=0)
    steps = loader.steps_per_epoch * epochs
    clock = _cpu if workers == 0 else time.perf_counter
    delivered = 0
    begin = clock()
    for i, batch in enumerate(loader):
        delivered += int(batch.mask.sum())
        if i + 1 == steps:
            break
    return delivered / (clock() - begin), delivered


def write_jpeg_folder(root: Path, decoded: list) -> tuple[list[list[Path]], int]:
    """One folder per chunk, one JPEG per frame (OpenCV default quality 95)."""
    folders = []
    for c, frames in enumerate(decoded):
        folder = root / f"chunk{c:05d}"
        folder.mkdir(parents=True)
        paths = []
        for i, rgb in enumerate(frames):
            path = folder / f"{i + 1:05d}.jpg"
            cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            paths.append(path)
        folders.append(paths)
    return folders, sum(p.stat().st_size for paths in folders for p in paths)


def _read_opencv(path: Path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _read_pil(path: Path):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def measure_jpeg_windows(folders: list[list[Path]], read, window: int, batch_size: int, epochs: int) -> float:
    """The JPEG-folder version of the training loader: the same windows per chunk at random
    starts, each frame read from its own file, batched as [B, T, 3, H, W]. Frames/s."""
    rng = np.random.default_rng(0)
    size = _read_opencv(folders[0][0]).shape[0]
    batch = np.zeros((batch_size, window, 3, size, size), np.uint8)
    delivered, b = 0, 0
    begin = _cpu()
    for _ in range(epochs):
        windows = [
            (paths, int(s))
            for paths in folders
            for s in rng.integers(0, max(0, len(paths) - window) + 1, size=train_window_count(len(paths), window))
        ]
        rng.shuffle(windows)
        for paths, start in windows:
            for t, path in enumerate(paths[start : start + window]):
                batch[b, t] = read(path).transpose(2, 0, 1)
                delivered += 1
            b = (b + 1) % batch_size
    return delivered / (_cpu() - begin)


def measure_packing(corpus: Path, face_size: int, chunk_frames: int) -> float:
    """Seconds of video packed per CPU second, one video after another in this process."""
    jobs = discover(corpus).jobs
    settings = PackSettings(chunk_frames=chunk_frames, face_size=face_size, faces=faces_mode(corpus))
    pack_video(jobs[0], settings)  # warm-up: imports (torch for resampling), codec tables
    begin = _cpu()
    seconds = 0.0
    for job in jobs:
        result = pack_video(job, settings)
        seconds += result.frames / float(json.loads(result.samples[0].members["json"])["fps"])
    return seconds / (_cpu() - begin)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="mmexpr bench loader", description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--face-size", type=int, default=112)
    p.add_argument("--chunk-frames", type=int, default=64)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2, help="loader epochs to time")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for the matched row (0: one per core)")
    p.add_argument("--workdir", default=None, help="keep corpus, shards and JPEGs here (default: a temp folder)")
    args = p.parse_args(argv)

    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        work = Path(args.workdir or tmp)
        corpus, shards = work / "corpus", work / "shards"
        start = time.perf_counter()
        print(f"corpus: {args.videos} synthetic videos x {args.seconds:g} s -> {work}", flush=True)
        write_corpus(corpus, SynthSpec(videos=args.videos, seconds=args.seconds, seed=0, val_fraction=0.2), overwrite=True)
        print(f"synth: {time.perf_counter() - start:.1f} s", flush=True)
        begin = time.perf_counter()
        summary = pack_corpus(corpus, shards, chunk_frames=args.chunk_frames, face_size=args.face_size,
                              shard_mb=64, overwrite=True, progress=False, num_cpus=os.cpu_count())
        pack_wall = time.perf_counter() - begin
        print(f"pack: {pack_wall:.1f} s", flush=True)
        pack_speed = measure_packing(corpus, args.face_size, args.chunk_frames)

        samples = _shard_members(shards, "train")
        bound, frames, decoded = measure_decode_bound(samples)
        decord_fps = measure_decord(samples)
        loader_fps, delivered = measure_loader(shards, args.face_size, args.window, args.batch_size, args.epochs)
        unchecked_fps, _ = measure_loader(shards, args.face_size, args.window, args.batch_size, args.epochs,
                                          verify=False)
        cores = args.workers or os.cpu_count() or 1
        wall_fps, _ = measure_loader(shards, args.face_size, args.window, args.batch_size, args.epochs, cores)
        folders, jpeg_bytes = write_jpeg_folder(work / "jpeg", decoded)
        cv_fps = measure_jpeg_windows(folders, _read_opencv, args.window, args.batch_size, args.epochs)
        pil_fps = measure_jpeg_windows(folders, _read_pil, args.window, args.batch_size, args.epochs)
        best_name, best = ("OpenCV", cv_fps) if cv_fps >= pil_fps else ("PIL", pil_fps)
        mp4_bytes = sum(len(s["mp4"]) for s in samples)
        shard_bytes = sum(p.stat().st_size for p in (shards / "train").glob("shard-*.tar"))

    rows = [
        Ratio("loader / decode bound (frames/s/core)", loader_fps / bound, 0.7,
              detail=f"{loader_fps:.0f} vs {bound:.0f} frames/s"),
        Ratio(f"loader / JPEG folder, faster reader ({best_name})", loader_fps / best, 1.0,
              detail=f"{loader_fps:.0f} vs OpenCV {cv_fps:.0f}, PIL {pil_fps:.0f} frames/s"),
        Ratio("decode: PyAV + OpenCV I420 / decord (frames/s/core)", bound / decord_fps, 1.0,
              detail=f"{bound:.0f} vs {decord_fps:.0f} frames/s"),
        Ratio(f"{cores} loader workers (wall) / {cores} x 1 core", wall_fps / (cores * loader_fps), 0.7,
              detail=f"{wall_fps:.0f} frames/s wall vs {cores} x {loader_fps:.0f}; shared cores lower this"),
        Ratio("bytes/frame: shard video / JPEG folder", (mp4_bytes / frames) / (jpeg_bytes / frames), 0.1,
              higher_is_better=False, detail=f"{mp4_bytes / frames:.0f} vs {jpeg_bytes / frames:.0f} B/frame"),
        Ratio("packing: s of video / CPU s", pack_speed, 10.0, detail=f"at {args.face_size} px, one Ray task's work"),
        Ratio("loader with shard sha256 check / without", loader_fps / unchecked_fps, 0.95,
              detail=f"{loader_fps:.0f} vs {unchecked_fps:.0f} frames/s, every shard hashed once per pass"),
    ]
    notes = [
        f"frames: {frames} in {len(samples)} train chunks of <= {args.chunk_frames}, {args.face_size} px; "
        f"loader delivered {delivered} window frames (T={args.window}, B={args.batch_size}, {args.epochs} epochs)",
        f"whole shard incl. 16 kHz PCM audio: {shard_bytes / frames:.0f} B/frame = "
        f"{shard_bytes / jpeg_bytes:.2f} x the JPEG folder (which holds no audio)",
        f"pack run end to end (Ray start-up included, {os.cpu_count()} CPUs): {pack_wall:.1f} s wall for "
        f"{sum(s.frames for s in summary.splits.values())} frames",
    ]
    print_table("bench loader (ratios measured in this run, per core)", rows, notes)
    return 0
