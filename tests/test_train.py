"""Distributed training end to end: real Ray Train workers, real DeepSpeed engines (CPU,
gloo), real MLflow stores, real demo shards decoded by decord, the real (tiny) model.

Runs are shared between assertions to stay inside the suite's time budget:
- `trained_run`: 2 workers, ZeRO-2, 24 steps, evaluated and checkpointed at 12 and 24;
- `resumed_run`: the same job stopped at step 12 (stop_after) and resumed;
- a copy of `resumed_run` continued on 1 worker from its step-24 checkpoint;
- the ZeRO-3 run: a worker killed by SIGKILL mid-run, with an unreachable tracking server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from mmexpr.config import load_job
from mmexpr.train import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]
SHORT = 24


def _job(shards: Path, output: Path, *extra: str):
    overrides = [
        f"data.shards={shards}",
        f"output={output}",
        "model.preset=tiny",
        "data.window=8",
        "data.stride=8",
        "data.image_size=64",
        "data.batch_size=4",
        "data.loader_workers=0",
        "data.shuffle_buffer=16",
        "train.workers=2",
        "train.zero_stage=2",
        f"train.max_steps={SHORT}",
        "train.warmup_steps=4",
        "train.eval_every=12",
        "train.checkpoint_every=12",
        "train.keep_last=2",
        "train.progress=false",
        "track.experiment=test-train",
        *extra,
    ]
    return load_job(REPO / "jobs" / "demo.yaml", overrides)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _losses(uri: str, run_id: str) -> dict[int, float]:
    return {m.step: m.value for m in _client(uri).get_metric_history(run_id, "train/loss")}


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray cluster (127.0.0.1) for every run of this module."""
    import ray

    from mmexpr.train.driver import start_ray

    started = start_ray(load_job(None, ["train.workers=2"]))
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def trained_run(ray_local, demo_shards, tmp_path_factory):
    from mmexpr.train.driver import run_training

    out = tmp_path_factory.mktemp("trained")
    job = _job(demo_shards, out)
    return job, run_training(job)


@pytest.fixture(scope="module")
def resumed_run(ray_local, demo_shards, tmp_path_factory):
    """Same job as trained_run (same schedule), stopped after 12 steps, then resumed."""
    from mmexpr.train.driver import run_training

    out = tmp_path_factory.mktemp("resumed")
    job = _job(demo_shards, out, "train.stop_after=12")
    first = run_training(job)
    second = run_training(job, resume=str(first.run_dir))
    return job, first, second


def test_one_worker_runs_zero_stage_0_unless_it_offloads():
    """Partitioning over one rank saves nothing and costs copies; offload is the exception."""
    from mmexpr.train.engine import deepspeed_config, placement, zero_stage_for

    job = load_job(None, ["train.zero_stage=2"])
    assert zero_stage_for(job, 1) == 0 and zero_stage_for(job, 2) == 2
    offload = load_job(None, ["train.zero_stage=3", "train.offload=true"])
    assert zero_stage_for(offload, 1) == 3
    import torch

    config = deepspeed_config(offload, placement(offload, torch.device("cpu")), zero_stage_for(offload, 1))
    assert config["zero_optimization"]["stage"] == 3 and "offload_optimizer" in config["zero_optimization"]


def _one_rank_job(*extra: str):
    """A small model with every encoder that trains, for engines built in the test process."""
    return load_job(None, ["model.preset=tiny", "model.hidden=32", "model.fusion_heads=4", "data.window=4",
                           "data.image_size=32", "data.batch_size=2",
                           "model.visual={name: tiny-clip-vision, train: full}",
                           "model.audio={name: tiny-wav2vec2, train: full}",
                           "model.text={name: tiny-clip-text, train: frozen}", *extra])


