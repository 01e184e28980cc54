"""Prediction: sliding-window stitching, submission files for every frame of every track,
raw videos through pack's own code, and the error a bad checkpoint gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmexpr.cli import main
from mmexpr.config import load_job
from mmexpr.labels import CLASSES, read_annotation, read_submission, read_task_submission
from mmexpr.predict.windows import LogitStitcher, softmax, window_starts

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- windows (pure functions)


@pytest.mark.parametrize(("frames", "window", "stride"), [(1, 16, 8), (16, 16, 8), (17, 16, 8), (100, 16, 5), (64, 16, 16)])
def test_window_starts_cover_every_frame_and_start_inside_the_track(frames, window, stride):
    starts = window_starts(frames, window, stride)
    seen = np.zeros(frames, int)
    for s in starts:
        seen[s : s + window] += 1
    assert seen.min() >= 1
    assert all(0 <= s < frames for s in starts)
    assert starts == sorted(set(starts))
    if stride < window and frames >= 2 * window:
        assert seen[stride : frames - window].min() >= 2  # interior frames: context on both sides


def test_window_starts_with_stride_equal_window_are_the_evaluation_windows():
    from mmexpr.data.loader import eval_window_starts

    for frames in (1, 15, 16, 32, 40, 100):
        assert window_starts(frames, 16, 16) == [s for s, _ in eval_window_starts(frames, 16, 16)]


def test_window_starts_rejects_a_stride_that_skips_frames():
    with pytest.raises(ValueError, match="unseen"):
        window_starts(100, 8, 9)


def test_stitcher_averages_overlaps_and_drops_padding():
    st = LogitStitcher(frames=6, classes=2)
    st.add(0, np.array([[1.0, 0], [1, 0], [1, 0], [1, 0]]))
    st.add(2, np.array([[3.0, 0], [3, 0], [3, 0], [9, 9]]), valid=np.array([1, 1, 1, 0], bool))
    logits = st.logits()
    assert st.count.tolist() == [1, 1, 2, 2, 1, 0]  # the padded 4th frame of window 2 was dropped
    # frames 2-3 average both windows; frame 5 (only padding saw it) copies frame 4, not the 9s
    np.testing.assert_allclose(logits[:, 0], [1, 1, 2, 2, 3, 3])


def test_stitcher_gives_uncovered_frames_their_nearest_neighbours_logits():
    st = LogitStitcher(frames=5, classes=2)
    st.add(0, np.array([[5.0, 0]]))
    st.add(4, np.array([[0.0, 7]]))
    logits = st.logits()
    assert logits[1].tolist() == [5, 0] and logits[3].tolist() == [0, 7]
    probs = softmax(logits)
    np.testing.assert_allclose(probs.sum(1), 1.0)


# ---------------------------------------------------------------- predict on the demo corpus


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, demo_shards: Path) -> Path:
    """A consolidated checkpoint (weights + resolved job) of an untrained tiny demo model."""
    from mmexpr.model.model import build_model

    job = load_job(REPO / "jobs" / "demo.yaml", [f"data.shards={demo_shards}"])
    torch.manual_seed(0)
    model = build_model(job.model)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save({"state_dict": model.state_dict(), "config": job.to_dict()}, path)
    return path


def _annotations(corpus: Path) -> dict[str, np.ndarray]:
    return {p.stem: read_annotation(p) for p in sorted((corpus / "annotations").glob("*/*.txt"))}


def test_predict_from_shards_writes_a_submission_with_a_label_for_every_frame(
    tiny_checkpoint, demo_shards, demo_corpus, tmp_path, capsys
):
    out = tmp_path / "pred"
    code = main(["predict", "--checkpoint", str(tiny_checkpoint), "--shards", str(demo_shards), "--out", str(out)])
    assert code == 0
    assert "predicted" in capsys.readouterr().out
    annotations = _annotations(demo_corpus)
    assert sorted(p.name for p in out.iterdir()) == ["au", "expr", "predict.json", "va"]  # a folder per task of the demo model
    out = out / "expr"
    written = sorted(p.stem for p in out.glob("*.txt"))
    assert written == sorted(annotations)  # one file per track, left/right included
    for track, labels in annotations.items():
        text = (out / f"{track}.txt").read_text().splitlines()
        assert text[0] == "image_location," + ",".join(CLASSES)
        assert text[1] == f"{track}/00001.jpg,{text[1].split(',')[1]}"
        name, preds = read_submission(out / f"{track}.txt")
        assert name == track
        assert len(preds) == len(labels)  # every frame, including those labelled -1 (no face)
        probs = np.load(out / f"{track}.npy")
        assert probs.shape == (len(labels), len(CLASSES)) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        assert (probs.argmax(1) == preds).all()


@pytest.mark.slow
def test_predict_on_raw_videos_matches_predict_on_their_shards(tiny_checkpoint, demo_shards, demo_corpus, tmp_path):
    """Raw videos go through pack's own cropping and encoding: same frames, same predictions."""
    from mmexpr.predict.predict import PredictOptions, predict

    common = {"checkpoint": str(tiny_checkpoint), "progress": False}
    from_shards = predict(PredictOptions(out=str(tmp_path / "s"), shards=str(demo_shards), **common))
    from_videos = predict(PredictOptions(out=str(tmp_path / "v"), videos=str(demo_corpus), workers=2, **common))
    assert from_videos.tracks == from_shards.tracks == len(_annotations(demo_corpus))
    for npy in sorted((tmp_path / "s" / "expr").glob("*.npy")):
        np.testing.assert_allclose(np.load(tmp_path / "v" / "expr" / npy.name), np.load(npy), atol=1e-4)


