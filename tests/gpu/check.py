"""The body of tests/gpu/check.sh: proves the GPU path and prints its figures in one block.

On a GPU: the GPU-marked tests (bf16 autocast, CUDA placement, SDPA attention, NCCL on one
rank), then `jobs/paper-e2e.yaml` with `model.preset=scratch` trained for 50 steps at bf16
(the job's ZeRO-2; one worker runs it as stage 0, see engine.zero_stage_for) with the
DataLoader workers matched to the cores, then `predict` over the validation shards.
Printed: samples/s, MFU (training FLOPs of one window, counted by torch's FlopCounterMode
over forward + backward, times windows/s, over the GPU's dense bf16 peak), the data-wait
share of step time, peak GPU memory, predict frames/s.

`--tiny` runs the same steps on CPU with the tiny model at 64 px, so the script is run by the
test suite and cannot rot; MFU then has no peak to compare with.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, by device-name fragment.
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
GOALS = {"mfu": 0.40, "data_wait": 0.05}


def _say(text: str) -> None:
    print(f"[check] {text}", flush=True)


def bf16_peak(name: str) -> float | None:
    return next((peak for key, peak in BF16_PEAK.items() if key in name), None)


def run_gpu_tests() -> str:
    """pytest -m gpu on tests/gpu; returns its summary line."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", str(REPO / "tests" / "gpu")],
        cwd=REPO, capture_output=True, text=True,
    )
    print(proc.stdout[-4000:], proc.stderr[-2000:], sep="", flush=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode not in (0, 5):  # 5: nothing collected
        raise SystemExit(f"GPU-marked tests failed: {lines[-1] if lines else proc.returncode}")
    return lines[-1] if lines else "no output"


def make_shards(work: Path, image_size: int, videos: int, seconds: float) -> Path:
    from mmexpr.data.pack import pack_corpus
    from mmexpr.synth.corpus import SynthSpec, write_corpus

    corpus, shards = work / "corpus", work / "shards"
    write_corpus(corpus, SynthSpec(videos=videos, seconds=seconds, seed=0, val_fraction=0.2))
    pack_corpus(corpus, shards, chunk_frames=32, face_size=image_size, shard_mb=64, progress=False,
                num_cpus=os.cpu_count())
    return shards


def the_job(tiny: bool, shards: Path, output: Path, steps: int, gpu: bool):
    from mmexpr.config import load_job

    cores = os.cpu_count() or 1
    common = [f"data.shards={shards}", f"output={output}", f"train.max_steps={steps}", "train.warmup_steps=5",
              "train.eval_every=100000", "train.checkpoint_every=100000", "train.workers=1",
              "train.progress=false", "track.experiment=gpu-check", "track.register_model=",
              "data.shuffle_buffer=64"]
    if tiny:
        return load_job("jobs/paper-e2e.yaml", common + [
            "model.preset=tiny", "data.image_size=64", "data.window=8", "data.stride=8", "data.batch_size=4",
            "data.loader_workers=1", "train.use_gpu=false", "model.hidden=64",
        ])
    # One training process per GPU; every other core decodes (DataLoader workers).
    return load_job("jobs/paper-e2e.yaml", common + [
        "model.preset=scratch", f"data.loader_workers={max(1, cores - 2)}", f"train.cpus_per_worker={cores}",
        f"train.use_gpu={str(gpu).lower()}", "train.precision=bf16",
    ])


def train_flops_per_window(job, device: str) -> float:
    """FLOPs of forward + backward of one window of the job's model (FlopCounterMode)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mmexpr.model.model import build_model, example_batch

    model = build_model(job.model, None).to(device).train()
    batch = example_batch(1, job.data.window, job.data.image_size, device=device)
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(batch)["loss"]
        loss.backward()
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return float(counter.get_total_flops())


def run_metrics(result, skip: int) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=result.tracking_uri)

    def series(name: str) -> list[float]:
        hist = sorted(client.get_metric_history(result.run_id, name), key=lambda m: m.step)
        return [m.value for m in hist]

    rates, waits, peaks = series("train/samples_per_s"), series("train/data_wait"), series("train/gpu_peak_gb")
    rates, waits = rates[skip:] or rates, waits[skip:] or waits
    return {
        "samples_per_s": sum(rates) / len(rates),
        "data_wait": sum(waits) / len(waits),
        "gpu_peak_gb": max(peaks) if peaks else float("nan"),
        "steps": len(series("train/loss")),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU, tiny model, 64 px (the CI form)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 50; 6 with --tiny)")
    p.add_argument("--workdir", default=None, help="keep corpus, shards and the run here")
    args = p.parse_args(argv)
    begin = time.perf_counter()

    import torch

    gpu = torch.cuda.is_available() and not args.tiny
    device = "cuda" if gpu else "cpu"
    name = torch.cuda.get_device_name(0) if gpu else "CPU"
    _say(f"device: {name}; {os.cpu_count()} cores; torch {torch.__version__}")
    if not gpu and not args.tiny:
        _say("no CUDA device: the GPU path cannot run here; use --tiny for the CPU form")
        return 2
    tests = run_gpu_tests()
    steps = args.steps or (6 if args.tiny else 50)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(args.workdir or tmp)
        t0 = time.perf_counter()
        size = 64 if args.tiny else 224
        shards = make_shards(work, size, videos=4 if args.tiny else 12, seconds=3.0 if args.tiny else 12.0)
        _say(f"corpus + shards at {size} px: {time.perf_counter() - t0:.1f} s")
        job = the_job(args.tiny, shards, work / "runs", steps, gpu)
        flops = train_flops_per_window(job, device)
        _say(f"training FLOPs per window (forward + backward): {flops / 1e9:.1f} G")

        from mmexpr.train.driver import run_training

        t0 = time.perf_counter()
        result = run_training(job)
        train_wall = time.perf_counter() - t0
        m = run_metrics(result, skip=min(5, steps // 2))

        from mmexpr.predict.predict import PredictOptions, predict

        summary = predict(PredictOptions(out=str(work / "pred"), checkpoint=str(result.latest_checkpoint),
                                         shards=str(shards), splits=["validation"], progress=False,
                                         workers=min(4, os.cpu_count() or 1), device=device))
    peak = bf16_peak(name) if gpu else None
    windows_per_s = m["samples_per_s"]
    mfu = flops * windows_per_s / peak if peak else None
    pred_rate = summary.frames / summary.seconds if summary.seconds else 0.0
    d = job.data
    lines = [
        "== GPU path check" + (" (tiny, CPU: the CI form; no GPU figures)" if args.tiny else ""),
        f"device                {name}, {os.cpu_count()} cores, DataLoader workers {d.loader_workers}",
        f"GPU-marked tests      {tests}",
        f"model                 {job.model.preset}, {d.window} frames x {d.image_size} px, batch {d.batch_size}, "
        f"{'bf16' if gpu else 'fp32'}, ZeRO-{job.train.zero_stage} job on 1 worker",
        f"training              {m['steps']} steps in {train_wall:.1f} s wall (incl. start-up)",
        f"samples/s             {windows_per_s:.2f} windows/s ({windows_per_s * d.window:.0f} frames/s)",
        "MFU                   " + (f"{mfu:.1%} (goal >= {GOALS['mfu']:.0%}; {flops / 1e9:.0f} GFLOP/window, "
                                   f"peak {peak / 1e12:.0f} TFLOP/s bf16)" if mfu is not None
                                   else f"n/a ({flops / 1e9:.2f} GFLOP/window; no bf16 peak known for {name})"),
        f"data wait             {m['data_wait']:.1%} of step time (goal <= {GOALS['data_wait']:.0%})",
        f"peak GPU memory       {m['gpu_peak_gb']:.2f} GB" if gpu else "peak GPU memory       n/a (CPU)",
        f"predict               {summary.frames} frames in {summary.seconds:.1f} s = {pred_rate:.0f} frames/s "
        f"(model load included)",
        f"total                 {time.perf_counter() - begin:.0f} s",
    ]
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
