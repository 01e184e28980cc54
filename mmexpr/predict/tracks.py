"""Tracks for prediction, streamed chunk by chunk: every frame and the audio of one person.

Prediction needs windows that cross chunk boundaries (so every frame has context on both
sides), yet an Aff-Wild2 video of 30 minutes at 224 px is 8 GB of decoded frames. So a
track is never held whole: its chunks arrive in frame order as `Piece`s, and a
`TrackBuffer` keeps only the frames the windows still to run need (about one window plus
one chunk), while the per-frame bookkeeping (labels, face flags, audio) spans the track.
Two sources of pieces:

- shards (`ShardTracks` over a manifest): the packed chunks of each track, decoded exactly
  as the training loader decodes them (`loader.decode_sample`);
- raw videos (`VideoTracks`): each video goes through the pack stage's own
  `encode.pack_video` (same face crops, from the same face tracker where a track has no
  `cropped_aligned/` folder, same H.264 round trip, same audio resampling), so a
  model sees at prediction time precisely the kind of input it was trained on; there is no
  second decoder to drift from the first.

Both are iterable datasets: DataLoader worker w decodes the tracks i with i % workers == w,
in parallel, while the main process runs the model on the windows that are complete.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import numpy as np
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_iterator

from mmexpr.data.batch import frame_sample
from mmexpr.data.encode import PackSettings, pack_video, safe_track, track_of_key
from mmexpr.data.loader import Decoded, decode_sample, sample_face, sample_tasks
from mmexpr.data.manifest import MANIFEST, Manifest, read_manifest
from mmexpr.data.sources import faces_mode, index_videos, video_tracks
from mmexpr.errors import UserError
from mmexpr.faces.video import source_frames
from mmexpr.labels import NUM_AUS


class PredictInputError(UserError, ValueError):
    """Nothing to predict on, or an input folder in the wrong shape; the message says which."""


@dataclass
class Piece:
    """One chunk of one track, in frame order; `readable` False: a chunk that could not be
    read (zero frames, no face, no audio), whose frames take their neighbours' logits."""

    track: str
    first: int
    frames: np.ndarray  # uint8 [n, H, W, 3]
    labels: np.ndarray  # int64 [n], -1 unknown
    face: np.ndarray  # bool [n]
    audio: np.ndarray  # float32, the chunk's samples from frame_sample(first)
    has_audio: bool
    fps: float
    total: int  # frames of the whole track
    last: bool
    readable: bool = True
    problems: list[str] = field(default_factory=list)
    va: np.ndarray | None = None  # float32 [n, 2], NaN unknown; None: no VA labels
    au: np.ndarray | None = None  # int64 [n, 12], -1 unknown; None: no AU labels


def piece_of(name: str, chunk: Decoded, total: int, last: bool) -> Piece:
    n = len(chunk.meta["labels"])
    face = sample_face(chunk.meta, 0, n)
    va, au = sample_tasks(chunk.meta, 0, n)
    return Piece(name, int(chunk.meta["first_frame"]), chunk.frames[:n], np.asarray(chunk.meta["labels"], np.int64),
                 np.ones(n, bool) if face is None else face, chunk.audio, chunk.has_audio and len(chunk.audio) > 0,
                 float(chunk.meta["fps"]), total, last, va=va, au=au)


def unreadable_piece(name: str, first: int, frames: int, size: int, fps: float, total: int, last: bool,
                     problem: str) -> Piece:
    return Piece(name, first, np.zeros((frames, size, size, 3), np.uint8), np.full(frames, -1, np.int64),
                 np.zeros(frames, bool), np.zeros(0, np.float32), False, fps, total, last, False, [problem])