def test_one_rank_engine_skips_the_gradient_all_reduce_and_updates_like_plain_pytorch(one_rank_engine_env):
    """Over one rank DeepSpeed's after-backward all-reduce averages nothing but copies every
    gradient twice; skipped, the engine's steps still equal plain PyTorch's on the same batches."""
    import torch

    from mmexpr.bench.train import _batches
    from mmexpr.model.model import build_model
    from mmexpr.train.engine import (
        build_engine,
        make_optimizer,
        make_scheduler,
        placement,
        to_device,
    )

    job = _one_rank_job("train.zero_stage=2", "train.grad_clip=0.5")
    batches = _batches(job, 3)
    torch.manual_seed(0)
    plain = build_model(job.model, None).train()
    torch.manual_seed(0)
    engine, _, _ = build_engine(build_model(job.model, None).train(), job, placement(job, torch.device("cpu")))
    assert engine.zero_optimization_stage() == 0 and not engine.enable_backward_allreduce
    optimizer = make_optimizer(plain, job)
    scheduler = make_scheduler(optimizer, job)
    for batch in batches:
        torch.manual_seed(1)
        loss = plain(batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), job.train.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        out = engine(to_device(batch, torch.device("cpu"), False))
        engine.backward(out["loss"])
        engine.step()
        assert torch.allclose(out["loss"], loss, atol=1e-5)
    for (name, a), b in zip(plain.named_parameters(), engine.module.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name


# (job's ZeRO stage, offload) -> stage the one-rank engine runs, gradient bytes per parameter held
ONE_RANK_STATES = {(2, False): (0, 4), (2, True): (2, 4), (3, True): (3, 8)}


@pytest.mark.parametrize(("zero_stage", "offload"), list(ONE_RANK_STATES))
def test_one_rank_model_state_bytes_count_each_byte_once_against_the_zero_formula(one_rank_engine_env,
                                                                                 zero_stage: int, offload: bool):
    """One rank, fp32: stage 0 (the optimizer updates the parameters themselves, which must not
    count twice) and ZeRO-2 with offload (the gradient partition inside the host master) hold
    what the ZeRO formula says; ZeRO-3 with offload holds one fp32 gradient partition more (it
    reduces into a flat buffer, then copies into the master's own), which the count shows."""
    import torch

    from mmexpr.bench.train import _batches
    from mmexpr.model.model import build_model
    from mmexpr.train.engine import (
        base_optimizer,
        build_engine,
        model_state_bytes,
        placement,
        to_device,
        trainable_params,
        zero_bytes,
    )

    job = _one_rank_job(f"train.zero_stage={zero_stage}", f"train.offload={offload}")
    model = build_model(job.model, None).train()
    psi = trainable_params(model)
    engine, ds_optimizer, _ = build_engine(model, job, placement(job, torch.device("cpu")))
    stage, grad_bytes = ONE_RANK_STATES[zero_stage, offload]
    assert engine.zero_optimization_stage() == stage
    for batch in _batches(job, 2):  # the optimizer's state exists after the first step
        out = engine(to_device(batch, torch.device("cpu"), False))
        engine.backward(out["loss"])
        if engine.global_steps == 1:
            held = model_state_bytes(engine, base_optimizer(ds_optimizer))
        engine.step()
    assert held["params"] == pytest.approx(4 * psi, rel=0.01), held
    assert held["grads"] == pytest.approx(grad_bytes * psi, rel=0.01), held
    extra = (grad_bytes - 4) * psi  # the formula has 4 bytes of gradient per parameter in fp32
    assert sum(held.values()) == pytest.approx(zero_bytes(stage, psi, 1) + extra, rel=0.01), held


# ---------------------------------------------------------------- the cluster the driver starts


def test_every_worker_process_names_its_own_cluster_and_handles_preemption_signals(ray_local):
    """Ray Train's placement-group cleaner asks the State API about the controller; with no
    RAY_ADDRESS it may ask another Ray cluster on the machine and tear down a healthy run."""
    import ray

    @ray.remote(num_cpus=0)
    class Probe:
        def facts(self) -> tuple[str | None, str, bool]:
            import signal

            from mmexpr.train import preemption

            return (os.environ.get("RAY_ADDRESS"), ray.get_runtime_context().gcs_address,
                    signal.getsignal(signal.SIGUSR1) is preemption._handler)

    probe = Probe.remote()
    address, gcs, handled = ray.get(probe.facts.remote(), timeout=120)
    ray.kill(probe)
    assert address == gcs and gcs.startswith("127.0.0.1:")
    assert handled, "the worker_process_setup_hook routes SIGUSR1 to the training loop"


# ---------------------------------------------------------------- refusals before Ray starts


def test_bad_job_fails_before_any_worker_starts(demo_shards, tmp_path):
    import ray

    from mmexpr.errors import UserError
    from mmexpr.train.driver import run_training

    ray_was_up = ray.is_initialized()
    missing = _job(tmp_path / "no-shards", tmp_path / "out")
    with pytest.raises(UserError, match="no-shards"):
        run_training(missing)
    unknown = _job(demo_shards, tmp_path / "out")
    with pytest.raises(UserError, match="--resume nope"):
        run_training(unknown, resume="nope")
    assert not (tmp_path / "out" / "mlflow.db").exists(), "nothing recorded for a job that cannot start"
    assert ray.is_initialized() == ray_was_up, "the driver refused the job before starting Ray"


def test_a_batch_that_cannot_fit_in_memory_fails_at_start_naming_the_keys(demo_shards, tmp_path):
    """`--set data.window=100000` passes config validation; training refuses it before Ray
    starts, from the batch's size, instead of dying later in Ray's out-of-memory killer."""
    import psutil
    import ray

    from mmexpr.train.driver import TrainSetupError, batch_memory, run_training

    ray_was_up = ray.is_initialized()
    huge = _job(demo_shards, tmp_path / "out", "data.window=100000")
    assert batch_memory(huge) * huge.train.workers > psutil.virtual_memory().total
    with pytest.raises(TrainSetupError, match=r"data\.batch_size=4 x data\.window=100000 .*data\.image_size=64"):
        run_training(huge)
    assert not (tmp_path / "out" / "mlflow.db").exists()
    assert ray.is_initialized() == ray_was_up
    assert batch_memory(_job(demo_shards, tmp_path / "out")) < 2**30  # the test jobs themselves are far below


def test_batch_memory_counts_encoder_activations_only_for_the_frames_it_encodes():
    from mmexpr.train.driver import batch_memory

    def need(*sets: str) -> int:
        return batch_memory(load_job(REPO / "jobs" / "demo.yaml", ["data.window=16", *sets]))

    every, eighth, audio = need("model.visual_every=1"), need("model.visual_every=8"), need("model.modalities=audio")
    assert every > eighth > audio
    assert every - audio == pytest.approx(8 * (eighth - audio))  # 16 frames encoded against 2


# ---------------------------------------------------------------- 2 workers, ZeRO-2


@pytest.mark.slow
def test_two_workers_zero2_train_evaluate_and_checkpoint(trained_run):
    job, result = trained_run
    assert result.step == SHORT and result.world_size == 2 and not result.preempted
    latest = result.latest_checkpoint
    assert latest is not None and latest.name == ckpt.tag_for(SHORT)
    files = {p.name for p in latest.iterdir()}
    # DeepSpeed's ZeRO shards, one per rank, plus the portable copy and the meta written last.
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt",
            "mp_rank_00_model_states.pt", "portable.pt", "meta.json"} <= files
    meta = ckpt.read_meta(latest)
    assert meta["world_size"] == 2 and meta["zero_stage"] == 2
    tags = ckpt.published_tags(result.run_dir / "checkpoints")
    kept = {t.name for t in tags}
    assert len(kept - {result.best_checkpoint.name}) <= job.train.keep_last
    assert result.best_step in (12, 24) and 0.0 <= result.best_f1 <= 1.0


