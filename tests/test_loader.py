"""The window loader over packed demo shards: batch format, exact coverage across ranks and
DataLoader workers, resume from a saved position, corrupt members, manifest errors."""

from __future__ import annotations

import io
import json
import math
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from media import write_video

from mmexpr.config import DataConfig
from mmexpr.data.loader import make_loader, train_window_count
from mmexpr.data.manifest import ManifestError, read_manifest
from mmexpr.labels import fit_to_frames, read_annotation

CHUNK = 32  # demo_shards are packed with chunk_frames=32, face_size=64


def _data(**kw) -> DataConfig:
    base = dict(window=16, stride=16, image_size=64, batch_size=2, loader_workers=0, shuffle_buffer=4)
    return DataConfig(**{**base, **kw})


def _truth(corpus: Path) -> dict[str, np.ndarray]:
    """Annotated labels per track, fitted to the video's frame count."""
    import decord

    out = {}
    for ann in (corpus / "annotations").glob("*/*.txt"):
        video = ann.stem.removesuffix("_left").removesuffix("_right")
        frames = len(decord.VideoReader(str(corpus / "videos" / f"{video}.mp4")))
        out[ann.stem] = fit_to_frames(read_annotation(ann), frames).labels
    return out


def test_batches_have_the_shapes_and_types_of_the_contract(demo_shards: Path):
    data = _data(batch_size=3, image_size=48)
    batch = next(iter(make_loader(str(demo_shards), "train", data, train=True)))
    assert batch.video.dtype == torch.uint8 and batch.video.shape == (3, 16, 3, 48, 48)
    assert batch.audio.dtype == torch.float32 and batch.audio.shape == (3, math.ceil(16 * 16000 / 24))
    assert batch.audio_len.dtype == torch.int64 and batch.labels.dtype == torch.int64
    assert batch.mask.dtype == torch.bool and batch.labels.shape == batch.mask.shape == (3, 16)
    assert batch.fps.dtype == torch.float32 and batch.start.dtype == torch.int64
    assert len(batch.track) == 3
    for b in range(3):
        real = int(batch.mask[b].sum())
        assert abs(int(batch.audio_len[b]) - real * 16000 / float(batch.fps[b])) <= 1  # sample-aligned
        assert float(batch.audio[b, int(batch.audio_len[b]) :].abs().sum()) == 0.0
        assert ((batch.labels[b] >= -1) & (batch.labels[b] < 8)).all()


@pytest.mark.parametrize("train", [True, False])
def test_a_loader_for_a_model_without_video_skips_decoding_frames_and_keeps_the_rest(demo_shards: Path, train):
    """video=False (an audio-only model): the same windows, labels and audio as with video, and
    black frames of the same shape instead of decoded ones. Face augmentation is off without
    frames, so its voices draw what a loader without face augmentation draws."""
    data = _data(batch_size=3, augment_voices=True, audio_context_s=1.0)
    with_video = _take(make_loader(str(demo_shards), "train", data, train=train), 3)
    faces_on = data.model_copy(update={"augment_faces": True})
    without = _take(make_loader(str(demo_shards), "train", faces_on, train=train, video=False), 3)
    for a, b in zip(with_video, without, strict=True):
        assert b.video.shape == a.video.shape and int(b.video.sum()) == 0
        assert int(a.video.float().sum()) > 0
        for key in ("labels", "mask", "audio", "audio_len", "audio_offset", "start", "fps", "face"):
            x, y = getattr(a, key), getattr(b, key)
            assert (x is None and y is None) or torch.equal(x, y), key
        assert a.track == b.track


