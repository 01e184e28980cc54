"""Checkpoints: DeepSpeed's sharded ones, published atomically, plus a portable copy.

Folder of one run: `<run_dir>/checkpoints/`
    step-00000040/            one published checkpoint (a DeepSpeed tag folder)
        mp_rank_00_model_states.pt, zero_pp_rank_*_optim_states.pt   DeepSpeed's shards
                              (ZeRO-3: zero_pp_rank_*_mp_rank_00_model_states.pt, one per rank)
        portable.pt           consolidated fp32 weights + full Adam moments, by parameter name
        meta.json             step, world size, ZeRO stage, eval F1, size + sha256 of every
                              other file: written last
    latest                    text file naming the newest published tag (DeepSpeed's convention)
    best                      text file naming the tag with the best validation macro F1
    .tmp-step-00000060/       a write in progress (or one that was interrupted)

Publishing: every rank writes into `.tmp-<tag>`, all ranks meet at a barrier, then rank 0
renames the folder to `<tag>` and only then replaces `latest` (write a temp file + os.replace).
A crash at any point leaves `latest` naming a complete checkpoint; leftover temp folders are
ignored by readers and removed by the next save.

Integrity: meta.json records the size and sha256 of every file of the checkpoint, hashed
after all ranks wrote them. A resume, a registration and predict verify them
(`verify`); a checkpoint whose files changed since (a truncated shard, flipped bytes) is
named and passed over for the newest intact one before it (`latest_intact`, `best_intact`),
and `repoint` moves a `best`/`latest` pointer off it. Older checkpoints without the record
are taken as they are.

Why the portable copy: DeepSpeed's ZeRO shards are cut for one world size. Resuming on
another number of workers needs either DeepSpeed's universal-checkpoint conversion (which
expects Megatron-style client metadata) or the full state per parameter. `portable.pt`
holds exactly that, gathered with DeepSpeed's own tensor-fragment API
(`safe_get_full_fp32_param` / `safe_get_full_optimizer_state`), so a different world size
(or ZeRO stage) restores weights, both Adam moments, the step counts and the schedule. It also
serves as the consolidated weights of the registered model. It costs one extra full copy of
the fp32 state per checkpoint, on rank 0's disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

TAG_PREFIX = "step-"
TMP_PREFIX = ".tmp-"
META = "meta.json"
FILES = "files"  # in meta.json: relative path -> [bytes, sha256]
PORTABLE = "portable.pt"
MOMENTS = ("exp_avg", "exp_avg_sq")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used for what was asked (named in the message)."""


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


@dataclass(frozen=True)
class Saved:
    """What a save produced (rank 0's view)."""

    path: Path
    step: int
    seconds: float
    bytes: int


# ---------------------------------------------------------------- reading the folder


def read_meta(tag_dir: Path) -> dict[str, Any]:
    path = Path(tag_dir) / META
    if not path.is_file():
        raise CheckpointError(f"{tag_dir}: not a complete checkpoint (no {META})")
    return json.loads(path.read_text())


