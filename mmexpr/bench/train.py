"""`./launch bench train`: what the distributed training path costs, measured in one run.

1. Overhead: samples/s of a plain PyTorch loop (model, AdamW, clipping, schedule) against
   the full path with one worker: a Ray Train worker running the DeepSpeed engine built by
   mmexpr.train.engine, plus the per-step all-reduce of the loss parts the worker loop does.
   Same tiny model, same in-memory batches, same number of torch threads (one per worker:
   Ray gives a 1-CPU worker one thread, and the plain loop is pinned to one as well).
   Goal: the full path at most 1.10x slower.
2. ZeRO memory: per-rank bytes of parameters, gradients and optimizer state held by rank 0
   of 2 workers right after a backward pass (`engine.model_state_bytes`, each byte once), for
   ZeRO stages 0-3, against the ZeRO paper's formulas with this run's byte counts
   (`engine.zero_bytes`). Communication buckets are not model states and are left out, as in
   the paper. Goal: within 10%.
3. Checkpoints: seconds per GB to publish (checkpoint.save: DeepSpeed shards + portable copy
   + atomic rename) and to load (DeepSpeed's sharded load), ZeRO-2, 2 workers.
4. With `--preset scratch`: all of the above on the paper's model at its real size
   (`jobs/paper-e2e.yaml`, CLIP ViT-B/16 + wav2vec2-base built from their configs, 224 px),
   a ZeRO-2 row with optimizer offload, and the peak RSS of one training step with and
   without gradient checkpointing on the encoders (each in a fresh process, so the peak
   is that step's own).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue as queues
import resource
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from mmexpr.bench.table import Ratio, print_table
from mmexpr.config import job_from_dict, load_job
from mmexpr.model.model import build_model, example_batch
from mmexpr.train import checkpoint as ckpt
from mmexpr.train.engine import (
    base_optimizer,
    build_engine,
    make_optimizer,
    make_scheduler,
    model_state_bytes,
    placement,
    to_device,
    trainable_params,
    zero_bytes,
    zero_stage_for,
)


def paper_job(window: int, batch_size: int, steps: int, *extra: str):
    """`jobs/paper-e2e.yaml` at its real size (preset scratch, 224 px) with a short window:
    the model's size is what matters for memory and step time, not the window's."""
    return load_job("jobs/paper-e2e.yaml", [
        "model.preset=scratch", f"data.window={window}", f"data.stride={window}", "data.image_size=224",
        f"data.batch_size={batch_size}", f"train.max_steps={steps}", "train.warmup_steps=1",
        "train.workers=1", "train.use_gpu=false", *extra,
    ])


def with_checkpointing(job, on: bool):
    """The job with gradient checkpointing of the visual and audio encoders set to `on`."""
    model = job.model.model_copy(update={
        "visual": job.model.visual.model_copy(update={"gradient_checkpointing": on}),
        "audio": job.model.audio.model_copy(update={"gradient_checkpointing": on}),
    })
    return job.model_copy(update={"model": model})


def _step_peak_rss(job_dict: dict, queue) -> None:
    torch.set_num_threads(1)
    job = job_from_dict(job_dict)
    torch.manual_seed(0)
    model = build_model(job.model, None)
    model.train()
    batch = _batches(job, 1)[0]
    built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model(batch)["loss"].backward()
    queue.put((built, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))


def step_peak_rss(job) -> tuple[int, int]:
    """(peak RSS once the model is built, peak RSS after one forward + backward), in bytes,
    measured in a fresh process so that nothing earlier raised the high-water mark."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_step_peak_rss, args=(job.to_dict(), results))
    proc.start()
    while True:  # a child that dies never answers: stop waiting for it then
        try:
            result = results.get(timeout=2)
            break
        except queues.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"peak-RSS step process exited with {proc.exitcode}") from None
    proc.join()
    return result


def _job(hidden: int, steps: int):
    return load_job(None, [
        "model.preset=tiny", f"model.hidden={hidden}", "model.fusion_heads=4",
        "model.visual={name: tiny-clip-vision, train: full}", "model.audio={name: tiny-wav2vec2, train: full}",
        "model.text={name: tiny-clip-text, train: frozen}",
        "data.window=8", "data.image_size=64", "data.batch_size=4",
        f"train.max_steps={steps}", "train.warmup_steps=2", "train.workers=1",
    ])


