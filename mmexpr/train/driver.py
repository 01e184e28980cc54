"""`run_training(job, resume)`: check the job, start Ray, run Ray Train workers, close the run.

The driver never trains. It does what must happen once per invocation and before any
worker starts (so a bad job costs a second, not a cluster start): validate the shards and
the resume source, open or re-open the MLflow run, start Ray (an in-process cluster on
127.0.0.1 unless RAY_ADDRESS or `address` names one), then hand a TorchTrainer the job.
Workers are restarted by Ray (FailureConfig) and pick up the newest checkpoint themselves.
At the end it closes the MLflow run and registers the best checkpoint's consolidated weights.

On disk, under `job.output` (absolute paths are passed to workers):
    mlflow.db, mlartifacts/          the local MLflow store (when no other store is set)
    <job.name>/<run_id>/checkpoints/ see checkpoint.py
    <job.name>/<run_id>/ray/         Ray Train's own run folders (one per invocation)
    <job.name>/<run_id>/config.yaml  the resolved job of the last invocation
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import psutil
import torch
import yaml

from mmexpr.config import JobConfig, with_absolute_paths
from mmexpr.data.batch import audio_samples
from mmexpr.data.loader import make_loader, read_manifest
from mmexpr.data.manifest import manifest_path
from mmexpr.errors import UserError
from mmexpr.local_ray import start_ray as connect
from mmexpr.progress import Progress
from mmexpr.store import Store, choose_store
from mmexpr.train import checkpoint as ckpt
from mmexpr.train import fate, mlflow_run
from mmexpr.train.engine import zero_stage_for
from mmexpr.train.handoff import LoopConfig, LoopResult, read_progress
from mmexpr.train.worker import train_loop_per_worker

SETUP_HOOK = "mmexpr.train.worker_setup.setup"


class DataLossError(UserError, RuntimeError):
    """Too many samples could not be used (data.max_skipped); the message names the shards."""


class TrainSetupError(UserError):
    """The job cannot start: missing shards, an unknown --resume, too few samples..."""


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    tracking_uri: str
    run_dir: Path
    step: int
    best_f1: float
    best_step: int | None
    last_f1: float | None
    preempted: bool
    latest_checkpoint: Path | None
    best_checkpoint: Path | None
    registered_version: str | None
    world_size: int

    def summary(self) -> str:
        lines = [
            f"run {self.run_id}: step {self.step}, world size {self.world_size}"
            + (" (stopped by a preemption signal; resume with --resume latest)" if self.preempted else ""),
            f"  best val score {self.best_f1:.4f} at step {self.best_step}" if self.best_step else "  no evaluation yet",
            f"  checkpoints: {self.run_dir / 'checkpoints'} (latest {self.latest_checkpoint.name if self.latest_checkpoint else '-'})",
            f"  MLflow: {self.tracking_uri}",
        ]
        if self.registered_version:
            lines.append(f"  registered model version {self.registered_version}")
        return "\n".join(lines)


@dataclass(frozen=True)
class ResumePoint:
    run_dir: Path
    run_id: str
    tag: Path


# ---------------------------------------------------------------- checks before Ray


def check_data(job: JobConfig) -> tuple[list[int], list[float] | None]:
    """Both splits readable and big enough; returns the train class counts (for CE weights) and
    AU positive rates (for BCE positive weights). A task of model.tasks without any labelled
    frame in the train split is an error: its head would learn nothing."""
    d = job.data
    for split in (d.train_split, d.val_split):
        path = manifest_path(d.shards, split)
        if "://" not in path and not Path(path).is_file():
            raise TrainSetupError(
                f"data.shards: no {path} (split {split!r}); pack the corpus first: ./launch pack SOURCE {d.shards}"
            )
        read_manifest(path)  # raises ManifestError (a UserError) naming the problem
    # The loader's own checks (e.g. fewer chunks than ranks x loader workers), for rank 0's view.
    make_loader(d.shards, d.train_split, d, train=True, rank=0, world_size=job.train.workers, seed=job.train.seed)
    train = read_manifest(manifest_path(d.shards, d.train_split))
    stats = train.task_stats()
    if stats:
        empty = [t for t in job.model.tasks if not stats.get(t, {}).get("frames")]
        if empty:
            raise TrainSetupError(
                f"model.tasks {job.model.tasks}: the train split of {d.shards} has no labelled frame for "
                f"{', '.join(empty)} (manifest tasks: {sorted(stats)}); pack its annotations or drop the task"
            )
    return train.class_counts(), train.au_positive_rates()


ACTIVATION_COPIES = 4  # float32 copies of a batch's frames the forward pass holds at least


def batch_memory(job: JobConfig) -> int:
    """A lower bound on the bytes one worker holds for its batches: the uint8 batches the
    loader has in flight (batch.py's shapes) and the float32 frames with the activations
    of the visual encoder's first layers, each at least the size of its input (only the frames
    it encodes: every `model.visual_every`-th, none without video)."""
    d = job.data
    frames = d.batch_size * d.window * 3 * d.image_size**2
    audio = d.batch_size * audio_samples(d.window, d.sample_rate) * 4
    in_flight = 1 + 2 * d.loader_workers  # the one in use, two prefetched per loader worker
    encoded = frames * math.ceil(d.window / job.model.visual_every) // d.window if job.model.uses_video else 0
    return in_flight * (frames + audio) + ACTIVATION_COPIES * 4 * encoded


def check_memory(job: JobConfig) -> None:
    """Refuse at start a batch that cannot fit in this machine's memory (or one GPU's), so a
    job does not die a minute later in Ray's out-of-memory killer."""
    need = batch_memory(job)
    if job.train.use_gpu:
        have, where = torch.cuda.get_device_properties(0).total_memory, "one GPU's memory"
    else:
        need *= job.train.workers
        have, where = psutil.virtual_memory().total, f"this machine's memory ({job.train.workers} workers)"
    if need > have:
        d = job.data
        raise TrainSetupError(
            f"data.batch_size={d.batch_size} x data.window={d.window} frames x data.image_size={d.image_size}^2 "
            f"needs at least {need / 2**30:.1f} GiB for batches alone, more than {where}, {have / 2**30:.1f} GiB; "
            "lower data.window, data.batch_size, data.image_size or train.workers"
        )


