"""Windows of T frames, with their audio and labels, streamed from shards into batches.

Public API (the training and prediction code calls only this):

    loader = make_loader(shards_root, split, data_cfg, train=True, rank=r, world_size=n, seed=s)
    for batch in loader: ...          # mmexpr.data.batch.Batch
    loader.state_dict() / loader.load_state_dict(state)   # resume where a run stood
    loader.windows_per_epoch, loader.steps_per_epoch, loader.skipped
    read_manifest(path) -> Manifest   # re-exported from mmexpr.data.manifest

`windows_per_epoch` counts the windows of one epoch over all ranks (from the manifest);
`steps_per_epoch` is ceil(windows_per_epoch / (world_size x batch_size)) in training and
the number of batches every rank yields in evaluation. `skipped` counts unreadable samples.
The state is a small JSON-able dict (batches consumed, epoch, layout); save it with a
checkpoint and pass it back as `state=` (or `load_state_dict`) to continue.

Batches are `mmexpr.data.batch.Batch` (its docstring has every field and shape).

Training (`train=True`) is an endless stream: epoch after epoch, full batches only, each
rank and DataLoader worker reading a different part of the data. Evaluation is one pass:
every frame of every chunk is labelled in exactly one window across all ranks, and every
rank yields exactly `steps_per_epoch` batches (the last ones padded with fully masked
windows), so ranks running ZeRO-3 forwards in lock-step never wait on each other.

How the data is split, and why not webdataset's `split_by_node`/`split_by_worker`: those
split whole shards, so ranks get unequal amounts (or nothing, with fewer shards than
ranks x workers), and a position inside an epoch cannot be restored. Here the manifest
lists every sample, so each epoch is *planned* from metadata alone:

1. the shard order is shuffled (seed, epoch) in training, identity in evaluation, and the
   samples in that order are cut into rank x worker contiguous blocks ("slots") of equal
   size ±1; a slot reads at most two shards partially, the rest whole and in order;
2. a slot takes its samples in groups of `shuffle_buffer`; each sample yields
   max(1, round(frames / T)) windows at random starts in training (windows at stride
   min(stride, T) in evaluation); training shuffles the windows of a group (plus those
   left over from the group before) and cuts batches of B.

The plan is a pure function of (manifest, seed, epoch, rank, worker), so the loader state
is just the number of batches consumed: on restore every worker re-plans and skips its
share without decoding anything. Shards are read with webdataset's tar iterator (local
paths, `pipe:` and http via webdataset, other URLs such as s3:// via fsspec); videos are
decoded from the bytes in memory (decode.py: PyAV and OpenCV). A sample that fails to read or decode is
skipped and counted (`loader.skipped`, and per shard in `loader.tally()`); its windows
become fully masked windows so the batch count, and with it the restore position, stays
the same. A local shard whose sha256 differs from the manifest's is not read at all (its
samples count as skipped): hashing it first costs one extra pass over bytes the page cache
then serves to the reader (`bench loader` measures it).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace

import fsspec
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.gopen import gopen_schemes
from webdataset.tariterators import group_by_keys, tar_file_iterator

from mmexpr.config import DataConfig
from mmexpr.data.augment import Augment, augment_audio, augment_frames
from mmexpr.data.batch import Batch, BatchArrays, frame_sample
from mmexpr.data.decode import MemberError, decode_video, decode_wav
from mmexpr.data.manifest import Manifest, ManifestError, manifest_path, read_manifest

__all__ = ["WindowLoader", "make_loader", "read_manifest", "Manifest", "ManifestError"]

STATE_VERSION = 1


@dataclass(frozen=True)
class SampleRef:
    """One sample as one epoch uses it (the same chunk in two epochs is two refs)."""

    epoch: int
    shard: int
    index: int  # position inside the shard
    key: str
    frames: int


@dataclass(frozen=True)
class WindowRef:
    sample: SampleRef
    start: int  # first frame inside the chunk
    covered: int  # frames before this index were labelled by an earlier window (evaluation)
    epoch: int


@dataclass(frozen=True)
class Layout:
    """What the plan depends on besides the manifest; a restored state must match it."""

    window: int
    stride: int
    batch_size: int
    shuffle_buffer: int
    train: bool
    rank: int
    world_size: int
    workers: int
    seed: int


# ---------------------------------------------------------------- planning (metadata only)


def train_window_count(frames: int, window: int) -> int:
    return max(1, round(frames / window))


def eval_window_starts(frames: int, window: int, stride: int) -> list[tuple[int, int]]:
    """(start, covered) pairs so that every frame of the chunk is labelled exactly once."""
    step = min(stride, window)
    out = [(0, 0)]
    while out[-1][0] + window < frames:
        start = out[-1][0] + step
        out.append((start, out[-1][0] + window))
    return out


def epoch_samples(manifest: Manifest, epoch: int, layout: Layout) -> list[SampleRef]:
    """All samples of the split in this epoch's order (shards shuffled in training)."""
    order = list(range(len(manifest.shards)))
    if layout.train:
        np.random.default_rng([layout.seed, epoch, 7919]).shuffle(order)
    return [
        SampleRef(epoch, s, i, manifest.shards[s].keys[i], manifest.shards[s].sample_frames[i])
        for s in order
        for i in range(manifest.shards[s].samples)
    ]


