"""`./launch bench predict_memory`: does predicting one long track fit in memory?

Aff-Wild2 has videos of 20-30 minutes. Held whole, one such track decoded at
`image_size` 224 is uint8 [N, 224, 224, 3]: 8.1 GB for 30 min at 30 fps, per decoding
worker. `predict` streams a track chunk by chunk instead (predict/tracks.py), so its peak
memory should not depend on the track's length. Measured here:

- one packed track of `--minutes` (default 30) at 30 fps, 112 px faces in 64-frame chunks
  (the pack defaults) and 16 kHz audio; every chunk holds the same bytes, which costs the
  reader and decoder exactly what distinct chunks would;
- `predict` of that track at image_size 224 with the default decoding workers (1), the
  model of jobs/demo.yaml, stride = window, in a fresh process: its peak RSS plus the peak
  RSS of its decoding worker (an upper bound of the two together);
- the same for a track a tenth as long, in the same run: the ratio of the two peaks says
  whether memory grows with the length of the video.

Goal: under 3 GB for the 30-minute track. The whole-track figure is the size of the
frames array the previous predict held, computed, not run (it would not fit here).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from mmexpr.bench.table import Ratio, print_table
from mmexpr.config import load_job
from mmexpr.data.batch import frame_sample
from mmexpr.data.encode import ChunkEncoder, PackSettings, encode_wav, sample_key
from mmexpr.data.manifest import VERSION, Manifest, ShardInfo, write_manifest
from mmexpr.data.pack import _write_tar
from mmexpr.model.model import build_model
from mmexpr.predict.predict import PredictOptions, predict_dataset
from mmexpr.predict.tracks import ShardTracks

GOAL_BYTES = 3e9
FPS = 30
IMAGE_SIZE = 224


def write_long_track(out: Path, frames: int, chunk: int = 64, face_size: int = 112) -> Path:
    """OUT/test/shard-000000.tar + manifest.json holding one track `long` of `frames` frames."""
    settings = PackSettings(chunk_frames=chunk, face_size=face_size)
    encoder = ChunkEncoder(settings, Fraction(FPS))
    ramp = np.linspace(0, 255, face_size, dtype=np.float32)
    for k in range(chunk):
        rgb = np.clip(ramp[None, :, None] * 0.5 + 4 * k, 0, 255).astype(np.uint8).repeat(face_size, 0).repeat(3, 2)
        encoder.add(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p"))
    encoder.flush()
    mp4 = encoder.chunks[0][2]
    rng = np.random.default_rng(0)
    wav = encode_wav((rng.standard_normal(frame_sample(chunk, FPS, settings.sample_rate)) * 0.1).astype(np.float32),
                     settings.sample_rate)
    firsts = list(range(0, frames, chunk))
    counts = [min(chunk, frames - f) for f in firsts]

    def samples():
        for first, count in zip(firsts, counts, strict=True):
            meta = {"video": "long", "track": "long", "first_frame": first, "frames": count, "fps": float(FPS),
                    "labels": [0] * count, "face": [1] * count, "words": [], "source": "", "annotation": "",
                    "has_audio": True, "sample_rate": settings.sample_rate}
            yield sample_key("long", first), {"json": json.dumps(meta).encode(), "mp4": mp4, "wav": wav}

    split = out / "test"
    split.mkdir(parents=True, exist_ok=True)
    if any(c != chunk for c in counts):
        raise ValueError(f"--minutes: {frames} frames is not a whole number of {chunk}-frame chunks")
    _write_tar(split / "shard-000000.tar", samples())
    shard = ShardInfo("shard-000000.tar", len(firsts), frames, (split / "shard-000000.tar").stat().st_size, "",
                      tuple(sample_key("long", f) for f in firsts), tuple(counts))
    manifest = Manifest("test", str(split), (shard,), {**settings.to_dict(), "shard_mb": 0, "format_version": VERSION},
                        [frames, 0, 0, 0, 0, 0, 0, 0, 0], ("long",))
    write_manifest(manifest, split)
    return out


def _child(shards: str, out: str) -> None:
    """Predict the long track in this fresh process; print peak RSS of it and its worker."""
    torch.set_num_threads(1)
    job = load_job(Path(__file__).resolve().parents[1] / "jobs" / "demo.yaml", [f"data.image_size={IMAGE_SIZE}"])
    model = build_model(job.model).eval()
    begin = time.perf_counter()
    tracks, frames, _, _ = predict_dataset(
        model, ShardTracks(shards, None, IMAGE_SIZE), out, window=job.data.window, stride=job.data.window,
        batch_size=job.data.batch_size, sample_rate=job.data.sample_rate, device=torch.device("cpu"),
        workers=PredictOptions.workers, progress=False,
    )
    kib = 1024
    print(json.dumps({
        "frames": frames, "seconds": time.perf_counter() - begin,
        "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib,
        "workers": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib,
    }))


def _measure(root: Path, frames: int) -> dict:
    shards = write_long_track(root / f"shards-{frames}", frames)
    done = subprocess.run(
        [sys.executable, "-m", "mmexpr.bench.predict_memory", "--child", str(shards), str(root / f"pred-{frames}")],
        capture_output=True, text=True, check=False,
    )
    if done.returncode:
        raise RuntimeError(f"predict of the {frames}-frame track failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="mmexpr bench predict_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="length of the long track")
    p.add_argument("--child", nargs=2, metavar=("SHARDS", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    chunk = 64
    frames = int(round(args.minutes * 60 * FPS / chunk)) * chunk
    short = max(chunk, int(round(frames / 10 / chunk)) * chunk)
    with tempfile.TemporaryDirectory(prefix="mmexpr-bench-predict-") as tmp:
        small = _measure(Path(tmp), short)
        long = _measure(Path(tmp), frames)
    peak = long["self"] + long["workers"]
    peak_short = small["self"] + small["workers"]
    whole = frames * IMAGE_SIZE * IMAGE_SIZE * 3
    gb = 1e9
    rows = [
        Ratio("peak RSS, long track / 3 GB goal", peak / GOAL_BYTES, 1.0, higher_is_better=False,
              detail=f"{peak / gb:.2f} GB (predict {long['self'] / gb:.2f} + decoding worker "
                     f"{long['workers'] / gb:.2f}), {frames} frames = {frames / FPS / 60:.1f} min at {FPS} fps, "
                     f"{IMAGE_SIZE} px"),
        Ratio("peak RSS: long / tenth-as-long track", peak / peak_short, 1.2, higher_is_better=False,
              detail=f"{peak / gb:.2f} vs {peak_short / gb:.2f} GB ({frames} vs {short} frames)"),
        Ratio("peak RSS / whole-track frames array", peak / whole, 0.5, higher_is_better=False,
              detail=f"{peak / gb:.2f} vs {whole / gb:.2f} GB (uint8 [{frames}, {IMAGE_SIZE}, {IMAGE_SIZE}, 3], "
                     "computed)"),
    ]
    print_table("bench predict_memory", rows, [
        f"predicted {long['frames']} frames in {long['seconds']:.0f} s (model of jobs/demo.yaml at {IMAGE_SIZE} px, "
        "1 torch thread, CPU)",
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
