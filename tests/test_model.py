"""The assembled model: every switch, masks, missing audio, text embeddings, optimiser groups,
overfitting a small batch, `mmexpr describe`, and the model's job files."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mmexpr.cli import main
from mmexpr.config import EncoderConfig, ModelConfig, flatten, load_job
from mmexpr.data.batch import Batch, audio_samples
from mmexpr.labels import IGNORE, NUM_CLASSES
from mmexpr.model.model import build_model, example_batch

REPO = Path(__file__).resolve().parents[1]
HIDDEN = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cfg(**changes) -> ModelConfig:
    base = dict(
        preset="tiny",
        hidden=HIDDEN,
        fusion_heads=2,
        contrastive_dim=16,
        dropout=0.0,
        visual=EncoderConfig(name="tiny-clip-vision"),
        audio=EncoderConfig(name="tiny-wav2vec2"),
        text=EncoderConfig(name="tiny-clip-text"),
    )
    base.update(changes)
    return ModelConfig(**base)


def _batch(b: int = 2, t: int = 8, size: int = 48) -> dict:
    batch = example_batch(b, t, size, fps=25.0)
    g = torch.Generator().manual_seed(0)
    batch.video = torch.randint(0, 256, batch.video.shape, generator=g, dtype=torch.uint8)
    batch.labels = torch.randint(0, NUM_CLASSES, (b, t), generator=g)
    batch.mask[0, -2:] = False  # a short chunk: its last two frames are padding
    batch.labels[0, -2:] = IGNORE
    batch.labels[1, 0] = IGNORE
    batch.va = torch.rand((b, t, 2), generator=g) * 2 - 1
    batch.va[1, :3] = float("nan")
    batch.au = torch.randint(0, 2, (b, t, 12), generator=g)
    batch.au[0, 2] = IGNORE
    return batch


SWITCHES = [
    {},
    {"modalities": "video"},
    {"modalities": "audio"},
    {"temporal": "none"},
    {"temporal": "transformer"},
    {"fusion": "concat"},
    {"fusion": "audio_to_video"},
    {"fusion": "video_to_audio"},
    {"loss": "focal"},
    {"contrastive_weight": 0.0},
    {"modality_dropout": 0.5},
    {"unimodal_weight": 0.5, "modality_dropout": 0.5},
    {"audio": EncoderConfig(name="tiny-logmel", train="full")},
    {"text": EncoderConfig(name="tiny-minilm", train="full")},
    {"visual_every": 3},
]


@pytest.mark.parametrize(
    "changes",
    SWITCHES,
    ids=lambda c: ",".join(f"{k}={getattr(v, 'name', v)}" for k, v in c.items()) or "paper",
)
def test_forward_shapes_masks_and_losses_for_every_switch(changes):
    torch.manual_seed(0)
    cfg = tiny_cfg(**changes)
    model = build_model(cfg, class_counts=[50, 5, 5, 5, 20, 10, 5, 40]).train()
    batch = _batch()
    out = model(batch)
    assert out["logits"].shape == (2, 8, NUM_CLASSES)
    assert out["embeddings"].shape == (2, 8, HIDDEN)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert set(out["loss_parts"]) == (
        {"focal" if cfg.loss == "focal" else "ce"}
        | ({"contrastive"} if cfg.contrastive_weight > 0 else set())
        | ({"ce_video", "ce_audio"} if cfg.unimodal_weight > 0 else set())
    )
    assert (model.visual is None) == (cfg.modalities == "audio")
    assert (model.audio is None) == (cfg.modalities == "video")
    assert (model.text is None) == (cfg.contrastive_weight == 0)
    assert not out["audio_mask"][0, -2:].any()  # padding never counts as audio
    out["loss"].backward()
    assert model.head.linear.weight.grad is not None

    # Labels of padded frames are ignored whatever they say.
    model.eval()
    with torch.no_grad():
        first = model(batch)["loss"]
        batch.labels[0, -2:] = 3
        assert torch.allclose(first, model(batch)["loss"])
    no_labels = batch.without_labels()
    assert "loss" not in model(no_labels)


def _params_without_grad(model, batch) -> list[str]:
    model.zero_grad(set_to_none=True)
    model(batch)["loss"].backward()
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


ALL_TASKS = {"tasks": ["expr", "va", "au"]}


@pytest.mark.parametrize("case", ["no labelled frame", "no audio", "fully masked", "no face", "expr labels only",
                                  "va labels only", "au labels only", "no task labels at all"])
@pytest.mark.parametrize("changes", [{}, {"fusion": "concat"}, {"modalities": "audio"}, {"loss": "focal"}, ALL_TASKS,
                                     {"tasks": ["va", "au"], "va_mse_weight": 0.5},
                                     {"unimodal_weight": 0.5, "audio": EncoderConfig(name="tiny-logmel", train="full")}],
                         ids=["paper", "concat", "audio-only", "focal", "three-tasks", "va-au", "unimodal-logmel"])
def test_every_trainable_parameter_gets_a_gradient_whatever_the_batch_holds(case, changes):
    """ZeRO-1/2 reduce gradients in buckets built from the parameters that got one: if a rank's
    batch leaves a parameter out of the graph (a window of unlabelled frames, say), the ranks
    reduce buckets of different sizes and gloo aborts the process (seen: rank 0 died at step 25
    of a 2-host run)."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**changes), None).train()
    batch = _batch()
    if case == "no labelled frame":
        batch.labels[:] = IGNORE
        batch.va[:] = float("nan")
        batch.au[:] = IGNORE
    elif case == "expr labels only":
        batch.va[:] = float("nan")
        batch.au[:] = IGNORE
    elif case == "va labels only":
        batch.labels[:] = IGNORE
        batch.au[:] = IGNORE
    elif case == "au labels only":
        batch.labels[:] = IGNORE
        batch.va[:] = float("nan")
    elif case == "no task labels at all":
        batch.va = batch.au = None
        batch.labels[:] = IGNORE
    elif case == "no audio":
        batch.audio_len[:] = 0
    elif case == "no face":
        batch.face[:] = False
    else:
        batch.mask[:] = False
    assert _params_without_grad(model, batch) == []