def slot_block(samples: list[SampleRef], slot: int, slots: int) -> list[SampleRef]:
    n = len(samples)
    return samples[slot * n // slots : (slot + 1) * n // slots]


def plan_batches(
    manifest: Manifest, layout: Layout, worker: int, start_epoch: int = 0
) -> Iterator[tuple[list[WindowRef], list[tuple[SampleRef, int]]]]:
    """One worker's stream as (batch windows, samples first needed here with their window
    counts); the batch list is empty when a group adds samples but completes no batch.
    Endless in training, one pass in evaluation."""
    slot = layout.rank * layout.workers + worker
    slots = layout.world_size * layout.workers
    T, B = layout.window, layout.batch_size
    group_size = max(1, layout.shuffle_buffer) if layout.train else 1
    pending: list[WindowRef] = []
    epoch = start_epoch
    while True:
        block = slot_block(epoch_samples(manifest, epoch, layout), slot, slots)
        for g in range(0, len(block), group_size):
            group = block[g : g + group_size]
            new: list[tuple[SampleRef, int]] = []
            if layout.train:
                rng = np.random.default_rng([layout.seed, epoch, layout.rank, worker, g])
                for ref in group:
                    n = train_window_count(ref.frames, T)
                    starts = np.sort(rng.integers(0, max(0, ref.frames - T) + 1, size=n))
                    pending += [WindowRef(ref, int(s), 0, epoch) for s in starts]
                    new.append((ref, n))
                rng.shuffle(pending)
            else:
                for ref in group:
                    windows = eval_window_starts(ref.frames, T, layout.stride)
                    pending += [WindowRef(ref, s, c, epoch) for s, c in windows]
                    new.append((ref, len(windows)))
            while len(pending) >= B:
                yield pending[:B], new
                pending, new = pending[B:], []
            if new:
                yield [], new
        if not layout.train:
            if pending:
                yield pending, []
            return
        epoch += 1


def count_batches(manifest: Manifest, layout: Layout, worker: int) -> int:
    """Batches of one worker in one evaluation pass (training batches never end)."""
    return sum(1 for refs, _ in plan_batches(manifest, layout, worker) if refs)


# ---------------------------------------------------------------- loss accounting and checksums


@dataclass
class SkipTally:
    """Samples asked for and samples skipped, with the skips per shard and one reason each."""

    read: int = 0
    skipped: int = 0
    shards: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def skip(self, url: str, reason: str) -> None:
        self.skipped += 1
        self.shards[url] = self.shards.get(url, 0) + 1
        self.reasons.setdefault(url, reason)

    def add(self, other: SkipTally) -> SkipTally:
        out = SkipTally(self.read + other.read, self.skipped + other.skipped, dict(self.shards), dict(self.reasons))
        for url, count in other.shards.items():
            out.shards[url] = out.shards.get(url, 0) + count
        for url, reason in other.reasons.items():
            out.reasons.setdefault(url, reason)
        return out

    def copy(self) -> SkipTally:
        return SkipTally().add(self)


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


def checksum_problem(url: str, expected: str) -> str:
    """Why a local shard must not be read (its sha256 differs from the manifest's), or "".

    Remote shards are not hashed here: that would read them twice over the network.
    """
    path = url[len("file://"):] if url.startswith("file://") else url
    if "://" in path or path.startswith("pipe:") or not expected or not os.path.isfile(path):
        return ""
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _VERIFIED[key] = h.hexdigest()
    if _VERIFIED[key] != expected:
        return f"{url}: sha256 {_VERIFIED[key][:12]}... differs from the manifest's {expected[:12]}..."
    return ""


# ---------------------------------------------------------------- reading and decoding


def _open(url: str):
    """A byte stream for a shard: webdataset's gopen for what it knows, fsspec otherwise."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not scheme or scheme == "file" or scheme in gopen_schemes or url.startswith("pipe:"):
        return wds.gopen(url, "rb")

    return fsspec.open(url, "rb").open()


class ShardReader:
    """Raw samples (extension -> bytes) by reference, streaming each shard once, in order.

    Samples must be asked for in the order they lie in their shard; the reader keeps the
    current shard open between calls. A sample absent from its shard, or behind a point
    where the tar cannot be read on, is None.
    """

    def __init__(self, manifest: Manifest, verify: bool = True) -> None:
        self.manifest = manifest
        self.verify = verify
        self.url = ""
        self.shard: tuple[int, int] = (-1, -1)  # (epoch, shard) being read
        self.samples: Iterator[dict] = iter(())
        self.problem = ""

    def _open_shard(self, epoch: int, shard: int) -> None:
        url = self.manifest.url(self.manifest.shards[shard])
        self.shard = (epoch, shard)
        self.url = url
        self.problem = checksum_problem(url, self.manifest.shards[shard].sha256) if self.verify else ""
        if self.problem:
            self.samples = iter(())
            return
        try:
            stream = _open(url)
            files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
            self.samples = iter(group_by_keys(files))
        except Exception as exc:  # unreadable shard: every sample in it is missing
            self.samples = iter(())
            self.problem = f"cannot open {url}: {exc}"

    def get(self, ref: SampleRef) -> tuple[dict | None, str]:
        if (ref.epoch, ref.shard) != self.shard:
            self._open_shard(ref.epoch, ref.shard)
        try:
            for sample in self.samples:
                if sample["__key__"] == ref.key:
                    return sample, ""
        except Exception as exc:  # truncated or corrupt tar: the rest of the shard is lost
            self.samples = iter(())
            self.problem = f"shard read failed: {exc}"
        return None, self.problem or "not in its shard"


@dataclass
class Decoded:
    frames: np.ndarray  # [F, H, W, 3]
    audio: np.ndarray  # float32
    has_audio: bool
    meta: dict


def decode_sample(raw: dict, image_size: int, sample_rate: int, video: bool = True) -> Decoded:
    """One packed sample's frames, audio and metadata; with video=False (a model that sees no
    frames) the mp4 is not decoded and the frames are a zero-cost black view of the right shape."""
    for ext in ("json", "mp4", "wav"):
        if ext not in raw:
            raise MemberError(f"{raw['__key__']}: no .{ext} member")
    try:
        meta = json.loads(raw["json"])
        labels = meta["labels"]
    except (ValueError, KeyError, TypeError) as exc:
        raise MemberError(f"{raw['__key__']}.json: {exc}") from None
    if video:
        frames = decode_video(raw["mp4"], size=image_size)
    else:
        frames = np.broadcast_to(np.zeros((1, image_size, image_size, 3), np.uint8),
                                 (len(labels), image_size, image_size, 3))
    audio, rate = decode_wav(raw["wav"])
    if len(audio) and rate != sample_rate:
        raise MemberError(f"{raw['__key__']}.wav: {rate} Hz; the loader expects {sample_rate} Hz")
    if len(frames) < len(labels):
        raise MemberError(f"{raw['__key__']}.mp4: {len(frames)} frames for {len(labels)} labels")
    return Decoded(frames, audio, bool(meta.get("has_audio", len(audio) > 0)), meta)


def sample_tasks(meta: dict, lo: int, hi: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """VA [n, 2] (NaN unknown) and AU [n, 12] (-1 unknown) of frames [lo, hi) of a sample's json;
    None for a task the sample has no labels of."""
    va = au = None
    if "va" in meta:
        va = np.asarray([[np.nan, np.nan] if row is None else row for row in meta["va"][lo:hi]], np.float32)
        va = va.reshape(-1, 2)
    if "au" in meta:
        au = np.asarray(meta["au"][lo:hi], np.int64).reshape(hi - lo, -1)
    return va, au


def sample_face(meta: dict, lo: int, hi: int) -> np.ndarray | None:
    """Face-present flags of frames [lo, hi) of a sample; None where the sample carries none
    (shards packed before the flag existed: every frame has a face)."""
    face = meta.get("face")
    return None if face is None else np.asarray(face[lo:hi], bool)


class BatchBuilder:
    """Batches (batch.py) from decoded samples and the plan's window references."""

    def __init__(self, window: int, image_size: int, sample_rate: int, audio_context_s: float = 0.0,
                 augment: Augment | None = None, rng: np.random.Generator | None = None) -> None:
        self.T = window
        self.size = image_size
        self.rate = sample_rate
        self.context = audio_context_s
        self.augment = augment if augment is not None and augment.active else None
        self.rng = rng or np.random.default_rng(0)

    def build(self, windows: list[tuple[WindowRef, Decoded | None]], batch_size: int) -> Batch:
        arrays = BatchArrays(batch_size, self.T, self.size, self.rate, audio_context_s=self.context)
        for b, (ref, dec) in enumerate(windows):
            if dec is None:  # corrupt sample or padding: a fully masked window
                continue
            meta = dec.meta
            fps = meta["fps"]
            lo, hi = ref.start, min(ref.start + self.T, len(meta["labels"]))
            labels = np.asarray(meta["labels"][lo:hi], np.int64)
            seen = max(0, ref.covered - lo)  # frames labelled by an earlier window already
            labels[:seen] = -1
            va, au = sample_tasks(meta, lo, hi)
            if va is not None:
                va[:seen] = np.nan
            if au is not None:
                au[:seen] = -1
            span = (frame_sample(lo, fps, self.rate), frame_sample(hi, fps, self.rate))
            arrays.put(b, dec.frames[lo:hi], fps=fps, start=meta["first_frame"] + lo, track=meta["track"],
                       labels=labels, va=va, au=au, audio=dec.audio if dec.has_audio else None, audio_span=span,
                       face=sample_face(meta, lo, hi), audio_limit=(0, len(dec.audio)))
        if self.augment is not None:
            self._augment(arrays)
        return arrays.batch()

    def _augment(self, arrays: BatchArrays) -> None:
        for b in range(len(arrays.track)):
            if self.augment.faces:
                augment_frames(arrays.video[b], int(arrays.mask[b].sum()), self.rng, self.augment)
            if self.augment.voices:
                augment_audio(arrays.audio[b], int(arrays.audio_len[b]), self.rng, self.augment)


