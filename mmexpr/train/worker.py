"""The per-worker training loop Ray Train runs on every rank.

One step = `grad_accum` micro-batches from this rank's part of the shards, forward and
backward through the DeepSpeed engine, one optimizer step. Every step the ranks agree on
the mean loss parts and on whether a preemption signal arrived (one small all-reduce).
Every `eval_every` steps (and at the last step) all ranks evaluate; every
`checkpoint_every` steps, at the end, on a new best F1 and on preemption all ranks save.

Where a run starts: the newest checkpoint written by this invocation (a Ray restart after a
worker died), else the checkpoint the driver passed (--resume), else step 0. Same world size
and ZeRO stage: DeepSpeed's own sharded load. Otherwise: the portable copy (checkpoint.py).

Determinism on CPU (so a stopped and resumed run repeats the losses of an uninterrupted
one): the model is built under the job seed on every rank, the loader position and every
rank's RNG state are restored, and both the loader (DataLoader draws a seed from the torch
RNG whenever it starts an iterator) and evaluation run under a forked RNG, so neither
moves the stream that dropout draws from.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mmexpr.config import JobConfig, job_from_dict
from mmexpr.data.batch import Batch
from mmexpr.data.loader import make_loader
from mmexpr.model.model import build_model
from mmexpr.train import checkpoint as ckpt
from mmexpr.train import data_loss, fate, preemption
from mmexpr.train.engine import (
    base_optimizer,
    build_engine,
    model_state_bytes,
    placement,
    to_device,
    trainable_params,
    zero_bytes,
    zero_stage_for,
)
from mmexpr.train.evaluation import best_score, evaluate
from mmexpr.train.handoff import LoopConfig, LoopResult, write_progress

PROGRESS_SECONDS = 1.0  # rank 0 tells the driver where it stands at most this often


@dataclass
class Progress:
    """What the loop carries between steps and into checkpoints."""

    step: int = 0
    best_f1: float = -1.0
    best_step: int | None = None
    last_f1: float | None = None  # the last value of train.best_metric's score
    last_scores: dict[str, float] = field(default_factory=dict)
    preempted: bool = False
    resumed_from: str = ""
    history: list[float] = field(default_factory=list)
    data_loss: str = ""  # set when too many samples were skipped: the loop stops
    skips_said: dict[str, int] = field(default_factory=dict)  # per split, the count last printed


def _all_gather(obj: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _seed(job: JobConfig, rank: int) -> None:
    random.seed(job.train.seed * 1000 + rank)
    np.random.seed(job.train.seed * 1000 + rank)
    torch.manual_seed(job.train.seed * 1000 + rank)


def choose_source(run_dir: Path, resume_tag: str | None, started_at: float) -> Path | None:
    """A checkpoint written by this invocation wins (Ray restarted us); else --resume's.
    Only one whose files verify: a corrupt one would fail every restart the same way."""
    newest = ckpt.latest_intact(run_dir / "checkpoints")
    if newest is not None and ckpt.read_meta(newest).get("time", 0) >= started_at:
        return newest
    if resume_tag:
        return Path(resume_tag)
    return None


class Trainer:
    """One rank: engine, loaders, logger; `run()` trains to the end or to a stop."""

    def __init__(self, loop: LoopConfig) -> None:
        # lazy: the driver imports this module before local_ray.start_ray, which must precede Ray
        import ray.train
        import ray.train.torch

        self.job = job_from_dict(loop.job)
        self.run_dir = Path(loop.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.place = placement(self.job, ray.train.torch.get_device())
        self.progress = Progress()
        self.logger = None
        if self.rank == 0:
            # lazy: only rank 0 loads MLflow and matplotlib
            from mmexpr.train.mlflow_run import RunLogger

            self.logger = RunLogger(loop.tracking_uri, loop.run_id)

        source = choose_source(self.run_dir, loop.resume_tag, loop.started_at)
        meta = ckpt.read_meta(source) if source is not None else None
        self.zero_stage = zero_stage_for(self.job, self.world)
        same_layout = meta is not None and meta["world_size"] == self.world and meta["zero_stage"] == self.zero_stage
        torch.manual_seed(self.job.train.seed)  # identical initial weights on every rank
        model = build_model(self.job.model, loop.class_counts, loop.au_positive_rates)
        portable = None
        if meta is not None and not same_layout:
            portable = ckpt.load_portable(source)
            ckpt.load_module_weights(model, portable["weights"])
        self.trainable = trainable_params(model)
        self.states_logged = False
        self.engine, ds_optimizer, self.scheduler = build_engine(model, self.job, self.place)
        self.optimizer = base_optimizer(ds_optimizer)
        client = self._restore(source, same_layout, portable) if source is not None else None
        self.train_loader = self._make_train_loader(client)
        self.batches = iter(self.train_loader)
        if client is not None and same_layout:
            ckpt.set_rng_state(client["rng"][self.rank])
        else:
            _seed(self.job, self.rank)
            if client is not None:
                torch.manual_seed(self.job.train.seed * 1000 + self.rank + 7919 * self.progress.step)

    # ------------------------------------------------------------------ restore

    def _restore(self, source: Path, same_layout: bool, portable: dict | None) -> dict[str, Any]:
        if same_layout:
            client = ckpt.load_sharded(self.engine, source)
        else:
            client = ckpt.load_client_state(source)
            ckpt.restore_portable(self.engine, self.optimizer, portable)
            self.scheduler.load_state_dict(client["scheduler"])
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True):
                group["lr"] = lr
            step = int(client["step"])
            self.engine.global_steps = step
            self.engine.micro_steps = step * self.job.train.grad_accum
            self.engine.global_samples = step * self.job.train.grad_accum * self.job.data.batch_size * self.world
        p = self.progress
        p.step = int(client["step"])
        p.best_f1 = float(client.get("best_f1", -1.0))
        p.best_step = client.get("best_step")
        p.resumed_from = str(source)
        self._check_moments(source)
        return client

    def _check_moments(self, source: Path) -> None:
        """Prove the optimizer state came back: Adam moment norms equal those saved."""
        saved = ckpt.read_meta(source).get("moment_norms")
        live = ckpt.gather_portable(self.engine, self.optimizer)
        if self.rank != 0 or saved is None:
            return
        now = ckpt.moment_norms(live)
        for key, value in saved.items():
            if not math.isclose(now[key], value, rel_tol=1e-5, abs_tol=1e-12):
                raise ckpt.CheckpointError(f"{source}: restored {key} norm {now[key]} != saved {value}")
        self.logger.metrics(
            {"resume/from_step": self.progress.step, "resume/world_size": self.world,
             **{f"resume/{k}_norm_saved": v for k, v in saved.items()},
             **{f"resume/{k}_norm_loaded": v for k, v in now.items()}},
            self.progress.step,
        )
        self.logger.flush()

    def _make_train_loader(self, client: dict | None):
        state = None
        if client is not None:
            states = client["loader"]
            state = states[self.rank] if len(states) == self.world else states[0]
        d = self.job.data
        return make_loader(d.shards, d.train_split, d, train=True, rank=self.rank, world_size=self.world,
                           seed=self.job.train.seed, state=state, video=self.job.model.uses_video)

    # ------------------------------------------------------------------ the loop

    def _to_device(self, batch: Batch) -> Batch:
        return to_device(batch, self.place.device, self.place.bf16)

    def _step(self) -> tuple[dict[str, float], float, float]:
        """One optimizer step; returns (mean loss parts over ranks, seconds, data-wait seconds)."""
        t0 = time.perf_counter()
        wait = 0.0
        sums: dict[str, torch.Tensor] = {}
        for micro in range(self.job.train.grad_accum):
            tw = time.perf_counter()
            with torch.random.fork_rng(devices=[]):  # the loader never moves the training RNG
                batch = next(self.batches)
            wait += time.perf_counter() - tw
            out = self.engine(self._to_device(batch))
            self.engine.backward(out["loss"])
            if micro == self.job.train.grad_accum - 1:
                self._log_model_states()
            self.engine.step()
            for name, value in {"loss": out["loss"], **out["loss_parts"]}.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float().cpu()
        names = sorted(sums)
        vec = torch.stack([sums[n] / self.job.train.grad_accum for n in names] + [torch.tensor(float(preemption.requested()))])
        reduced = self._all_reduce(vec)
        self.progress.preempted = self.progress.preempted or bool(reduced[-1] > 0)
        parts = {n: float(reduced[i]) / self.world for i, n in enumerate(names)}
        return parts, time.perf_counter() - t0, wait

    def _log_model_states(self) -> None:
        """Once per start of the workers, rank 0: the bytes this rank holds of params, grads and
        optimizer state beside the ZeRO formula for its stage, so a run shows that its memory is
        partitioned as configured. Measured between backward and step (the gradients exist
        then) of the first step whose optimizer already has its state: the second of a fresh
        run, the first after a resume."""
        if self.states_logged or self.logger is None or not self.optimizer.state:
            return
        self.states_logged = True
        held = model_state_bytes(self.engine, self.optimizer)
        formula = zero_bytes(self.zero_stage, self.trainable, self.world, self.place.bf16)
        metrics = {f"memory/{k}_gb": v / 1e9 for k, v in held.items()}
        metrics.update({"memory/model_states_gb": sum(held.values()) / 1e9, "memory/zero_formula_gb": formula / 1e9,
                        "memory/trainable_params": float(self.trainable)})
        self.logger.metrics(metrics, self.progress.step + 1)

    def _all_reduce(self, vec: torch.Tensor) -> torch.Tensor:
        if dist.get_backend() == "nccl":
            vec = vec.to(self.place.device)
        dist.all_reduce(vec)
        return vec.cpu()

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics), as DDP does.

        DeepSpeed averages gradients, not buffers: each rank's running statistics drift apart,
        so ranks would evaluate different models, and a checkpoint (rank 0's buffers) would
        score differently from what training logged. Called before evaluating and saving.
        """
        for buffer in self.engine.module.buffers():
            dist.broadcast(buffer.data, src=0)

    def _evaluate(self):
        self._sync_buffers()
        d = self.job.data
        loader = make_loader(d.shards, d.val_split, d, train=False, rank=self.rank, world_size=self.world,
                             seed=self.job.train.seed, video=self.job.model.uses_video)
        with torch.random.fork_rng(devices=[]):
            evaluation = evaluate(self.engine, loader, self._to_device, keep_va_sample=self.rank == 0,
                                  smooth=self.job.model.smooth)
        self._account(loader, d.val_split)
        return evaluation

    def _use_au_thresholds(self, scores) -> None:
        """Per-AU thresholds tuned on this evaluation go into the model (every rank reduced the
        same counts, so all agree), hence into the checkpoint that predict loads."""
        if scores.au is not None and scores.au.thresholds is not None:
            buffer = self.engine.module.au_thresholds
            buffer.copy_(torch.as_tensor(scores.au.thresholds, dtype=buffer.dtype, device=buffer.device))

    def _account(self, loader, split: str) -> None:
        """Sum the samples skipped by every rank; print and log them; stop above data.max_skipped."""
        total = data_loss.summed(loader.tally())
        samples = loader.manifest.samples
        if self.rank == 0 and total.skipped != self.progress.skips_said.get(split, 0):
            self.progress.skips_said[split] = total.skipped
            print(f"data: {data_loss.describe(total, split, samples)}", flush=True)
        if self.logger is not None and total.read:
            self.logger.metrics(data_loss.metrics(total, split, samples), self.progress.step)
        found = data_loss.problem(total, split, samples, self.job.data.max_skipped)
        if found and not self.progress.data_loss:
            self.progress.data_loss = found

    def _save(self, is_best: bool) -> None:
        self._sync_buffers()
        p = self.progress
        client = {
            "step": p.step,
            "epoch": self.train_loader.epoch,
            "loader": _all_gather(self.train_loader.state_dict()),
            "rng": _all_gather(ckpt.rng_state()),
            "best_f1": p.best_f1,
            "best_step": p.best_step,
            "scheduler": self.scheduler.state_dict(),
            "world_size": self.world,
        }
        meta = {"world_size": self.world, "zero_stage": self.zero_stage, "epoch": self.train_loader.epoch,
                "val_macro_f1": p.last_scores.get("val/macro_f1"), "val_score": p.last_f1,
                "val_scores": p.last_scores, "best_metric": self.job.train.best_metric,
                "run_id": self.logger.run_id if self.logger else None}
        saved = ckpt.save(self.engine, self.optimizer, self.ckpt_dir, p.step, client, meta,
                          is_best=is_best, keep_last=self.job.train.keep_last)
        if saved is not None and self.logger is not None:
            self.logger.checkpoint(saved.path, p.step, saved.seconds, saved.bytes, is_best, p.last_f1)
            self.logger.flush()

    def _lrs(self) -> dict[str, float]:
        out = {}
        for group in self.optimizer.param_groups:
            name = group.get("name", "head")
            key = "train/lr_encoders" if name.startswith("encoders") else "train/lr"
            out.setdefault(key, float(group["lr"]))
        return out

    def _report_progress(self, loss: float, samples_per_s: float) -> None:
        """Where this run stands, for the driver's progress display (rank 0 only)."""
        p = self.progress
        write_progress(self.run_dir, p.step, {"max_steps": self.job.train.max_steps, "loss": loss,
                                              "f1": p.last_f1, "samples_per_s": samples_per_s})

    def run(self) -> LoopResult:
        t = self.job.train
        p = self.progress
        stop_at = min(t.max_steps, p.step + t.stop_after) if t.stop_after else t.max_steps
        per_step = self.world * self.job.data.batch_size * t.grad_accum
        reported, rate = 0.0, 0.0
        preemption.arm()
        try:
            while p.step < stop_at and not p.preempted and not p.data_loss:
                parts, seconds, wait = self._step()
                p.step += 1
                if p.step % t.log_every == 0 or p.step == stop_at:
                    self._account(self.train_loader, self.job.data.train_split)
                    if p.data_loss:
                        break
                p.history.append(parts["loss"])
                if self.logger is not None:
                    metrics = {f"train/{k}": v for k, v in parts.items()}
                    metrics.update(self._lrs())
                    metrics["train/samples_per_s"] = per_step / seconds
                    metrics["train/data_wait"] = wait / seconds
                    if self.place.accelerator == "cuda":
                        metrics["train/gpu_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
                    self.logger.metrics(metrics, p.step)
                    if p.step % t.log_every == 0:
                        self.logger.flush()
                rate = per_step / seconds
                if self.rank == 0 and time.monotonic() - reported >= PROGRESS_SECONDS:
                    reported = time.monotonic()
                    self._report_progress(parts["loss"], rate)
                is_best = False
                if p.step % t.eval_every == 0 or p.step == t.max_steps:
                    evaluation = self._evaluate()
                    scores = evaluation.scores
                    self._use_au_thresholds(scores)
                    p.last_f1 = best_score(scores, t.best_metric, self.job.model.tasks)
                    p.last_scores = scores.as_metrics("val/")
                    is_best = p.last_f1 > p.best_f1
                    if is_best:
                        p.best_f1, p.best_step = p.last_f1, p.step
                    if self.logger is not None:
                        self.logger.evaluation(evaluation, p.step)
                    if p.data_loss:
                        break
                if p.step % t.checkpoint_every == 0 or p.step == stop_at or p.preempted or is_best:
                    self._save(is_best)
        finally:
            preemption.disarm()
            if self.rank == 0:
                self._report_progress(p.history[-1] if p.history else float("nan"), rate)
            if self.logger is not None:
                self.logger.flush()
        return LoopResult(step=p.step, best_f1=p.best_f1, best_step=p.best_step, last_f1=p.last_f1,
                          preempted=p.preempted, resumed_from=p.resumed_from, world_size=self.world,
                          data_loss=p.data_loss)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry point on every rank.

    Rank 0 attaches a one-file Ray checkpoint (result.json) to its final report: Ray Train
    returns to the driver only metrics that come with a checkpoint. The model checkpoints
    themselves stay in the run folder (checkpoint.py), not copied into Ray's storage.
    """
    import ray.train  # lazy: see Trainer.__init__

    loop = LoopConfig.from_dict(config)
    fate.watch(loop.driver_pid, loop.driver_started)
    trainer = Trainer(loop)
    result = trainer.run().to_dict()
    if trainer.rank != 0:
        ray.train.report(result)
        return
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "result.json").write_text(json.dumps(result))
        ray.train.report(result, checkpoint=ray.train.Checkpoint.from_directory(tmp))
