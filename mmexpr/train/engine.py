"""One worker's model, optimizer, schedule and DeepSpeed engine, built from the job.

The DeepSpeed config is derived from `job.train` here (not read from a JSON file) so that
one validated job is the single source of truth; cluster/deepspeed/zero.json shows the
same keys for readers who know DeepSpeed. The optimizer is plain `torch.optim.AdamW`
handed to DeepSpeed as a client optimizer: it runs on every accelerator (DeepSpeed's
FusedAdam needs CUDA, its CPUAdam a C++ build), and ZeRO partitions its state all the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from mmexpr.config import JobConfig
from mmexpr.data.batch import Batch


@dataclass(frozen=True)
class Placement:
    """Where this worker computes: device, precision and the collective backend it uses."""

    device: torch.device
    bf16: bool
    accelerator: str  # "cuda" or "cpu"


def placement(job: JobConfig, device: torch.device) -> Placement:
    """bf16 on GPUs (precision=auto or bf16), fp32 on CPUs: bf16 matmuls on CPU are slow and
    DeepSpeed's CPU path is tested in fp32."""
    on_gpu = device.type == "cuda"
    bf16 = on_gpu and job.train.precision in ("auto", "bf16")
    return Placement(device, bf16, "cuda" if on_gpu else "cpu")


def zero_stage_for(job: JobConfig, world_size: int) -> int:
    """The ZeRO stage a run uses: the job's, except on one worker without offload.

    ZeRO partitions states over the ranks; over one rank it partitions nothing and only adds
    the copies into and out of its flat fp32 buffers, a visible share of a CPU step (`bench
    train` measures it; README has the figure). With offload the stage is kept, since moving
    optimizer state to the CPU is the point of a one-GPU run.
    """
    t = job.train
    return 0 if world_size == 1 and not t.offload else t.zero_stage


