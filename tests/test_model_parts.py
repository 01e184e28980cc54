"""Temporal modules, audio alignment, fusion directions and masking, losses."""

from __future__ import annotations

import pytest
import torch

from mmexpr.labels import IGNORE
from mmexpr.model.fusion import (
    ConcatFusion,
    CrossAttentionFusion,
    align_audio,
    modality_dropout,
)
from mmexpr.model.losses import (
    FrameLoss,
    TextGuidedContrastive,
    class_weights_from_counts,
    info_nce,
)
from mmexpr.model.temporal import TCN, build_temporal

B, T, D = 2, 8, 16


def _streams(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, D, generator=g), torch.randn(B, T, D, generator=g)


def _all(shape=(B, T)) -> torch.Tensor:
    return torch.ones(shape, dtype=torch.bool)


@pytest.mark.parametrize("kind", ["tcn", "transformer", "none"])
def test_temporal_keeps_shape_and_padding_never_reaches_real_frames(kind):
    torch.manual_seed(0)
    module = build_temporal(kind, D, layers=2, kernel=3, heads=2, dropout=0.0).eval()
    x, noise = _streams()
    mask = _all()
    mask[0, 5:] = False
    y = module(x, mask)
    x2 = x.clone()
    x2[0, 5:] = noise[0, 5:] * 100  # change only padded frames
    y2 = module(x2, mask)
    assert y.shape == (B, T, D)
    assert torch.allclose(y[0, :5], y2[0, :5], atol=1e-5)
    assert torch.allclose(y[1], y2[1])


def test_tcn_mixes_neighbouring_frames_within_its_receptive_field():
    tcn = TCN(D, layers=2, kernel=3, dropout=0.0).eval()
    assert tcn.receptive_field() == 7
    x, _ = _streams()
    x2 = x.clone()
    x2[:, 0] += 1.0
    changed = (tcn(x2, _all()) - tcn(x, _all())).abs().sum(-1)[0] > 1e-6
    assert changed[:4].all() and not changed[4:].any()  # frame 0 reaches frames 0..3 only


def _fusion(direction: str) -> CrossAttentionFusion:
    torch.manual_seed(0)
    return CrossAttentionFusion(D, heads=2, layers=2, dropout=0.0, direction=direction).eval()


@pytest.mark.parametrize(
    "direction,video_sees_audio,audio_sees_video",
    [
        ("bi", True, True),
        ("audio_to_video", True, False),
        ("video_to_audio", False, True),
    ],
)
def test_fusion_directions_change_exactly_the_streams_they_should(
    direction, video_sees_audio, audio_sees_video
):
    fusion = _fusion(direction)
    v, a = _streams()
    v2, a2 = _streams(seed=1)
    base = fusion(v, a, _all(), _all())
    new_audio = fusion(v, a2, _all(), _all())
    new_video = fusion(v2, a, _all(), _all())
    assert (not torch.allclose(base.video, new_audio.video, atol=1e-5)) == video_sees_audio
    assert (not torch.allclose(base.audio, new_video.audio, atol=1e-5)) == audio_sees_video
    assert base.fused.shape == (B, T, D)


def test_window_without_audio_is_masked_not_attended():
    fusion = _fusion("bi")
    v, a = _streams()
    _, noise = _streams(seed=3)
    audio_mask = _all()
    audio_mask[1] = False  # window 1 has no audio
    out = fusion(v, a, _all(), audio_mask)
    out_noise = fusion(v, noise, _all(), audio_mask)
    assert torch.isfinite(out.fused).all()
    assert torch.allclose(
        out.fused[1], out_noise.fused[1], atol=1e-6
    )  # audio content is irrelevant
    assert not torch.allclose(
        out.fused[0], out_noise.fused[0], atol=1e-5
    )  # window 0 still hears audio
    concat = ConcatFusion(D, 0.0).eval()
    assert torch.allclose(
        concat(v, a, _all(), audio_mask).fused[1], concat(v, noise, _all(), audio_mask).fused[1]
    )


