"""Typed job configuration: a YAML file from jobs/ plus dotted overrides.

Validation happens once, here, before any work starts; everything downstream receives
plain, already-checked objects. An error names the file, the key and what is allowed,
because a typo found after Ray has started eight workers costs minutes, not seconds.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmexpr.errors import UserError


class ConfigError(UserError, ValueError):
    """A job file or override that cannot be used; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Where the shards are and how windows are cut from them."""

    shards: str = Field("shards/demo", description="folder (or URL) holding <split>/manifest.json")
    train_split: str = "train"
    val_split: str = "validation"
    window: int = Field(16, ge=1, description="frames per window (T)")
    stride: int = Field(16, ge=1, description="frames between evaluation window starts")
    image_size: int = Field(112, ge=8, description="frames are resized to this square size")
    batch_size: int = Field(8, ge=1, description="windows per rank per step")
    loader_workers: int = Field(1, ge=0, description="DataLoader worker processes per rank")
    shuffle_buffer: int = Field(64, ge=0, description="sample shuffle buffer in training")
    sample_rate: int = Field(16000, ge=1000, description="audio rate the shards hold")
    max_skipped: float = Field(
        0.01, ge=0.0, le=1.0,
        description="fraction of samples read that may be skipped (undecodable, truncated shard, checksum "
        "mismatch) before a training stops with an error naming the shards",
    )
    verify_shards: bool = Field(True, description="check each local shard's sha256 against the manifest before reading it")
    audio_context_s: float = Field(
        0.0, ge=0.0, le=30.0,
        description="seconds of audio centred on each window (within its chunk) the audio encoder hears; "
        "0: only the window's own frames' audio",
    )
    augment_faces: bool = Field(
        False, description="training only: random resized crop, horizontal flip, brightness/contrast "
        "jitter and grayscale, one draw per window",
    )
    augment_voices: bool = Field(
        False, description="training only: random gain, additive noise and a time mask, one draw per window",
    )


EncoderTrain = Literal["frozen", "full", "last"]


class EncoderConfig(_Strict):
    """One pretrained encoder: a Hugging Face id or a local folder, and how much of it trains."""

    name: str
    train: EncoderTrain = "frozen"
    last_k: int = Field(2, ge=1, description="layers trained when train=last")
    gradient_checkpointing: bool = False


def logmel_kind(name: str, preset: str) -> str | None:
    """Which from-scratch log-mel audio encoder (model/logmel.py) a tiny preset's audio name asks
    for: "stats", "conv", or None for a Hugging Face family. One rule: the model builds by it and
    the job's validation checks by it."""
    if preset != "tiny" or "logmel" not in name.lower():
        return None
    return "stats" if "logmel-stats" in name.lower() else "conv"