@pytest.mark.parametrize("tasks", [["expr", "va", "au"], ["va"], ["au", "expr"]], ids=",".join)
def test_each_task_has_its_head_output_and_loss_and_unknown_frames_count_in_none(tasks):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(tasks=tasks), class_counts=None, au_positive_rates=[0.1] * 12).eval()
    batch = _batch()
    out = model(batch)
    assert ("logits" in out) == ("expr" in tasks) and ("contrastive" in out["loss_parts"]) == ("expr" in tasks)
    if "va" in tasks:
        assert out["va"].shape == (2, 8, 2) and out["va"].abs().max() < 1
        assert 0 <= out["loss_parts"]["va"] <= 2
    if "au" in tasks:
        assert out["au_logits"].shape == (2, 8, 12)
        assert model.au_loss.pos_weight[0] == pytest.approx(9.0)
        assert model.au_thresholds.tolist() == [0.5] * 12
    with torch.no_grad():
        first = model(batch)["loss"]
        batch.va[1, :3] = 0.9  # was unknown: now known, so the loss changes
        batch.au[0, 2] = 1
        changed = model(batch)["loss"]
        batch.mask[0, -2:] = False
        batch.va[0, -2:] = -0.9  # padding: ignored whatever it says
        batch.au[0, -2:] = 1
        assert torch.allclose(changed, model(batch)["loss"])
    assert ("va" not in tasks and "au" not in tasks) or not torch.allclose(first, changed)
    assert set(model(batch.without_labels())) >= {"embeddings"} and "loss" not in model(batch.without_labels())


@pytest.mark.parametrize("changes", [{}, {"fusion": "concat"}, {"temporal": "transformer"}],
                         ids=["paper", "concat", "transformer"])
