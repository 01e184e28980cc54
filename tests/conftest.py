"""Shared, session-scoped test data: one small demo corpus and its shards.

Built once per test session because packing real H.264 video is the slowest common step.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Keeps every local Ray cluster of the tests on 127.0.0.1 (see mmexpr/submit/local.py); the
# multi-host harnesses set it back for the Ray nodes they start in their namespaces.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 videos x 4 s from the synthetic demo generator, seed 0."""
    from mmexpr.synth.corpus import SynthSpec, write_corpus

    out = tmp_path_factory.mktemp("corpus") / "demo"
    write_corpus(out, SynthSpec(videos=6, seconds=4.0, seed=0, val_fraction=0.34))
    return out


@pytest.fixture(scope="session")
def demo_shards(demo_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo corpus packed into shards (train/ and validation/), 32-frame chunks."""
    from mmexpr.data.pack import pack_corpus

    out = tmp_path_factory.mktemp("shards") / "demo"
    pack_corpus(demo_corpus, out, chunk_frames=32, face_size=64, shard_mb=1, progress=False)
    return out


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray cluster (loopback only) for every pack in a module; pack reuses it."""
    import ray

    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=2, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine
    spinning OpenMP threads make each step ~10x slower; restore the setting afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def one_rank_dist():
    """torch.distributed over this process alone, as a one-worker Ray Train run has it, for
    DeepSpeed engines built in the test process. Made once per session and kept (so
    `dist.is_initialized()` stays true after it): DeepSpeed caches the first process group it
    sees, and a later group would not be that one. An in-memory store and gloo on the loopback
    interface: no port to race for, nothing listening beyond 127.0.0.1."""
    import torch.distributed as dist

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GLOO_SOCKET_IFNAME", "lo")
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.fixture
def one_rank_engine_env(one_rank_dist, monkeypatch: pytest.MonkeyPatch) -> None:
    """`one_rank_dist` and, for this test only, the rank variables a Ray Train worker has
    (DeepSpeed reads them; left set, they would reach the Ray workers later tests start)."""
    for key, value in {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (see shared/data/README.md)")
    return SHARED_DATA