def published_tags(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints in the order they were saved (temp folders and half-written
    tags left out). Save order, not step order: after resuming from an older checkpoint,
    the newest saves are the ones to keep."""
    if not ckpt_dir.is_dir():
        return []
    tags = [p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith(TAG_PREFIX) and (p / META).is_file()]
    return sorted(tags, key=lambda p: (read_meta(p).get("time", 0.0), p.name))


def _pointer(ckpt_dir: Path, name: str) -> Path | None:
    path = ckpt_dir / name
    if not path.is_file():
        return None
    tag = ckpt_dir / path.read_text().strip()
    return tag if (tag / META).is_file() else None


def latest(ckpt_dir: Path) -> Path | None:
    """The `latest` pointer's tag; if the pointer is missing or names a lost folder, the
    last complete tag saved."""
    ckpt_dir = Path(ckpt_dir)
    pointed = _pointer(ckpt_dir, "latest")
    if pointed is not None:
        return pointed
    tags = published_tags(ckpt_dir)
    return tags[-1] if tags else None


def best(ckpt_dir: Path) -> Path | None:
    return _pointer(Path(ckpt_dir), "best")


def _write_pointer(ckpt_dir: Path, name: str, tag: str) -> None:
    tmp = ckpt_dir / f".{name}.tmp"
    with open(tmp, "w") as f:
        f.write(tag + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckpt_dir / name)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- integrity


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_record(tag_dir: Path) -> dict[str, list]:
    """[bytes, sha256] of every file under a checkpoint folder but meta.json, by relative path."""
    tag_dir = Path(tag_dir)
    files = sorted(f for f in tag_dir.rglob("*") if f.is_file() and f.name != META)
    return {str(f.relative_to(tag_dir)): [f.stat().st_size, _sha256(f)] for f in files}


def write_meta(tag_dir: Path, meta: dict[str, Any]) -> None:
    """meta.json with the record of every other file; written last, it marks the folder complete."""
    full = {**meta, FILES: file_record(tag_dir)}
    (Path(tag_dir) / META).write_text(json.dumps(full, indent=1))


def problem(tag_dir: Path) -> str | None:
    """What is wrong with a published checkpoint's files, naming the file; None if intact."""
    tag_dir = Path(tag_dir)
    try:
        recorded = read_meta(tag_dir).get(FILES)
    except (CheckpointError, json.JSONDecodeError) as exc:
        return str(exc)
    if recorded is None:
        return None  # saved before files were recorded: nothing to check against
    for name, (size, digest) in sorted(recorded.items()):
        path = tag_dir / name
        if not path.is_file():
            return f"{path}: missing"
        if path.stat().st_size != size:
            return f"{path}: {path.stat().st_size} bytes, {size} recorded when it was saved"
        if _sha256(path) != digest:
            return f"{path}: sha256 differs from the one recorded when it was saved"
    return None


def verify(tag_dir: Path) -> None:
    """Raise CheckpointError naming the first file that changed since the checkpoint was saved."""
    found = problem(tag_dir)
    if found is not None:
        raise CheckpointError(f"corrupt checkpoint {tag_dir}: {found}")


def _first_intact(candidates: list[Path], say) -> Path | None:
    seen = set()
    for tag in candidates:
        if tag.name in seen:
            continue
        seen.add(tag.name)
        found = problem(tag)
        if found is None:
            return tag
        say(f"checkpoint {tag.name} is corrupt and skipped: {found}")
    return None


def latest_intact(ckpt_dir: Path, say=print) -> Path | None:
    """The newest checkpoint whose files verify: `latest`, else the ones saved before it."""
    ckpt_dir = Path(ckpt_dir)
    pointed = latest(ckpt_dir)
    tags = published_tags(ckpt_dir)[::-1]
    return _first_intact(([pointed] if pointed is not None else []) + tags, say)


def best_intact(ckpt_dir: Path, say=print) -> Path | None:
    """`best` if it verifies, else the intact checkpoint with the highest validation F1."""
    ckpt_dir = Path(ckpt_dir)
    pointed = best(ckpt_dir)
    scored = [t for t in published_tags(ckpt_dir) if read_meta(t).get("val_macro_f1") is not None]
    scored.sort(key=lambda t: read_meta(t)["val_macro_f1"], reverse=True)
    return _first_intact(([pointed] if pointed is not None else []) + scored, say)


def repoint(ckpt_dir: Path, say=print) -> None:
    """Move `best` and `latest` off checkpoints that fail verification (or drop the pointer)."""
    ckpt_dir = Path(ckpt_dir)
    for name, choose in (("latest", latest_intact), ("best", best_intact)):
        pointed = _pointer(ckpt_dir, name)
        if pointed is None or problem(pointed) is None:
            continue
        target = choose(ckpt_dir, say)
        if target is None:
            (ckpt_dir / name).unlink(missing_ok=True)
            say(f"{ckpt_dir / name}: removed; no intact checkpoint is left to point at")
        else:
            _write_pointer(ckpt_dir, name, target.name)
            say(f"{ckpt_dir / name}: now {target.name}")


# ---------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- the full (portable) state


def _zero_stage(engine) -> int:
    return int(engine.zero_optimization_stage())


def full_param(engine, param: torch.nn.Parameter) -> torch.Tensor:
    """The whole fp32 value of one parameter, on every rank (a collective under ZeRO)."""
    # lazy: DeepSpeed only where an engine's state is read (predict and the driver import this module)
    from deepspeed.utils import safe_get_full_fp32_param

    if param.requires_grad and _zero_stage(engine) >= 1:
        value = safe_get_full_fp32_param(param)
        if value is not None:
            return value.detach().float().cpu()
    if hasattr(param, "ds_id"):  # ZeRO-3 frozen parameter: partitioned, gather it
        import deepspeed

        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            return param.detach().float().cpu().clone()
    return param.detach().float().cpu().clone()


def full_moment(engine, optimizer: torch.optim.Optimizer, param: torch.nn.Parameter, key: str) -> torch.Tensor:
    """One Adam moment of one trainable parameter, whole, on every rank."""
    from deepspeed.utils import safe_get_full_optimizer_state  # lazy: see full_param

    if _zero_stage(engine) >= 1:
        value = safe_get_full_optimizer_state(param, key)
        if value is None:
            raise CheckpointError(f"DeepSpeed holds no optimizer state {key!r} for a trainable parameter")
        return value.detach().float().cpu()
    state = optimizer.state.get(param, {})
    return state[key].detach().float().cpu() if key in state else torch.zeros_like(param, dtype=torch.float32, device="cpu")


def optimizer_step_count(optimizer: torch.optim.Optimizer) -> float:
    for state in optimizer.state.values():
        if "step" in state:
            return float(state["step"])
    return 0.0


def ensure_optimizer_state(engine, optimizer: torch.optim.Optimizer) -> None:
    """Make every Adam state exist and be reachable through DeepSpeed's fragment API.

    Two gaps in DeepSpeed 0.19.8 this closes: a fresh engine has no optimizer state yet
    (torch creates it on the first step), and ZeRO-1/2 link each parameter to its state
    slice right after the *first parameter group's* first step, so the other groups' links
    stay empty. States are created exactly as torch's AdamW would (zeros, step 0), then
    every group is re-linked.
    """
    for group in optimizer.param_groups:
        for flat in group["params"]:
            state = optimizer.state[flat]
            if not state:
                state["step"] = torch.tensor(0.0)
                for key in MOMENTS:
                    state[key] = torch.zeros_like(flat, memory_format=torch.preserve_format)
    zero = engine.optimizer
    if hasattr(zero, "_lazy_init_hp_params_optimizer_state"):
        zero._hp_optimizer_states_linked = False
        zero._lazy_init_hp_params_optimizer_state()


def gather_portable(engine, optimizer: torch.optim.Optimizer, with_moments: bool = True) -> dict[str, Any] | None:
    """Consolidated fp32 weights (+ Adam moments) by name; all ranks call it, rank 0 gets it."""
    rank0 = dist.get_rank() == 0
    if with_moments:
        ensure_optimizer_state(engine, optimizer)
    weights: dict[str, torch.Tensor] = {}
    moments: dict[str, dict[str, torch.Tensor]] = {k: {} for k in MOMENTS}
    for name, param in engine.module.named_parameters():
        value = full_param(engine, param)
        if rank0:
            weights[name] = value
        if with_moments and param.requires_grad:
            for key in MOMENTS:
                moment = full_moment(engine, optimizer, param, key)
                if rank0:
                    moments[key][name] = moment
    if not rank0:
        return None
    for prefix, module in engine.module.named_modules():
        for name, buf in module._buffers.items():  # persistent buffers only, as state_dict() has
            if buf is not None and name not in module._non_persistent_buffers_set:
                weights[f"{prefix}.{name}" if prefix else name] = buf.detach().cpu().clone()
    return {"weights": weights, "moments": moments, "optimizer_step": optimizer_step_count(optimizer)}


def moment_norms(portable: dict[str, Any]) -> dict[str, float]:
    """A fingerprint of the optimizer state: the global norm of each Adam moment."""
    out = {}
    for key in MOMENTS:
        values = portable["moments"].get(key, {})
        out[key] = float(torch.sqrt(sum((v.double() ** 2).sum() for v in values.values()) or torch.zeros(())))
    return out


def restore_portable(engine, optimizer: torch.optim.Optimizer, portable: dict[str, Any]) -> None:
    """Write full Adam moments and step counts into a freshly built engine (any world size).

    The weights themselves are loaded into the module before `deepspeed.initialize`, so
    DeepSpeed derives its fp32 master copy and partitions from them (see load_module_weights).
    """
    from deepspeed.utils import safe_set_full_optimizer_state  # lazy: see full_param

    stage = _zero_stage(engine)
    step = portable["optimizer_step"]
    if stage >= 1:
        ensure_optimizer_state(engine, optimizer)
    for name, param in engine.module.named_parameters():
        if not param.requires_grad:
            continue
        for key in MOMENTS:
            value = portable["moments"][key].get(name)
            if value is None:
                raise CheckpointError(f"portable checkpoint has no {key} for trainable parameter {name}")
            if stage >= 1:
                safe_set_full_optimizer_state(param, value.to(param.device), key)
            else:
                state = optimizer.state[param]
                state[key] = value.to(param.device, dtype=param.dtype).view_as(param).clone()
        if stage == 0:
            optimizer.state[param]["step"] = torch.tensor(step)
    if stage >= 1:
        if not optimizer.state:
            raise CheckpointError("the ZeRO optimizer has no state to restore into")
        for state in optimizer.state.values():
            if "step" in state:
                state["step"] = torch.tensor(step, dtype=torch.as_tensor(state["step"]).dtype)


def _first(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _shape(value: object) -> list[int] | str:
    """A tensor's shape, or what a file held instead of a tensor (named, not crashed on)."""
    return list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def weights_mismatch(module: torch.nn.Module, weights: dict[str, torch.Tensor], optional: tuple[str, ...] = ()) -> str:
    """What keeps `weights` from loading into `module`, "" when nothing: names it lacks, names it
    does not have, and tensors of another shape. One rule for resume and predict, so either
    names the tensors and both shapes instead of torch's error from deep inside the load: a
    shape differs when a `model.*` key, or an encoder's code, changed since the weights were
    saved. `optional`: names the module rebuilds itself and may find absent."""
    own = module.state_dict()
    missing = [k for k in own if k not in weights and k not in optional]
    unexpected = [k for k in weights if k not in own]
    reshaped = [f"{k} {_shape(weights[k])} saved, {_shape(own[k])} here"
                for k in own if k in weights and _shape(weights[k]) != _shape(own[k])]
    problems = [f"{what} {_first(names)}" for what, names in
                (("missing", missing), ("unexpected", unexpected), ("other shape:", reshaped)) if names]
    return "; ".join(problems)


def load_module_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Consolidated weights into a plain module, before DeepSpeed wraps it."""
    expected = set(module.state_dict())
    derived = {name for name, _ in module.named_buffers()} - expected  # non-persistent: rebuilt, not loaded
    weights = {k: v for k, v in weights.items() if k not in derived}
    problem = weights_mismatch(module, weights)
    if problem:
        raise CheckpointError(
            f"checkpoint does not fit this model: {problem} (was model.* or an encoder's code changed since "
            "the run was saved?)"
        )
    module.load_state_dict(weights)


# ---------------------------------------------------------------- saving


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def save(
    engine,
    optimizer: torch.optim.Optimizer,
    ckpt_dir: Path,
    step: int,
    client_state: dict[str, Any],
    meta: dict[str, Any],
    *,
    is_best: bool,
    keep_last: int,
) -> Saved | None:
    """Publish a checkpoint at `step` (collective: every rank calls it).

    `client_state` must already hold the per-rank lists (loader, rng) gathered on rank 0.
    Returns what was written on rank 0, None elsewhere.
    """
    t0 = time.perf_counter()
    ckpt_dir = Path(ckpt_dir)
    rank0 = dist.get_rank() == 0
    tag = tag_for(step)
    tmp_tag = TMP_PREFIX + tag
    if rank0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(ckpt_dir / tmp_tag, ignore_errors=True)
    dist.barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tmp_tag, client_state=client_state, save_latest=False)
    portable = gather_portable(engine, optimizer)
    if rank0:
        torch.save(portable, ckpt_dir / tmp_tag / PORTABLE)
    dist.barrier()  # every rank's shard is on disk
    saved = None
    if rank0:
        full_meta = {**meta, "step": step, "tag": tag, "moment_norms": moment_norms(portable), "time": time.time()}
        write_meta(ckpt_dir / tmp_tag, full_meta)
        final = ckpt_dir / tag
        if final.exists():  # the same step saved twice (e.g. end of run == periodic save)
            shutil.rmtree(final)
        os.rename(ckpt_dir / tmp_tag, final)
        _fsync_dir(ckpt_dir)
        _write_pointer(ckpt_dir, "latest", tag)
        if is_best:
            _write_pointer(ckpt_dir, "best", tag)
        prune(ckpt_dir, keep_last)
        saved = Saved(final, step, time.perf_counter() - t0, _dir_bytes(final))
    dist.barrier()
    return saved


def prune(ckpt_dir: Path, keep_last: int) -> list[Path]:
    """Remove all but the last `keep_last` tags and the best one, and stale temp folders."""
    keep = {p.name for p in published_tags(ckpt_dir)[-keep_last:]}
    for pointer in (best(ckpt_dir), latest(ckpt_dir)):
        if pointer is not None:
            keep.add(pointer.name)
    removed = []
    for path in ckpt_dir.iterdir():
        stale_tmp = path.name.startswith(TMP_PREFIX)
        old_tag = path.is_dir() and path.name.startswith(TAG_PREFIX) and path.name not in keep
        if stale_tmp or old_tag:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


# ---------------------------------------------------------------- loading


def load_sharded(engine, tag_dir: Path) -> dict[str, Any]:
    """DeepSpeed's own load of a checkpoint saved with this world size; returns the client state."""
    tag_dir = Path(tag_dir)
    path, client_state = engine.load_checkpoint(
        str(tag_dir.parent),
        tag=tag_dir.name,
        load_module_strict=True,
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
    )
    if path is None:
        raise CheckpointError(f"{tag_dir}: DeepSpeed could not load this checkpoint")
    return client_state


MODEL_STATES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")


def model_states_file(tag_dir: Path) -> Path:
    """Rank 0's model-states file: DeepSpeed writes one for the whole model under ZeRO 0-2 and
    one per rank under ZeRO-3 (each with the client state), named differently."""
    for name in MODEL_STATES:
        if (Path(tag_dir) / name).is_file():
            return Path(tag_dir) / name
    raise CheckpointError(f"{tag_dir}: no DeepSpeed model-states file (expected one of {', '.join(MODEL_STATES)})")


def load_client_state(tag_dir: Path) -> dict[str, Any]:
    """The client state (step, loader, RNG, ...) without DeepSpeed, from the model-states file."""
    states = torch.load(model_states_file(tag_dir), map_location="cpu", weights_only=False)
    drop = {"module", "optimizer", "lr_scheduler", "ds_config", "ds_version", "param_shapes",
            "frozen_param_shapes", "shared_params", "frozen_param_fragments", "buffer_names"}
    return {k: v for k, v in states.items() if k not in drop}


def load_portable(tag_dir: Path) -> dict[str, Any]:
    path = Path(tag_dir) / PORTABLE
    if not path.is_file():
        raise CheckpointError(f"{tag_dir}: no {PORTABLE}; cannot resume on another world size or ZeRO stage")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc})") from exc
