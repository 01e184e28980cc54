"""The assembled model: encoders -> temporal -> fusion -> per-frame head, plus its losses.

    video [B,T,3,H,W] uint8 -> visual encoder (every visual_every-th frame, held) -> proj -> temporal
    audio [B,S] + audio_len -> audio encoder -> proj -> aligned to frame times (fps)
    both -> fusion (bi-directional cross-attention by default) -> one head per task in model.tasks:
        expr -> logits [B,T,8]   va -> va [B,T,2] (tanh)   au -> au_logits [B,T,12]
    class prompts -> text encoder -> class embeddings -> text-guided contrastive loss (with expr)

Every head sees every frame of every batch, and a task's loss on a batch without labels of it
is 0 with the head still in the graph, so all parameters get a gradient on every rank.

`build_model(cfg, class_counts, au_positive_rates)` is the only constructor the rest of the
system calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mmexpr.config import ModelConfig
from mmexpr.data.batch import Batch, BatchArrays, audio_samples
from mmexpr.labels import IGNORE, NUM_AUS, prompts
from mmexpr.model.encoders import (
    AudioEncoder,
    TextEncoder,
    VisualEncoder,
    build_audio,
    build_text,
    build_visual,
)
from mmexpr.model.fusion import AUDIO_RATE, align_audio, build_fusion, modality_dropout
from mmexpr.model.heads import AUHead, FrameHead, VAHead
from mmexpr.model.losses import (
    AULoss,
    FrameLoss,
    TextGuidedContrastive,
    au_pos_weights,
    ccc_loss,
    class_text_embeddings,
    class_weights_from_counts,
    va_mse,
)
from mmexpr.model.temporal import build_temporal

ENCODERS = ("visual", "audio", "text")


class ExprModel(nn.Module):
    """Per-frame expression recogniser; forward(batch) -> logits, embeddings (+ loss when labelled)."""

    def __init__(
        self,
        cfg: ModelConfig,
        class_counts: Sequence[int] | None = None,
        au_positive_rates: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        use_video, use_audio = cfg.uses_video, cfg.uses_audio
        d = cfg.hidden
        self.visual: VisualEncoder | None = (
            build_visual(cfg.visual, cfg.preset) if use_video else None
        )
        self.audio: AudioEncoder | None = build_audio(cfg.audio, cfg.preset) if use_audio else None
        self.visual_proj = nn.Linear(self.visual.dim, d) if self.visual is not None else None
        self.audio_proj = nn.Linear(self.audio.dim, d) if self.audio is not None else None
        self.temporal = build_temporal(
            cfg.temporal, d, cfg.temporal_layers, cfg.temporal_kernel, cfg.fusion_heads, cfg.dropout
        )
        both = use_video and use_audio
        self.fusion = (
            build_fusion(cfg.fusion, d, cfg.fusion_heads, cfg.fusion_layers, cfg.dropout)
            if both
            else None
        )
        self.tasks = tuple(cfg.tasks)
        self.head = FrameHead(d, cfg.dropout) if "expr" in self.tasks else None
        # A head on each stream before fusion: trained with its own loss, each stream learns to
        # carry the expression by itself, so the fused sum does not lean on whichever learns first.
        self.unimodal_heads = (
            nn.ModuleDict({"video": FrameHead(d, cfg.dropout), "audio": FrameHead(d, cfg.dropout)})
            if both and self.head is not None and cfg.unimodal_weight > 0
            else None
        )
        weights = (
            class_weights_from_counts(class_counts) if cfg.class_weights and class_counts else None
        )
        self.frame_loss = FrameLoss(cfg.loss, weights, cfg.focal_gamma, cfg.label_smoothing)
        self.va_head = VAHead(d, cfg.dropout) if "va" in self.tasks else None
        self.au_head = AUHead(d, cfg.dropout) if "au" in self.tasks else None
        if self.au_head is not None:
            self.au_loss = AULoss(au_pos_weights(au_positive_rates, cfg.au_pos_weight_max))
            # Per-AU decision thresholds, tuned on validation by training and saved with the weights.
            self.register_buffer("au_thresholds", torch.full((NUM_AUS,), 0.5))
        self.prompts = prompts(cfg.prompts)
        self.text: TextEncoder | None = None
        self.contrastive: TextGuidedContrastive | None = None
        if cfg.contrastive_weight > 0 and self.head is not None:
            vocab = [p for per_class in self.prompts for p in per_class]
            self.text = build_text(cfg.text, cfg.preset, vocab)
            self.contrastive = TextGuidedContrastive(d, self.text.dim, cfg.contrastive_dim)
            if not self.text.trainable:
                # Frozen text encoder: the class embeddings never change, so encode the prompts once.
                with torch.no_grad():
                    self.register_buffer(
                        "class_text", class_text_embeddings(self.text, self.prompts)
                    )

    # ------------------------------------------------------------------ forward

    def frame_features(self, video: torch.Tensor) -> torch.Tensor:
        """[B,T,3,H,W] uint8 -> [B,T,D]: the visual encoder on every `visual_every`-th frame, each
        result held for the frames up to the next one encoded (a held frame counts as showing a
        face only when the encoded one does: `forward` masks the others).

        A face in a video changes little between neighbouring frames; encoding one frame in k
        lets the same compute see k times as many windows (k=1 encodes every frame)."""
        b, t = video.shape[:2]
        k = self.cfg.visual_every
        picked = video[:, ::k]
        n = picked.shape[1]
        feats = self.visual(picked.reshape(b * n, *video.shape[2:])).view(b, n, -1)
        return hold(feats, k, t) if k > 1 else feats

    def forward(self, batch: Batch) -> dict:
        """Batch -> {"embeddings" [B,T,hidden], "audio_mask" [B,T]} and each task's output ("logits"
        [B,T,8], "va" [B,T,2], "au_logits" [B,T,12]; "logits_video" and "logits_audio" from the
        unimodal heads when model.unimodal_weight > 0), plus "loss" and "loss_parts" when the batch
        has labels (padded frames ignored)."""
        mask = batch.mask.bool()
        frames = mask.shape[1]
        # A frame without a face is a missing visual input: masked in the visual stream and
        # in fusion, so the audio alone carries it (and it still gets logits).
        visible = mask if batch.face is None else mask & batch.face.bool()
        if self.visual is not None and self.cfg.visual_every > 1:
            visible = visible & hold(visible[:, :: self.cfg.visual_every], self.cfg.visual_every, frames)
        video_mask = visible
        audio_mask = torch.zeros_like(mask)
        v = a = None
        if self.visual is not None:
            v = self.visual_proj(self.frame_features(batch.video).to(self.visual_proj.weight.dtype))
            v = v * visible.unsqueeze(-1).to(v.dtype)
        if self.audio is not None:
            feats, feat_len = self.audio(batch.audio, batch.audio_len)
            a = self.audio_proj(feats.to(self.audio_proj.weight.dtype))
            a, audio_mask = align_audio(
                a, feat_len, batch.audio_len, batch.fps, frames, AUDIO_RATE, batch.audio_offset
            )
            audio_mask = audio_mask & mask
        audio_present = audio_mask  # before modality dropout (the unimodal heads see every input)
        if self.training and self.fusion is not None:
            video_mask, audio_mask = modality_dropout(
                video_mask, audio_mask, self.cfg.modality_dropout
            )
        unimodal: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if v is not None:
            v = self.temporal(v, visible)
            if self.unimodal_heads is not None:
                unimodal = {"video": (self.unimodal_heads["video"](v), visible),
                            "audio": (self.unimodal_heads["audio"](a), audio_present)}
            fused = self.fusion(v, a, video_mask, audio_mask).fused if a is not None else v
        else:
            a = self.temporal(a, mask)
            fused = a * audio_mask.unsqueeze(-1).to(a.dtype)
        out = {"embeddings": fused, "audio_mask": audio_mask}
        out.update({f"logits_{stream}": logits for stream, (logits, _) in unimodal.items()})
        if self.head is not None:
            out["logits"] = self.head(fused)
        if self.va_head is not None:
            out["va"] = self.va_head(fused)
        if self.au_head is not None:
            out["au_logits"] = self.au_head(fused)
        if any(x is not None for x in (batch.labels, batch.va, batch.au)):
            out.update(self.losses(out, fused, batch, mask, unimodal))
        return out

    def class_embeddings(self) -> torch.Tensor:
        """[8, text_dim]: cached when the text encoder is frozen, re-encoded each step when it trains."""
        if self.text is None:
            raise RuntimeError(
                "contrastive loss is off (model.contrastive_weight=0): no text encoder"
            )
        if not self.text.trainable:
            return self.class_text
        return class_text_embeddings(self.text, self.prompts)

    def losses(self, out: dict, fused: torch.Tensor, batch: Batch, mask: torch.Tensor,
               unimodal: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict:
        """Each task's loss on its known, unpadded frames (a batch without a task's labels gives 0
        for it, graph kept), weighted by model.task_weights; `unimodal`: each stream's logits
        and the frames where that stream has input (model.unimodal_weight)."""
        weight = self.cfg.task_weights
        parts: dict[str, torch.Tensor] = {}
        total = fused.sum() * 0.0
        if self.head is not None:
            labels = _labels_or_unknown(batch.labels, mask.shape, IGNORE, torch.int64, mask.device)
            labels = labels.masked_fill(~mask, IGNORE)
            name = "ce" if self.cfg.loss == "ce" else "focal"
            parts[name] = self.frame_loss(out["logits"], labels)
            expr = parts[name]
            if self.contrastive is not None:
                parts["contrastive"] = self.contrastive(
                    fused, self.class_embeddings().to(fused.dtype), labels
                )
                expr = expr + self.cfg.contrastive_weight * parts["contrastive"]
            for stream, (logits, present) in (unimodal or {}).items():
                parts[f"{name}_{stream}"] = self.frame_loss(logits, labels.masked_fill(~present, IGNORE))
                expr = expr + self.cfg.unimodal_weight * parts[f"{name}_{stream}"]
            total = total + weight.get("expr", 1.0) * expr
        if self.va_head is not None:
            va = _labels_or_unknown(batch.va, (*mask.shape, 2), float("nan"), torch.float32, mask.device)
            va = va.masked_fill(~mask.unsqueeze(-1), float("nan"))
            parts["va"] = ccc_loss(out["va"], va)
            va_total = parts["va"]
            if self.cfg.va_mse_weight > 0:
                parts["va_mse"] = va_mse(out["va"], va)
                va_total = va_total + self.cfg.va_mse_weight * parts["va_mse"]
            total = total + weight.get("va", 1.0) * va_total
        if self.au_head is not None:
            au = _labels_or_unknown(batch.au, (*mask.shape, NUM_AUS), IGNORE, torch.int64, mask.device)
            au = au.masked_fill(~mask.unsqueeze(-1), IGNORE)
            parts["au"] = self.au_loss(out["au_logits"], au)
            total = total + weight.get("au", 1.0) * parts["au"]
        return {"loss": total, "loss_parts": parts}

    # ------------------------------------------------------------------ optimisation

    def param_groups(self, lr: float, encoder_lr: float, weight_decay: float) -> list[dict]:
        """Trainable parameters only: encoders at encoder_lr, the rest at lr; no decay on biases/norms."""
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            key = (name.split(".")[0] in ENCODERS, p.ndim >= 2)
            groups.setdefault(key, []).append(p)
        out = []
        for (encoder, decay), params in sorted(groups.items()):
            out.append(
                {
                    "name": ("encoders" if encoder else "head") + ("" if decay else "_no_decay"),
                    "params": params,
                    "lr": encoder_lr if encoder else lr,
                    "weight_decay": weight_decay if decay else 0.0,
                }
            )
        return out

    # ------------------------------------------------------------------ description

    def describe(self, window: int = 16, image_size: int = 112, fps: float = 30.0) -> str:
        """A table of top-level modules: class, parameters, trainable parameters, FLOPs per window."""
        batch = example_batch(1, window, image_size, fps, device=next(self.parameters()).device)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                self(batch)
        finally:
            self.train(was_training)
        flops = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
        root = type(self).__name__
        rows = [("module", "class", "params", "trainable", "GFLOPs/window")]
        for name, module in self.named_children():
            params = sum(p.numel() for p in module.parameters())
            trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
            cls = type(module).__name__
            backbone = getattr(module, "backbone", None)
            if backbone is not None:
                cls += f"({type(backbone).__name__}, {module.spec.name}, {module.spec.train})"
            rows.append(
                (
                    name,
                    cls,
                    f"{params:,}",
                    f"{trainable:,}",
                    f"{flops.get(f'{root}.{name}', 0) / 1e9:.4f}",
                )
            )
        total = sum(p.numel() for p in self.parameters())
        total_trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        rows.append(
            (
                "total",
                root,
                f"{total:,}",
                f"{total_trainable:,}",
                f"{flops.get('Global', 0) / 1e9:.4f}",
            )
        )
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [
            f"model: preset={self.cfg.preset} modalities={self.cfg.modalities} temporal={self.cfg.temporal} "
            f"fusion={self.cfg.fusion if self.fusion is not None else 'none'} hidden={self.cfg.hidden} "
            f"loss={self.cfg.loss} contrastive_weight={self.cfg.contrastive_weight} tasks={','.join(self.tasks)}"
            + (f" visual_every={self.cfg.visual_every}" if self.visual is not None else ""),
            f"window: {window} frames at {image_size}x{image_size}, {fps:g} fps, "
            f"{audio_samples(window, AUDIO_RATE)} audio samples; FLOPs counted by torch FlopCounterMode (forward)",
        ]
        for i, row in enumerate(rows):
            cells = [
                c.ljust(w) if j < 2 else c.rjust(w)
                for j, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  ".join(cells).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        if self.text is not None:
            how = (
                "re-encoded every step (text encoder trains)"
                if self.text.trainable
                else "cached (text encoder frozen)"
            )
            lines.append(
                f"class text embeddings: {len(self.prompts)} classes x {len(self.prompts[0])} prompts, {how}"
            )
        return "\n".join(lines)


def hold(x: torch.Tensor, k: int, frames: int) -> torch.Tensor:
    """[B,N,...] values of every k-th frame -> [B,frames,...], each repeated until the next."""
    return x.repeat_interleave(k, dim=1)[:, :frames]


def _labels_or_unknown(
    values: torch.Tensor | None, shape: tuple, unknown: float, dtype: torch.dtype, device
) -> torch.Tensor:
    """A task's labels, or all unknown when the batch has none of that task."""
    return values if values is not None else torch.full(shape, unknown, dtype=dtype, device=device)