class TrackBuffer:
    """One track as its pieces arrive: all per-frame flags and the audio, but only the frames
    from `offset` on (`drop_before` forgets the rest)."""

    def __init__(self, first: Piece, sample_rate: int) -> None:
        self.name = first.track
        self.fps = first.fps
        self.total = first.total
        self.sample_rate = sample_rate
        self.labels = np.full(self.total, -1, np.int64)
        self.va: np.ndarray | None = None  # float32 [total, 2] once a piece has VA labels
        self.au: np.ndarray | None = None  # int64 [total, 12] once a piece has AU labels
        self.face = np.ones(self.total, bool)
        self.readable = np.ones(self.total, bool)
        self.audio = np.zeros(frame_sample(self.total, self.fps, sample_rate), np.float32)
        self.has_audio = False
        self.chunk_starts: list[int] = []
        self.frames = np.zeros((0, *first.frames.shape[1:]), np.uint8)
        self.offset = 0  # track frame of self.frames[0]
        self.received = 0  # frames [0, received) have arrived
        self.done = False
        self.problems: list[str] = []
        self.unreadable = 0

    def add(self, piece: Piece) -> None:
        first, n = piece.first, len(piece.frames)
        if first != self.received:
            raise PredictInputError(f"track {self.name}: chunk at frame {first} arrived after frame {self.received}")
        self.frames = np.concatenate([self.frames, piece.frames]) if len(self.frames) else piece.frames
        self.labels[first : first + n] = piece.labels
        if piece.va is not None:
            if self.va is None:
                self.va = np.full((self.total, 2), np.nan, np.float32)
            self.va[first : first + n] = piece.va
        if piece.au is not None:
            if self.au is None:
                self.au = np.full((self.total, NUM_AUS), -1, np.int64)
            self.au[first : first + n] = piece.au
        self.face[first : first + n] = piece.face
        self.readable[first : first + n] = piece.readable
        self.unreadable += 0 if piece.readable else 1
        self.chunk_starts.append(first)
        if piece.has_audio:
            self.has_audio = True
            a0 = frame_sample(first, self.fps, self.sample_rate)
            part = piece.audio[: max(0, len(self.audio) - a0)]
            self.audio[a0 : a0 + len(part)] = part
        self.received = first + n
        self.done = piece.last
        self.problems += piece.problems

    def task_labels(self, task: str) -> np.ndarray | None:
        """The track's labels of `task` when at least one frame is known, else None."""
        if task == "expr":
            return self.labels if (self.labels >= 0).any() else None
        values = getattr(self, task)
        if values is None:
            return None
        known = ~np.isnan(values) if task == "va" else values >= 0
        return values if known.any() else None

    def window(self, start: int, end: int) -> np.ndarray:
        return self.frames[start - self.offset : end - self.offset]

    def drop_before(self, frame: int) -> None:
        keep = max(0, frame - self.offset)
        if keep:
            self.frames = self.frames[keep:].copy() if keep < len(self.frames) else self.frames[:0]
            self.offset += keep

    def audio_span(self, start: int, end: int) -> tuple[int, int]:
        """Audio samples of frames [start, end), counted from the chunk holding `start` exactly
        as the training loader counts them (round per chunk), so windows see identical audio."""
        k = int(np.searchsorted(self.chunk_starts, start, side="right")) - 1
        first = int(self.chunk_starts[max(k, 0)])
        base = frame_sample(first, self.fps, self.sample_rate)
        return (base + frame_sample(start - first, self.fps, self.sample_rate),
                base + frame_sample(end - first, self.fps, self.sample_rate))

    def summary_problems(self) -> list[str]:
        out = list(self.problems)
        if self.unreadable:
            out.insert(0, f"{self.name}: {self.unreadable} chunk(s) unreadable, their frames predicted from neighbours")
        return out

    def chunk_audio(self, start: int) -> tuple[int, int]:
        """The audio samples of the chunk holding frame `start`: the most an audio context
        reaches, as in the training loader, which sees one chunk at a time."""
        k = max(int(np.searchsorted(self.chunk_starts, start, side="right")) - 1, 0)
        first = int(self.chunk_starts[k])
        end = int(self.chunk_starts[k + 1]) if k + 1 < len(self.chunk_starts) else self.received
        base = frame_sample(first, self.fps, self.sample_rate)
        return base, min(base + frame_sample(end - first, self.fps, self.sample_rate), len(self.audio))


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
    found: dict[str, dict] = {}
    with fsspec.open(url, "rb") as stream:
        files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
        for sample in group_by_keys(files):
            if sample["__key__"] in keys:
                found[sample["__key__"]] = sample
                if len(found) == len(keys):
                    break
    return found


class TrackPieces(IterableDataset):
    """Pieces of every track, track after track; worker w takes tracks i % workers == w."""

    names: list[str]

    def __iter__(self) -> Iterator[Piece]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for i in range(worker, len(self.names), workers):
            yield from self.pieces(i)

    @abstractmethod
    def pieces(self, i: int) -> Iterator[Piece]:
        """The pieces of track i, in frame order (each source decodes them its own way)."""


