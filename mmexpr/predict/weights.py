"""Where a trained model comes from: a checkpoint folder or file, an MLflow run, a model URI.

Training writes DeepSpeed's sharded checkpoints (one tag folder per step, a `latest`
pointer); with ZeRO the fp32 master weights are spread over the ranks' optimizer files, so
they are consolidated with DeepSpeed's own `get_fp32_state_dict_from_zero_checkpoint` in this
process (no GPUs, no distributed setup needed). A consolidated file (a plain state dict, or a
dict with "state_dict"/"module" and "config") loads directly. The job config that built the
model travels with it (config.yaml beside or above the checkpoint, or inside the file), so
the same model is rebuilt without the user repeating settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

from mmexpr.config import JobConfig, job_from_dict
from mmexpr.errors import UserError
from mmexpr.model.model import build_model
from mmexpr.train import checkpoint as ckpt

CONFIG_NAMES = ("config.yaml", "job.yaml", "resolved_config.yaml")
WEIGHT_NAMES = ("model.pt", "pytorch_model.bin", "model.pth", "consolidated.pt", "model.safetensors")


class WeightsError(UserError, FileNotFoundError):
    """No usable model at the given place; the message says what was looked for."""


@dataclass
class Loaded:
    """A model rebuilt from its job config, in eval mode, and where it came from."""

    model: Any  # mmexpr.model.model.ExprModel
    job: JobConfig
    source: str


def find_config(start: Path, levels: int = 4) -> Path | None:
    """The job config nearest to a checkpoint: in its folder or up to `levels` parents."""
    folder = start if start.is_dir() else start.parent
    for _ in range(levels + 1):
        for name in CONFIG_NAMES:
            if (folder / name).is_file():
                return folder / name
        if folder.parent == folder:
            break
        folder = folder.parent
    return None


def _is_deepspeed_dir(path: Path) -> bool:
    return (path / "latest").is_file() or any(path.glob("*model_states.pt")) or any(path.glob("*/*model_states.pt"))


def deepspeed_state_dict(path: Path) -> dict:
    """fp32 weights from a DeepSpeed checkpoint folder (the root with `latest`, or one tag folder)."""
    # lazy: DeepSpeed (seconds, and an accelerator warning) only for a sharded checkpoint
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if (path / "latest").is_file() or not any(path.glob("*model_states.pt")):
        root, tag = path, None
    else:
        root, tag = path.parent, path.name
    tag_dir = root / (tag or (root / "latest").read_text().strip())
    if not any(tag_dir.glob("*optim_states.pt")) or _zero_stage(tag_dir) == 0:
        # ZeRO stage 0 keeps whole fp32 weights in the model-states file; nothing to merge.
        states = torch.load(ckpt.model_states_file(tag_dir), map_location="cpu", weights_only=False)
        return dict(states["module"])
    return dict(get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag))


def _zero_stage(tag_dir: Path) -> int:
    files = sorted(tag_dir.glob("*optim_states.pt"))
    states = torch.load(files[0], map_location="cpu", weights_only=False)
    optimizer = states.get("optimizer_state_dict", {})
    return int(optimizer.get("zero_stage", 0)) if isinstance(optimizer, dict) else 0


def _strip_prefix(state: dict) -> dict:
    """Weights saved from a wrapped module (`module.x`) load into the bare model (`x`)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def _read_file(path: Path) -> tuple[dict, dict | None]:
    """(state dict, embedded config or None) from a consolidated weights file."""
    if path.suffix == ".safetensors":
        return load_file(str(path)), None
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict):
        for key in ("state_dict", "weights", "module", "model"):
            if isinstance(obj.get(key), dict):
                return obj[key], obj.get("config") if isinstance(obj.get("config"), dict) else None
        return obj, None
    if hasattr(obj, "state_dict"):
        return obj.state_dict(), None
    raise WeightsError(f"{path}: holds a {type(obj).__name__}, not model weights")


POINTERS = ("best", "latest")


def resolve_pointer(path: Path) -> Path:
    """The checkpoint a training's `best`/`latest` pointer file or checkpoints folder means.

    A pointer is a one-line text file naming a tag folder beside it (DeepSpeed's convention);
    the checkpoints folder itself means its best intact checkpoint, else its latest intact one.
    A checkpoint that fails verification is named and never loaded.
    """
    if path.is_file() and path.name in POINTERS and path.stat().st_size < 4096:
        tag = path.parent / path.read_text().strip()
        if not (tag / ckpt.META).is_file():
            raise WeightsError(f"{path}: points at {tag.name}, which is not a complete checkpoint in {path.parent}")
    elif path.is_dir() and ckpt.published_tags(path):
        say = lambda line: print(line, flush=True)  # noqa: E731
        tag = ckpt.best_intact(path, say) or ckpt.latest_intact(path, say)
        if tag is None:
            raise WeightsError(f"{path}: no intact checkpoint here (every one fails verification)")
    elif path.is_dir() and (path / ckpt.META).is_file():
        tag = path
    else:
        return path
    found = ckpt.problem(tag)
    if found is not None:
        raise WeightsError(f"{path}: corrupt checkpoint {tag.name}: {found}")
    return tag


def load_checkpoint(path: str | os.PathLike, job: JobConfig | None = None) -> Loaded:
    """Rebuild the model from a checkpoint folder (DeepSpeed or consolidated), a `best`/`latest`
    pointer file, a training's checkpoints folder, or a weights file."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: checkpoint not found")
    path = resolve_pointer(path)
    embedded = None
    if path.is_file():
        state, embedded = _read_file(path)
    elif _is_deepspeed_dir(path):
        state = deepspeed_state_dict(path)
    else:
        files = [path / n for n in WEIGHT_NAMES if (path / n).is_file()]
        if not files:
            raise WeightsError(
                f"{path}: neither a DeepSpeed checkpoint (a `latest` file or *model_states.pt) "
                f"nor a consolidated model ({', '.join(WEIGHT_NAMES)})"
            )
        state, embedded = _read_file(files[0])
    if job is None:
        job = _job_for(path, embedded)
    return Loaded(build_from_state(job, _strip_prefix(state), str(path)), job, str(path))


def _job_for(path: Path, embedded: dict | None) -> JobConfig:
    if embedded is not None:
        return job_from_dict(embedded)
    config = find_config(path)
    if config is None:
        raise WeightsError(
            f"{path}: no job config found beside it or above it ({', '.join(CONFIG_NAMES)}); "
            "the model cannot be rebuilt without it"
        )
    return job_from_dict(yaml.safe_load(config.read_text()))


def build_from_state(job: JobConfig, state: dict, source: str):
    """The job's model with `state` loaded strictly (a mismatch names the tensors)."""
    model = build_model(job.model)
    # Buffers computed at build time (cached class-text embeddings) may be absent from older files.
    problem = ckpt.weights_mismatch(model, state, optional=("class_text",))
    if problem:
        raise WeightsError(f"{source}: weights do not fit the model its config builds: {problem}")
    model.load_state_dict(state, strict=False)
    model.eval()
    return model