@pytest.mark.slow
def test_mlflow_run_holds_config_metrics_figures_checkpoints_and_model(trained_run):
    job, result = trained_run
    client = _client(result.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["train.zero_stage"] == "2" and params["model.preset"] == "tiny"
    assert params["data.window"] == "8"
    tags = run.data.tags
    assert tags["world_size"] == "2" and tags["accelerator"] == "cpu"
    assert tags["version.deepspeed"] and tags["git_commit"]
    assert tags["checkpoint.latest"].endswith(ckpt.tag_for(SHORT))
    losses = _losses(result.tracking_uri, result.run_id)
    assert sorted(losses) == list(range(1, SHORT + 1))
    metrics = run.data.metrics
    for key in ("train/ce", "train/contrastive", "train/lr", "train/lr_encoders", "train/samples_per_s",
                "train/data_wait", "val/macro_f1", "val/accuracy", "val/f1_Happiness",
                "train/va", "train/au", "val/va_ccc", "val/va_ccc_valence", "val/va_ccc_arousal", "val/au_f1",
                "val/au_f1_AU12", "val/au_f1_tuned", "val/score_expr", "val/score_va", "val/score_au"):
        assert key in metrics, key  # the demo job trains all three tasks
    assert metrics["val/score_va"] == metrics["val/va_ccc"] and metrics["val/score_expr"] == metrics["val/macro_f1"]
    assert 0.0 <= metrics["train/data_wait"] <= 1.0
    # Rank 0's model states as the ZeRO-2 formula has them over 2 ranks in fp32 (logged at step 2):
    # full params, half of the grads and of the fp32 master + Adam moments.
    psi = metrics["memory/trainable_params"]
    assert metrics["memory/zero_formula_gb"] == pytest.approx((4 * psi + (4 + 12) * psi / 2) / 1e9, rel=1e-6)
    assert metrics["memory/model_states_gb"] == pytest.approx(metrics["memory/zero_formula_gb"], rel=0.10)
    f1_steps = [m.step for m in client.get_metric_history(result.run_id, "val/macro_f1")]
    assert f1_steps == [12, 24]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "eval", "checkpoints", "best_model"} <= artifacts
    evals = {a.path for a in client.list_artifacts(result.run_id, "eval")}
    assert "eval/confusion_step_00000024.png" in evals and "eval/per_class_f1_step_00000024.png" in evals
    for figure in ("va_time", "va_scatter", "au_f1"):
        assert f"eval/{figure}_step_00000024.png" in evals, figure
    saved = {a.path for a in client.list_artifacts(result.run_id, "checkpoints")}
    assert f"checkpoints/{ckpt.tag_for(SHORT)}.json" in saved
    model_files = {a.path for a in client.list_artifacts(result.run_id, "best_model")}
    assert {"best_model/weights.pt", "best_model/config.yaml"} <= model_files
    versions = client.search_model_versions(f"name='{job.track.register_model}'")
    assert any(v.run_id == result.run_id for v in versions)


