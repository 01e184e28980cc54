"""Learning on real inputs (issue 14): the actor-disjoint corpus, the recipe switches, and the
from-scratch job against its simple baselines on a small version of `bench learn`.

The real-data tests read ../shared/data (FER2013 faces, RAVDESS voices); their modalities
were not recorded together, so they test learning on real pixels and real speech, not
audio-visual synchrony.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmexpr.config import load_job

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- pure parts


def test_smoothing_removes_a_one_frame_flip_and_keeps_track_length():
    from mmexpr.model.heads import smooth_probabilities

    probs = np.tile([0.9, 0.1], (30, 1))
    probs[15] = [0.1, 0.9]
    out = smooth_probabilities(probs, 5)
    assert out.shape == probs.shape
    assert (out.argmax(1) == 0).all()
    np.testing.assert_allclose(out.sum(1), 1.0)
    np.testing.assert_array_equal(smooth_probabilities(probs, 0), probs)


def test_audio_context_is_centred_on_the_window_and_cut_to_its_chunk():
    from mmexpr.data.batch import BatchArrays, context_span

    assert context_span((3000, 4000), 4000, (0, 10000)) == (1500, 5500)
    assert context_span((0, 1000), 4000, (0, 10000)) == (0, 4000)  # shifted right at the start
    assert context_span((9000, 10000), 4000, (0, 10000)) == (6000, 10000)  # shifted left at the end
    assert context_span((0, 1000), 4000, (0, 2500)) == (0, 2500)  # the chunk holds less
    audio = np.arange(32000, dtype=np.float32)
    arrays = BatchArrays(1, 16, 8, 16000, audio_context_s=1.0)
    frames = np.zeros((16, 8, 8, 3), np.uint8)
    arrays.put(0, frames, fps=25, start=0, track="t", audio=audio, audio_span=(16000, 26240))
    batch = arrays.batch()
    assert batch.audio.shape[1] == 16000 and int(batch.audio_len[0]) == 16000
    first = int(batch.audio[0, 0])
    assert first == 16000 + 5120 - 8000  # centred on the window's own 10240 samples
    assert batch.audio_offset[0].item() == pytest.approx((16000 - first) / 16000)


def test_audio_offset_moves_frames_later_on_the_audio_clock():
    from mmexpr.model.fusion import align_audio

    feats = torch.arange(100, dtype=torch.float32).view(1, 100, 1)  # 50 features per second
    args = (feats, torch.tensor([100]), torch.tensor([32000]), torch.tensor([25.0]), 4)
    plain, _ = align_audio(*args)
    moved, mask = align_audio(*args, offset=torch.tensor([1.0]))
    assert torch.allclose(moved - plain, torch.full_like(plain, 50.0))
    assert mask.all()


def test_face_and_voice_augmentation_change_training_windows_only(demo_shards: Path):
    from mmexpr.data.loader import make_loader

    plain = load_job(REPO / "jobs" / "demo.yaml", [f"data.shards={demo_shards}", "data.loader_workers=0"]).data
    aug = plain.model_copy(update={"augment_faces": True, "augment_voices": True})
    a, b = (next(iter(make_loader(str(demo_shards), "train", d, train=True))) for d in (plain, aug))
    assert torch.equal(a.labels, b.labels) and a.track == b.track
    assert not torch.equal(a.video, b.video) and not torch.equal(a.audio, b.audio)
    e1, e2 = (next(iter(make_loader(str(demo_shards), "validation", d, train=False))) for d in (plain, aug))
    assert torch.equal(e1.video, e2.video) and torch.equal(e1.audio, e2.audio)


def test_smoothed_evaluation_equals_predict_files_of_the_same_model(demo_shards: Path, tmp_path: Path,
                                                                    one_torch_thread):
    """The F1 training logs with model.smooth and predict's files (stride = window, same
    smoothing) must be the same number, or choosing the best checkpoint by it would lie."""
    from mmexpr.data.loader import make_loader
    from mmexpr.model.model import build_model
    from mmexpr.predict.predict import predict_dataset
    from mmexpr.predict.tracks import ShardTracks
    from mmexpr.train.evaluation import evaluate

    job = load_job(REPO / "jobs" / "demo.yaml", [f"data.shards={demo_shards}", "data.window=8", "data.stride=8",
                                                 "data.loader_workers=0", "data.audio_context_s=1.0",
                                                 "model.smooth=9"])
    torch.manual_seed(0)
    model = build_model(job.model, [1] * 8).eval()

    class Engine:
        module = model

        def eval(self):
            model.eval()

        def train(self, mode):
            model.train(mode)

        def __call__(self, batch):
            return model(batch)

    loader = make_loader(str(demo_shards), "validation", job.data, train=False)
    logged = evaluate(Engine(), loader, lambda b: b, smooth=job.model.smooth).scores.expr
    unsmoothed = evaluate(Engine(), loader, lambda b: b, smooth=0).scores.expr
    _, _, _, files = predict_dataset(
        model, ShardTracks(demo_shards, ["validation"], job.data.image_size), tmp_path / "pred", window=8, stride=8,
        batch_size=4, sample_rate=16000, device=torch.device("cpu"), workers=0, progress=False,
        smooth=job.model.smooth, audio_context_s=job.data.audio_context_s,
    )
    assert files.expr.macro_f1 == pytest.approx(logged.macro_f1, abs=1e-9)
    assert files.expr.frames == logged.frames
    assert logged.matrix.tolist() != unsmoothed.matrix.tolist()  # smoothing did something


def test_predict_takes_a_smooth_option():
    from mmexpr.cli import build_parser

    args = build_parser().parse_args(["predict", "--run", "r", "--shards", "s", "--out", "o", "--smooth", "25"])
    assert args.smooth == 25


def test_from_scratch_job_is_valid_and_uses_the_switches():
    job = load_job(REPO / "jobs" / "from-scratch.yaml")
    assert job.data.audio_context_s > 0 and job.model.smooth > 0 and job.model.preset == "tiny"
    assert job.model.visual_every > 1 and job.data.batch_size > 8


# ---------------------------------------------------------------- real faces and voices


def test_muxed_corpus_is_split_by_actor_and_says_modalities_were_not_recorded_together(shared_data: Path,
                                                                                       tmp_path: Path):
    from mmexpr.labels import read_annotation
    from mmexpr.synth.muxed import MuxedSpec, write_muxed_corpus
    from mmexpr.synth.real import NOT_TOGETHER

    spec = MuxedSpec(actors=4, val_actors=1, test_actors=1, clips_per_actor=4, clips_per_video=4)
    summary = write_muxed_corpus(tmp_path / "c", spec, shared_data)
    assert NOT_TOGETHER in str(summary)
    facts = json.loads((tmp_path / "c" / "corpus.json").read_text())
    assert facts["note"] == NOT_TOGETHER
    actors = {split: set(ids) for split, ids in facts["actors"].items()}
    assert sum(len(a) for a in actors.values()) == 4 == len(set().union(*actors.values()))
    for split, folder in (("train", "Train_Set"), ("validation", "Validation_Set"), ("test", "Test_Set")):
        names = sorted((tmp_path / "c" / "annotations" / folder).glob("*.txt"))
        assert names and {int(n.stem[5:7]) for n in names} == actors[split]
        labels = read_annotation(names[0])
        assert labels.min() >= 0 and len(set(labels.tolist())) > 1
    again = write_muxed_corpus(tmp_path / "c", spec, shared_data)
    assert again.reused


def test_muxed_corpus_ships_a_face_crop_per_frame_like_aff_wild2_for_pack_to_use(shared_data: Path,
                                                                                    tmp_path: Path):
    """Like the Aff-Wild2 release: cropped_aligned/<video>/<00001>.jpg, one per labelled frame,
    showing the video's face, which `pack` uses instead of its detector; without crops
    (`face_crops=False`, `bench learn --detect-faces`) the tracks come to pack without them."""
    from mmexpr.data.sources import discover
    from mmexpr.faces.video import rgb_frames
    from mmexpr.labels import read_annotation
    from mmexpr.synth.muxed import MuxedSpec, write_muxed_corpus

    spec = MuxedSpec(actors=3, val_actors=1, test_actors=1, clips_per_actor=2, clips_per_video=2)
    write_muxed_corpus(tmp_path / "c", spec, shared_data)
    video = sorted((tmp_path / "c" / "annotations" / "Train_Set").glob("*.txt"))[0]
    crops = sorted((tmp_path / "c" / "cropped_aligned" / video.stem).glob("*.jpg"))
    assert len(crops) == len(read_annotation(video)) and crops[0].name == "00001.jpg"
    frames = list(rgb_frames(str(tmp_path / "c" / "videos" / f"{video.stem}.mp4")))
    for index in (0, len(crops) // 2, len(crops) - 1):
        crop = np.asarray(Image.open(crops[index]).convert("RGB"), np.float32)
        assert np.abs(crop - frames[index].astype(np.float32)).mean() < 8  # the same face, two codecs
    assert all(track.crops for job in discover(tmp_path / "c").jobs for track in job.tracks)

    raw = write_muxed_corpus(tmp_path / "raw", replace(spec, face_crops=False), shared_data)
    assert not raw.face_crops and not (tmp_path / "raw" / "cropped_aligned").exists()
    assert not any(track.crops for job in discover(tmp_path / "raw").jobs for track in job.tracks)


# Run-to-run spread of the small bench's fusion F1 on its 2 test actors: one commit's runs differed
# by about 0.03 between processes (README, "Learning on real faces and voices").
SMALL_SPREAD = 0.05


@pytest.mark.slow
def test_from_scratch_job_reaches_the_audio_baseline_within_its_spread_on_the_small_corpus(shared_data: Path,
                                                                                          tmp_path: Path):
    """Issue 14's goal test: `jobs/from-scratch.yaml` (both modalities, as a user runs it) trained on
    `bench learn --small` (5 training actors, 300 steps, 1 worker) scores the MFCC-statistics
    baseline, fitted in the same run on the same training tracks, on 2 actors it never saw, less
    the run-to-run spread of 2 test actors (the full bench, 4 test actors, is where the margin is
    measured: README). On the way it checks the whole `bench learn` path: corpus, shards, the
    three baselines read from predict's streamed pieces, a variant trained through Ray,
    DeepSpeed and MLflow, its prediction of the test actors, and the table's rows."""
    from mmexpr.bench.learn import SMALL, SMALL_OVERRIDES, learn_table, run_learn

    outcome = run_learn(str(REPO / "jobs" / "from-scratch.yaml"), SMALL, SMALL_OVERRIDES, tmp_path, ["audio_video"])
    (fusion,) = outcome.neural
    assert fusion.variant == "audio_video" and fusion.run_id and 0.0 <= fusion.val_f1 <= 1.0
    assert set(outcome.baselines) == {"audio", "face", "both"}
    for result in outcome.baselines.values():
        assert 0.0 <= result.val_f1 <= 1.0 and 0.0 <= result.test_f1 <= 1.0
    rows, notes = learn_table(outcome.neural, outcome.baselines)
    assert [r.name for r in rows] == ["audio_video / both baseline (test F1)"]
    assert any(line.strip().startswith("baseline face") for line in notes)
    audio = outcome.baselines["audio"]
    assert fusion.test_f1 >= audio.test_f1 - SMALL_SPREAD, (
        f"from-scratch fusion {fusion.test_f1:.3f} < audio baseline {audio.test_f1:.3f} - {SMALL_SPREAD} on the test actors"
    )