def _batches(job, count: int, seed: int = 0) -> list[dict]:
    """Loader-shaped batches with random frames, audio and labels, built once, kept in memory."""
    gen = torch.Generator().manual_seed(seed)
    d = job.data
    out = []
    for _ in range(count):
        b = example_batch(d.batch_size, d.window, d.image_size, fps=25.0)
        b.video = torch.randint(0, 256, b.video.shape, dtype=torch.uint8, generator=gen)
        b.audio = torch.randn(b.audio.shape, generator=gen) * 0.1
        b.labels = torch.randint(0, 8, b.labels.shape, generator=gen)
        out.append(b)
    return out


def plain_loop(job, batches: list[dict], warmup: int) -> float:
    """samples/s of ordinary PyTorch on the same model and batches (1 thread)."""
    torch.set_num_threads(job.train.cpus_per_worker)
    torch.manual_seed(0)
    model = build_model(job.model, None)
    model.train()
    opt = make_optimizer(model, job)
    sched = make_scheduler(opt, job)
    for i, batch in enumerate(batches):
        if i == warmup:
            t0 = time.perf_counter()
        out = model(batch)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), job.train.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return (len(batches) - warmup) * job.data.batch_size / (time.perf_counter() - t0)


def bench_worker(config: dict) -> None:
    """Inside a Ray Train worker: time the engine path, or measure ZeRO memory + checkpoints."""
    import ray.train  # lazy: Ray only after local_ray.start_ray (it sets env Ray reads at import)
    import ray.train.torch

    job = job_from_dict(config["job"])
    rank = ray.train.get_context().get_world_rank()
    place = placement(job, ray.train.torch.get_device())
    torch.manual_seed(0)
    model = build_model(job.model, None)
    trainable = trainable_params(model)
    engine, ds_opt, _ = build_engine(model, job, place)
    optimizer = base_optimizer(ds_opt)
    batches = config["batches"]
    result: dict = {"psi": trainable, "bf16": place.bf16}
    if config["mode"] == "overhead":
        warmup = config["warmup"]
        for i, batch in enumerate(batches):
            if i == warmup:
                t0 = time.perf_counter()
            out = engine(to_device(batch, place.device, place.bf16))
            engine.backward(out["loss"])
            engine.step()
            parts = torch.stack([out["loss"].detach()] + [v.detach() for v in out["loss_parts"].values()])
            dist.all_reduce(parts)
            float(parts[0])
        result["samples_per_s"] = (len(batches) - warmup) * job.data.batch_size / (time.perf_counter() - t0)
    else:
        for batch in batches[:2]:  # optimizer state exists after the first step
            out = engine(to_device(batch, place.device, place.bf16))
            engine.backward(out["loss"])
            engine.step()
        out = engine(to_device(batches[2], place.device, place.bf16))
        engine.backward(out["loss"])
        result.update(model_state_bytes(engine, optimizer))
        engine.step()
        if config.get("checkpoint"):
            folder = Path(config["checkpoint"])
            saved = ckpt.save(engine, optimizer, folder, 3, {"step": 3}, {"world_size": 2}, is_best=False, keep_last=1)
            dist.barrier()
            t0 = time.perf_counter()
            ckpt.load_sharded(engine, folder / ckpt.tag_for(3))
            dist.barrier()
            result["load_s"] = time.perf_counter() - t0
            if saved is not None:
                result["save_s"], result["bytes"] = saved.seconds, saved.bytes
    if rank == 0:
        Path(config["out"]).write_text(json.dumps(result))


def _run(job, config: dict, workers: int) -> dict:
    # lazy: Ray only after local_ray.start_ray (it sets env Ray reads at import)
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        TorchTrainer(
            bench_worker,
            train_loop_config={**config, "job": job.to_dict(), "out": str(out)},
            scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(storage_path=str(Path(tmp) / "ray"), name="bench"),
        ).fit()
        return json.loads(out.read_text())