@pytest.mark.slow
def test_registered_weights_load_into_a_fresh_model(trained_run):
    import torch
    from mlflow.artifacts import download_artifacts

    from mmexpr.config import job_from_dict
    from mmexpr.model.model import build_model

    job, result = trained_run
    folder = Path(download_artifacts(run_id=result.run_id, artifact_path="best_model", tracking_uri=result.tracking_uri))
    import yaml

    saved_job = job_from_dict(yaml.safe_load((folder / "config.yaml").read_text()))
    model = build_model(saved_job.model, None)
    weights = torch.load(folder / "weights.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(weights, strict=True)
    # The per-AU thresholds tuned at the best evaluation travel with the weights.
    from mmexpr.metrics import AU_THRESHOLDS

    assert set(weights["au_thresholds"].tolist()) <= {float(t) for t in AU_THRESHOLDS.astype("float32")}
    before = build_model(saved_job.model, None).state_dict()
    assert any(not torch.equal(before[k], v) for k, v in weights.items() if v.dtype.is_floating_point)


# ---------------------------------------------------------------- exact resume


@pytest.mark.slow
def test_stopped_and_resumed_run_repeats_losses_of_uninterrupted_run(trained_run, resumed_run):
    _, full = trained_run
    _, first, second = resumed_run
    assert first.step == 12 and second.step == 24
    assert first.run_id == second.run_id, "--resume continues the same MLflow run"
    resumed = _losses(second.tracking_uri, second.run_id)
    uninterrupted = _losses(full.tracking_uri, full.run_id)
    assert sorted(resumed) == list(range(1, 25))
    for step in range(1, 25):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-5, abs=1e-6), f"step {step}"
    run = _client(second.tracking_uri).get_run(second.run_id)
    assert run.data.tags["mmexpr.resumes"] == "1"
    assert run.data.metrics["resume/from_step"] == 12


