"""The synthetic demo corpus: it decodes, its labels, faces and audio agree with each other
and with corpus.json, it is reproducible per seed, and it never overwrites other data.

Most tests read the session's `demo_corpus` (6 videos x 4 s, seed 0, from conftest.py);
the reproducibility and safety tests write their own tiny corpora.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import av
import decord
import numpy as np
import pytest
from PIL import Image

from mmexpr.labels import IGNORE, NUM_CLASSES, read_annotation
from mmexpr.synth import face as synth_face
from mmexpr.synth import speech as synth_speech
from mmexpr.synth.corpus import SPLIT_FOLDERS, SynthError, SynthSpec, write_corpus

# Face-box edge strength (99th percentile of the vertical gradient after a 3x3 blur): a
# face's brows, eyes and mouth give tens of grey levels; background and noise give a few.
FACE_EDGE_MIN = 8.0
SILENT_RMS_MAX = 0.008  # the hiss under silence is ~0.003
VOICED_RMS_MIN = 0.012  # the quietest voice group is ~0.035 over a segment


def _corpus(root: Path) -> dict:
    return json.loads((root / "corpus.json").read_text())


def _labels(root: Path, video: dict, track: str) -> np.ndarray:
    return read_annotation(root / "annotations" / SPLIT_FOLDERS[video["split"]] / f"{track}.txt")


def _audio(path: Path) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        samples = np.concatenate([f.to_ndarray().mean(axis=0) for f in container.decode(stream)])
    return samples, rate


def _rms(
    samples: np.ndarray, rate: int, start: float, end: float, margin: float = 0.12
) -> float | None:
    """RMS inside [start, end] seconds, leaving out `margin` at both ends (codec pre-echo)."""
    a, b = round((start + margin) * rate), round((end - margin) * rate)
    return float(np.sqrt(np.mean(samples[a:b] ** 2))) if b - a > rate // 20 else None


def _edge_strength(image: np.ndarray) -> float:
    grey = image.astype(np.float32).mean(axis=-1)
    grey = (grey[:-2] + grey[1:-1] + grey[2:]) / 3
    grey = (grey[:, :-2] + grey[:, 1:-1] + grey[:, 2:]) / 3
    return float(np.percentile(np.abs(np.diff(grey, axis=0)), 99))


def _pitch_track(samples: np.ndarray, rate: int) -> np.ndarray:
    """Autocorrelation pitch (Hz), 60-500 Hz, of each voiced 40 ms frame at a 20 ms hop."""
    size = int(0.04 * rate)
    lo, hi = rate // 500, rate // 60
    if len(samples) <= size:
        return np.zeros(0)
    frames = np.lib.stride_tricks.sliding_window_view(samples, size)[:: size // 2]
    frames = frames[np.sqrt((frames**2).mean(axis=1)) >= VOICED_RMS_MIN]
    frames = frames - frames.mean(axis=1, keepdims=True)
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames, 2 * size, axis=1)) ** 2, axis=1)[:, :size]
    return rate / (lo + np.argmax(ac[:, lo:hi], axis=1))


def _pitch(samples: np.ndarray, rate: int) -> float:
    track = _pitch_track(samples, rate)
    return float(np.median(track)) if len(track) else 0.0


def test_demo_corpus_has_both_splits_both_frame_rates_and_a_two_person_video(
    demo_corpus: Path,
) -> None:
    corpus = _corpus(demo_corpus)
    videos = corpus["videos"]
    assert len(videos) == 6 and corpus["seed"] == 0
    assert {v["split"] for v in videos} == {"train", "validation"}
    assert {v["fps"] for v in videos} == {25, 30}
    two = [v for v in videos if v["two_person"]]
    assert two, "no two-person video in the demo corpus"
    for video in two:
        names = [t["name"] for t in video["tracks"]]
        assert names == [f"{video['name']}_left", f"{video['name']}_right"]
        left, right = (_labels(demo_corpus, video, n) for n in names)
        assert not np.array_equal(left, right)
    for video in videos:
        assert (demo_corpus / "videos" / f"{video['name']}.mp4").is_file()
        assert isinstance(
            json.loads((demo_corpus / "transcripts" / f"{video['name']}.json").read_text()), list
        )


def test_every_track_decodes_with_decord_and_has_one_label_per_frame(demo_corpus: Path) -> None:
    seen: set[int] = set()
    for video in _corpus(demo_corpus)["videos"]:
        reader = decord.VideoReader(str(demo_corpus / "videos" / f"{video['name']}.mp4"))
        assert len(reader) == video["frames"]
        assert reader.get_avg_fps() == pytest.approx(video["fps"])
        assert reader[0].shape == (video["height"], video["width"], 3)
        for track in video["tracks"]:
            labels = _labels(demo_corpus, video, track["name"])
            assert len(labels) == len(reader)
            seen |= set(labels.tolist())
            # Labels are constant inside each segment and equal to what corpus.json says.
            for segment in video["segments"]:
                span = labels[segment["start_frame"] : segment["end_frame"]]
                assert (span == segment["labels"][track["name"]]).all()
    assert IGNORE in seen and len(seen - {IGNORE}) >= 6


def test_faces_are_absent_exactly_where_labels_are_minus_one(demo_corpus: Path) -> None:
    for video in _corpus(demo_corpus)["videos"]:
        reader = decord.VideoReader(str(demo_corpus / "videos" / f"{video['name']}.mp4"))
        frames = reader.get_batch(list(range(len(reader)))).asnumpy()
        for track in video["tracks"]:
            labels = _labels(demo_corpus, video, track["name"])
            assert (labels == IGNORE).any(), f"{track['name']} has no faceless stretch"
            x0, y0, x1, y1 = track["box"]
            edges = np.array([_edge_strength(f[y0:y1, x0:x1]) for f in frames])
            assert edges[labels != IGNORE].min() > FACE_EDGE_MIN, track["name"]
            assert edges[labels == IGNORE].max() < FACE_EDGE_MIN, track["name"]


def test_audio_is_silent_where_corpus_marks_silence_and_voiced_where_a_face_speaks(
    demo_corpus: Path,
) -> None:
    silent = voiced = 0
    for video in _corpus(demo_corpus)["videos"]:
        samples, rate = _audio(demo_corpus / "videos" / f"{video['name']}.mp4")
        assert rate == video["audio_rate"]
        assert abs(len(samples) - video["frames"] / video["fps"] * rate) < 1024  # one AAC frame
        for segment in video["segments"]:
            rms = _rms(samples, rate, segment["start"], segment["end"])
            if rms is None:
                continue
            if segment["speaker"] is None:
                assert rms < SILENT_RMS_MAX, (video["name"], segment)
                silent += 1
            else:
                # Only a visible face speaks, and it speaks in the voice of its own label.
                label = segment["labels"][segment["speaker"]]
                assert label != IGNORE
                assert segment["voice_group"] == synth_speech.voice_group(label)
                assert rms > VOICED_RMS_MIN, (video["name"], segment)
                voiced += 1
    faced_silences = [
        s
        for v in _corpus(demo_corpus)["videos"]
        for s in v["segments"]
        if s["speaker"] is None and any(label != IGNORE for label in s["labels"].values())
    ]
    assert silent and voiced and faced_silences, "the corpus lacks a face-only (silent) segment"


def test_pitch_follows_the_voice_group_as_designed(demo_corpus: Path) -> None:
    """Measured pitch matches corpus.json, and within a speaker the 'high' voice group
    (anger, happiness) is far above the 'low' one (neutral, sadness)."""
    checked = 0
    for video in _corpus(demo_corpus)["videos"]:
        samples, rate = _audio(demo_corpus / "videos" / f"{video['name']}.mp4")
        by_group: dict[int, list[float]] = {}
        for segment in video["segments"]:
            if segment["speaker"] is None or segment["voice_group"] == 3:
                continue  # group 3 glides over an octave: no single pitch to compare
            a, b = round(segment["start"] * rate), round(segment["end"] * rate)
            measured = _pitch(samples[a:b], rate)
            assert measured == pytest.approx(segment["f0"], rel=0.15), (video["name"], segment)
            by_group.setdefault(segment["voice_group"], []).append(measured)
            checked += 1
        if 0 in by_group and 1 in by_group and not video["two_person"]:
            assert min(by_group[1]) > 1.5 * max(by_group[0])
    assert checked >= 5


def test_same_seed_gives_byte_identical_files_with_any_workers_and_another_seed_differs(
    tmp_path: Path,
) -> None:
    spec = SynthSpec(videos=3, seconds=2.0, seed=5, val_fraction=0.34)
    first, second = tmp_path / "a", tmp_path / "b"
    write_corpus(first, spec, progress=False)
    # The second run writes its videos in two processes: the files must not depend on that.
    write_corpus(second, dataclasses.replace(spec, workers=2), progress=False)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert any(f.suffix == ".mp4" for f in files) and any(
        f.name.endswith("_left.txt") for f in files
    )
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    # Overwriting an earlier synth corpus is allowed and gives another seed's corpus.
    write_corpus(
        first,
        SynthSpec(videos=3, seconds=2.0, seed=6, val_fraction=0.34),
        overwrite=True,
        progress=False,
    )
    assert _corpus(first)["seed"] == 6
    videos = sorted((first / "videos").iterdir())
    assert any(v.read_bytes() != (second / "videos" / v.name).read_bytes() for v in videos)
    assert not list(tmp_path.glob(".*")), "staging folders left behind"


def test_refuses_a_non_empty_folder_and_leaves_it_untouched(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "videos").mkdir()
    keep = out / "videos" / "precious.mp4"
    keep.write_bytes(b"not ours")
    spec = SynthSpec(videos=1, seconds=1.0, seed=0)
    with pytest.raises(SynthError, match=str(out)):
        write_corpus(out, spec, progress=False)
    # Even --overwrite does not replace a folder that is not an earlier synth corpus.
    with pytest.raises(SynthError, match="not a corpus written by"):
        write_corpus(out, spec, overwrite=True, progress=False)
    assert keep.read_bytes() == b"not ours"
    assert sorted(p.name for p in out.rglob("*")) == ["precious.mp4", "videos"]
    # An existing but empty folder is fine.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_corpus(empty, spec, progress=False).videos == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [("videos", 0), ("seconds", 0.5), ("seed", -1), ("val_fraction", 1.0), ("audio_rate", 8000)],
)
def test_bad_settings_name_the_field(field: str, value: float) -> None:
    settings = {"videos": 2, "seconds": 2.0, "seed": 0, field: value}
    with pytest.raises(SynthError, match=f"^{field}: "):
        SynthSpec(**settings)


def test_each_modality_alone_finds_the_pair_and_only_both_find_the_class() -> None:
    """The fusion design, checked on the generator's own faces and voices with simple
    features and a linear classifier: each modality alone is right about its pair of
    classes and near chance inside it; together they name all 8 classes."""
    rng = np.random.default_rng(0)
    face_x, voice_x, y = [], [], []
    for _ in range(16):
        for label in range(NUM_CLASSES):
            # A face already found and aligned (as a detector would give it): every person
            # looks different, with a random expression intensity.
            style = synth_face.random_style(rng, (0, 0, 64, 64))
            aligned = synth_face.FaceStyle(
                (32.0, 32.0), 24.0, style.skin, style.features, style.lips, style.sway
            )
            sprite = synth_face.FacePainter(aligned, (64, 64, 3)).sprite(
                synth_face.expression(label, rng.uniform(0.65, 1.0))
            )
            grey = sprite.mean(axis=-1)[::4, ::4].ravel()
            face_x.append((grey - grey.mean()) / grey.std())
            pitch, loudness = rng.uniform(0.85, 1.15), rng.uniform(0.8, 1.2)
            voice_x.append(
                _voice_features(synth_speech.speak(label, 1.0, 16000, rng, pitch, loudness).samples)
            )
            y.append(label)
    face, voice, labels = np.array(face_x), np.array(voice_x), np.array(y)
    train = np.arange(len(labels)) % 3 != 0
    truth = labels[~train]

    def predict(features: np.ndarray) -> np.ndarray:
        """A linear classifier in closed form: ridge regression onto one-hot classes."""
        mean, std = features[train].mean(axis=0), features[train].std(axis=0) + 1e-6
        x = np.hstack([(features - mean) / std, np.ones((len(features), 1))])
        targets = np.eye(NUM_CLASSES)[labels[train]]
        gram = x[train].T @ x[train] + 1.0 * np.eye(x.shape[1])
        weights = np.linalg.solve(gram, x[train].T @ targets)
        return np.argmax(x[~train] @ weights, axis=1)

    def same_group(pred: np.ndarray, group) -> float:
        return float(
            np.mean([group(int(p)) == group(int(t)) for p, t in zip(pred, truth, strict=True)])
        )

    face_pred, voice_pred = predict(face), predict(voice)
    both_pred = predict(np.concatenate([face, voice], axis=1))
    assert same_group(face_pred, synth_face.face_group) > 0.9
    assert same_group(voice_pred, synth_speech.voice_group) > 0.9
    assert np.mean(face_pred == truth) < 0.7  # chance inside a pair is 0.5
    assert np.mean(voice_pred == truth) < 0.7
    assert np.mean(both_pred == truth) > 0.85


def _voice_features(samples: np.ndarray) -> np.ndarray:
    """Loudness, log band energies and pitch statistics: a crude prosody descriptor."""
    frames = samples[: len(samples) // 400 * 400].reshape(-1, 400)
    energy = np.sqrt((frames**2).mean(axis=1))
    spectrum = np.log(
        np.abs(np.fft.rfft(frames[energy > 0.3 * energy.max()], axis=1)) ** 2 + 1e-6
    ).mean(axis=0)
    bands = np.array([b.mean() for b in np.array_split(spectrum, 20)])
    pitch = np.log(np.maximum(_pitch_track(samples, 16000), 1.0))
    steps = np.diff(pitch) if len(pitch) > 2 else np.zeros(1)
    steps = steps[np.abs(steps) < 0.2]  # moves within a syllable, not jumps between syllables
    stats = [
        np.log(energy.max()),
        np.median(pitch) if len(pitch) else 0.0,
        np.std(pitch) if len(pitch) else 0.0,
        np.mean(steps) * 10 if len(steps) else 0.0,
        np.std(steps) * 10 if len(steps) else 0.0,
    ]
    return np.concatenate([bands / 10.0, stats])


def test_face_crops_exist_for_exactly_the_frames_with_a_face(tmp_path: Path) -> None:
    from mmexpr.cli import main

    out = tmp_path / "crops"
    args = ["synth", str(out), "--videos", "3", "--seconds", "1.5", "--seed", "2", "--face-crops", "--workers", "1"]
    assert main(args) == 0
    for video in _corpus(out)["videos"]:
        for track in video["tracks"]:
            labels = _labels(out, video, track["name"])
            crops = sorted((out / "cropped_aligned" / track["name"]).glob("*.jpg"))
            expected = [f"{i + 1:05d}.jpg" for i in np.flatnonzero(labels != IGNORE)]
            assert [c.name for c in crops] == expected
            with Image.open(crops[0]) as image:
                assert image.size == (112, 112)