def _stage(text: str) -> tuple[int, bool]:
    """`2` -> (2, no offload); `2o` -> (2, optimizer offload to CPU)."""
    return int(text.rstrip("o")), text.endswith("o")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench train", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=("tiny", "scratch"), default="tiny",
                        help="tiny model, or the paper's at its real size (jobs/paper-e2e.yaml, 224 px)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per loop (default 30 tiny, 3 scratch)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 5 tiny, 1 scratch)")
    parser.add_argument("--hidden", type=int, default=256, help="model.hidden of the tiny model")
    parser.add_argument("--window", type=int, default=2, help="frames per window of the scratch model")
    parser.add_argument("--batch-size", type=int, default=1, help="windows per step of the scratch model")
    parser.add_argument("--stages", default="0,1,2,3,2o", help="ZeRO stages to measure; `o`: with optimizer offload")
    parser.add_argument("--no-overhead", action="store_true", help="skip the overhead comparison")
    parser.add_argument("--no-rss", action="store_true", help="skip the gradient-checkpointing peak RSS")
    args = parser.parse_args(argv)

    # lazy: the driver (MLflow, matplotlib) stays out of the spawned peak-RSS child
    # (_step_peak_rss), which re-imports this module
    from mmexpr.train.driver import start_ray

    scratch = args.preset == "scratch"
    steps = args.steps if args.steps is not None else (3 if scratch else 30)
    warmup = args.warmup if args.warmup is not None else (1 if scratch else 5)
    job = paper_job(args.window, args.batch_size, steps + warmup) if scratch else _job(args.hidden, steps + warmup)
    batches = _batches(job, steps + warmup)
    stages = [_stage(s) for s in args.stages.split(",") if s]
    rss = None
    if not args.no_rss:
        rss = {on: step_peak_rss(with_checkpointing(job, on)) for on in (True, False)}
    plain = None if args.no_overhead else plain_loop(job, batches, warmup)
    start_ray(job.model_copy(update={"train": job.train.model_copy(update={"workers": 2})}))
    import ray  # lazy: after start_ray, which sets the loopback flag Ray reads at import
    try:
        full = None if args.no_overhead else _run(job, {"mode": "overhead", "batches": batches, "warmup": warmup}, 1)
        zero = {}
        with tempfile.TemporaryDirectory() as ck:
            for stage, offload in stages:
                train = job.train.model_copy(update={"zero_stage": stage, "workers": 2, "offload": offload})
                config = {"mode": "zero", "batches": batches[:3],
                          "checkpoint": ck if (stage, offload) == (2, False) else None}
                zero[stage, offload] = _run(job.model_copy(update={"train": train}), config, 2)
    finally:
        ray.shutdown()

    rows = []
    if full is not None:
        rows.append(Ratio("overhead: plain / Ray+DeepSpeed samples/s", plain / full["samples_per_s"], 1.10,
                          higher_is_better=False,
                          detail=f"{plain:.2f} vs {full['samples_per_s']:.2f} samples/s, 1 worker, 1 thread, "
                                 f"ZeRO-{job.train.zero_stage} (runs as {zero_stage_for(job, 1)} on one worker)"))
    for (stage, offload), r in zero.items():
        measured = r["params"] + r["grads"] + r["optimizer"]
        expected = zero_bytes(stage, r["psi"], 2, r["bf16"])
        label = f"ZeRO-{stage}{' offload' if offload else ''}"
        rows.append(Ratio(f"{label} |rank-0 model states / paper - 1|", abs(measured / expected - 1), 0.10,
                          higher_is_better=False,
                          detail=f"{measured / 1e6:.2f} vs {expected / 1e6:.2f} MB (params {r['params'] / 1e6:.2f}, "
                                 f"grads {r['grads'] / 1e6:.2f}, optim {r['optimizer'] / 1e6:.2f}; Ψ={r['psi']:,})"))
    if rss is not None:
        (b_on, p_on), (b_off, p_off) = rss[True], rss[False]
        rows.append(Ratio("step peak RSS growth: checkpointing / none", (p_on - b_on) / (p_off - b_off), 1.0,
                          higher_is_better=False,
                          detail=f"{(p_on - b_on) / 1e9:.2f} vs {(p_off - b_off) / 1e9:.2f} GB over the built model; "
                                 f"peak {p_on / 1e9:.2f} vs {p_off / 1e9:.2f} GB"))
    d = job.data
    notes = [f"model: {'jobs/paper-e2e.yaml, preset scratch' if scratch else 'tiny'}; batch {d.batch_size} x "
             f"{d.window} frames at {d.image_size} px; fp32 on CPU"]
    c = zero.get((2, False))
    if c is not None:
        gb = c["bytes"] / 1e9
        notes.append(
            f"checkpoint (ZeRO-2, 2 workers, {c['bytes'] / 1e6:.1f} MB incl. portable copy): "
            f"save {c['save_s'] / gb:.1f} s/GB ({c['save_s']:.2f} s), load {c['load_s'] / gb:.1f} s/GB ({c['load_s']:.2f} s)")
    print_table(f"bench train ({args.preset})", rows, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