@pytest.mark.slow
def test_resume_on_one_worker_keeps_optimizer_state_and_skips_interrupted_checkpoint(
    resumed_run, tmp_path
):
    """2 -> 1 worker: the portable copy restores both Adam moments (norms checked against
    those saved); a temp folder from an interrupted save is ignored, then cleaned up."""
    from mmexpr.train.driver import run_training

    job, _, second = resumed_run
    copy = tmp_path / "out"
    shutil.copytree(Path(job.output), copy)
    run_dir = copy / job.name / second.run_id
    ckpt_dir = run_dir / "checkpoints"
    # A save killed mid-write: shards half there, no meta.json, never renamed.
    broken = ckpt_dir / (ckpt.TMP_PREFIX + ckpt.tag_for(26))
    broken.mkdir()
    (broken / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"\0" * 100)
    assert ckpt.latest(ckpt_dir).name == ckpt.tag_for(24)

    one = _job(Path(job.data.shards), copy, "train.workers=1", "train.max_steps=28", "train.stop_after=4")
    result = run_training(one, resume="latest")
    assert result.step == 28 and result.world_size == 1 and result.run_id == second.run_id
    assert not broken.exists(), "the next save removes leftovers of an interrupted one"
    last = ckpt.latest(ckpt_dir)
    assert ckpt.read_meta(last)["world_size"] == 1
    assert ckpt.read_meta(last)["zero_stage"] == 0, "one worker without offload runs ZeRO stage 0"
    # predict reads that stage-0 checkpoint as DeepSpeed wrote it: the same weights as its portable copy
    import torch

    from mmexpr.predict.weights import load_checkpoint

    loaded = load_checkpoint(last).model.state_dict()
    for name, value in ckpt.load_portable(last)["weights"].items():
        assert torch.equal(loaded[name], value), name
    metrics = _client(result.tracking_uri).get_run(result.run_id).data.metrics
    for key in ("exp_avg", "exp_avg_sq"):
        saved, loaded = metrics[f"resume/{key}_norm_saved"], metrics[f"resume/{key}_norm_loaded"]
        assert saved > 0 and loaded == pytest.approx(saved, rel=1e-5)
    assert metrics["resume/world_size"] == 1
    losses = _losses(result.tracking_uri, result.run_id)
    assert set(range(25, 29)) <= set(losses)


# ---------------------------------------------------------------- ZeRO-3, a killed worker, no tracking server


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _descends_from_us(pid: int) -> bool:
    me = os.getpid()
    while pid > 1:
        pid = _parent(pid)
        if pid == me:
            return True
    return False