class ModelConfig(_Strict):
    """The paper's model; every part switchable (docs/ARCHITECTURE.md has its path)."""

    preset: Literal["pretrained", "tiny", "scratch"] = Field(
        "pretrained",
        description="tiny builds small random encoders from configs (tests, demo); scratch builds "
        "the named encoders' real architectures (CLIP ViT-B/16, wav2vec2-base) with random weights",
    )
    modalities: Literal["audio_video", "video", "audio"] = "audio_video"
    visual: EncoderConfig = EncoderConfig(name="openai/clip-vit-base-patch16")
    audio: EncoderConfig = EncoderConfig(name="facebook/wav2vec2-base")
    text: EncoderConfig = EncoderConfig(name="openai/clip-vit-base-patch16")
    visual_every: int = Field(
        1, ge=1, description="encode every k-th frame of a window and hold its features for the next k-1 "
        "(1: every frame); where a face is held for many frames this spends the encoder's compute on "
        "more windows instead of near copies",
    )
    hidden: int = Field(256, ge=8, description="width of the temporal, fusion and head layers")
    temporal: Literal["tcn", "none", "transformer"] = "tcn"
    temporal_layers: int = Field(3, ge=1)
    temporal_kernel: int = Field(3, ge=1)
    fusion: Literal["bi", "concat", "video_to_audio", "audio_to_video"] = "bi"
    fusion_layers: int = Field(1, ge=1)
    fusion_heads: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    modality_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="chance to drop a modality per window in training")
    unimodal_weight: float = Field(0.0, ge=0.0, description="with both modalities: weight of the EXPR loss of "
                                   "a head on each stream before fusion (0: off)")
    tasks: list[Literal["expr", "va", "au"]] = Field(
        default_factory=lambda: ["expr"],
        description="frame tasks, one head each on the fused features: expr (8 classes), va (valence, "
        "arousal), au (12 action units); the first is the one train.best_metric follows by default",
    )
    task_weights: dict[Literal["expr", "va", "au"], float] = Field(
        default_factory=lambda: {"expr": 1.0, "va": 1.0, "au": 1.0},
        description="loss weight of each task in model.tasks (a task left out weighs 1)",
    )
    va_mse_weight: float = Field(0.0, ge=0.0, description="adds this x MSE to the VA loss (1 - CCC per dimension)")
    au_pos_weight_max: float = Field(
        10.0, ge=1.0, description="cap on the AU BCE positive weights (negatives/positives from the train manifest)"
    )
    loss: Literal["ce", "focal"] = "ce"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="CE label smoothing (0: off)")
    smooth: int = Field(
        0, ge=0, description="frames of a centred moving average over per-frame probabilities, in "
        "training's evaluation and as predict's default --smooth (0: off)",
    )
    class_weights: bool = Field(True, description="weight CE by inverse train label frequency")
    focal_gamma: float = Field(2.0, ge=0.0)
    contrastive_weight: float = Field(0.1, ge=0.0, description="0 turns the text-guided loss off")
    contrastive_dim: int = Field(256, ge=8)
    prompts: list[str] = Field(
        default_factory=lambda: [
            "a photo of a {} face.",
            "a person showing {}.",
            "a face expressing {}.",
        ],
        description="templates with {} for the class name",
    )

    @property
    def uses_video(self) -> bool:
        """The one rule for whether frames reach the model (the loader skips decoding them if not)."""
        return self.modalities in ("audio_video", "video")

    @property
    def uses_audio(self) -> bool:
        return self.modalities in ("audio_video", "audio")


class TrainConfig(_Strict):
    """How training runs: workers, DeepSpeed, schedule, evaluation and checkpoints."""

    workers: int = Field(2, ge=1)
    cpus_per_worker: int = Field(1, ge=1)
    use_gpu: bool = False
    zero_stage: int = Field(2, ge=0, le=3)
    offload: bool = Field(False, description="ZeRO optimizer-state offload to CPU")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on GPUs, fp32 on CPUs")
    lr: float = Field(1e-3, gt=0)
    encoder_lr: float = Field(1e-5, ge=0, description="learning rate of trainable encoder layers")
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(20, ge=0)
    max_steps: int = Field(300, ge=1)
    grad_accum: int = Field(1, ge=1)
    grad_clip: float = Field(1.0, ge=0)
    eval_every: int = Field(100, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    keep_last: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0, description="worker restarts Ray may do")
    seed: int = 0
    stop_after: int = Field(
        0, ge=0, description="stop this invocation after N steps with a checkpoint (time slices); 0 runs to max_steps"
    )
    log_every: int = Field(10, ge=1, description="steps between MLflow metric flushes (every step is logged)")
    best_metric: Literal["auto", "expr", "va", "au", "mean"] = Field(
        "auto",
        description="ABAW score that picks the best checkpoint: a task's (EXPR macro F1, VA mean CCC, AU mean F1), "
        "their mean over model.tasks, or auto (the first task of model.tasks)",
    )
    progress: bool = Field(True, description="one progress display in the driver (a bar on a terminal, a line every 10 s in a log)")