def test_voice_time_mask_silences_the_voice_but_keeps_the_background_noise():
    """A masked span holds the added noise, never digital silence (whose log spectrum would
    put edges into the cepstral statistics that no real recording has)."""
    from mmexpr.data.augment import Augment, augment_audio

    aug = Augment(voices=True, mask_share=0.5, noise_snr_db=(20.0, 20.0), gain_db=0.0)
    voice = np.full(16000, 0.5, np.float32)  # a constant: only the mask brings it near 0
    masked = 0
    for seed in range(20):
        row = voice.copy()
        augment_audio(row, len(row), np.random.default_rng(seed), aug)
        gap = np.flatnonzero(np.abs(row) < 0.25)
        if len(gap) > 800:  # a mask of at least 50 ms
            masked += 1
            assert np.count_nonzero(row[gap] == 0) < 0.01 * len(gap)
            noise = np.sqrt(0.25 / 10 ** (20 / 10))  # the voice's power over the SNR
            assert 0.8 * noise < float(np.std(row[gap])) < 1.2 * noise
    assert masked > 5


def test_crop_writer_names_frames_like_aff_wild2_skips_faceless_ones_and_never_reuses_stale_bytes(tmp_path: Path):
    """Frames A A B B A with frame 3 faceless: files 1, 2, 4, 5; frame 4 (B, after the gap)
    shows B although the last file written showed A."""
    from mmexpr.synth.real import write_crops

    a, b = np.full((8, 8, 3), 30, np.uint8), np.full((8, 8, 3), 220, np.uint8)
    write_crops(tmp_path / "t", np.stack([a, a, b, b, a]), skip=range(2, 3))
    assert sorted(f.name for f in (tmp_path / "t").iterdir()) == ["00001.jpg", "00002.jpg", "00004.jpg", "00005.jpg"]
    shown = {f.name: float(np.asarray(Image.open(f)).mean()) for f in (tmp_path / "t").iterdir()}
    assert shown["00001.jpg"] < 60 and shown["00004.jpg"] > 190 and shown["00005.jpg"] < 60