def check_resources(job: JobConfig, address: str | None) -> None:
    if address:
        return  # a cluster's resources are its own; Ray reports what it lacks
    check_memory(job)
    if job.train.use_gpu:
        if torch.cuda.device_count() < job.train.workers:
            raise TrainSetupError(
                f"train.use_gpu with train.workers={job.train.workers}: this machine has "
                f"{torch.cuda.device_count()} GPU(s); one worker per GPU"
            )


def resolve_resume(job: JobConfig, resume: str) -> ResumePoint:
    """`latest` (this job's newest run), a run id, or a path (run, checkpoints or tag folder)."""
    root = Path(job.output) / job.name
    if resume == "latest":
        candidates = []
        for run_dir in root.glob("*") if root.is_dir() else []:
            tag = ckpt.latest_intact(run_dir / "checkpoints")
            if tag is not None:
                candidates.append((ckpt.read_meta(tag).get("time", 0), run_dir, tag))
        if not candidates:
            raise TrainSetupError(f"--resume latest: no checkpoint under {root} (job {job.name!r}, output {job.output!r})")
        _, run_dir, tag = max(candidates, key=lambda c: c[0])
        return ResumePoint(run_dir, run_dir.name, tag)
    path = Path(resume)
    if not path.exists():
        matches = [p for p in Path(job.output).glob(f"*/{resume}") if (p / "checkpoints").is_dir()]
        if not matches:
            raise TrainSetupError(
                f"--resume {resume}: not 'latest', not a run id under {job.output}/*/, and not an existing path"
            )
        path = matches[0]
    path = path.resolve()
    if (path / ckpt.META).is_file():
        found = ckpt.problem(path)
        if found is not None:
            raise TrainSetupError(f"--resume {resume}: corrupt checkpoint: {found}; resume from its run folder "
                                  "to take the newest intact one")
        run_dir = path.parent.parent
        return ResumePoint(run_dir, run_dir.name, path)
    run_dir = path.parent if (path / "latest").is_file() or path.name == "checkpoints" else path
    tag = ckpt.latest_intact(run_dir / "checkpoints")
    if tag is None:
        raise TrainSetupError(f"--resume {resume}: no complete and intact checkpoint in {run_dir / 'checkpoints'}")
    return ResumePoint(run_dir, run_dir.name, tag)