def test_evaluation_covers_every_frame_once_across_two_ranks_and_two_workers(demo_corpus: Path, demo_shards: Path):
    truth = _truth(demo_corpus)
    val = {t: v for t, v in truth.items() if t in read_manifest(demo_shards / "validation" / "manifest.json").tracks}
    for stride in (16, 6):  # non-overlapping windows, and overlapping ones with context frames
        labelled: Counter = Counter()
        shown: Counter = Counter()
        for rank in range(2):
            loader = make_loader(str(demo_shards), "validation", _data(stride=stride, batch_size=3, loader_workers=2),
                                 train=False, rank=rank, world_size=2)
            batches = list(loader)
            assert len(batches) == loader.steps_per_epoch  # equal on every rank
            for batch in batches:
                for b, track in enumerate(batch.track):
                    for t in np.flatnonzero(batch.mask[b].numpy()):
                        frame = int(batch.start[b]) + int(t)
                        label = int(batch.labels[b, t])
                        shown[track, frame] += 1
                        if label != -1:
                            assert label == val[track][frame]
                            labelled[track, frame] += 1
        for track, labels in val.items():
            for frame, label in enumerate(labels):
                assert shown[track, frame] >= 1
                assert labelled[track, frame] == (1 if label != -1 else 0), (stride, track, frame)
                if stride == 16:
                    assert shown[track, frame] == 1


def test_training_two_ranks_two_workers_see_each_sample_once_per_epoch(demo_corpus: Path, demo_shards: Path):
    """Batch size 1 so each batch is one window of a known epoch; a sample's windows all
    come from one rank, and that rank yields exactly its planned number of windows."""
    truth = _truth(demo_corpus)
    manifest = read_manifest(demo_shards / "train" / "manifest.json")
    expected = {}
    for shard in manifest.shards:
        for key, frames in zip(shard.keys, shard.sample_frames, strict=True):
            expected[key] = train_window_count(frames, 16)
    per_rank: list[Counter] = []
    for rank in range(2):
        loader = make_loader(str(demo_shards), "train", _data(batch_size=1, loader_workers=2),
                             train=True, rank=rank, world_size=2, seed=3)
        windows: Counter = Counter()
        for i, batch in enumerate(loader):
            if loader.epoch == 0:
                track, start = batch.track[0], int(batch.start[0])
                first = start // CHUNK * CHUNK
                windows[f"{track}_{first:06d}"] += 1
                n = int(batch.mask[0].sum())
                assert batch.labels[0, :n].tolist() == truth[track][start : start + n].tolist()
            if i > loader.windows_per_epoch:  # both workers are past epoch 0 by now
                break
        per_rank.append(windows)
    assert not set(per_rank[0]) & set(per_rank[1])
    assert per_rank[0] + per_rank[1] == Counter(expected)


def _take(loader, n: int) -> list[dict]:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def test_restored_loader_continues_with_the_batches_not_yet_seen(demo_shards: Path):
    data = _data(batch_size=2, loader_workers=2)
    first = make_loader(str(demo_shards), "train", data, train=True, seed=1)
    seen = _take(first, 7)
    state = first.state_dict()
    rest = _take(first, 6)  # what an uninterrupted run sees next
    resumed = make_loader(str(demo_shards), "train", data, train=True, seed=1, state=state)
    again = _take(resumed, 6)
    for a, b in zip(rest, again, strict=True):
        assert a.track == b.track
        for key in ("video", "audio", "labels", "mask", "start", "audio_len"):
            assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert state["batches"] == 7 and resumed.state_dict()["batches"] == 13
    # a fresh loader with the same seed repeats the start; another seed does not
    assert [b.start.tolist() for b in _take(make_loader(str(demo_shards), "train", data, train=True, seed=1), 7)] == [
        b.start.tolist() for b in seen
    ]
    other = _take(make_loader(str(demo_shards), "train", data, train=True, seed=2), 7)
    assert [b.start.tolist() for b in other] != [b.start.tolist() for b in seen]


def _copy_split(src: Path, dst: Path) -> Path:
    shutil.copytree(src / "validation", dst / "validation")
    return dst


