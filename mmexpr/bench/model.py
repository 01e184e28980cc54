"""`./launch bench model`: is a training step of the demo model cheap where it should be?

All on one core (CPU seconds of this process, one torch thread), one batch of the demo's
shape (8 windows x 16 frames at 64 px, 16 kHz audio), median of several steps after a
warm-up:

- step: forward + backward + AdamW step of the model jobs/demo.yaml builds (tiny encoders
  trained end to end);
- frozen step: the same model with both encoders frozen (the paper's setting): frozen
  encoders run without autograd, so the step should cost well under the trained one;
- visual encoder alone: forward + backward of the visual encoder over the B*T frames, the
  step's largest single part; the rest of the model (audio, TCN, fusion, head, losses,
  optimizer) should not cost a multiple of it;
- frame resize: the visual encoder's preprocessing of 112 px frames to its 64 px input,
  resized as uint8 (what it does on CPU) against resizing float pixels.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from mmexpr.bench.table import Ratio, print_table
from mmexpr.config import load_job
from mmexpr.model.model import build_model, example_batch


def _cpu_median(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        begin = time.process_time()
        fn()
        times.append(time.process_time() - begin)
    return statistics.median(times)


def _train_step(model, optimizer, batch):
    def step() -> None:
        optimizer.zero_grad()
        model(batch)["loss"].backward()
        optimizer.step()

    return step


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="mmexpr bench model", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--job", default="jobs/demo.yaml", help="job whose model is timed"
    )
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(0)
    job = load_job(
        args.job, ["model.preset=tiny", "data.batch_size=8", "data.window=16", "data.image_size=64"]
    )
    batch = example_batch(8, 16, 64, fps=25.0)
    batch.video = torch.randint(0, 256, batch.video.shape, dtype=torch.uint8)
    batch.labels = torch.randint(0, 8, batch.labels.shape)
    counts = [100, 10, 10, 10, 50, 30, 10, 80]

    trained_cfg = job.model.model_copy(
        update={
            "visual": job.model.visual.model_copy(update={"train": "full"}),
            "audio": job.model.audio.model_copy(update={"train": "full"}),
        }
    )
    frozen_cfg = job.model.model_copy(
        update={
            "visual": job.model.visual.model_copy(update={"train": "frozen"}),
            "audio": job.model.audio.model_copy(update={"train": "frozen"}),
        }
    )
    t = job.train
    model = build_model(trained_cfg, counts).train()
    opt = torch.optim.AdamW(model.param_groups(t.lr, t.encoder_lr, t.weight_decay))
    step = _cpu_median(_train_step(model, opt, batch), args.repeats)

    frozen = build_model(frozen_cfg, counts).train()
    opt_frozen = torch.optim.AdamW(frozen.param_groups(t.lr, t.encoder_lr, t.weight_decay))
    frozen_step = _cpu_median(_train_step(frozen, opt_frozen, batch), args.repeats)

    frames = batch.video[:, :: model.cfg.visual_every].flatten(0, 1)  # the frames a step encodes

    def visual_alone() -> None:
        model.visual.zero_grad()
        model.visual(frames).sum().backward()

    visual = _cpu_median(visual_alone, args.repeats)

    big = torch.randint(0, 256, (128, 3, 112, 112), dtype=torch.uint8)
    size = model.visual.image_size
    as_uint8 = _cpu_median(lambda: model.visual.pixels(big), args.repeats)

    def float_resize() -> None:
        x = F.interpolate(big.float() / 255.0, size=(size, size), mode="bilinear", antialias=True)
        (x - model.visual.mean) / model.visual.std

    as_float = _cpu_median(float_resize, args.repeats)

    rows = [
        Ratio(
            "frozen vs trained encoders, step",
            frozen_step / step,
            0.7,
            higher_is_better=False,
            detail=f"{frozen_step * 1e3:.0f} vs {step * 1e3:.0f} ms",
        ),
        Ratio(
            "whole step vs visual encoder alone",
            step / visual,
            4.0,
            higher_is_better=False,
            detail=f"{step * 1e3:.0f} vs {visual * 1e3:.0f} ms",
        ),
        Ratio(
            "uint8 vs float frame resize 112->64",
            as_uint8 / as_float,
            0.6,
            higher_is_better=False,
            detail=f"{as_uint8 * 1e3:.1f} vs {as_float * 1e3:.1f} ms for 128 frames",
        ),
    ]
    notes = [
        f"model: {args.job} with preset=tiny, hidden={job.model.hidden}; batch 8 x 16 frames at 64 px",
        f"absolute: trained step {step:.3f} s, frozen step {frozen_step:.3f} s of CPU on one thread "
        "(the demo budget is well under 1 s)",
    ]
    print_table("model", rows, notes)
    return 0 if all(r.met for r in rows) else 1