class TrackConfig(_Strict):
    """MLflow: where runs go. Empty tracking_uri means MLFLOW_TRACKING_URI or the local store."""

    tracking_uri: str = ""
    experiment: str = "mmexpr"
    run_name: str = ""
    register_model: str = Field("mmexpr", description="registry name for the best model; empty skips")


class SlurmConfig(_Strict):
    """What `--on slurm` asks SLURM for; rendered into cluster/slurm/ray_train.sbatch.

    One task per node: Ray head on the first node, one Ray worker node on each other node,
    then the driver spreads train.workers over them. Empty strings leave a line out.
    """

    nodes: int = Field(1, ge=1)
    gpus_per_node: int | None = Field(
        None, ge=0,
        description="GPUs per node; empty: follow the job (train.workers spread over the nodes when "
        "train.use_gpu, else 0)",
    )
    cpus_per_node: int = Field(8, ge=1, description="CPUs per node (cpus-per-task, one task per node)")
    mem: str = Field("", pattern=r"^$|^[0-9]+[KMGT]?$", description="memory per node, e.g. 64G; empty: cluster default")
    time: str = Field("04:00:00", pattern=r"^([0-9]+-)?[0-9]+(:[0-9]{2}){0,2}$", description="time limit, [D-]HH:MM:SS")
    partition: str = ""
    account: str = ""
    qos: str = ""
    extra: list[str] = Field(default_factory=list, description="more sbatch options, e.g. --constraint=a100")
    signal_seconds: int = Field(300, ge=10, description="USR1 this long before the time limit: checkpoint, requeue")
    setup: list[str] = Field(default_factory=list, description="shell lines run first, e.g. module load cuda")
    python: str = Field("", description="python on the nodes; empty: the one that submits")
    ray_port: int = Field(6379, ge=1024, le=65535)
    dashboard_port: int = Field(8265, ge=1024, le=65535, description="Ray dashboard on the head (Train's state API)")
    join_timeout: int = Field(300, ge=10, description="seconds to wait for every Ray node to join")

    @field_validator("time", "mem", mode="before")
    @classmethod
    def _number_as_text(cls, value: Any) -> Any:
        """`--set slurm.time=30` arrives as an int from YAML; SLURM reads it as minutes."""
        return str(value) if isinstance(value, int) else value

    @model_validator(mode="after")
    def _check_extra(self) -> SlurmConfig:
        for line in self.extra:
            if not line.strip().removeprefix("#SBATCH").strip().startswith("-"):
                raise ValueError(f"slurm.extra: {line!r} is not an sbatch option (expected e.g. --constraint=a100)")
        return self