def test_corrupt_member_is_skipped_and_counted(demo_shards: Path, tmp_path: Path):
    root = _copy_split(demo_shards, tmp_path / "shards")
    shard = root / "validation" / read_manifest(root / "validation" / "manifest.json").shards[0].url
    members = []
    with tarfile.open(shard) as tar:
        for info in tar:
            members.append((info, tar.extractfile(info).read()))
    victim = members[3][0].name.split(".")[0]
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            if info.name == f"{victim}.mp4":
                data = b"\x00not an mp4" * 50
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = _data(batch_size=4, verify_shards=False)  # the decode failure itself, not the checksum
    loader = make_loader(str(root), "validation", data, train=False)
    batches = list(loader)
    assert loader.skipped == 1 and len(batches) == loader.steps_per_epoch
    frames = sum(int(b.mask.sum()) for b in batches)
    assert frames == loader.manifest.frames - _frames_of(loader, victim)  # only the victim is lost


def _frames_of(loader, key: str) -> int:
    for shard in loader.manifest.shards:
        if key in shard.keys:
            return shard.sample_frames[shard.keys.index(key)]
    raise KeyError(key)


def test_truncated_shard_loses_only_its_tail(demo_shards: Path, tmp_path: Path):
    root = _copy_split(demo_shards, tmp_path / "shards")
    manifest = read_manifest(root / "validation" / "manifest.json")
    shard = root / "validation" / manifest.shards[0].url
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    loader = make_loader(str(root), "validation", _data(batch_size=4, verify_shards=False), train=False)
    frames = sum(int(b.mask.sum()) for b in loader)
    assert 0 < loader.skipped < manifest.samples
    assert 0 < frames < manifest.frames
    tally = loader.tally()
    assert tally.read == manifest.samples and tally.skipped == loader.skipped
    assert tally.shards == {str(shard): loader.skipped} and "shard read failed" in tally.reasons[str(shard)]


def _flip_inside_member(shard: Path, ext: str, count: int = 200) -> None:
    """Flip `count` bytes in the data of the first `.ext` member, leaving the tar intact."""
    with tarfile.open(shard) as tar:
        info = next(i for i in tar if i.name.endswith(f".{ext}"))
    data = bytearray(shard.read_bytes())
    start = info.offset_data + 100
    data[start : start + count] = bytes(b ^ 0x5A for b in data[start : start + count])
    shard.write_bytes(bytes(data))


def test_flipped_bytes_in_a_wav_fail_the_shard_checksum_and_its_samples_are_counted(demo_shards: Path, tmp_path: Path):
    root = _copy_split(demo_shards, tmp_path / "shards")
    manifest = read_manifest(root / "validation" / "manifest.json")
    shard = root / "validation" / manifest.shards[0].url
    _flip_inside_member(shard, "wav")
    unchecked = make_loader(str(root), "validation", _data(batch_size=4, verify_shards=False), train=False)
    assert sum(int(b.mask.sum()) for b in unchecked) == manifest.frames and unchecked.skipped == 0  # silent
    loader = make_loader(str(root), "validation", _data(batch_size=4), train=False)
    frames = sum(int(b.mask.sum()) for b in loader)
    tally = loader.tally()
    assert tally.skipped == manifest.shards[0].samples and tally.read == manifest.samples
    assert "sha256" in tally.reasons[str(shard)] and "differs from the manifest" in tally.reasons[str(shard)]
    assert frames == manifest.frames - manifest.shards[0].frames


def test_data_loss_stops_above_the_limit_but_not_on_one_early_bad_sample():
    from mmexpr.data.loader import SkipTally
    from mmexpr.train import data_loss

    early = SkipTally(read=8)
    early.skip("shards/train/shard-000003.tar", "mp4 does not decode")
    assert data_loss.problem(early, "train", 1000, 0.01) == ""  # 1 of the split's 1000 samples
    third = SkipTally(read=120)
    for _ in range(40):
        third.skip("shards/train/shard-000001.tar", "shard read failed: unexpected end of data")
    found = data_loss.problem(third, "train", 120, 0.01)
    assert "data.max_skipped=0.01" in found and "shard-000001.tar (40 skipped: shard read failed" in found
    nothing = SkipTally(read=52)
    for _ in range(52):
        nothing.skip("shards/train/shard-000000.tar", "mp4 does not decode")
    assert data_loss.problem(nothing, "train", 52, 1.0).startswith("no sample could be used")