def check_resume_fits(job: JobConfig, point: ResumePoint) -> None:
    """The model must be the one that was saved; workers, ZeRO stage, schedule may change."""
    saved = point.run_dir / "config.yaml"
    if not saved.is_file():
        return
    before = yaml.safe_load(saved.read_text()).get("model", {})
    now = job.to_dict()["model"]
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        raise TrainSetupError(
            f"--resume {point.tag}: model.{', model.'.join(changed)} differ from the saved run "
            f"({saved}); a checkpoint only loads into the model it was saved from"
        )


# ---------------------------------------------------------------- Ray


def start_ray(job: JobConfig, address: str | None = None) -> bool:
    """Connect to `address`/RAY_ADDRESS, or start a local cluster on 127.0.0.1; True if we started one."""
    cpus = max(os.cpu_count() or 1, job.train.workers * job.train.cpus_per_worker)
    return connect(
        address or os.environ.get("RAY_ADDRESS"),
        num_cpus=cpus,
        runtime_env={"worker_process_setup_hook": SETUP_HOOK},
        log_to_driver=True,
    )


def follow_progress(job: JobConfig, loop: LoopConfig, stop: threading.Event) -> None:
    """The one progress display of a training: rank 0's reports (handoff.write_progress), read
    here every second until `stop` is set."""
    bar: Progress | None = None
    while True:
        stopping = stop.wait(1.0)
        report = read_progress(Path(loop.run_dir), loop.started_at)
        if report is not None:
            if bar is None:
                bar = Progress(job.train.max_steps, "train", "step", enabled=job.train.progress,
                               initial=int(report["step"]))
            f1 = report.get("f1")
            bar.set(int(report["step"]), loss=f"{report['loss']:.3f}",
                    f1=f"{f1:.3f}" if f1 is not None else "-",
                    samples_s=f"{report['samples_per_s']:.1f}")
        if stopping:
            break
    if bar is not None:
        bar.close()


