"""The face detector and tracker on real faces: FER2013 images moving through 640x360 frames.

Goals (issue 16): recall >= 0.9 at IoU 0.5, at most one identity switch per video, aligned
crops that show their own source face; pack and predict use the tracker for tracks without
`cropped_aligned/`, mark frames without a face, and keep the detections per video.
"""

from __future__ import annotations

import io
import json
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from mmexpr.faces.align import TEMPLATE_112, align_face, similarity
from mmexpr.faces.detect import Detection, DetectorError
from mmexpr.faces.track import TrackerSettings, iou, link
from mmexpr.faces.video import CSV_HEADER, VideoFaces, faces_for_tracks


def _det(frame: int, x: float, y: float, side: float = 60.0, score: float = 0.99) -> Detection:
    box = np.array([x, y, x + side, y + side])
    marks = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]]) * side + [x, y]
    return Detection(frame, box, score, marks)


# ---------------------------------------------------------------- tracker and alignment alone


def test_tracker_keeps_identity_through_short_gaps_fills_them_and_starts_anew_after_a_long_one():
    frames: list[list[Detection]] = [[] for _ in range(80)]
    for i in range(80):
        if i in (10, 11) or 30 <= i < 38 or 50 <= i < 70:  # 2 missed, 8 missed, 20 missed
            continue
        frames[i].append(_det(i, 100 + 3 * i, 50))  # moving right 3 px per frame
    tracks = link(frames, TrackerSettings(max_gap=12, fill_gap=4))
    assert len(tracks) == 2  # the 20-frame gap is longer than max_gap
    first, second = tracks
    assert first.detections[0].frame == 0 and first.detections[-1].frame == 49
    assert second.detections[0].frame == 70
    by_frame = first.by_frame()
    assert 10 in by_frame and by_frame[10].score == 0.0  # the 2 missed frames are filled
    assert all(f not in by_frame for f in range(30, 38))  # 8 missed frames stay without a face
    assert by_frame[11].box[0] == pytest.approx(100 + 3 * 11, abs=1.0)  # interpolated along the motion


def test_tracker_keeps_two_crossing_paths_apart_and_drops_one_off_false_detections():
    frames: list[list[Detection]] = [[] for _ in range(40)]
    for i in range(40):
        frames[i].append(_det(i, 50 + 4 * i, 100))
        frames[i].append(_det(i, 400, 100 + 2 * i, side=80))
        if i == 20:
            frames[i].append(_det(i, 600, 300, side=30, score=0.95))  # a single false detection
    tracks = link(frames)
    assert len(tracks) == 2
    assert all(len(t.detections) == 40 for t in tracks)
    for t in tracks:
        xs = {round(float(d.box[2] - d.box[0])) for d in t.detections}
        assert len(xs) == 1  # each track kept one face size: no swaps


def test_two_tracks_map_to_left_and_right_annotations_by_horizontal_position():
    frames: list[list[Detection]] = [[] for _ in range(30)]
    for i in range(30):
        frames[i].append(_det(i, 450, 100))  # right person appears first
        if i >= 5:
            frames[i].append(_det(i, 80, 120))
    tracks = link(frames)
    faces = VideoFaces("v", 30, 640, 360, 0, {}, tracks)
    mapped = faces_for_tracks(faces, ["left", "right"])
    assert set(mapped["right"]) == set(range(30))
    assert set(mapped["left"]) == set(range(5, 30))
    assert all(d.box[0] < 320 for d in mapped["left"].values())
    single = faces_for_tracks(faces, [""])
    assert set(single[""]) == set(range(30))  # one person: the longest track, where present