class ShardTracks(TrackPieces):
    """Tracks of one or more packed splits; their chunks decoded one at a time."""

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

    def missing_listed(self) -> list[str]:
        """Tracks a test list named that were not packed, with the reason pack gave."""
        out = []
        for m in self.manifests:
            for name in m.extra.get("test_list", {}).get("missing", []):
                why = [s["reason"] for s in m.skipped if f"{name!r}" in s["reason"]]
                out.append(f"{name}: listed in the test list but not packed ({why[0] if why else 'no video'}); "
                           "no submission file written")
        return out

    def pieces(self, i: int) -> Iterator[Piece]:
        name = self.names[i]
        refs = self.refs[name]
        total = sum(r[3] for r in refs)
        fps = 0.0
        pending: list[Piece] = []  # unreadable chunks before the first readable one (fps unknown yet)
        first = 0
        readable = 0
        by_url: dict[str, set[str]] = defaultdict(set)
        for _, url, key, _ in refs:
            by_url[url].add(key)
        raw: dict[str, dict] = {}
        problems: list[str] = []
        loaded: set[str] = set()
        for k, (m_index, url, key, frames) in enumerate(refs):
            if url not in loaded:  # a track's chunks of one shard are read in one pass
                raw = {}
                try:
                    raw = read_members(url, by_url[url])
                except Exception as exc:  # unreadable or truncated shard: keep what was read
                    problems.append(f"{url}: {exc}")
                loaded.add(url)
            last = k == len(refs) - 1
            sample = raw.pop(key, None)
            piece = None
            if sample is not None:
                try:
                    chunk = decode_sample(sample, self.image_size, self.manifests[m_index].sample_rate)
                    piece = piece_of(name, chunk, total, last)
                except Exception as exc:  # a corrupt member: its frames get neighbours' logits
                    problems.append(f"{key}: {exc}")
            else:
                problems.append(f"{key}: not readable from its shard")
            if piece is None:
                piece = unreadable_piece(name, first, frames, self.image_size, fps, total, last, problems.pop())
            else:
                readable += 1
                fps = piece.fps
            piece.problems = problems + piece.problems
            problems = []
            first += frames
            if fps == 0.0:
                pending.append(piece)
                continue
            for p in pending:
                p.fps = fps
                yield p
            pending = []
            yield piece
        if readable == 0:
            raise PredictInputError(f"track {name}: no chunk could be read: " +
                                    "; ".join(p for pc in pending for p in pc.problems[:3]))


class VideoTracks(TrackPieces):
    """Raw videos; a video runs pack's own per-video code in the worker, then its chunks are
    decoded one at a time.

    Tracks per video come from the EXPR annotation files of DIR (the same rules as `pack`;
    labels are kept so predictions can be scored), else from face-crop folders
    DIR/cropped_aligned/<video>_left|_right, else one track named after the video.
    """

    def __init__(
        self,
        folder: str | Path,
        image_size: int,
        settings: PackSettings | None = None,
        names: list[str] | None = None,
    ) -> None:
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
        if settings is None:
            settings = PackSettings(faces=faces_mode(root))
        self.settings = settings

    def _job(self, video: str):
        path = self.videos[video]
        frames = sum(1 for _ in source_frames(str(path), decode=False))
        return video_tracks(self.root, video, path, frames)

    def pieces(self, i: int) -> Iterator[Piece]:
        video = self.names[i]
        result = pack_video(self._job(video), self.settings)
        if not result.samples:
            reasons = "; ".join(f"{p}: {r}" for p, r in result.skipped) or "no frames"
            raise PredictInputError(f"{self.videos[video]}: cannot be predicted ({reasons})")
        by_track: dict[str, list] = defaultdict(list)
        for sample in result.samples:
            by_track[json.loads(sample.members["json"])["track"]].append(sample)
        skipped = [f"{p}: {r}" for p, r in result.skipped]
        for samples in by_track.values():
            total = sum(s.frames for s in samples)
            for k, sample in enumerate(samples):
                raw = {"__key__": sample.key, **sample.members}
                chunk = decode_sample(raw, self.image_size, self.settings.sample_rate)
                piece = piece_of(chunk.meta["track"], chunk, total, k == len(samples) - 1)
                if k == 0:
                    piece.problems = list(skipped)
                yield piece