def example_batch(
    batch: int, window: int, image_size: int, fps: float = 30.0, device: torch.device | str = "cpu"
) -> Batch:
    """A loader-shaped batch of black frames and a quiet noise waveform, every frame labelled
    Neutral, valence and arousal 0 and no AU active, for FLOP counts and smoke tests."""
    arrays = BatchArrays(batch, window, image_size, AUDIO_RATE)
    samples = arrays.audio.shape[1]
    noise = (torch.randn(batch, samples, generator=torch.Generator().manual_seed(0)) * 0.1).numpy()
    frames = np.zeros((window, image_size, image_size, 3), np.uint8)
    valid = min(samples, math.ceil(window * AUDIO_RATE / fps))
    for b in range(batch):
        arrays.put(b, frames, fps=fps, start=0, track="example", labels=np.zeros(window, np.int64),
                   va=np.zeros((window, 2), np.float32), au=np.zeros((window, NUM_AUS), np.int64),
                   audio=noise[b], audio_span=(0, valid))
    return arrays.batch().to(device)


def build_model(
    cfg: ModelConfig, class_counts: Sequence[int] | None = None, au_positive_rates: Sequence[float] | None = None
) -> ExprModel:
    """The model a job describes; class_counts (train label histogram) set the CE weights and
    the train split's AU positive rates the AU BCE positive weights."""
    return ExprModel(cfg, class_counts, au_positive_rates)