def test_alignment_maps_landmarks_onto_the_template():
    angle, scale, shift = 0.3, 1.7, np.array([200.0, 80.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    marks = (TEMPLATE_112 @ rot.T) * scale + shift
    matrix = similarity(marks, TEMPLATE_112)
    mapped = marks @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, TEMPLATE_112, atol=1e-6)
    # a white disc at the left eye's place in the frame lands at the template's left eye
    frame = np.zeros((360, 640, 3), np.uint8)
    yy, xx = np.mgrid[:360, :640]
    frame[(xx - marks[0, 0]) ** 2 + (yy - marks[0, 1]) ** 2 < 36] = 255
    crop = align_face(frame, marks, 112)
    ys, xs = np.nonzero(crop[..., 0] > 128)
    assert abs(xs.mean() - TEMPLATE_112[0, 0]) < 2 and abs(ys.mean() - TEMPLATE_112[0, 1]) < 2


def test_a_detector_that_cannot_load_names_the_package_and_the_install_command(monkeypatch):
    from mmexpr.faces.detect import Detector

    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    with pytest.raises(DetectorError, match=r"facenet-pytorch.*pip install --no-deps facenet-pytorch==2\.6\.0"):
        Detector()


# ---------------------------------------------------------------- real faces


@pytest.fixture(scope="module")
def fer(shared_data: Path):
    from mmexpr.synth.real import load_faces

    return load_faces(shared_data)


@pytest.fixture(scope="module")
def detector():
    import torch

    from mmexpr.faces.detect import Detector

    torch.set_num_threads(1)
    return Detector()


@pytest.fixture(scope="module")
def pool(fer, detector):
    from mmexpr.synth.scenes import detectable_pool

    kept, tried = detectable_pool(fer, detector, 16)
    assert len(kept) == 16
    return kept


def test_tracker_finds_real_faces_in_moving_scenes_keeps_identities_and_aligns_crops(fer, detector, pool, tmp_path):
    from mmexpr.faces.video import detect_video
    from mmexpr.synth.real import write_muxed_video
    from mmexpr.synth.scenes import SceneSpec, make_scene, score_tracks

    distractors = fer.images[np.flatnonzero(fer.split == 1)[:6]]
    scores = []
    for k, people in enumerate((1, 2, 1, 2)):
        scene = make_scene(fer, SceneSpec(people=people, frames=60), k, pool)
        path = write_muxed_video(tmp_path / f"scene{k}.mp4", scene.frames, scene.fps, None, 16000)
        found = detect_video(path, detector)
        assert found.frames == 60 and (found.width, found.height) == (640, 360)
        score = score_tracks(scene, found.tracks, distractors, crop_every=4)
        assert max(score.switches) <= 1, f"scene {k}: identity switches {score.switches}"
        assert score.crop_match >= 0.9, f"scene {k}: {score.crops_matched} of {score.crops_compared} crops match"
        # no face is reported in the stretch where nobody is in view
        empty = [i for i in range(60) if not any(scene.visible(p)[i] for p in range(people))]
        assert not any(d.frame in empty for t in found.tracks for d in t.detections)
        scores.append(score)
    recall = sum(s.found for s in scores) / sum(s.visible for s in scores)
    assert recall >= 0.9, [round(s.recall, 3) for s in scores]


def test_faces_command_writes_one_csv_row_per_detection_and_a_preview(fer, pool, tmp_path):
    from PIL import Image

    from mmexpr.cli import main
    from mmexpr.faces.video import read_csv
    from mmexpr.synth.real import write_muxed_video
    from mmexpr.synth.scenes import SceneSpec, make_scene

    scene = make_scene(fer, SceneSpec(people=2, frames=30), 7, pool)
    write_muxed_video(tmp_path / "in" / "two.mp4", scene.frames, scene.fps, None, 16000)
    assert main(["faces", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--preview"]) == 0
    csv_path = tmp_path / "out" / "two.csv"
    assert csv_path.read_text().splitlines()[0] == ",".join(CSV_HEADER)
    rows = read_csv(csv_path)
    assert rows and all(0 <= int(r["frame"]) < 30 for r in rows)
    assert {r["track"] for r in rows} >= {"0", "1"}
    boxes = scene.boxes
    hits = 0
    for r in rows:
        box = np.array([float(r[k]) for k in ("x1", "y1", "x2", "y2")])
        i = int(r["frame"])
        hits += any(scene.visible(p)[i] and iou(box, boxes[p, i]) >= 0.5 for p in range(2))
    assert hits / len(rows) >= 0.95  # rows are real faces, in source pixels
    with Image.open(tmp_path / "out" / "two.png") as sheet:
        assert sheet.width == 4 * 320 and sheet.height >= 180
    assert main(["faces", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 2


def _samples(split_dir: Path) -> list[dict]:
    urls = sorted(str(p) for p in split_dir.glob("shard-*.tar"))
    return list(wds.WebDataset(urls, shardshuffle=False))


def test_pack_crops_detected_faces_marks_frames_without_one_and_reuses_its_detections(fer, pool, tmp_path, ray_local):
    from mmexpr.data.manifest import read_manifest
    from mmexpr.data.pack import FACES, pack_corpus
    from mmexpr.synth.real import write_muxed_video
    from mmexpr.synth.scenes import SceneSpec, write_scene_corpus

    src = tmp_path / "src"
    frames = 40
    (scene,) = write_scene_corpus(src, fer, [SceneSpec(people=2, frames=frames)], seed=3, pool=pool)
    # a video with nobody in it, with a voice: packed with face 0 throughout, its audio kept
    empty = np.repeat(scene.frames[frames // 2][None], frames, axis=0)
    tone = (0.2 * np.sin(np.arange(frames * 640) * 0.05)).astype(np.float32)
    write_muxed_video(src / "videos" / "empty.mp4", empty, 25, tone, 16000)
    from mmexpr.labels import write_annotation

    write_annotation(src / "annotations" / "Train_Set" / "empty.txt", [1] * frames)

    out = tmp_path / "shards"
    summary = pack_corpus(src, out, chunk_frames=16, face_size=48, shard_mb=1, progress=False)
    assert "empty" in str(summary) and summary.faceless == ["empty"]
    manifest = read_manifest(out / "train" / "manifest.json")
    assert manifest.settings["faces"] == "detect"
    assert manifest.extra["faceless_tracks"] == ["empty"]
    flags: dict[str, np.ndarray] = {}
    for sample in _samples(out / "train"):
        meta = json.loads(sample["json"])
        track = flags.setdefault(meta["track"], np.full(frames, -1))
        track[meta["first_frame"] : meta["first_frame"] + meta["frames"]] = meta["face"]
        if meta["track"] == "empty":
            with wave.open(io.BytesIO(sample["wav"])) as w:
                assert w.getnframes() > 0
    assert set(flags) == {"scene000_left", "scene000_right", "empty"}
    assert (flags["empty"] == 0).all()
    for person, side in enumerate(("left", "right")):
        truth = scene.visible(person).astype(int)
        agree = float((flags[f"scene000_{side}"] == truth).mean())
        assert agree >= 0.9, f"{side}: face flags agree with visibility on {agree:.0%} of frames"

    cache = out / FACES / "scene000.json"
    stamp = cache.stat().st_mtime_ns
    before = {p.name: p.read_bytes() for p in (out / "train").glob("shard-*.tar")}
    pack_corpus(src, out, chunk_frames=16, face_size=48, shard_mb=1, progress=False, overwrite=True)
    assert cache.stat().st_mtime_ns == stamp  # the re-pack took the cached detections
    after = {p.name: p.read_bytes() for p in (out / "train").glob("shard-*.tar")}
    assert after == before


def test_predict_on_raw_videos_cuts_faces_with_the_tracker(fer, pool, tmp_path):
    from mmexpr.predict.tracks import VideoTracks
    from mmexpr.synth.scenes import SceneSpec, write_scene_corpus

    (scene,) = write_scene_corpus(tmp_path / "src", fer, [SceneSpec(people=1, frames=30)], seed=5, pool=pool)
    dataset = VideoTracks(tmp_path / "src", 48)
    assert dataset.settings.faces == "detect"  # not a synth corpus: its faces are detected
    pieces = list(dataset.pieces(0))
    assert {p.track for p in pieces} == {"scene000"}
    frames = np.concatenate([p.frames for p in pieces])
    assert frames.shape == (30, 48, 48, 3)
    face = np.concatenate([p.face for p in pieces])
    visible = scene.visible(0)
    assert (face == visible).mean() >= 0.9  # the face flag follows the detections
    brightness = frames.reshape(30, -1).mean(1)
    assert (brightness[~visible] < 1).all()  # no face: a black frame
    assert (brightness[visible] > 20).mean() >= 0.9  # the aligned face elsewhere