def test_frames_without_a_face_are_a_missing_visual_input_carried_by_the_audio(changes):
    """Pixels of a frame flagged face=False reach no logit of its window (masked in the visual
    stream and in fusion), the frame still gets logits, and face=None means every face is there."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**changes), None).eval()
    batch = _batch()
    with torch.no_grad():
        assert torch.allclose(model(batch)["logits"], model(replace(batch, face=None))["logits"])
        batch.face[:, 2:5] = False
        out = model(batch)["logits"]
        batch.video[:, 2:5] = torch.randint(0, 256, batch.video[:, 2:5].shape, dtype=torch.uint8)
        again = model(batch)["logits"]
        batch.face[:, 2:5] = True
        seen = model(batch)["logits"]
    assert torch.isfinite(out).all() and out.shape == (2, 8, NUM_CLASSES)
    assert torch.allclose(out, again, atol=1e-5)
    assert not torch.allclose(seen, again, atol=1e-3)  # with the flag set, those pixels count


@pytest.mark.parametrize("modalities", ["audio_video", "video"])
def test_visual_every_encodes_only_every_kth_frame_and_holds_its_features(modalities):
    """With visual_every=4 the encoder sees frames 0 and 4 of an 8-frame window: the other frames'
    pixels reach no logit, frame 4's do, and a face missing on frame 4 masks frames 4-7."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(visual_every=4, modalities=modalities), None).eval()
    batch = _batch()
    seen: list[torch.Tensor] = []
    model.visual.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        base = model(batch)["logits"]
        assert seen[-1].shape[0] == 2 * 2  # two windows x frames 0 and 4
        unseen = [1, 2, 3, 5, 6, 7]
        batch.video[:, unseen] = torch.randint(0, 256, batch.video[:, unseen].shape, dtype=torch.uint8)
        assert torch.allclose(model(batch)["logits"], base, atol=1e-5)
        batch.video[:, 4] = torch.randint(0, 256, batch.video[:, 4].shape, dtype=torch.uint8)
        changed = model(batch)["logits"]
        assert not torch.allclose(changed, base, atol=1e-3)
        batch.face[:, 4] = False
        masked = model(batch)["logits"]
        batch.video[:, 4] = 0
        assert torch.allclose(model(batch)["logits"], masked, atol=1e-5)