def _train_worker_pids() -> list[int]:
    """Ray Train worker processes of the Ray cluster this test process started (Ray titles
    them ray::RayTrainWorker); other Ray clusters on the machine are left alone."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"RayTrainWorker" in cmd and _descends_from_us(int(entry.name)):
            pids.append(int(entry.name))
    return pids


@pytest.mark.slow
def test_zero3_run_survives_a_killed_worker_and_an_unreachable_tracking_server(ray_local, demo_shards, tmp_path):
    from mmexpr.train.driver import run_training

    out = tmp_path / "out"
    job = _job(demo_shards, out, "train.zero_stage=3", f"train.max_steps={SHORT}", "train.checkpoint_every=6",
               "train.max_failures=2", f"track.tracking_uri=http://127.0.0.1:{_closed_port()}")
    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", run_training(job)), daemon=True)
    thread.start()
    deadline = time.time() + 300
    killed = None
    while time.time() < deadline and thread.is_alive():
        first = list(out.glob(f"{job.name}/*/checkpoints/latest"))
        pids = _train_worker_pids()
        if first and pids:
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.5)
    thread.join(timeout=400)
    assert killed is not None, "no checkpoint appeared before the run ended"
    result = box["result"]
    assert result.step == SHORT
    assert result.tracking_uri.startswith("sqlite:///") and str(out) in result.tracking_uri
    client = _client(result.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert sorted(_losses(result.tracking_uri, result.run_id)) [-1] == SHORT
    restarts = client.get_metric_history(result.run_id, "resume/from_step")
    assert restarts and restarts[0].value >= 6, "Ray restarted the workers, which resumed from a checkpoint"
    meta = ckpt.read_meta(result.latest_checkpoint)
    assert meta["zero_stage"] == 3 and meta["step"] == SHORT


# ---------------------------------------------------------------- it learns


LEARN_STEPS = 150


@pytest.mark.slow
def test_demo_job_learns_well_above_chance_in_a_short_run(ray_local, tmp_path):
    """The demo as committed (its corpus, tiny ResNet + tiny Wav2Vec2, bi-directional fusion,
    2 workers, ZeRO-2) for a quarter of its steps: validation macro F1 >= 0.5 (chance is
    0.125, and one modality alone tops out near 0.5 by design, see data/synth.py). Catches a
    model, loss, loader or optimiser change that stops the model learning."""
    from mmexpr.data.pack import pack_corpus
    from mmexpr.demo import FULL
    from mmexpr.synth.corpus import write_corpus
    from mmexpr.train.driver import run_training

    corpus = write_corpus(tmp_path / "corpus", FULL, progress=False).out
    pack_corpus(corpus, tmp_path / "shards", chunk_frames=64, face_size=64, progress=False)
    job = load_job(REPO / "jobs" / "demo.yaml", [
        f"data.shards={tmp_path / 'shards'}", f"output={tmp_path / 'runs'}", "train.progress=false",
        f"train.max_steps={LEARN_STEPS}", f"train.eval_every={LEARN_STEPS // 2}",
        f"train.checkpoint_every={LEARN_STEPS}", "track.register_model=''",
    ])
    result = run_training(job)
    client = _client(result.tracking_uri)
    history = [m.value for m in client.get_metric_history(result.run_id, "val/macro_f1")]
    assert len(history) == 2, history
    assert result.best_f1 >= 0.5, f"validation macro F1 at steps {LEARN_STEPS // 2} and {LEARN_STEPS}: {history}"

    # VA and AU, trained beside EXPR, beat their trivial predictors on the same validation frames:
    # the training mean has CCC 0; all-zeros has AU F1 0 and all-ones 2p/(1+p) per AU (p: its rate).
    import numpy as np

    from mmexpr.data.manifest import read_manifest

    rates = np.asarray(read_manifest(tmp_path / "shards" / "validation" / "manifest.json").au_positive_rates())
    all_ones = float(np.mean(2 * rates / (1 + rates)))
    va = max(m.value for m in client.get_metric_history(result.run_id, "val/va_ccc"))
    au = max(m.value for m in client.get_metric_history(result.run_id, "val/au_f1"))
    print(f"after {LEARN_STEPS} steps: EXPR macro F1 {result.best_f1:.4f} (chance 0.125), VA mean CCC {va:.4f} "
          f"(training mean 0), AU mean F1 {au:.4f} (all ones {all_ones:.4f}, all zeros 0)")
    assert va >= 0.3, va
    assert au >= all_ones + 0.1, (au, all_ones)

# ---------------------------------------------------------------- corrupt checkpoints, pointer files


@pytest.mark.slow
def test_predict_checkpoint_accepts_best_and_latest_pointers_and_the_checkpoints_folder(trained_run, tmp_path, capsys):
    """README's `predict --checkpoint runs/.../checkpoints/best`: the pointer files name a tag
    folder beside them, and the checkpoints folder means its best checkpoint."""
    import torch

    from mmexpr.cli import main
    from mmexpr.predict.weights import load_checkpoint

    job, result = trained_run
    ckpt_dir = result.run_dir / "checkpoints"
    for place, tag in ((ckpt_dir / "best", result.best_checkpoint), (ckpt_dir / "latest", result.latest_checkpoint),
                       (ckpt_dir, result.best_checkpoint)):
        loaded = load_checkpoint(place)
        assert loaded.source == str(tag), place
        state = loaded.model.state_dict()
        for name, value in ckpt.load_portable(tag)["weights"].items():
            assert torch.allclose(state[name].float(), value.float()), (place, name)
    out = tmp_path / "preds"
    code = main(["predict", "--checkpoint", str(ckpt_dir / "best"), "--shards", job.data.shards,
                 "--split", "validation", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert list(out.rglob("*.txt"))


@pytest.mark.slow
def test_a_truncated_optimizer_shard_of_the_newest_checkpoint_resumes_from_the_previous_intact_one(
    resumed_run, tmp_path, capfd
):
    """One ZeRO optimizer shard of the newest checkpoint cut by 30% after it was published:
    the resume names that file, continues from the checkpoint before it, finishes, moves
    `best`/`latest` off the corrupt one and registers an intact one."""
    from mmexpr.train.driver import run_training

    job, _, second = resumed_run
    copy = tmp_path / "out"
    shutil.copytree(Path(job.output), copy)
    ckpt_dir = copy / job.name / second.run_id / "checkpoints"
    newest = ckpt.latest(ckpt_dir)
    assert newest.name == ckpt.tag_for(24) and ckpt.problem(newest) is None
    shard = newest / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    data = shard.read_bytes()
    shard.write_bytes(data[: int(len(data) * 0.7)])
    ckpt._write_pointer(ckpt_dir, "best", newest.name)  # the worst case: best names it too

    one = _job(Path(job.data.shards), copy, "train.workers=1", "train.max_steps=16")
    result = run_training(one, resume="latest")
    said = capfd.readouterr().out
    assert str(shard) in said and "corrupt" in said
    assert result.step == 16 and result.run_id == second.run_id
    metrics = _client(result.tracking_uri).get_run(result.run_id).data.metrics
    assert metrics["resume/from_step"] == 12
    for pointer in ("best", "latest"):
        target = ckpt_dir / (ckpt_dir / pointer).read_text().strip()
        assert target.name != newest.name and ckpt.problem(target) is None, pointer
    run = _client(result.tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED" and result.registered_version is not None


# ---------------------------------------------------------------- lost samples


@pytest.mark.slow
def test_training_on_a_truncated_shard_stops_naming_it_and_is_neither_finished_nor_registered(
    ray_local, demo_shards, tmp_path, capfd
):
    """A train shard cut by 30%: its sha256 no longer matches the manifest, so none of its
    samples is read; the counts of both ranks are summed, printed and logged, and above
    data.max_skipped the run stops with an error naming the shard. Its MLflow run is FAILED
    and no model version is registered."""
    from mmexpr.data.manifest import read_manifest
    from mmexpr.store import local_store
    from mmexpr.train.driver import DataLossError, run_training

    shards = tmp_path / "shards"
    shutil.copytree(demo_shards, shards)
    manifest = read_manifest(shards / "train" / "manifest.json")
    victim = shards / "train" / manifest.shards[0].url
    data = victim.read_bytes()
    victim.write_bytes(data[: int(len(data) * 0.7)])
    out = tmp_path / "out"
    job = _job(shards, out, "train.log_every=2", "track.register_model=mmexpr-lost-samples")
    with pytest.raises(DataLossError, match=rf"{victim.name} \(\d+ skipped: .*sha256"):
        run_training(job)
    assert "data: train: skipped" in capfd.readouterr().out
    client = _client(local_store(str(out))[0])
    experiment = client.get_experiment_by_name(job.track.experiment)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.metrics["data/train_skipped"] > 0 and run.data.metrics["data/train_skipped_fraction"] > 0.01
    assert not client.search_model_versions("name='mmexpr-lost-samples'")