def test_predict_then_evaluate_round_trip_matches_the_scores_predict_reports(
    tiny_checkpoint, demo_shards, demo_corpus, tmp_path
):
    from mmexpr.predict.evaluate import evaluate_dirs
    from mmexpr.predict.predict import PredictOptions, predict

    out = tmp_path / "val"
    summary = predict(
        PredictOptions(out=str(out), checkpoint=str(tiny_checkpoint), shards=str(demo_shards),
                       splits=["validation"], progress=False)
    )
    report = evaluate_dirs(out / "expr", demo_corpus / "annotations" / "Validation_Set")
    assert report.tracks == summary.tracks
    assert report.scores.macro_f1 == pytest.approx(summary.scores.macro_f1, abs=1e-12)
    assert (report.scores.matrix == summary.scores.matrix).all()


def test_predict_names_a_missing_checkpoint_and_a_checkpoint_without_config(tmp_path, demo_shards, capsys):
    code = main(["predict", "--checkpoint", str(tmp_path / "nope"), "--shards", str(demo_shards), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "nope: checkpoint not found" in capsys.readouterr().err
    bare = tmp_path / "bare"
    bare.mkdir()
    torch.save({"w": torch.zeros(1)}, bare / "model.pt")
    code = main(["predict", "--checkpoint", str(bare / "model.pt"), "--shards", str(demo_shards), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "no job config found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written for a failed load


def test_predict_names_a_shards_folder_without_manifests(tiny_checkpoint, tmp_path, capsys):
    code = main(["predict", "--checkpoint", str(tiny_checkpoint), "--shards", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "manifest.json" in capsys.readouterr().err


def test_predict_refuses_to_write_into_a_folder_it_did_not_create(tiny_checkpoint, demo_shards, demo_corpus, capsys):
    labels = demo_corpus / "annotations" / "Validation_Set"
    before = {p.name: p.read_text() for p in labels.glob("*.txt")}
    code = main(["predict", "--checkpoint", str(tiny_checkpoint), "--shards", str(demo_shards), "--out", str(labels)])
    assert code == 2
    assert "did not write" in capsys.readouterr().err
    assert {p.name: p.read_text() for p in labels.glob("*.txt")} == before  # annotations untouched


def test_a_three_task_model_writes_a_folder_per_task_that_evaluate_scores_as_predict_did(
    demo_shards, demo_corpus, tmp_path
):
    """VA and AU submissions beside EXPR; AU at the thresholds saved with the model."""
    from mmexpr.labels import AU_SUBMISSION_HEADER, VA_SUBMISSION_HEADER
    from mmexpr.model.model import build_model
    from mmexpr.predict.evaluate import evaluate_dirs
    from mmexpr.predict.predict import PredictOptions, predict

    job = load_job(REPO / "jobs" / "demo.yaml", [f"data.shards={demo_shards}", "model.tasks=[expr,va,au]"])
    torch.manual_seed(0)
    model = build_model(job.model)
    model.au_thresholds.fill_(0.45)
    path = tmp_path / "model.pt"
    torch.save({"state_dict": model.state_dict(), "config": job.to_dict()}, path)
    out = tmp_path / "val"
    summary = predict(PredictOptions(out=str(out), checkpoint=str(path), shards=str(demo_shards),
                                     splits=["validation"], stride=job.data.window, progress=False))
    assert sorted(p.name for p in out.iterdir()) == ["au", "expr", "predict.json", "va"]
    assert set(summary.task_scores.present()) == {"expr", "va", "au"}
    track = sorted((out / "va").glob("*.txt"))[0]
    assert track.read_text().splitlines()[0] == VA_SUBMISSION_HEADER
    assert (out / "au" / track.name).read_text().splitlines()[0] == AU_SUBMISSION_HEADER
    probs = np.load(out / "au" / track.with_suffix(".npy").name)
    _, written = read_task_submission(out / "au" / track.name, "au")
    assert (written == (probs >= 0.45)).all()  # the model's thresholds, not 0.5
    annotations = demo_corpus / "annotations"
    va = evaluate_dirs(out / "va", annotations / "VA_Estimation_Challenge" / "Validation_Set")
    au = evaluate_dirs(out / "au", annotations / "AU_Detection_Challenge" / "Validation_Set")
    expr = evaluate_dirs(out / "expr", annotations / "Validation_Set")
    assert va.abaw == pytest.approx(summary.task_scores.abaw("va"), abs=1e-3)  # files hold 4 decimals
    assert au.abaw == pytest.approx(summary.task_scores.abaw("au"), abs=1e-12)
    assert expr.abaw == pytest.approx(summary.task_scores.abaw("expr"), abs=1e-12)
    assert json.loads((out / "predict.json").read_text())["au_thresholds"] == pytest.approx([0.45] * 12)


# ---------------------------------------------------------------- streaming long tracks


class _Recorder(torch.nn.Module):
    """The model, plus a record of the frames, face flags and logits of every window it ran."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def forward(self, batch):
        out = self.model(batch)
        for j, s in enumerate(batch.start.tolist()):
            self.seen[s] = (batch.video[j].numpy().copy(), batch.face[j].numpy().copy(), out["logits"][j].numpy())
        return out


def test_streamed_track_holds_only_the_windows_it_needs_and_equals_the_whole_track(tmp_path, one_torch_thread):
    """A 300-frame track in 32-frame chunks: windows run as chunks arrive, the buffer never holds
    more than a window plus a chunk, and frames, labels, face flags and logits equal those of
    the whole track held at once."""
    from media import labels_for, write_video
    from PIL import Image

    from mmexpr.data.pack import pack_corpus
    from mmexpr.labels import write_annotation
    from mmexpr.model.model import build_model
    from mmexpr.predict.predict import StreamedTrack, window_batch
    from mmexpr.predict.tracks import ShardTracks, TrackBuffer
    from mmexpr.predict.windows import LogitStitcher, window_starts

    src = tmp_path / "src"
    write_video(src / "videos" / "long.mp4", 300)
    write_annotation(src / "annotations" / "Train_Set" / "long.txt", labels_for(300))
    crops = src / "cropped_aligned" / "long"
    crops.mkdir(parents=True)
    for i in range(300):
        if not 100 <= i < 140:  # 40 frames without a face
            Image.fromarray(np.full((40, 40, 3), 60 + i % 150, np.uint8)).save(crops / f"{i + 1:05d}.jpg")
    pack_corpus(src, tmp_path / "shards", chunk_frames=32, face_size=32, shard_mb=1, progress=False, num_cpus=1)
    job = load_job(REPO / "jobs" / "demo.yaml")
    torch.manual_seed(0)
    window, stride, batch_size, rate = 16, 8, 4, job.data.sample_rate
    dataset = ShardTracks(tmp_path / "shards", None, job.data.image_size)
    pieces = list(dataset.pieces(0))
    assert len(pieces) == 10 and pieces[-1].last

    streamed = _Recorder(build_model(job.model).eval())
    track = StreamedTrack(pieces[0], window=window, stride=stride, sample_rate=rate)
    for piece in pieces:
        track.feed(piece, streamed, batch_size, torch.device("cpu"))
        assert len(track.buffer.frames) <= window + 32
    assert track.finished
    stream_logits = track.stitcher.logits()

    whole = _Recorder(streamed.model)
    buffer = TrackBuffer(pieces[0], rate)
    for piece in pieces:
        buffer.add(piece)
    assert len(buffer.frames) == 300
    stitcher = LogitStitcher(300)
    starts = window_starts(300, window, stride)
    with torch.inference_mode():
        for i in range(0, len(starts), batch_size):
            batch = window_batch(buffer, starts[i : i + batch_size], window)
            logits = whole(batch)["logits"].numpy()
            for j, s in enumerate(starts[i : i + batch_size]):
                stitcher.add(s, logits[j], batch.mask[j].numpy())

    assert sorted(streamed.seen) == sorted(whole.seen) == starts
    for s in starts:
        for a, b in zip(streamed.seen[s], whole.seen[s], strict=True):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(stream_logits, stitcher.logits())
    np.testing.assert_array_equal(track.buffer.labels, fit_labels := buffer.labels)
    assert (fit_labels[:300] == labels_for(300)).all()
    assert not track.buffer.face[100:140].any() and track.buffer.face[:100].all() and track.buffer.face[140:].all()


def test_evaluate_says_so_when_a_prediction_file_lacks_its_last_lines(tmp_path, capsys):
    """A submission cut short scores well on the frames it kept; the report names the file
    and how many annotated frames went unscored, and full files give no warning."""
    from mmexpr.labels import write_annotation, write_submission

    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7] * 5)
    write_annotation(tmp_path / "ann" / "vidA.txt", labels)
    write_annotation(tmp_path / "ann" / "vidB.txt", labels)
    write_submission(tmp_path / "pred" / "vidA.txt", "vidA", labels)
    short = write_submission(tmp_path / "pred" / "vidB.txt", "vidB", labels)
    lines = short.read_text().splitlines()
    short.write_text("\n".join(lines[:-1]) + "\n")  # lost its last line
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "ann")]) == 0
    out = capsys.readouterr().out
    assert f"warning: {short}: 39 frames, 1 fewer than {tmp_path / 'ann' / 'vidB.txt'}" in out
    assert "vidA.txt: " not in out.split("tracks,")[0]  # the full file is not flagged
    write_submission(short, "vidB", labels)
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "ann")]) == 0
    assert "warning" not in capsys.readouterr().out