def _fit(job: JobConfig, loop: LoopConfig, run_dir: Path):
    # lazy: Ray only after local_ray.start_ray (it sets env Ray reads at import); loopback imports Ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from mmexpr.train.loopback import LoopbackTorchConfig, cluster_on_loopback

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop.to_dict(),
        torch_config=LoopbackTorchConfig() if cluster_on_loopback() else None,
        scaling_config=ScalingConfig(
            num_workers=job.train.workers,
            use_gpu=job.train.use_gpu,
            resources_per_worker={"CPU": job.train.cpus_per_worker, **({"GPU": 1} if job.train.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=f"train-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(run_dir / "ray"),
            failure_config=FailureConfig(max_failures=job.train.max_failures),
        ),
    )
    return trainer.fit()


# ---------------------------------------------------------------- the whole invocation


def run_training(
    job: JobConfig, resume: str | None = None, *, address: str | None = None, tags: dict[str, str] | None = None
) -> TrainResult:
    """Train `job` (continuing `resume`: 'latest', a run id or a path) and return what happened.

    `tags` go on the MLflow run when it opens (a sweep's id), so a run that fails still has them."""
    job = with_absolute_paths(job)
    class_counts, au_rates = check_data(job)
    check_resources(job, address)
    point = resolve_resume(job, resume) if resume else None
    if point is not None:
        check_resume_fits(job, point)

    store = choose_store(job)
    print(store.note, flush=True)
    tags = {**(tags or {}), "world_size": str(job.train.workers),
            "accelerator": "gpu" if job.train.use_gpu else "cpu", "zero_stage": str(zero_stage_for(job, job.train.workers))}
    run_id = None
    if point is not None:
        try:
            run_id = mlflow_run.open_run(store, job, point.run_id, {**tags, "resumed_from": str(point.tag)})
        except LookupError as exc:
            print(f"{exc}; recording the resumed training in a new run", flush=True)
    if run_id is None:
        run_id = mlflow_run.open_run(store, job, None, tags)
    run_dir = point.run_dir if point is not None else Path(job.output) / job.name / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    job.write(run_dir / "config.yaml")
    print(f"run {run_id}: {run_dir}" + (f", resuming from {point.tag}" if point else ""), flush=True)

    loop = LoopConfig(
        job=job.to_dict(),
        run_dir=str(run_dir),
        run_id=run_id,
        tracking_uri=store.uri,
        resume_tag=str(point.tag) if point else None,
        class_counts=class_counts,
        au_positive_rates=au_rates,
        started_at=time.time(),
    )
    started = start_ray(job, address)
    loop = _with_fate(loop)
    status = "FAILED"
    try:
        stop = threading.Event()
        display = threading.Thread(target=follow_progress, args=(job, loop, stop), daemon=True)
        display.start()
        try:
            fitted = _fit(job, loop, run_dir)
        finally:
            stop.set()
            display.join(timeout=5)
        outcome = LoopResult.from_metrics(fitted.metrics or {})
        if outcome.data_loss:
            raise DataLossError(f"training stopped at step {outcome.step}: {outcome.data_loss}")
        done = outcome.step >= job.train.max_steps and not outcome.preempted
        ckpt.repoint(run_dir / "checkpoints")
        version = _register(store, job, run_id, run_dir) if done and job.track.register_model else None
        status = "FINISHED" if done else "KILLED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _close(store, run_id, status)
        if started:
            import ray  # lazy: see _fit

            ray.shutdown()
    out = TrainResult(
        run_id=run_id,
        tracking_uri=store.uri,
        run_dir=run_dir,
        step=outcome.step,
        best_f1=outcome.best_f1,
        best_step=outcome.best_step,
        last_f1=outcome.last_f1,
        preempted=outcome.preempted,
        latest_checkpoint=ckpt.latest(run_dir / "checkpoints"),
        best_checkpoint=ckpt.best(run_dir / "checkpoints"),
        registered_version=version,
        world_size=outcome.world_size,
    )
    print(out.summary(), flush=True)
    return out


def _with_fate(loop: LoopConfig) -> LoopConfig:
    """On the local loopback cluster, workers end when this driver process dies (fate.py)."""
    from mmexpr.train.loopback import cluster_on_loopback  # lazy: imports Ray; see _fit

    if not cluster_on_loopback():
        return loop
    pid, started = fate.identity()
    return replace(loop, driver_pid=pid, driver_started=started)


def _close(store: Store, run_id: str, status: str) -> None:
    try:
        mlflow_run.finish_run(store, run_id, status)
    except Exception as exc:  # the store going away at the end must not hide the result
        print(f"MLflow: could not mark run {run_id} {status}: {exc}", flush=True)


def _register(store: Store, job: JobConfig, run_id: str, run_dir: Path) -> str | None:
    """Register the best checkpoint's consolidated weights (the latest if none was evaluated)."""
    ckpt_dir = run_dir / "checkpoints"
    tag = ckpt.best_intact(ckpt_dir) or ckpt.latest_intact(ckpt_dir)
    if tag is None:
        print(f"not registered: no intact checkpoint in {ckpt_dir}", flush=True)
        return None
    meta = {**ckpt.read_meta(tag), "path": str(tag)}
    weights = ckpt.load_portable(tag)["weights"]
    try:
        version = mlflow_run.register_model(store, run_id, job.track.register_model, weights, job, meta)
    except Exception as exc:  # registry trouble must not fail a finished training
        print(f"MLflow: could not register the model: {exc}", flush=True)
        return None
    print(f"registered {job.track.register_model} version {version} from {tag}", flush=True)
    return version