class JobConfig(_Strict):
    """One job: what to train on, what to build, how to train it, where to record it."""

    name: str = "job"
    output: str = Field("runs", description="folder for checkpoints and the local MLflow store")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    track: TrackConfig = TrackConfig()
    slurm: SlurmConfig = SlurmConfig()

    @model_validator(mode="after")
    def _check_consistency(self) -> JobConfig:
        if not self.model.tasks or len(set(self.model.tasks)) != len(self.model.tasks):
            raise ValueError(f"model.tasks: {self.model.tasks}; expected one or more of expr, va, au, each once")
        if self.train.best_metric not in ("auto", "mean", *self.model.tasks):
            raise ValueError(
                f"train.best_metric: {self.train.best_metric!r} is not in model.tasks {self.model.tasks}"
            )
        if logmel_kind(self.model.audio.name, self.model.preset) and self.model.audio.train != "full":
            raise ValueError(
                f"model.audio.train: {self.model.audio.train!r}; the log-mel encoder {self.model.audio.name!r} "
                "has no pretrained weights (frozen, it stays random and never fits its statistics); expected full"
            )
        if self.model.unimodal_weight > 0 and self.model.modalities != "audio_video":
            raise ValueError(
                f"model.unimodal_weight: {self.model.unimodal_weight} needs both modalities; "
                f"model.modalities is {self.model.modalities!r} (set the weight to 0)"
            )
        if self.model.hidden % self.model.fusion_heads:
            raise ValueError(
                f"model.hidden ({self.model.hidden}) must be divisible by "
                f"model.fusion_heads ({self.model.fusion_heads})"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the resolved config, so a run can be repeated exactly."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml())
        return path


def is_uri(path: str) -> bool:
    """A location with a scheme (`s3://`, `http://`) or a `pipe:` command: not a local path."""
    return "://" in path or path.startswith("pipe:")


def with_absolute_paths(job: JobConfig, base: Path | None = None) -> JobConfig:
    """A copy of `job` whose local shards and output paths are absolute (URIs are kept as they are).

    Ray workers and cluster nodes run in other working folders, so a relative path would
    resolve somewhere else there; the driver and every submitter make paths absolute here.
    """
    base = base or Path.cwd()
    job = job.model_copy(deep=True)
    if not is_uri(job.data.shards):
        job.data.shards = str((base / job.data.shards).resolve())
    if not is_uri(job.output):
        job.output = str((base / job.output).resolve())
    return job


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], value); the value is read as YAML (numbers, lists, bools)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. model.fusion=concat")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: empty key part in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from exc
    return parts, value


def add_overrides_arg(p: argparse.ArgumentParser, help: str = "override a config key, e.g. --set "
                      "model.fusion=concat (repeatable)") -> None:
    """`--set KEY=VALUE`: every command that loads a job takes its overrides the same way."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def _apply(tree: dict[str, Any], parts: list[str], value: Any, origin: str) -> None:
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"{origin}: {where} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _format_errors(exc: ValidationError, origin: str) -> str:
    lines = [f"{origin}: invalid job config"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            parent = _section_for(err["loc"][:-1])
            allowed = ", ".join(sorted(parent.model_fields)) if parent else "?"
            lines.append(f"  {key}: unknown key; allowed here: {allowed}")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  {key}: {err['msg']}{shown}")
    return "\n".join(lines)


def _section_for(loc: tuple) -> type[BaseModel] | None:
    cls: type[BaseModel] = JobConfig
    for part in loc:
        field = cls.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        cls = field.annotation
    return cls


PACKAGED_JOBS = Path(__file__).with_name("jobs")


def find_job_file(path: str | os.PathLike) -> Path:
    """The job file at `path`, else the packaged job of that name (`jobs/demo.yaml` or `demo`).

    The shipped jobs live inside the package (the repository's `jobs/` links there), so an
    installed mmexpr run from any folder still finds `jobs/demo.yaml`.
    """
    path = Path(path)
    if path.is_file():
        return path
    name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    packaged = PACKAGED_JOBS / name
    if path.parts in ((path.name,), ("jobs", path.name)) and packaged.is_file():
        return packaged
    shipped = ", ".join(sorted(p.stem for p in PACKAGED_JOBS.glob("*.yaml")))
    raise ConfigError(f"{path}: job file not found (shipped jobs: {shipped})")


def load_job(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    """Read a job file, apply `--set` overrides, validate everything at once."""
    tree: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        origin = str(path)
        path = find_job_file(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}:{line} not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top, got {type(loaded).__name__}")
        tree = loaded
        tree.setdefault("name", path.stem)
    for text in overrides:
        parts, value = parse_override(text)
        _apply(tree, parts, value, f"--set {text}")
    if overrides:
        origin += " with --set " + " ".join(overrides)
    try:
        return JobConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, origin)) from None


def job_from_dict(tree: dict[str, Any]) -> JobConfig:
    """Rebuild a job from its resolved dict (e.g. from a checkpoint or an MLflow run)."""
    try:
        return JobConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, "stored config")) from None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys, for MLflow params and run comparisons."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, full + "."))
        else:
            out[full] = value
    return out
