"""The GPU path's parts on a real GPU: placement, bf16 autocast, SDPA attention, NCCL on one rank.

Marked `gpu`; every test skips where CUDA is absent (tests/gpu/check.sh runs them on a GPU).
"""

from __future__ import annotations

import socket

import pytest
import torch

from mmexpr.config import load_job

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"),
]


def _tiny_job(*extra: str):
    return load_job("jobs/paper-e2e.yaml", ["model.preset=tiny", "data.image_size=64", "data.window=4",
                                            "model.hidden=64", *extra])


def test_cuda_placement_is_bf16_and_batches_move_to_the_gpu():
    from mmexpr.model.model import example_batch
    from mmexpr.train.engine import placement, to_device

    job = _tiny_job()
    place = placement(job, torch.device("cuda", 0))
    assert place.bf16 and place.accelerator == "cuda"
    batch = to_device(example_batch(2, 4, 64), place.device, place.bf16)
    assert batch.video.is_cuda and batch.audio.dtype == torch.bfloat16


def test_bf16_model_forward_and_backward_on_cuda_give_finite_loss_and_grads():
    from mmexpr.model.model import build_model, example_batch

    model = build_model(_tiny_job().model, None).cuda().to(torch.bfloat16).train()
    batch = example_batch(2, 4, 64, device="cuda")
    batch.audio = batch.audio.to(torch.bfloat16)
    out = model(batch)
    assert out["logits"].dtype == torch.bfloat16 and torch.isfinite(out["loss"].float())
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g.float()).all() for g in grads)


def test_scratch_encoders_use_sdpa_attention_on_cuda():
    from mmexpr.config import EncoderConfig
    from mmexpr.model.encoders import build_visual

    visual = build_visual(EncoderConfig(name="openai/clip-vit-base-patch16"), "scratch").cuda()
    assert visual.backbone.config._attn_implementation == "sdpa"
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        feats = visual(torch.zeros(2, 3, 224, 224, dtype=torch.uint8, device="cuda"))
    assert feats.shape == (2, 768) and torch.isfinite(feats.float()).all()


def test_nccl_initialises_on_one_rank_and_all_reduces():
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        x = torch.ones(4, device="cuda")
        dist.all_reduce(x)
        assert dist.get_backend() == "nccl" and x.sum().item() == 4
    finally:
        dist.destroy_process_group()
