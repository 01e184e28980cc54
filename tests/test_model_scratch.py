"""`model.preset: scratch`: the paper's encoders at their real size, random weights, offline."""

from __future__ import annotations

import pytest
import torch

from mmexpr.cli import main
from mmexpr.config import EncoderConfig
from mmexpr.errors import UserError
from mmexpr.labels import prompts
from mmexpr.model.encoders import build_audio, build_text, build_visual, find_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLIP = "openai/clip-vit-base-patch16"
# Published sizes: CLIP ViT-B/16 vision tower 85.8 M, its text tower 63.2 M, wav2vec2-base 94.4 M.
PROMPTS = [p for per_class in prompts(["a photo of a {} face.", "a person showing {}."]) for p in per_class]
PUBLISHED = {"vision": 85.8e6, "text": 63.2e6, "audio": 94.4e6}


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_scratch_towers_have_the_published_parameter_counts_and_shapes():
    visual = build_visual(EncoderConfig(name=CLIP), "scratch")
    text = build_text(EncoderConfig(name=CLIP), "scratch", PROMPTS)
    audio = build_audio(EncoderConfig(name="facebook/wav2vec2-base"), "scratch")
    for tower, enc in (("vision", visual), ("text", text), ("audio", audio)):
        assert abs(_params(enc) / PUBLISHED[tower] - 1) < 0.01, (tower, _params(enc))
    assert visual.image_size == 224 and visual.dim == 768 and text.dim == 512 and audio.dim == 768
    assert len(find_layers(visual.backbone)) == 12
    with torch.no_grad():
        assert visual(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)).shape == (1, 768)
        emb = text([p for per_class in prompts(["a photo of a {} face."]) for p in per_class])
        assert emb.shape == (8, 512) and torch.isfinite(emb).all()


def test_scratch_with_an_unknown_architecture_names_the_field_and_the_known_ones():
    with pytest.raises(UserError) as err:
        build_visual(EncoderConfig(name="google/siglip-base-patch16-224"), "scratch")
    assert "model.visual.name" in str(err.value) and CLIP in str(err.value)


def test_scratch_gradient_checkpointing_is_switched_on_in_the_backbone():
    spec = EncoderConfig(name="facebook/wav2vec2-base", train="full", gradient_checkpointing=True)
    audio = build_audio(spec, "scratch")
    assert audio.trainable and audio.backbone.is_gradient_checkpointing


@pytest.mark.slow
def test_describe_scratch_paper_job_prints_the_real_parameter_counts(capsys):
    rc = main(["describe", "jobs/paper-e2e.yaml", "--set", "model.preset=scratch", "--set", "data.window=2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    total = next(line for line in out.splitlines() if line.startswith("total "))
    params, trainable, gflops = (float(x.replace(",", "")) for x in total.split()[-3:])
    assert 240e6 < params < 250e6 and trainable > 180e6
    # ViT-B/16 at 224 px: about 35 GFLOPs (multiply-adds x 2) per frame, 2 frames here.
    visual = next(line for line in out.splitlines() if line.startswith("visual "))
    assert 60 < float(visual.split()[-1]) < 75 and gflops > 60
