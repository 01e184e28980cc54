"""Aff-Wild2 as ABAW hands it out: challenge folders, videos at any depth, a test list,
frames without a face, and the errors a wrong layout gets (naming what was searched)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from media import labels_for, write_video

from mmexpr.cli import main as cli_main
from mmexpr.data.manifest import read_manifest
from mmexpr.data.pack import pack_corpus
from mmexpr.data.sources import SourceError, discover
from mmexpr.labels import write_annotation

PACK = dict(chunk_frames=16, face_size=32, shard_mb=1, progress=False)


def release_tree(root: Path, challenge: str = "EXPR_Recognition_Challenge") -> Path:
    """videos/batch1, batch2 (.avi), new_vids; annotations/<challenge>/Train_Set, Validation_Set."""
    write_video(root / "videos" / "batch1" / "a.mp4", 20, audio_rate=None)
    write_video(root / "videos" / "batch2" / "b.avi", 20, audio_rate=None)
    write_video(root / "videos" / "new_vids" / "t.mp4", 24, audio_rate=None)
    ann = root / "annotations" / challenge
    write_annotation(ann / "Train_Set" / "a.txt", labels_for(20))
    write_annotation(ann / "Validation_Set" / "b.txt", labels_for(20, seed=1))
    return root


def test_release_layout_with_challenge_folder_packs_train_and_validation(tmp_path: Path, ray_local):
    src = release_tree(tmp_path / "src")
    write_annotation(src / "annotations" / "VA_Estimation_Challenge" / "Train_Set" / "a.txt", labels_for(20))
    summary = pack_corpus(src, tmp_path / "out", **PACK)
    assert set(summary.splits) == {"train", "validation"}
    assert read_manifest(tmp_path / "out" / "train" / "manifest.json").tracks == ("a",)
    assert read_manifest(tmp_path / "out" / "validation" / "manifest.json").tracks == ("b",)


@pytest.mark.parametrize("challenge", ["EXPR_Classification_Challenge", "EXPR_Set"])
def test_every_expr_challenge_folder_name_is_found(tmp_path: Path, challenge: str):
    found = discover(release_tree(tmp_path / "src", challenge))
    assert sorted(j.video for j in found.jobs) == ["a", "b"]


def test_annotations_option_names_the_folder_and_settles_two_expr_folders(tmp_path: Path):
    src = release_tree(tmp_path / "src")
    write_annotation(src / "annotations" / "EXPR_Set" / "Train_Set" / "b.txt", labels_for(20))
    with pytest.raises(SourceError, match="2 folders hold EXPR annotation files(.|\n)*EXPR_Recognition"
                                          "(.|\n)*EXPR_Set(.|\n)*--annotations"):
        discover(src)
    found = discover(src, annotations=src / "annotations" / "EXPR_Set")
    assert [(j.video, j.split) for j in found.jobs] == [("b", "train")]


def test_no_annotation_files_lists_the_folders_searched_and_the_expected_shape(tmp_path: Path, capsys):
    src = tmp_path / "src"
    write_video(src / "videos" / "batch1" / "a.mp4", 8, audio_rate=None)
    (src / "annotations" / "EXPR_Recognition_Challenge").mkdir(parents=True)
    (src / "annotations" / "notes").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("already here")
    assert cli_main(["pack", str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert f"searched for <Split_Set>/<name>.txt in:\n    {src / 'annotations'}" in err
    assert str(src / "annotations" / "EXPR_Recognition_Challenge") in err
    assert "found there: EXPR_Recognition_Challenge, notes" in err
    assert "annotations/EXPR_Recognition_Challenge/Train_Set/<video>.txt" in err and "--annotations DIR" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    write_annotation(src / "annotations" / "EXPR_Recognition_Challenge" / "a.txt", labels_for(8))
    assert cli_main(["pack", str(src), str(out)]) == 2
    assert "holds .txt files directly; they belong in a split folder" in capsys.readouterr().err


def test_crop_folder_without_annotation_is_named_with_what_was_expected(tmp_path: Path):
    src = release_tree(tmp_path / "src")
    (src / "cropped_aligned" / "stray_left").mkdir(parents=True)
    (src / "cropped_aligned" / "a").mkdir()
    reasons = {Path(s.path).name: s.reason for s in discover(src).skipped}
    assert set(reasons) == {"stray_left"}
    assert "no annotation file stray_left.txt in" in reasons["stray_left"]
    assert "EXPR_Recognition_Challenge/Train_Set" in reasons["stray_left"]
    listing = tmp_path / "test_set.txt"
    listing.write_text("stray_left\n")
    assert not discover(src, ["train"], test_list=listing).skipped  # a listed track's crops are no strays


def test_test_list_packs_every_listed_track_unlabelled_and_reports_unknown_names(tmp_path: Path, ray_local):
    src = release_tree(tmp_path / "src")
    write_video(src / "videos" / "new_vids" / "duo.mp4", 18, audio_rate=None)
    listing = tmp_path / "test_set.txt"
    listing.write_text("t\nduo_left\nduo_right\n\nnobody\n")
    summary = pack_corpus(src, tmp_path / "out", test_list=listing, **PACK)
    manifest = read_manifest(tmp_path / "out" / "test" / "manifest.json")
    assert manifest.tracks == ("duo_left", "duo_right", "t")
    assert manifest.frames == 24 + 2 * 18 and manifest.label_histogram[-1] == manifest.frames
    assert manifest.extra["test_list"] == {"tracks": ["duo_left", "duo_right", "nobody", "t"], "missing": ["nobody"]}
    (skip,) = [s for s in manifest.skipped if "nobody" in s["reason"]]
    assert skip["path"] == f"{listing}:5" and "no video named 'nobody'" in skip["reason"]
    assert f"{listing}:5" in str(summary) and "no face" in str(summary)
    assert set(summary.splits) == {"train", "validation", "test"}


def test_missing_crops_are_stored_as_no_face_and_counted_per_track_and_split(tmp_path: Path, ray_local):
    from PIL import Image

    src = release_tree(tmp_path / "src")
    crops = src / "cropped_aligned" / "a"
    crops.mkdir(parents=True)
    gap = set(range(5, 15))
    for i in sorted(set(range(20)) - gap):
        Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(crops / f"{i + 1:05d}.jpg")
    pack_corpus(src, tmp_path / "out", splits=["train"], **PACK)
    manifest = read_manifest(tmp_path / "out" / "train" / "manifest.json")
    assert manifest.extra["faceless_frames"] == {"total": 10, "tracks": {"a": 10}}
    face = []
    for sample in wds.WebDataset(str(tmp_path / "out/train/shard-000000.tar"), shardshuffle=False):
        face += json.loads(sample["json"])["face"]
    assert face == [0 if i in gap else 1 for i in range(20)]


@pytest.fixture()
def untrained_checkpoint(tmp_path: Path) -> Path:
    import torch

    from mmexpr.config import load_job
    from mmexpr.model.model import build_model

    repo = Path(__file__).resolve().parents[1]
    job = load_job(repo / "jobs" / "demo.yaml", [f"data.shards={tmp_path / 'none'}"])
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    torch.save({"state_dict": build_model(job.model).state_dict(), "config": job.to_dict()}, path)
    return path


def test_predict_test_split_writes_every_listed_track_and_the_archive(tmp_path: Path, ray_local, untrained_checkpoint, capsys):
    import zipfile

    from mmexpr.labels import SUBMISSION_HEADER, read_submission

    src = release_tree(tmp_path / "src")
    write_video(src / "videos" / "new_vids" / "duo.mp4", 18, audio_rate=None)
    listing = tmp_path / "test_set.txt"
    listing.write_text("t\nduo_left\nduo_right\nnobody_left\n")
    pack_corpus(src, tmp_path / "shards", splits=["test"], test_list=listing, **PACK)
    out = tmp_path / "pred"
    code = cli_main(["predict", "--checkpoint", str(untrained_checkpoint), "--shards", str(tmp_path / "shards"),
                     "--split", "test", "--out", str(out), "--zip"])
    printed = capsys.readouterr().out
    assert code == 0
    frames = {"t": 24, "duo_left": 18, "duo_right": 18}
    for track, n in frames.items():
        assert (out / "expr" / f"{track}.txt").read_text().splitlines()[0] == SUBMISSION_HEADER
        name, preds = read_submission(out / "expr" / f"{track}.txt")
        assert name == track and len(preds) == n
    with zipfile.ZipFile(out / "expr" / "submission.zip") as z:
        assert sorted(z.namelist()) == sorted(f"{t}.txt" for t in frames)
        assert z.read("t.txt") == (out / "expr" / "t.txt").read_bytes()
    assert "nobody_left: listed in the test list but not packed" in printed and "submission.zip" in printed
    assert json.loads((out / "predict.json").read_text())["not_predicted"][0].startswith("nobody_left")


def test_loader_batches_carry_the_face_flag_of_each_frame(tmp_path: Path, ray_local):
    from PIL import Image

    from mmexpr.config import DataConfig
    from mmexpr.data.loader import make_loader

    src = release_tree(tmp_path / "src")
    crops = src / "cropped_aligned" / "a"
    crops.mkdir(parents=True)
    for i in range(20):
        if i % 4:
            Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(crops / f"{i + 1:05d}.jpg")
    pack_corpus(src, tmp_path / "out", splits=["train"], **PACK)
    data = DataConfig(shards=str(tmp_path / "out"), train_split="train", window=8, stride=8, batch_size=4,
                      image_size=32, loader_workers=0)
    loader = make_loader(str(tmp_path / "out"), "train", data, train=False)
    seen = {}
    for batch in loader:
        for j in range(len(batch)):
            for t in range(8):
                if batch.mask[j, t]:
                    seen[int(batch.start[j]) + t] = (bool(batch.face[j, t]), int(batch.video[j, t].float().mean()))
    assert sorted(seen) == list(range(20))
    for frame, (face, level) in seen.items():
        assert face == bool(frame % 4)
        assert (level < 30) == (not face)  # no face: a black frame


def test_real_release_corpus_packs_and_predicts_the_test_list(shared_data: Path, tmp_path: Path, ray_local,
                                                              untrained_checkpoint, capsys):
    """FER2013 faces (with gaps in cropped_aligned/) and RAVDESS voices in the ABAW release layout.
    The two modalities were not recorded together: this checks the plumbing on real pixels and
    real speech, not audio-visual learning."""
    from mmexpr.labels import read_submission
    from mmexpr.synth.release import ReleaseSpec, write_release

    corpus = write_release(tmp_path / "affwild2", ReleaseSpec(train=2, validation=1, test=2), shared_data)
    assert sorted(p.name for p in (corpus.root / "videos").iterdir()) == ["batch1", "batch2", "new_vids"]
    listing = corpus.test_list.read_text().split()
    assert len(listing) == 3 and listing[-2].endswith("_left") and listing[-1].endswith("_right")
    assert cli_main(["pack", str(corpus.root), str(tmp_path / "shards"), "--test-list", str(corpus.test_list),
                     "--chunk-frames", "32", "--face-size", "32", "--shard-mb", "1"]) == 0
    for split in ("train", "validation", "test"):
        manifest = read_manifest(tmp_path / "shards" / split / "manifest.json")
        assert manifest.extra["faceless_frames"]["total"] == corpus.faceless(split) > 0
        for track, count in manifest.extra["faceless_frames"]["tracks"].items():
            assert count == corpus.tracks[track]["faceless"]
    out = tmp_path / "submission"
    assert cli_main(["predict", "--checkpoint", str(untrained_checkpoint), "--shards", str(tmp_path / "shards"),
                     "--split", "test", "--out", str(out), "--zip"]) == 0
    capsys.readouterr()
    for track in listing:
        name, preds = read_submission(out / "expr" / f"{track}.txt")
        assert name == track and len(preds) == corpus.tracks[track]["frames"]
    assert (out / "expr" / "submission.zip").is_file()


def test_predict_on_raw_videos_finds_tracks_by_the_same_layout_rules(tmp_path: Path):
    from mmexpr.data.sources import video_tracks

    src = release_tree(tmp_path / "src")
    job = video_tracks(src, "b", src / "videos" / "batch2" / "b.avi", 20)
    assert [t.name for t in job.tracks] == ["b"]
    assert job.tracks[0].annotation.endswith("EXPR_Recognition_Challenge/Validation_Set/b.txt")
    assert (job.tracks[0].labels == labels_for(20, seed=1)).all()
