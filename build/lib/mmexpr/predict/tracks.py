"""Whole tracks for prediction: every frame and the audio of one annotated person, in order.

Prediction needs windows that cross chunk boundaries (so every frame has context on both
sides), so the chunks of a track are put back together here. Two sources:

- shards (`TrackSource` over a manifest): the packed chunks of each track, decoded exactly
  as the training loader decodes them (`loader.decode_sample`);
- raw videos (`VideoTrackSource`): each video goes through the pack stage's own
  `encode.pack_video` (same face crops, same H.264 round trip, same audio resampling), so a
  model sees at prediction time precisely the kind of input it was trained on; there is no
  second decoder to drift from the first.

Both are map-style datasets, so a DataLoader decodes several tracks in parallel worker
processes while the main process runs the model.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from mmexpr.data.batch import frame_sample
from mmexpr.data.encode import PackSettings, safe_track, track_of_key
from mmexpr.data.loader import Decoded, decode_sample
from mmexpr.data.manifest import MANIFEST, Manifest, read_manifest
from mmexpr.errors import UserError


class PredictInputError(UserError, ValueError):
    """Nothing to predict on, or an input folder in the wrong shape; the message says which."""


@dataclass
class Track:
    """One track, assembled: frames uint8 [N, H, W, 3], audio float32 on the track's clock."""

    name: str
    frames: np.ndarray
    audio: np.ndarray
    has_audio: bool
    fps: float
    labels: np.ndarray  # int64 [N], -1 where unknown (always -1 for raw videos)
    problems: list[str]
    chunk_starts: np.ndarray  # first frame of each packed chunk, ascending

    def audio_span(self, start: int, end: int, sample_rate: int) -> tuple[int, int]:
        """Audio samples of frames [start, end), counted from the chunk holding `start` exactly
        as the training loader counts them (round per chunk), so windows see identical audio."""
        k = int(np.searchsorted(self.chunk_starts, start, side="right")) - 1
        first = int(self.chunk_starts[max(k, 0)])
        base = frame_sample(first, self.fps, sample_rate)
        return (base + frame_sample(start - first, self.fps, sample_rate),
                base + frame_sample(end - first, self.fps, sample_rate))


def assemble(name: str, chunks: list[Decoded | None], sample_rate: int) -> Track:
    """Chunks (in frame order) -> one Track; audio of chunk k lands at round(first*rate/fps).

    Placing each chunk at its own offset, instead of concatenating, keeps frame f and audio
    sample round(f*rate/fps) the same instant along the whole track, as pack wrote them.
    """
    good = [c for c in chunks if c is not None]
    if not good:
        raise PredictInputError(f"track {name}: none of its chunks could be read")
    fps = float(good[0].meta["fps"])
    total = max(int(c.meta["first_frame"]) + len(c.meta["labels"]) for c in good)
    h, w = good[0].frames.shape[1:3]
    frames = np.zeros((total, h, w, 3), np.uint8)
    labels = np.full(total, -1, np.int64)
    audio = np.zeros(frame_sample(total, fps, sample_rate), np.float32)
    has_audio = False
    for c in good:
        first, n = int(c.meta["first_frame"]), len(c.meta["labels"])
        frames[first : first + n] = c.frames[:n]
        labels[first : first + n] = c.meta["labels"]
        if c.has_audio and len(c.audio):
            has_audio = True
            a0 = frame_sample(first, fps, sample_rate)
            piece = c.audio[: max(0, len(audio) - a0)]
            audio[a0 : a0 + len(piece)] = piece
    problems = [f"{name}: {len(chunks) - len(good)} chunk(s) unreadable, their frames predicted from neighbours"] if len(good) < len(chunks) else []
    starts = np.asarray(sorted(int(c.meta["first_frame"]) for c in good), np.int64)
    return Track(name, frames, audio, has_audio, fps, labels, problems, starts)


def split_dirs(shards: str | Path, splits: list[str] | None) -> list[Path]:
    """Split folders to read: SHARDS itself if it holds a manifest, else its <split>/ folders."""
    root = Path(shards)
    if (root / MANIFEST).is_file():
        return [root]
    if not root.is_dir():
        raise PredictInputError(f"{root}: shards folder not found")
    found = sorted(p for p in root.iterdir() if (p / MANIFEST).is_file())
    if splits:
        missing = sorted(set(splits) - {p.name for p in found})
        if missing:
            raise PredictInputError(f"{root}: no packed split(s) {missing}; found {[p.name for p in found]}")
        found = [p for p in found if p.name in splits]
    if not found:
        raise PredictInputError(f"{root}: no <split>/{MANIFEST} below; pack the corpus first (mmexpr pack)")
    return found