def test_manifest_problems_name_the_file(tmp_path: Path, demo_shards: Path):
    with pytest.raises(ManifestError, match=r"missing/train/manifest.json: manifest not found"):
        make_loader(str(tmp_path / "missing"), "train", _data(), train=True)
    bad = tmp_path / "bad" / "train"
    bad.mkdir(parents=True)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="bad/train/manifest.json: not valid JSON"):
        read_manifest(bad / "manifest.json")
    tree = json.loads((demo_shards / "train" / "manifest.json").read_text())
    tree["version"] = 99
    (bad / "manifest.json").write_text(json.dumps(tree))
    with pytest.raises(ManifestError, match="format version 99.*re-pack"):
        read_manifest(bad / "manifest.json")
    with pytest.raises(ManifestError, match="fewer than ranks x loader workers"):
        make_loader(str(demo_shards), "train", _data(loader_workers=8), train=True, world_size=8)


def test_shards_open_through_urls_as_well_as_paths(demo_shards: Path, tmp_path: Path):
    """file:// goes through fsspec (manifest) and webdataset's gopen (shards); so does pipe:."""
    data = _data(batch_size=4)
    by_path = list(make_loader(str(demo_shards), "validation", data, train=False))
    by_url = list(make_loader(f"file://{demo_shards}", "validation", data, train=False))
    piped = tmp_path / "piped" / "validation"  # a manifest whose shard URLs are commands
    piped.mkdir(parents=True)
    tree = json.loads((demo_shards / "validation" / "manifest.json").read_text())
    for shard in tree["shards"]:
        shard["url"] = f"pipe:cat {demo_shards / 'validation' / shard['url']}"
    (piped / "manifest.json").write_text(json.dumps(tree))
    by_pipe = list(make_loader(str(tmp_path / "piped"), "validation", data, train=False))
    assert len(by_url) == len(by_pipe) == len(by_path)
    for a, b, c in zip(by_path, by_url, by_pipe, strict=True):
        assert torch.equal(a.video, b.video) and torch.equal(a.video, c.video)
        assert a.track == b.track == c.track


def test_state_from_another_layout_restarts_its_epoch(demo_shards: Path):
    data = _data(batch_size=2)
    first = make_loader(str(demo_shards), "train", data, train=True, seed=1)
    _take(first, 3)
    state = first.state_dict()
    with pytest.warns(UserWarning, match="another layout"):
        other = make_loader(str(demo_shards), "train", data, train=True, seed=1, rank=1, world_size=2, state=state)
    assert other.state_dict()["batches"] == 0 and other.epoch == state["epoch"]
    assert len(_take(other, 2)) == 2


@pytest.mark.parametrize("size", [(112, 112), (54, 54), (96, 64)])
def test_decoded_frames_equal_ffmpegs_own_planes_converted_whatever_the_row_padding(tmp_path: Path, size):
    """The decoder copies each plane past FFmpeg's padded line size; the frames must be exactly
    those of PyAV's own plane array, converted by the same kernel (54: chroma planes 27 wide;
    96 x 64: width differs from height)."""
    import av
    import cv2

    from mmexpr.data.decode import decode_video

    rng = np.random.default_rng(0)
    path = write_video(tmp_path / "v.mp4", 12, size=size, audio_rate=None,
                       pixels=lambda i, w, h: rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    data = path.read_bytes()
    with av.open(io.BytesIO(data)) as container:
        expected = np.stack([cv2.cvtColor(f.to_ndarray(), cv2.COLOR_YUV2RGB_I420) for f in container.decode(video=0)])
    frames = decode_video(data)
    assert frames.shape == (12, size[1], size[0], 3)
    assert np.array_equal(frames, expected)
