"""Packing: every annotated frame lands in the shards once with its label, bad inputs are
named and skipped, interrupted runs finish to the same bytes, OUT is never clobbered.

Shards are read back with plain `webdataset` + decord here, not with our loader, so a
bug shared by packer and loader cannot hide itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import decord
import numpy as np
import pytest
import webdataset as wds
from media import labels_for, small_corpus, write_video

from mmexpr.cli import main as cli_main
from mmexpr.data.manifest import read_manifest
from mmexpr.data.pack import PackError, pack_corpus
from mmexpr.data.sources import SourceError
from mmexpr.labels import CLASSES, fit_to_frames, read_annotation, write_annotation

REPO = Path(__file__).resolve().parents[1]


def _wav_samples(data: bytes) -> int:
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        return w.getnframes()


def test_demo_corpus_every_annotated_frame_appears_once_with_its_label(demo_corpus: Path, demo_shards: Path):
    seen: dict[str, dict[int, int]] = {}
    words: dict[str, set] = {}
    for split in ("train", "validation"):
        manifest = read_manifest(demo_shards / split / "manifest.json")
        urls = [str(demo_shards / split / s.url) for s in manifest.shards]
        samples = list(wds.WebDataset(urls, shardshuffle=False))
        # manifest counts agree with the tars
        assert len(samples) == manifest.samples
        assert [s["__key__"] for s in samples] == [k for sh in manifest.shards for k in sh.keys]
        for shard in manifest.shards:
            path = demo_shards / split / shard.url
            assert hashlib.sha256(path.read_bytes()).hexdigest() == shard.sha256
            assert path.stat().st_size == shard.bytes
        histogram = np.zeros(9, np.int64)
        frames_total = 0
        for sample in samples:
            meta = json.loads(sample["json"])
            video = decord.VideoReader(io.BytesIO(sample["mp4"]))
            assert len(video) == meta["frames"] == len(meta["labels"])
            assert video[0].shape == (64, 64, 3)
            assert _wav_samples(sample["wav"]) == round(meta["frames"] * 16000 / meta["fps"])
            begin, end = meta["first_frame"] / meta["fps"], (meta["first_frame"] + meta["frames"]) / meta["fps"]
            for word in meta["words"]:  # transcript words overlapping the chunk, no others
                assert word["start"] < end and word["end"] > begin
            words.setdefault(meta["track"], set()).update((w["start"], w["word"]) for w in meta["words"])
            track = seen.setdefault(meta["track"], {})
            for i, label in enumerate(meta["labels"]):
                frame = meta["first_frame"] + i
                assert frame not in track, f"{meta['track']} frame {frame} packed twice"
                track[frame] = label
                histogram[label if label >= 0 else 8] += 1
            frames_total += meta["frames"]
        assert frames_total == manifest.frames
        assert histogram.tolist() == manifest.label_histogram
    annotations = sorted((demo_corpus / "annotations").glob("*/*.txt"))
    assert sorted(seen) == sorted(a.stem for a in annotations)
    for ann in annotations:
        video = ann.stem.removesuffix("_left").removesuffix("_right")
        reader = decord.VideoReader(str(demo_corpus / "videos" / f"{video}.mp4"))
        frames, fps = len(reader), reader.get_avg_fps()
        expected = fit_to_frames(read_annotation(ann), frames).labels
        got = seen[ann.stem]
        assert sorted(got) == list(range(frames))
        assert [got[i] for i in range(frames)] == expected.tolist()
        transcript = demo_corpus / "transcripts" / f"{video}.json"
        if transcript.is_file():
            spoken = {(w["start"], w["word"]) for w in json.loads(transcript.read_text())
                      if w["start"] < frames / fps}
            assert spoken <= words.get(ann.stem, set())


def test_manifest_lists_settings_histogram_and_format(demo_shards: Path):
    manifest = read_manifest(demo_shards / "train" / "manifest.json")
    assert manifest.settings["chunk_frames"] == 32 and manifest.settings["face_size"] == 64
    assert manifest.version == 1 and manifest.sample_rate == 16000
    assert sum(manifest.label_histogram) == manifest.frames
    assert all(f <= 32 for s in manifest.shards for f in s.sample_frames)


def test_two_person_video_packed_with_faces_frame_takes_left_and_right_halves(tmp_path: Path, ray_local):
    """`faces="frame"` (frames that already are faces): left half of each frame for
    <name>_left, right half for _right. The face tracker's mapping is in test_faces.py."""

    def halves(index: int, width: int, height: int) -> np.ndarray:
        img = np.zeros((height, width, 3), np.uint8)
        img[:, : width // 2] = 30  # dark left person
        img[:, width // 2 :] = 220  # bright right person
        return img

    src = tmp_path / "src"
    write_video(src / "videos" / "duo.mp4", 20, size=(128, 64), pixels=halves, audio_rate=None)
    for side in ("left", "right"):
        write_annotation(src / "annotations" / "Train_Set" / f"duo_{side}.txt", [4] * 20)
    pack_corpus(src, tmp_path / "out", chunk_frames=32, face_size=32, shard_mb=1, progress=False, faces="frame")
    samples = {json.loads(s["json"])["track"]: s for s in wds.WebDataset(str(tmp_path / "out/train/shard-000000.tar"), shardshuffle=False)}
    assert sorted(samples) == ["duo_left", "duo_right"]
    left = decord.VideoReader(io.BytesIO(samples["duo_left"]["mp4"]))[5].asnumpy().mean()
    right = decord.VideoReader(io.BytesIO(samples["duo_right"]["mp4"]))[5].asnumpy().mean()
    assert left < 60 < 190 < right
    meta = json.loads(samples["duo_left"]["json"])
    assert meta["has_audio"] is False and _wav_samples(samples["duo_left"]["wav"]) == 0


def test_face_crops_are_used_where_given(tmp_path: Path, ray_local):
    from PIL import Image

    src = tmp_path / "src"
    write_video(src / "videos" / "solo.mp4", 12, audio_rate=None)
    write_annotation(src / "annotations" / "Train_Set" / "solo.txt", [1] * 12)
    crops = src / "cropped_aligned" / "solo"
    crops.mkdir(parents=True)
    for i in range(12):
        if i != 5:  # frame 6 has no crop (no face found): it becomes black
            Image.fromarray(np.full((50, 50, 3), 200, np.uint8)).save(crops / f"{i + 1:05d}.jpg")
    pack_corpus(src, tmp_path / "out", chunk_frames=32, face_size=32, shard_mb=1, progress=False)
    (sample,) = wds.WebDataset(str(tmp_path / "out/train/shard-000000.tar"), shardshuffle=False)
    frames = decord.VideoReader(io.BytesIO(sample["mp4"])).get_batch(list(range(12))).asnumpy()
    means = frames.reshape(12, -1).mean(axis=1)
    assert means[5] < 40 and np.all(np.delete(means, 5) > 170)


@pytest.fixture()
def bad_source(tmp_path: Path) -> Path:
    """One good video (no audio track) and one of every kind of bad input."""
    src = small_corpus(tmp_path / "src", {"good": ("Train_Set", 40)}, audio=False)
    ann = src / "annotations" / "Train_Set"
    write_annotation(ann / "ghost.txt", labels_for(30))  # annotation without a video
    full = write_video(tmp_path / "full.mp4", 60)  # truncated video: the file cut in half
    (src / "videos" / "cut.mp4").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    write_annotation(ann / "cut.txt", labels_for(60))
    (src / "videos" / "junk.mp4").write_bytes(b"this is not a video" * 10)  # unreadable
    write_annotation(ann / "junk.txt", labels_for(10))
    write_video(src / "videos" / "badlabels.mp4", 20, audio_rate=None)  # malformed annotation
    (ann / "badlabels.txt").write_text(",".join(CLASSES) + "\n1\n2\nnine\n")
    write_video(src / "videos" / "toolong.mp4", 20, audio_rate=None)  # 60 labels for 20 frames
    write_annotation(ann / "toolong.txt", labels_for(60))
    return src


def test_every_bad_input_is_named_with_its_reason_and_the_rest_packs(bad_source: Path, tmp_path: Path, ray_local):
    out = tmp_path / "out"
    summary = pack_corpus(bad_source, out, chunk_frames=16, face_size=32, shard_mb=1, progress=False)
    reasons = {Path(s.path).name: s.reason for s in summary.skipped}
    assert "no video named 'ghost'" in reasons["ghost.txt"]
    assert "unreadable video" in reasons["cut.mp4"]
    assert "unreadable video" in reasons["junk.mp4"]
    assert "malformed annotation" in reasons["badlabels.txt"] and ":4:" in reasons["badlabels.txt"]
    assert "60 labels for 20 frames" in reasons["toolong.txt"]
    manifest = read_manifest(out / "train" / "manifest.json")
    assert {Path(s["path"]).name for s in manifest.skipped} == set(reasons)
    assert manifest.tracks == ("good",) and manifest.frames == 40
    for name in reasons:
        assert name in str(summary)
    # the good video had no audio stream: zero-length wav, has_audio false
    for sample in wds.WebDataset(str(out / "train" / "shard-000000.tar"), shardshuffle=False):
        assert json.loads(sample["json"])["has_audio"] is False
        assert _wav_samples(sample["wav"]) == 0


def test_source_with_nothing_packable_is_an_error(tmp_path: Path):
    src = tmp_path / "src"
    write_annotation(src / "annotations" / "Train_Set" / "ghost.txt", labels_for(10))
    (src / "videos").mkdir(parents=True)
    with pytest.raises(SourceError, match="nothing packable(.|\n)*ghost.txt"):
        pack_corpus(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SourceError, match="source folder not found"):
        pack_corpus(tmp_path / "missing", tmp_path / "out", progress=False)


def test_unknown_split_is_an_error_naming_the_folder(tmp_path: Path):
    src = tmp_path / "src"
    write_annotation(src / "annotations" / "Train_Set" / "a.txt", labels_for(10))
    with pytest.raises(SourceError, match=r"annotations: no annotation folder for split\(s\) \['test'\]"):
        pack_corpus(src, tmp_path / "out", splits=["test"], progress=False)


def test_cli_pack_reports_bad_source_without_traceback(tmp_path: Path, capsys):
    assert cli_main(["pack", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "source folder not found" in capsys.readouterr().err


def test_existing_output_is_kept_unless_overwrite(tmp_path: Path, ray_local):
    src = small_corpus(tmp_path / "src", {"a": ("Train_Set", 20)}, audio=False)
    out = tmp_path / "out"
    pack_corpus(src, out, chunk_frames=16, face_size=32, shard_mb=1, progress=False)
    shard = out / "train" / "shard-000000.tar"
    before = shard.read_bytes()
    again = pack_corpus(src, out, chunk_frames=16, face_size=32, shard_mb=1, progress=False)
    assert again.splits["train"].already_packed and again.packed_frames == 0
    with pytest.raises(PackError, match="already packed with other settings(.|\n)*--overwrite"):
        pack_corpus(src, out, chunk_frames=8, face_size=32, shard_mb=1, progress=False)
    assert shard.read_bytes() == before
    pack_corpus(src, out, chunk_frames=8, face_size=32, shard_mb=1, progress=False, overwrite=True)
    assert read_manifest(out / "train" / "manifest.json").settings["chunk_frames"] == 8


def test_another_corpus_into_the_same_output_is_refused_not_taken_as_packed(tmp_path: Path, ray_local):
    """Same settings, other videos: the old shards must neither be reused nor replaced."""
    out = tmp_path / "out"
    first = small_corpus(tmp_path / "first", {"a": ("Train_Set", 20)}, audio=False)
    pack_corpus(first, out, chunk_frames=16, face_size=32, shard_mb=1, progress=False)
    before = (out / "train" / "shard-000000.tar").read_bytes()
    other = small_corpus(tmp_path / "other", {"a": ("Train_Set", 20), "b": ("Train_Set", 12)}, audio=False)
    with pytest.raises(PackError, match="already packed with other settings \\(inputs: packed"):
        pack_corpus(other, out, chunk_frames=16, face_size=32, shard_mb=1, progress=False)
    assert (out / "train" / "shard-000000.tar").read_bytes() == before
    moved = tmp_path / "moved"
    first.rename(moved)  # the same corpus somewhere else is still already packed
    assert pack_corpus(moved, out, chunk_frames=16, face_size=32, shard_mb=1, progress=False).splits["train"].already_packed


@pytest.mark.slow
def test_interrupted_pack_resumes_to_byte_identical_shards(demo_corpus: Path, demo_shards: Path, tmp_path: Path, ray_local):
    """Kill a real `mmexpr pack` process (SIGKILL, whole process group with its Ray
    cluster) after its first video is stored, then re-run: only the missing videos are
    packed and the shards equal an uninterrupted run's byte for byte."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mmexpr.cli", "pack", str(demo_corpus), str(out), "--chunk-frames", "32",
           "--face-size", "64", "--shard-mb", "1", "--cpus", "1"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own cluster, not ours
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(out.glob("*/.work/*.json")):
            assert proc.poll() is None, "pack finished or failed before it could be interrupted"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = len(list(out.glob("*/.work/*.json")))
    assert done_before >= 1
    assert not list(out.glob("*/shard-*.tar")) and not list(out.glob("*/manifest.json"))
    (out / "train" / ".shard-000000.tar.tmp").write_bytes(b"half a shard")  # a write cut short
    summary = pack_corpus(demo_corpus, out, chunk_frames=32, face_size=64, shard_mb=1, progress=False)
    total_frames = sum(s.frames for s in summary.splits.values())
    assert 0 < summary.packed_frames < total_frames  # only the missing videos were packed
    for split in ("train", "validation"):
        ours = sorted(p.name for p in (out / split).iterdir())
        ref = sorted(p.name for p in (demo_shards / split).iterdir())
        assert ours == ref  # no .work, no temp files left
        for name in ref:
            assert (out / split / name).read_bytes() == (demo_shards / split / name).read_bytes(), name


def test_packing_twice_gives_the_same_sha256_for_every_file(tmp_path: Path, ray_local):
    """Two packs of one corpus (with a two-person video, whose halves are cut and scaled
    per frame) on a 2-CPU Ray cluster give the same sha256 for every shard and the same
    manifest digests: a finished run is matched by its shards' manifests, so a re-pack
    must not change them."""
    from mmexpr.synth.corpus import SynthSpec, write_corpus

    corpus = tmp_path / "corpus"
    write_corpus(corpus, SynthSpec(videos=3, seconds=6.0, seed=3))
    outs = [tmp_path / "first", tmp_path / "second"]
    for out in outs:
        pack_corpus(corpus, out, shard_mb=1, progress=False)
    for split in ("train", "validation"):
        first, second = (read_manifest(out / split / "manifest.json") for out in outs)
        assert [s.url for s in first.shards] == [s.url for s in second.shards]
        for shard in first.shards:
            digests = [hashlib.sha256((out / split / shard.url).read_bytes()).hexdigest() for out in outs]
            assert digests[0] == digests[1], f"{split}/{shard.url} differs between two packs"
        assert [s.sha256 for s in first.shards] == [s.sha256 for s in second.shards]


def test_real_faces_and_speech_pack_and_load(shared_data: Path, tmp_path: Path, ray_local):
    """FER2013 grayscale faces of one class (happy) muxed with a RAVDESS speech clip of the
    same class into one video. The two modalities were NOT recorded together: this checks
    that real pixels and real speech survive pack + load, not audio-visual synchrony."""
    from mmexpr.config import DataConfig
    from mmexpr.data.loader import make_loader
    from mmexpr.synth.real import load_faces, load_voices, read_voice, write_muxed_video

    happy = 4
    fer = load_faces(shared_data)
    faces = fer.images[fer.of_class(happy)[:25]]  # 25 faces x 3 frames each
    speech, rate = read_voice(next(v for v in load_voices(shared_data) if v.label == happy))
    frames = len(faces) * 3
    src = tmp_path / "src"
    clip = speech[: int(frames / 25 * rate)]
    write_muxed_video(src / "videos" / "realmix.mp4", np.repeat(faces, 3, axis=0), 25, clip, rate)
    write_annotation(src / "annotations" / "Validation_Set" / "realmix.txt", [4] * frames)
    # each frame is one whole 48x48 FER face, so the frame is the face
    pack_corpus(src, tmp_path / "out", chunk_frames=32, face_size=64, shard_mb=1, progress=False, faces="frame")
    data = DataConfig(window=16, stride=16, image_size=64, batch_size=4, loader_workers=0)
    loader = make_loader(str(tmp_path / "out"), "validation", data, train=False)
    labelled, voiced, energy = 0, 0, 0.0
    for batch in loader:
        m = batch.mask
        assert (batch.labels[m] == 4).all()
        labelled += int(m.sum())
        video_px = batch.video[m[:, :, None, None, None].expand_as(batch.video)].float()
        if len(video_px):
            rgb = batch.video.float()
            assert (rgb[:, :, 0] - rgb[:, :, 1]).abs().mean() < 6  # grey faces stay grey
        for b in range(len(batch.track)):
            n = int(batch.audio_len[b])
            if n:
                voiced += n
                energy += float((batch.audio[b, :n] ** 2).sum())
    assert labelled == frames
    assert voiced == round(frames / 25 * 16000)  # every frame's audio, once
    source_rms = float(np.sqrt(np.mean(clip**2)))
    assert 0.5 * source_rms < np.sqrt(energy / voiced) < 2 * source_rms  # real speech, not silence
    assert loader.skipped == 0


def test_packed_chunks_have_a_keyframe_every_gop_and_no_b_frames():
    """The loader's seek cost rests on this: a window decodes from the keyframe before it, in
    order. (x264's `bframes` is `bf` to FFmpeg; the other spelling is silently ignored.)"""
    from fractions import Fraction

    import av

    from mmexpr.data.encode import ChunkEncoder, PackSettings

    settings = PackSettings(chunk_frames=32, face_size=64)
    encoder = ChunkEncoder(settings, Fraction(25))
    rng = np.random.default_rng(0)
    for k in range(32):
        image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) if k % 2 else np.full((64, 64, 3), k * 7, np.uint8)
        encoder.add(av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p"), True)
    [(first, frames, mp4, _)] = encoder.chunks
    with av.open(io.BytesIO(mp4)) as container:
        kinds = [av.video.frame.PictureType(frame.pict_type).name for frame in container.decode(video=0)]
    assert (first, frames, len(kinds)) == (0, 32, 32)
    assert "B" not in kinds
    assert [k for k, kind in enumerate(kinds) if kind == "I"] == list(range(0, 32, settings.gop))