def test_visual_every_holds_the_last_encoded_frame_to_the_end_of_a_window_of_any_length():
    """T=10, k=4: frames 0, 4 and 8 are encoded; frame 9 carries frame 8's features, and padding
    inside a held block stays padding (its logits do not depend on the encoded frame's pixels)."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(visual_every=4, modalities="video"), None).eval()
    batch = _batch(t=10)  # window 0 ends in two padded frames (8 and 9)
    seen: list[torch.Tensor] = []
    model.visual.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        base = model(batch)["logits"]
        assert seen[-1].shape[0] == 2 * 3
        batch.video[:, 9] = torch.randint(0, 256, batch.video[:, 9].shape, dtype=torch.uint8)
        assert torch.allclose(model(batch)["logits"], base, atol=1e-5)
        batch.video[:, 8] = torch.randint(0, 256, batch.video[:, 8].shape, dtype=torch.uint8)
        changed = model(batch)["logits"]
    assert not torch.allclose(changed[1, 8:], base[1, 8:], atol=1e-3)  # window 1: frames 8-9 see frame 8
    assert torch.allclose(changed[0], base[0], atol=1e-5)  # window 0: frame 8 is padding, seen by no frame


def test_unimodal_heads_add_one_loss_per_stream_on_the_frames_that_stream_has():
    """model.unimodal_weight: the video head's loss counts frames with a face, the audio head's
    frames with audio, before modality dropout; the fused logits do not change."""
    torch.manual_seed(0)
    plain = build_model(tiny_cfg(), None).eval()
    torch.manual_seed(0)
    model = build_model(tiny_cfg(unimodal_weight=0.5), None).eval()
    model.load_state_dict(plain.state_dict(), strict=False)
    batch = _batch()
    with torch.no_grad():
        out, base = model(batch), plain(batch)
    assert set(out["loss_parts"]) - set(base["loss_parts"]) == {"ce_video", "ce_audio"}
    assert torch.allclose(out["logits"], base["logits"])
    parts = out["loss_parts"]
    expected = base["loss"] + 0.5 * (parts["ce_video"] + parts["ce_audio"])
    assert torch.allclose(out["loss"], expected)
    batch.face[:, :4] = False
    with torch.no_grad():
        faceless = model(batch)["loss_parts"]
    batch.labels[:, :4] = (batch.labels[:, :4] + 1) % NUM_CLASSES  # labels of faceless frames only
    with torch.no_grad():
        relabelled = model(batch)["loss_parts"]
    assert torch.allclose(faceless["ce_video"], relabelled["ce_video"])
    assert not torch.allclose(faceless["ce_audio"], relabelled["ce_audio"])
    assert build_model(tiny_cfg(modalities="audio", unimodal_weight=0.5), None).unimodal_heads is None


def test_window_without_audio_is_masked_and_its_audio_samples_are_ignored():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), None).eval()
    batch = _batch()
    batch.audio_len[1] = 0
    with torch.no_grad():
        out = model(batch)
        batch.audio[1] = torch.randn(batch.audio.shape[1])  # garbage beyond audio_len
        again = model(batch)
    assert torch.isfinite(out["logits"]).all()
    assert not out["audio_mask"][1].any() and out["audio_mask"][0, :6].all()
    assert torch.allclose(out["logits"][1], again["logits"][1], atol=1e-5)


def test_frames_are_resized_to_the_encoder_size_so_any_frame_size_works():
    model = build_model(tiny_cfg(modalities="video"), None).eval()
    with torch.no_grad():
        small, large = model(_batch(size=32)), model(_batch(size=112))
    assert small["logits"].shape == large["logits"].shape == (2, 8, NUM_CLASSES)


def test_frozen_text_embeddings_are_cached_and_a_trainable_text_encoder_learns():
    frozen = build_model(tiny_cfg(), None)
    assert "class_text" in dict(frozen.named_buffers())
    assert torch.equal(frozen.class_embeddings(), frozen.class_text)

    model = build_model(
        tiny_cfg(text=EncoderConfig(name="tiny-clip-text", train="full")), None
    ).train()
    assert not hasattr(model, "class_text")
    model(_batch())["loss_parts"]["contrastive"].backward()
    grads = [p.grad for p in model.text.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


def test_param_groups_hold_only_trainable_parameters_with_encoder_lr_for_encoders():
    model = build_model(
        tiny_cfg(visual=EncoderConfig(name="tiny-clip-vision", train="last", last_k=1)), None
    )
    groups = model.param_groups(lr=1e-3, encoder_lr=1e-5, weight_decay=0.05)
    grouped = {id(p): g for g in groups for p in g["params"]}
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    assert set(grouped) == set(trainable)
    for pid, name in trainable.items():
        group = grouped[pid]
        assert group["lr"] == (1e-5 if name.split(".")[0] in ("visual", "audio", "text") else 1e-3)
    assert any(n.startswith("visual.") for n in trainable.values())
    assert not any(n.startswith("audio.") for n in trainable.values())  # audio frozen
    assert {g["weight_decay"] for g in groups if g["name"].endswith("no_decay")} == {0.0}


def _demo_like_windows(b: int = 8, t: int = 16, size: int = 64, fps: float = 25.0) -> dict:
    """Windows like the demo corpus: class shown by a per-class face texture and a per-class tone,
    two expression segments per window, a padded chunk end, ignored frames, one silent window."""
    g = torch.Generator().manual_seed(0)
    textures = torch.randint(0, 256, (NUM_CLASSES, 3, 4, 4), generator=g).float()
    textures = torch.nn.functional.interpolate(textures, size=(size, size), mode="nearest")
    labels = torch.empty(b, t, dtype=torch.long)
    for i in range(b):
        cut = int(torch.randint(4, t - 4, (1,), generator=g))
        first, second = torch.randperm(NUM_CLASSES, generator=g)[:2].tolist()
        labels[i, :cut], labels[i, cut:] = first, second
    video = textures[labels] + torch.randn(b, t, 3, size, size, generator=g) * 25
    samples = audio_samples(t, 16000)
    seconds = torch.arange(samples) / 16000
    frame_of_sample = (seconds * fps).long().clamp(max=t - 1).expand(b, -1)
    tone = 200.0 + 150.0 * labels.gather(1, frame_of_sample).float()
    audio = 0.5 * torch.sin(2 * math.pi * tone * seconds)
    audio_len = torch.full((b,), int(t / fps * 16000))
    audio_len[-1] = 0
    audio[-1] = 0.0
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, -3:] = False
    labels[0, -3:] = IGNORE
    labels[1, :2] = IGNORE
    return Batch(
        video=video.clamp(0, 255).to(torch.uint8),
        audio=audio,
        audio_len=audio_len,
        fps=torch.full((b,), fps),
        mask=mask,
        start=torch.zeros(b, dtype=torch.long),
        track=["demo-like"] * b,
        labels=labels,
    )


def _accuracy(model, batch) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(batch)["logits"].argmax(-1)
    valid = batch.labels != IGNORE
    return float((pred[valid] == batch.labels[valid]).float().mean())


def test_tiny_model_overfits_a_small_batch_of_demo_like_windows():
    torch.manual_seed(0)
    cfg = tiny_cfg(
        hidden=64,
        fusion_heads=4,
        visual=EncoderConfig(name="tiny-clip-vision", train="full"),
        audio=EncoderConfig(name="tiny-wav2vec2", train="full"),
    )
    model = build_model(cfg, None)
    batch = _demo_like_windows()
    start = _accuracy(model, batch)
    accuracy, steps = _train_until(model, batch, 0.95, 300)
    assert start < 0.5
    assert accuracy >= 0.95, f"frame accuracy {accuracy:.3f} after {steps} steps"


MODEL_JOBS = {
    "paper": {},
    "paper-e2e": {"model.visual.train": "full", "model.audio.train": "full"},
    "ablation-video-only": {"model.modalities": "video"},
    "ablation-audio-only": {"model.modalities": "audio"},
    "ablation-no-temporal": {"model.temporal": "none"},
    "ablation-concat": {"model.fusion": "concat"},
    "ablation-no-contrastive": {"model.contrastive_weight": 0.0},
}


@pytest.mark.parametrize("name", list(MODEL_JOBS))
def test_model_job_files_validate_and_differ_from_the_paper_only_where_named(name):
    paper = flatten(load_job(REPO / "jobs" / "paper.yaml").to_dict())
    job = load_job(REPO / "jobs" / f"{name}.yaml")
    assert job.name == name
    assert job.model.preset == "pretrained"
    assert job.model.visual.name == "openai/clip-vit-base-patch16"
    assert job.model.audio.name == "facebook/wav2vec2-base"
    values = flatten(job.to_dict())
    model_diff = {k: v for k, v in values.items() if k.startswith("model.") and paper[k] != v}
    expected = MODEL_JOBS[name]
    assert {k: model_diff.get(k) for k in expected} == expected
    if name != "paper-e2e":
        assert set(model_diff) == set(expected)
    if name == "paper":
        m = job.model
        assert (m.visual.train, m.audio.train, m.temporal, m.fusion) == (
            "frozen",
            "frozen",
            "tcn",
            "bi",
        )
        assert m.contrastive_weight > 0


def test_describe_command_prints_modules_params_and_flops_offline(capsys):
    rc = main(
        [
            "describe",
            str(REPO / "jobs" / "paper.yaml"),
            "--set",
            "model.preset=tiny",
            "--set",
            "data.image_size=64",
            "--set",
            "model.hidden=64",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    for module in ("visual", "audio", "temporal", "fusion", "head", "text", "contrastive", "total"):
        assert any(line.startswith(module + " ") for line in out.splitlines()), (module, out)
    assert "CLIPVisionModel" in out and "Wav2Vec2Model" in out and "GFLOPs/window" in out
    total = next(line for line in out.splitlines() if line.startswith("total "))
    params, trainable, gflops = (float(x.replace(",", "")) for x in total.split()[-3:])
    assert params > trainable > 0  # frozen encoders are counted but do not train
    assert gflops > 0
    visual = next(line for line in out.splitlines() if line.startswith("visual "))
    assert float(visual.split()[-1]) > 0


def test_describe_counts_the_visual_flops_of_the_encoded_frames_only(capsys):
    """visual_every=4 encodes 4 of a 16-frame window's frames: a quarter of the visual FLOPs."""
    def visual_gflops(*sets: str) -> float:
        args = ["describe", str(REPO / "jobs" / "from-scratch.yaml"), "--set", "data.window=16"]
        assert main([*args, *(x for s in sets for x in ("--set", s))]) == 0
        out = capsys.readouterr().out
        return float(next(line for line in out.splitlines() if line.startswith("visual ")).split()[-1])

    every = visual_gflops("model.visual_every=1")
    assert visual_gflops("model.visual_every=4") == pytest.approx(every / 4, rel=0.02)