# ---------------------------------------------------------------- the dataset and the loader


@dataclass(eq=False)
class WindowDataset(IterableDataset):
    """One rank's stream; each DataLoader worker plays its own slot of the plan.

    Yields (batch, epoch, worker, SkipTally so far) so the main process can keep the state.
    """

    manifest: Manifest
    layout: Layout
    image_size: int
    sample_rate: int
    start_epoch: int
    skip: list[int]  # batches to skip, per worker
    audio_context_s: float = 0.0
    augment: Augment | None = None
    video: bool = True  # False: frames are not decoded (an audio-only model)
    verify: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        if not self.layout.train:
            self.augment = None  # evaluation sees the data as packed
        elif not self.video and self.augment is not None:
            self.augment = replace(self.augment, faces=False)  # no faces to augment

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None:
            torch.set_num_threads(1)
        return self._stream(worker)

    def _stream(self, worker: int):
        manifest, layout = self.manifest, self.layout
        rng = np.random.default_rng([layout.seed, self.start_epoch, layout.rank, worker, 4099])
        builder = BatchBuilder(layout.window, self.image_size, self.sample_rate, self.audio_context_s,
                               self.augment, rng)
        reader = ShardReader(manifest, self.verify)
        queue: deque[SampleRef] = deque()  # samples introduced, not fetched yet, in stream order
        raw: dict[SampleRef, dict | None] = {}
        decoded: dict[SampleRef, Decoded | None] = {}
        left: dict[SampleRef, int] = {}
        tally = SkipTally()
        urls: dict[SampleRef, str] = {}
        batch_no = 0

        def fetch(target: SampleRef) -> None:
            while target not in raw and target not in decoded and queue:
                ref = queue.popleft()
                sample, problem = reader.get(ref)
                tally.read += 1
                urls[ref] = reader.url
                if sample is None:
                    tally.skip(reader.url, problem)
                    warnings.warn(f"skipping sample {ref.key}: {problem}", stacklevel=2)
                raw[ref] = sample

        def materialise(ref: SampleRef) -> Decoded | None:
            if ref not in decoded:
                sample = raw.pop(ref, None)
                decoded[ref] = None
                if sample is not None:
                    try:
                        decoded[ref] = decode_sample(sample, self.image_size, self.sample_rate, self.video)
                    except MemberError as exc:
                        tally.skip(urls.get(ref, ""), str(exc))
                        warnings.warn(f"skipping sample {ref.key}: {exc}", stacklevel=2)
            return decoded[ref]

        for refs, new in plan_batches(manifest, layout, worker, self.start_epoch):
            for ref, count in new:
                queue.append(ref)
                left[ref] = count
            if not refs:
                continue
            batch_no += 1
            for w in refs:
                fetch(w.sample)
            batch = None
            if batch_no > self.skip[worker]:  # a restored run skips without decoding
                batch = builder.build([(w, materialise(w.sample)) for w in refs], layout.batch_size)
            for w in refs:  # forget samples whose windows have all been handed out
                left[w.sample] -= 1
                if left[w.sample] == 0:
                    del left[w.sample]
                    raw.pop(w.sample, None)
                    decoded.pop(w.sample, None)
                    urls.pop(w.sample, None)
            if batch is not None:
                yield batch, refs[0].epoch, worker, tally.copy()