def deepspeed_config(job: JobConfig, place: Placement, stage: int) -> dict[str, Any]:
    """The DeepSpeed config dict for this job (see cluster/deepspeed/zero.json) at ZeRO `stage`
    (`zero_stage_for`)."""
    t = job.train
    zero: dict[str, Any] = {"stage": stage}
    if stage >= 1:
        zero.update(contiguous_gradients=True, overlap_comm=place.accelerator == "cuda")
    if t.offload and stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": place.accelerator == "cuda"}
    if t.offload and stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": place.accelerator == "cuda"}
    return {
        "train_micro_batch_size_per_gpu": job.data.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": place.bf16},
        "fp16": {"enabled": False},
        # A client torch optimizer is deliberate (see the module docstring).
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def warmup_cosine(warmup: int, total: int, floor: float = 0.05):
    """lr multiplier per optimizer step: linear warmup, then cosine down to `floor`."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        span = max(1, total - warmup)
        progress = min(1.0, (step - warmup) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def make_optimizer(model: torch.nn.Module, job: JobConfig) -> torch.optim.Optimizer:
    """AdamW over the model's groups: encoders at encoder_lr, the rest at lr, no decay on biases."""
    t = job.train
    groups = model.param_groups(t.lr, t.encoder_lr, t.weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters (every encoder frozen and no head?)")
    # foreach=False: the same per-parameter arithmetic on every world size, so a run
    # resumed on another number of workers continues the same optimisation.
    return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay, foreach=False)


def make_scheduler(optimizer: torch.optim.Optimizer, job: JobConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(job.train.warmup_steps, job.train.max_steps)
    )


def disable_shm_comm_build() -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory all-reduce op on CPU.

    The op only speeds up inference all-reduce (AutoTP); training collectives go through
    torch.distributed/gloo either way. Building it is a C++ compile on the first run of every
    fresh machine, which a CPU training run should not pay.
    """
    import deepspeed.ops  # lazy: the driver imports this module; DeepSpeed loads in the workers

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def broadcast_scalar_params(model: torch.nn.Module) -> None:
    """Broadcast 0-dim parameters ourselves and keep DeepSpeed's initial broadcast off them.

    DeepSpeed 0.19.8's `_broadcast_model` sends every parameter as `p.data.view(uint8)`,
    which torch refuses for 0-dim tensors (e.g. the contrastive loss's learnable
    temperature). Parameters carrying `ds_optim_param` are skipped by that broadcast (the
    attribute otherwise only matters for super-offload ratios, which we never set).
    """
    for param in model.parameters():
        if param.dim() == 0:
            if dist.is_initialized():
                dist.broadcast(param.data, src=0)
            param.ds_optim_param = False


def build_engine(model: torch.nn.Module, job: JobConfig, place: Placement):
    """model -> (DeepSpeed engine, its optimizer, our scheduler); torch.distributed is already up.
    The engine runs `zero_stage_for(job, world size)`."""
    import deepspeed  # lazy: see disable_shm_comm_build

    if place.accelerator == "cpu":
        disable_shm_comm_build()
    model = model.to(place.device)
    broadcast_scalar_params(model)
    optimizer = make_optimizer(model, job)
    scheduler = make_scheduler(optimizer, job)
    world = dist.get_world_size() if dist.is_initialized() else 1
    stage = zero_stage_for(job, world)
    engine, ds_optimizer, _, ds_scheduler = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(job, place, stage),
        dist_init_required=False,
    )
    if world == 1 and stage == 0:
        # Without ZeRO, DeepSpeed all-reduces gradients after every backward by flattening them
        # into buckets and copying the averages back: over one rank that averages nothing and
        # is whole extra passes over the gradients, the largest part of the engine's overhead
        # at paper size (`bench train --preset scratch`; README has the figures).
        engine.enable_backward_allreduce = False
    return engine, ds_optimizer, ds_scheduler


def base_optimizer(ds_optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside DeepSpeed's ZeRO wrapper (stage 0 has no wrapper)."""
    inner = getattr(ds_optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else ds_optimizer


def trainable_params(model: torch.nn.Module) -> int:
    """Ψ of the ZeRO formulas: counted before the engine partitions the model (a ZeRO-3
    partition leaves each parameter's own tensor empty)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _span(t: torch.Tensor) -> tuple[str, int, int]:
    """(device, first byte, end) of the memory a tensor reaches: from its strides, so a strided
    view covers its whole extent and an expanded one (stride 0) only the bytes that exist."""
    reach = 1 + sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride(), strict=True))
    return str(t.device), t.data_ptr(), t.data_ptr() + reach * t.element_size()


def _union_bytes(spans: list[tuple[str, int, int]]) -> int:
    """Bytes covered by the spans, each byte once (per device: addresses repeat across them)."""
    total, reach = 0, ("", -1)
    for device, lo, hi in sorted(spans):
        if device != reach[0]:
            reach = (device, lo)
        lo = max(lo, reach[1])
        if hi > lo:
            total += hi - lo
            reach = (device, hi)
    return total


def model_state_bytes(engine, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """What this rank holds of the trainable model, read between backward and step (the
    gradients exist then): params (or its ZeRO-3 partition), grads (full, partitions, the
    flat buffers DeepSpeed reduces them into, or the offloaded optimizer's own fp32 buffer) and
    optimizer state (the tensors it updates, where they are a master copy apart from the
    parameters, and the Adam moments).

    Memory is counted, not tensors: DeepSpeed's buffers view one another (fp32 stage 0 updates
    the parameters themselves; gradient partitions are views into one flat buffer), so each
    byte counts once, under the first of params, grads, optimizer that holds it. Host memory
    counts too: an offloaded optimizer still costs its bytes. So the count can exceed the ZeRO
    formula where DeepSpeed holds a buffer the paper does not (ZeRO-3 with offload reduces the
    gradients into one fp32 partition and copies them into the master's own).
    """
    params, grads, state = [], [], []
    for p in engine.module.parameters():
        if not p.requires_grad:
            continue
        held = getattr(p, "ds_tensor", None)
        params.append(held if held is not None else p)
        if p.grad is not None:
            grads.append(p.grad)
    averaged = getattr(engine.optimizer, "averaged_gradients", None) or {}
    for value in averaged.values():
        grads += [t for t in (value if isinstance(value, list) else [value]) if isinstance(t, torch.Tensor)]
    for name in ("grad_partitions_flat_buffer", "fp32_groups_gradients_flat"):  # ZeRO-3; bf16 stage 0
        buffers = getattr(engine.optimizer, name, None)
        grads += [t for t in (buffers if isinstance(buffers, list) else [buffers]) if isinstance(t, torch.Tensor)]
    # The optimizer's state is keyed by what it updates: the parameters themselves (fp32 stage 0)
    # or fp32 master copies (ZeRO's flat partitions; bf16's unfused optimizer); ZeRO-3 swaps them
    # in and out of param_groups per sub-group, so the state keys are the reliable list.
    for updated, moments in optimizer.state.items():
        state.append(updated)
        if updated.grad is not None:
            grads.append(updated.grad)  # with offload, the gradient partition lives here
        state += [moments[k] for k in ("exp_avg", "exp_avg_sq") if k in moments]
    spans = [[_span(t) for t in group if t.numel()] for group in (params, grads, state)]
    p_bytes = _union_bytes(spans[0])
    pg_bytes = _union_bytes(spans[0] + spans[1])
    return {"params": p_bytes, "grads": pg_bytes - p_bytes,
            "optimizer": _union_bytes(spans[0] + spans[1] + spans[2]) - pg_bytes}


def zero_bytes(stage: int, psi: int, ranks: int, bf16: bool = False) -> float:
    """Model-state bytes per rank by the ZeRO paper's formulas (Rajbhandari et al. 2020, Fig. 1)
    for Ψ trainable parameters over `ranks`: params and grads at 2 bytes each under bf16, 4 in
    fp32; K bytes of optimizer state per parameter, 8 for Adam's moments plus 4 for the fp32
    master copy DeepSpeed keeps at every ZeRO stage and under bf16; only plain fp32 stage 0
    has none (the optimizer updates the parameters themselves). DeepSpeed 0.19.8's ZeRO-3 would
    reuse an fp32 partition as its own master, but it compares the partition's torch.device
    with the accelerator's device name, a string, which is never equal, so it copies
    (`model_state_bytes` counts memory, so it would show the day it does not).
    Stage 0: (b_p+b_g+K)Ψ; 1: (b_p+b_g)Ψ + KΨ/N; 2: b_pΨ + (b_g+K)Ψ/N; 3: (b_p+b_g+K)Ψ/N."""
    bp = bg = 2 if bf16 else 4
    k = 8 if stage == 0 and not bf16 else 12
    return {
        0: (bp + bg + k) * psi,
        1: (bp + bg) * psi + k * psi / ranks,
        2: bp * psi + (bg + k) * psi / ranks,
        3: (bp + bg + k) * psi / ranks,
    }[stage]


def to_device(batch: Batch, device: torch.device, bf16: bool) -> Batch:
    """The batch on the worker's device; under bf16 the waveform goes in as bf16 like the
    weights of the audio encoder."""
    return batch.to(device, torch.bfloat16 if bf16 else None)