def read_members(url: str, keys: set[str]) -> dict[str, dict]:
    """The samples named `keys` from one shard (extension -> bytes), streaming it once."""
    import fsspec
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    found: dict[str, dict] = {}
    with fsspec.open(url, "rb") as stream:
        files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
        for sample in group_by_keys(files):
            if sample["__key__"] in keys:
                found[sample["__key__"]] = sample
                if len(found) == len(keys):
                    break
    return found


class ShardTracks(Dataset):
    """Tracks of one or more packed splits; item i decodes every chunk of track i."""

    def __init__(self, shards: str | Path, splits: list[str] | None, image_size: int) -> None:
        self.image_size = image_size
        self.manifests: list[Manifest] = [read_manifest(d / MANIFEST) for d in split_dirs(shards, splits)]
        # track -> [(manifest index, shard url, sample key, frames)] in frame order
        refs: dict[str, list[tuple[int, str, str, int]]] = defaultdict(list)
        for m_index, manifest in enumerate(self.manifests):
            safe = {safe_track(t): t for t in manifest.tracks}
            for shard in manifest.shards:
                for key, frames in zip(shard.keys, shard.sample_frames, strict=True):
                    track = track_of_key(key, safe)
                    refs[track].append((m_index, manifest.url(shard), key, frames))
        self.names = sorted(refs)
        self.refs = refs

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> list[Track]:
        name = self.names[i]
        refs = self.refs[name]
        problems: list[str] = []
        raw: dict[str, dict] = {}
        for url in dict.fromkeys(r[1] for r in refs):
            wanted = {r[2] for r in refs if r[1] == url}
            try:
                raw.update(read_members(url, wanted))
            except Exception as exc:  # unreadable or truncated shard: keep what was read
                problems.append(f"{url}: {exc}")
        chunks: list[Decoded | None] = []
        for m_index, _, key, _ in refs:
            sample = raw.get(key)
            if sample is None:
                problems.append(f"{key}: not readable from its shard")
                chunks.append(None)
                continue
            try:
                chunks.append(decode_sample(sample, self.image_size, self.manifests[m_index].sample_rate))
            except Exception as exc:  # a corrupt member: its frames get neighbours' labels
                problems.append(f"{key}: {exc}")
                chunks.append(None)
        if all(c is None for c in chunks):
            raise PredictInputError(f"track {name}: no chunk could be read: " + "; ".join(problems[:3]))
        track = assemble(name, chunks, self.manifests[0].sample_rate)
        track.problems += problems
        return [track]


class VideoTracks(Dataset):
    """Raw videos; item i runs pack's own per-video code in this process, then assembles tracks.

    Tracks per video come from annotation files under DIR/annotations (any split; labels are
    kept so predictions can be scored), else from face-crop folders DIR/cropped_aligned/
    <video>_left|_right, else one track named after the video.
    """

    def __init__(
        self,
        folder: str | Path,
        image_size: int,
        settings: PackSettings | None = None,
        names: list[str] | None = None,
    ) -> None:
        from mmexpr.data.sources import index_videos

        root = Path(folder)
        if not root.is_dir():
            raise PredictInputError(f"{root}: videos folder not found")
        video_root = root / "videos" if (root / "videos").is_dir() else root
        self.root = root
        self.videos, _ = index_videos(video_root)
        if not self.videos:
            raise PredictInputError(f"{video_root}: no video files (.mp4, .avi, .mkv, .mov, .webm)")
        if names is not None:
            unknown = sorted(set(names) - set(self.videos))
            if unknown:
                raise PredictInputError(f"{video_root}: no video(s) named {unknown}")
        self.names = sorted(names if names is not None else self.videos)
        self.image_size = image_size
        self.settings = settings or PackSettings()

    def __len__(self) -> int:
        return len(self.names)

    def _job(self, video: str):
        from mmexpr.data.encode import source_frames
        from mmexpr.data.sources import video_tracks

        path = self.videos[video]
        frames = sum(1 for _ in source_frames(str(path), decode=False))
        return video_tracks(self.root, video, path, frames)

    def __getitem__(self, i: int) -> list[Track]:
        from mmexpr.data.encode import pack_video

        video = self.names[i]
        result = pack_video(self._job(video), self.settings)
        if not result.samples:
            reasons = "; ".join(f"{p}: {r}" for p, r in result.skipped) or "no frames"
            raise PredictInputError(f"{self.videos[video]}: cannot be predicted ({reasons})")
        by_track: dict[str, list[Decoded | None]] = defaultdict(list)
        for sample in result.samples:
            raw = {"__key__": sample.key, **sample.members}
            decoded = decode_sample(raw, self.image_size, self.settings.sample_rate)
            by_track[decoded.meta["track"]].append(decoded)
        out = []
        for name, chunks in sorted(by_track.items()):
            track = assemble(name, chunks, self.settings.sample_rate)
            track.problems += [f"{p}: {r}" for p, r in result.skipped]
            out.append(track)
        return out