class WindowLoader:
    """Iterable of batches for one rank; see the module docstring for the contract."""

    def __init__(self, manifest: Manifest, layout: Layout, data: DataConfig, state: dict | None = None,
                 video: bool = True) -> None:
        self.manifest = manifest
        self.video = video
        self.layout = layout
        self.data = data
        self.image_size = data.image_size
        self.sample_rate = manifest.sample_rate
        self._consumed = 0  # batches handed out since start_epoch began (training)
        self._start_epoch = 0
        self._epoch = 0
        self._skipped: dict[int, SkipTally] = {}
        if layout.train:
            self.windows_per_epoch = sum(
                train_window_count(f, layout.window) for s in manifest.shards for f in s.sample_frames
            )
            per_step = layout.world_size * layout.batch_size
            self.steps_per_epoch = max(1, math.ceil(self.windows_per_epoch / per_step))
        else:
            self.windows_per_epoch = sum(
                len(eval_window_starts(f, layout.window, layout.stride))
                for s in manifest.shards
                for f in s.sample_frames
            )
            self.steps_per_epoch = max(
                sum(
                    count_batches(manifest, replace(layout, rank=r), w)
                    for w in range(layout.workers)
                )
                for r in range(layout.world_size)
            )
        if state is not None:
            self.load_state_dict(state)

    @property
    def skipped(self) -> int:
        """Samples skipped as unreadable so far (this rank, the current pass)."""
        return self.tally().skipped

    def tally(self) -> SkipTally:
        """Samples read and skipped so far (this rank, the current pass), with the shards."""
        total = SkipTally()
        for part in self._skipped.values():
            total = total.add(part)
        return total

    @property
    def epoch(self) -> int:
        return self._epoch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "layout": asdict(self.layout),
            "start_epoch": self._start_epoch,
            "batches": self._consumed,
            "epoch": self._epoch,
            "windows": self._consumed * self.layout.batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue after the last batch the saved loader handed out.

        With another layout (world size, workers, batch size, window...) the exact position
        cannot be mapped; the loader then restarts the saved epoch from its beginning.
        """
        if not self.layout.train:
            return
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r}; expected {STATE_VERSION}")
        if state["layout"] == asdict(self.layout):
            self._start_epoch = int(state["start_epoch"])
            self._consumed = int(state["batches"])
        else:
            warnings.warn(
                "loader state was saved with another layout "
                f"({state['layout']} vs {asdict(self.layout)}); restarting epoch {state['epoch']} from its start",
                stacklevel=2,
            )
            self._start_epoch = int(state["epoch"])
            self._consumed = 0
        self._epoch = int(state["epoch"])

    def _dataset(self) -> WindowDataset:
        W = self.layout.workers
        done = self._consumed if self.layout.train else 0
        skip = [done // W + (1 if w < done % W else 0) for w in range(W)]
        dataset = WindowDataset(self.manifest, self.layout, self.image_size, self.sample_rate, self._start_epoch,
                                skip, self.data.audio_context_s, augment_of(self.data), self.video)
        dataset.verify = self.data.verify_shards
        return dataset

    def __iter__(self) -> Iterator[Batch]:
        workers = self.data.loader_workers
        loader = DataLoader(
            self._dataset(),
            batch_size=None,
            num_workers=workers,
            prefetch_factor=2 if workers else None,
            persistent_workers=False,
        )
        self._skipped = {}
        handed = 0
        for batch, epoch, worker, skipped in loader:
            self._skipped[worker] = skipped
            self._epoch = epoch
            if self.layout.train:
                self._consumed += 1
            handed += 1
            yield batch
        if not self.layout.train:
            empty = BatchBuilder(self.layout.window, self.image_size, self.sample_rate, self.data.audio_context_s)
            for _ in range(handed, self.steps_per_epoch):
                yield empty.build([], self.layout.batch_size)


def make_loader(
    shards_root: str,
    split: str,
    data: DataConfig,
    *,
    train: bool,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    state: dict | None = None,
    video: bool = True,
) -> WindowLoader:
    """The batches of `split` for one rank; see the module docstring. video=False: the frames are
    not decoded (they arrive black), for a model that never looks at them."""
    path = manifest_path(shards_root, split)
    manifest = read_manifest(path)
    if manifest.sample_rate != data.sample_rate:
        raise ManifestError(
            f"{path}: shards hold {manifest.sample_rate} Hz audio; data.sample_rate is {data.sample_rate}"
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    layout = _layout_of(data, train, rank, world_size, seed)
    slots = world_size * layout.workers
    if train and manifest.samples < slots:
        raise ManifestError(
            f"{path}: {manifest.samples} chunk(s), fewer than ranks x loader workers ({world_size} x "
            f"{layout.workers}); use fewer workers or pack with smaller --chunk-frames"
        )
    return WindowLoader(manifest, layout, data, state, video)


def augment_of(data: DataConfig) -> Augment:
    return Augment(faces=data.augment_faces, voices=data.augment_voices)


def _layout_of(data: DataConfig, train: bool, rank: int, world_size: int, seed: int) -> Layout:
    return Layout(
        window=data.window,
        stride=data.stride,
        batch_size=data.batch_size,
        shuffle_buffer=data.shuffle_buffer,
        train=train,
        rank=rank,
        world_size=world_size,
        workers=max(1, data.loader_workers),
        seed=seed,
    )