def test_describe_with_pretrained_ids_offline_names_the_model_and_the_fix(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = main(["describe", str(REPO / "jobs" / "paper.yaml")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "openai/clip-vit-base-patch16" in err and "offline" in err and "local folder" in err
    assert "Traceback" not in err


def _train_until(
    model, batch, target: float, max_steps: int, lr: float = 3e-3
) -> tuple[float, int]:
    opt = torch.optim.AdamW(model.param_groups(lr=lr, encoder_lr=1e-3, weight_decay=0.0))
    accuracy, steps = _accuracy(model, batch), 0
    while accuracy < target and steps < max_steps:
        model.train()
        for _ in range(10):
            opt.zero_grad()
            model(batch)["loss"].backward()
            opt.step()
        steps += 10
        accuracy = _accuracy(model, batch)
    return accuracy, steps


@pytest.mark.slow
def test_tiny_model_overfits_a_batch_of_packed_demo_windows(demo_shards):
    """The same, on real windows: synthetic faces and speech, packed, decoded by the loader."""
    from mmexpr.config import DataConfig
    from mmexpr.data.loader import make_loader

    data = DataConfig(
        shards=str(demo_shards), window=16, stride=16, image_size=64, batch_size=8, loader_workers=0
    )
    batch = next(iter(make_loader(str(demo_shards), "train", data, train=True, seed=0)))
    assert (batch.labels != IGNORE).sum() > 64
    torch.manual_seed(0)
    cfg = tiny_cfg(
        hidden=64,
        fusion_heads=4,
        visual=EncoderConfig(name="tiny-clip-vision", train="full"),
        audio=EncoderConfig(name="tiny-wav2vec2", train="full"),
    )
    accuracy, steps = _train_until(build_model(cfg, None), batch, 0.95, 300)
    assert accuracy >= 0.95, f"frame accuracy {accuracy:.3f} after {steps} steps"


def test_describe_builds_the_paper_job_from_local_encoder_folders(tmp_path, capsys):
    """The offline route the error message suggests: model.*.name=DIR with preset=pretrained."""
    from mmexpr.labels import prompts
    from mmexpr.model.encoders import build_audio, build_text, build_visual

    build_visual(EncoderConfig(name="tiny-clip-vision"), "tiny").save_pretrained(tmp_path / "clip")
    build_audio(EncoderConfig(name="tiny-wav2vec2"), "tiny").save_pretrained(tmp_path / "w2v")
    texts = [p for per_class in prompts(ModelConfig().prompts) for p in per_class]
    build_text(EncoderConfig(name="tiny-clip-text"), "tiny", texts).save_pretrained(
        tmp_path / "text"
    )
    rc = main(
        [
            "describe",
            str(REPO / "jobs" / "paper.yaml"),
            "--set",
            "data.image_size=64",
            "--set",
            f"model.visual.name={tmp_path / 'clip'}",
            "--set",
            f"model.audio.name={tmp_path / 'w2v'}",
            "--set",
            f"model.text.name={tmp_path / 'text'}",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "preset=pretrained" in out and str(tmp_path / "clip") in out and "CLIPTextModel" in out