def test_align_audio_maps_features_to_frame_times_and_masks_missing_audio():
    # 50 features per second (wav2vec2's rate); feature j holds the value j.
    steps = 20
    feats = torch.arange(steps, dtype=torch.float32).view(1, steps, 1).repeat(3, 1, 1)
    audio_len = torch.tensor([6400, 3200, 0])  # 0.4 s, 0.2 s, none
    feat_len = torch.tensor([20, 10, 0])
    fps = torch.tensor([25.0, 25.0, 25.0])
    aligned, mask = align_audio(feats, feat_len, audio_len, fps, frames=10)
    # frame t's centre (t+0.5)/25 s sits at feature (t+0.5)*2 - 0.5 = 2t + 0.5
    expected = torch.arange(10, dtype=torch.float32) * 2 + 0.5
    assert torch.allclose(aligned[0, :, 0], expected, atol=1e-5)
    assert mask[0].all()
    assert mask[1, :5].all() and not mask[1, 5:].any()  # audio ends after 5 frames
    assert not mask[2].any()


def test_align_audio_survives_padding_windows_with_zero_fps():
    """The loader pads evaluation passes with fully masked windows whose fps is 0."""
    feats = torch.randn(2, 20, 4)
    aligned, mask = align_audio(
        feats, torch.tensor([20, 0]), torch.tensor([6400, 0]), torch.tensor([25.0, 0.0]), frames=10
    )
    assert torch.isfinite(aligned).all()
    assert mask[0].all() and not mask[1].any()


def test_modality_dropout_hides_at_most_one_modality_per_window():
    video, audio = _all((64, T)), _all((64, T))
    audio[:8] = False  # windows without audio never lose their video
    gen = torch.Generator().manual_seed(0)
    v, a = modality_dropout(video, audio, 1.0, gen)
    assert (v.any(1) | a.any(1)).all()
    assert v[:8].all()
    assert (~v.any(1)).sum() > 10 and (~a[8:].any(1)).sum() > 10
    assert modality_dropout(video, audio, 0.0)[1] is audio


def test_contrastive_loss_falls_as_frame_features_move_toward_their_class_embedding():
    g = torch.Generator().manual_seed(0)
    classes = torch.randn(8, 32, generator=g)
    labels = torch.arange(16) % 8
    labels[3] = IGNORE
    frames = torch.randn(16, 32, generator=g)
    target = classes[labels.clamp(min=0)]
    scale = torch.tensor(10.0)
    losses = [
        float(info_nce(frames + s * (target - frames), classes, labels, scale))
        for s in (0, 0.3, 0.6, 0.9)
    ]
    assert all(a > b for a, b in zip(losses, losses[1:], strict=False)), losses


def test_contrastive_module_learns_temperature_and_projections():
    torch.manual_seed(0)
    loss = TextGuidedContrastive(16, 24, 8)
    assert abs(float(loss.scale().detach()) - 1 / 0.07) < 1e-3
    frames, text = torch.randn(2, 4, 16), torch.randn(8, 24)
    value = loss(frames, text, torch.tensor([[0, 1, 2, -1], [3, 4, 5, 6]]))
    value.backward()
    assert loss.logit_scale.grad is not None and loss.text_proj.weight.grad is not None


def test_frame_loss_ignores_minus_one_frames_and_weights_rare_classes():
    logits = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[0, 1, IGNORE, 2], [IGNORE, IGNORE, 3, 3]])
    ce = FrameLoss("ce")
    changed = logits.clone()
    changed[0, 2] += 50
    changed[1, 0] -= 50
    assert torch.allclose(ce(logits, labels), ce(changed, labels))
    assert torch.allclose(
        ce(logits, labels),
        torch.nn.functional.cross_entropy(logits.view(-1, 8), labels.view(-1), ignore_index=IGNORE),
    )
    empty = FrameLoss("ce")(logits.requires_grad_(), torch.full((2, 4), IGNORE))
    assert float(empty.detach()) == 0.0 and empty.requires_grad

    w = class_weights_from_counts([1000, 50, 50, 50, 200, 200, 0, 500])
    assert w[1] > w[4] > w[0] and w[6] == 1.0
    assert float(w[1] / w.min()) <= 10.0 + 1e-5  # capped


def test_focal_loss_down_weights_easy_frames():
    labels = torch.tensor([[0, 0]])
    logits = torch.zeros(1, 2, 8)
    logits[0, 0, 0] = 8.0  # easy, confident and right
    ce_each = [float(FrameLoss("ce")(logits[:, i : i + 1], labels[:, i : i + 1])) for i in range(2)]
    fl_each = [
        float(FrameLoss("focal", gamma=2.0)(logits[:, i : i + 1], labels[:, i : i + 1]))
        for i in range(2)
    ]
    assert fl_each[0] / ce_each[0] < 0.01 < fl_each[1] / ce_each[1]
