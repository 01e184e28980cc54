"""Turn one source video into shard samples: chunks of one annotated track each.

A sample holds `chunk_frames` consecutive frames of one track (the last chunk of a track
is shorter) as three members:

- `mp4`: H.264 at a constant frame rate (frame k of the chunk at k/fps), yuv420p,
  `face_size` x `face_size`, a keyframe every `gop` frames and no B-frames, so a window
  decodes after at most `gop - 1` extra frames instead of the whole chunk.
- `wav`: 16 kHz mono PCM16 with exactly round(frames * 16000 / fps) samples starting at
  sample round(first_frame * 16000 / fps) of the track, so frame k and audio sample
  round(k * 16000 / fps) are the same instant. A video without an audio stream gets a
  zero-length wav and `"has_audio": false`; the loader turns that into audio_len = 0.
- `json`: video, track, first_frame, frames, fps, labels (-1 kept), face (1 where a face
  is visible in the frame, 0 where not), words inside the chunk (times in seconds from the
  start of the video), source path, has_audio; and, for a track with VA or AU files, `va`
  ([v, a] per frame, null where unknown) and `au` (12 ints per frame, -1 unknown). An
  absent key means the task is unknown for every frame.

Where the face comes from, per track (`track_face`, the one place that decides):
- `cropped_aligned/<track>/<00001>.jpg` when that folder exists (a missing crop, which
  Aff-Wild2 has where no face was detected, has no face);
- otherwise, with `faces="detect"` (the default), the face tracker of `mmexpr/faces/`: a
  first pass over the video detects and links faces (or takes them from `job.faces`, the
  per-video cache pack keeps), a second cuts each track's aligned crop per frame; a frame
  where the track has no detection has no face;
- with `faces="frame"` (sources whose frames already are the face, like the synthetic
  corpus), the whole frame, or its left / right half for `<name>_left` / `<name>_right`.
A frame without a face is stored black and counted 0 in the json's `"face"` list (one 0/1
per frame); its label stays, so the audio still trains on it.

Encoding and scaling run single-threaded (`threads=1`, bitexact scaling and muxing) and
fresh memory is filled with a fixed byte (`fixed_fresh_memory`), so the same input gives
the same bytes; parallelism comes from packing many videos at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import json
import wave
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torchaudio.functional as AF
from av.video.reformatter import Interpolation, VideoReformatter
from PIL import Image

from mmexpr.data.batch import frame_sample
from mmexpr.data.sources import TrackSource, VideoJob
from mmexpr.faces.align import align_face
from mmexpr.faces.detect import Detection, Detector, DetectorSettings
from mmexpr.faces.track import TrackerSettings
from mmexpr.faces.video import (
    FaceVideoError,
    VideoFaces,
    VideoReadError,
    cache_matches,
    detect_video,
    faces_for_tracks,
    source_frames,
)
from mmexpr.labels import (
    IGNORE,
    NUM_CLASSES,
    TASKS,
    FitResult,
    LabelFileError,
    fit_to_frames,
    frame_file,
)

SAMPLE_RATE = 16000
SCALE_EXACT = Interpolation.BILINEAR | Interpolation.BITEXACT
M_PERTURB = -6  # mallopt parameter of glibc's malloc.h
PERTURB_BYTE = 0x5A


@dataclass(frozen=True)
class PackSettings:
    """Everything that changes the bytes of a shard; stored in the manifest."""

    chunk_frames: int = 64
    face_size: int = 112
    gop: int = 8
    crf: int = 23
    preset: str = "veryfast"
    # x264 B-frames: 0 since shards were first found to hold them (FFmpeg ignored "bframes"), so
    # shards packed with them carry no such field and are refused rather than reused.
    b_frames: int = 0
    tune: str = "fastdecode"  # no CABAC, no deblocking: ~20% faster decode, ~5% larger
    sample_rate: int = SAMPLE_RATE
    faces: str = "detect"  # "detect": face tracker for tracks without crops; "frame": the frame is the face
    min_face: int = DetectorSettings.min_face

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Sample:
    key: str
    members: dict[str, bytes]  # extension -> bytes
    frames: int
    label_counts: list[int]  # per class 0..7, then ignored (-1)
    task_stats: dict = field(default_factory=dict)  # {"va": [...], "au": [...]}: see task_stats
    faceless: int = 0  # frames without a face


@dataclass
class VideoResult:
    """What one pack task returns: the samples of every good track, and what it left out."""

    video: str
    split: str
    samples: list[Sample] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    fitted: list[tuple[str, FitResult]] = field(default_factory=list)
    frames: int = 0
    faces: str | None = None  # detections made by this task (VideoFaces json), for pack's cache
    faceless: list[str] = field(default_factory=list)  # tracks without a face in any frame


def sample_key(track: str, first_frame: int) -> str:
    """WebDataset splits keys at the first dot, so dots in a track name become underscores."""
    return f"{safe_track(track)}_{first_frame:06d}"


def safe_track(track: str) -> str:
    return track.replace(".", "_")


def track_of_key(key: str, by_safe_name: dict[str, str]) -> str:
    """The track a sample key belongs to: the inverse of `sample_key`, given
    `{safe_track(t): t}` for the split's tracks."""
    stem = key.rsplit("_", 1)[0]
    return by_safe_name.get(stem, stem)


def video_rate(stream: av.video.stream.VideoStream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise VideoReadError("the video stream declares no frame rate")
    return Fraction(rate).limit_denominator(1001)


def encode_wav(samples: np.ndarray, rate: int) -> bytes:
    """PCM16 mono wav; `samples` float in [-1, 1]."""
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def read_audio(path: str, rate: int) -> np.ndarray | None:
    """The whole audio track as mono float32 at `rate`, aligned to the first video frame.

    None when the file has no audio stream. Downmix by PyAV, resampling by torchaudio
    (deterministic on CPU, the same filter everywhere).
    """
    with av.open(path) as container:
        if not container.streams.audio:
            return None
        astream = container.streams.audio[0]
        native = astream.rate or astream.codec_context.sample_rate
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=native)
        parts = []
        for frame in container.decode(astream):
            for out in resampler.resample(frame):
                parts.append(out.to_ndarray()[0])
        for out in resampler.resample(None):
            parts.append(out.to_ndarray()[0])
        audio_start = float(astream.start_time * astream.time_base) if astream.start_time is not None else 0.0
        vstreams = container.streams.video
        vs = vstreams[0] if vstreams else None
        video_start = float(vs.start_time * vs.time_base) if vs is not None and vs.start_time is not None else 0.0
    mono = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
    if native != rate and len(mono):
        mono = AF.resample(torch.from_numpy(mono), orig_freq=int(native), new_freq=rate).numpy()
    shift = int(round((audio_start - video_start) * rate))
    if shift > 0:
        mono = np.concatenate([np.zeros(shift, np.float32), mono])
    elif shift < 0:
        mono = mono[-shift:]
    return mono


def _crop_frame(folder: str, index: int) -> np.ndarray | None:
    path = Path(folder) / frame_file(index)
    if not path.is_file():
        return None
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def track_face(
    track: TrackSource, rgb: np.ndarray | None, index: int, size: int, located: dict[int, Detection] | None
) -> np.ndarray | None:
    """The RGB face of `track` in source frame `index` (any size: the encoder scales it), or
    None when that frame has no face. `located` holds the tracker's detections of this track
    (frame -> detection) when its faces come from the detector."""
    if track.crops is not None:
        return _crop_frame(track.crops, index)
    assert rgb is not None
    if located is not None:
        found = located.get(index)
        return None if found is None else align_face(rgb, found.landmarks, size)
    if track.side:
        half = rgb.shape[1] // 2
        return np.ascontiguousarray(rgb[:, :half] if track.side == "left" else rgb[:, half:])
    return rgb


def _encoder_frame(face: np.ndarray | None, size: int, scaler: VideoReformatter) -> av.VideoFrame:
    """A face (or black, for None) as a yuv420p frame ready for the encoder.

    One reformatter per track keeps its scaling context between frames; building a new
    one per frame (what VideoFrame.reformat does) costs more than the encoding.
    """
    if face is None:
        face = np.zeros((size, size, 3), np.uint8)
    frame = av.VideoFrame.from_ndarray(face, format="rgb24")
    return scaler.reformat(frame, width=size, height=size, format="yuv420p", interpolation=SCALE_EXACT, threads=1)


def fixed_fresh_memory() -> None:
    """Make glibc fill every block it hands out with one fixed byte, in this process.

    x264 reads memory it has not written yet (faces whose chroma rows are not a multiple
    of 32 bytes wide, e.g. 56 for 112-pixel faces), so the same pixels gave other
    bitstreams from one pack to the next, depending on what the allocator left there.
    M_PERTURB makes those bytes the same every time; without glibc nothing changes.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(M_PERTURB, PERTURB_BYTE)
    except (OSError, AttributeError):
        return


def open_rate(path: str) -> Fraction:
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoReadError("no video stream")
            return video_rate(container.streams.video[0])
    except av.error.FFmpegError as exc:
        raise VideoReadError(f"cannot open: {exc}") from None


class ChunkEncoder:
    """Collects one track's faces and encodes each full chunk to H.264 as soon as it is full."""

    def __init__(self, settings: PackSettings, rate: Fraction) -> None:
        self.settings = settings
        self.rate = rate
        self.pending: list[av.VideoFrame] = []
        self.present: list[int] = []
        self.chunks: list[tuple[int, int, bytes, list[int]]] = []  # (first_frame, frames, mp4, face 0/1)
        self.next_first = 0
        self.faces = 0

    def add(self, face: av.VideoFrame, present: bool) -> None:
        self.pending.append(face)
        self.present.append(int(present))
        self.faces += int(present)
        if len(self.pending) == self.settings.chunk_frames:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.chunks.append((self.next_first, len(self.pending), self._encode(self.pending), self.present))
            self.next_first += len(self.pending)
            self.pending = []
            self.present = []

    def _encode(self, faces: list[av.VideoFrame]) -> bytes:
        s = self.settings
        buf = io.BytesIO()
        with av.open(buf, "w", format="mp4", options={"fflags": "+bitexact"}) as out:
            stream = out.add_stream("libx264", rate=self.rate)
            stream.width = stream.height = s.face_size
            stream.pix_fmt = "yuv420p"
            stream.codec_context.gop_size = s.gop
            stream.options = {
                "crf": str(s.crf),
                "preset": s.preset,
                "tune": s.tune,
                "bf": str(s.b_frames),  # FFmpeg's name for x264's bframes (an unknown key is ignored)
                "threads": "1",
                "keyint_min": str(s.gop),
                "sc_threshold": "0",
            }
            time_base = 1 / self.rate
            for k, face in enumerate(faces):
                face.pts = k
                face.time_base = time_base
                for packet in stream.encode(face):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        return buf.getvalue()


def _label_counts(labels: np.ndarray) -> list[int]:
    counts = np.bincount(labels[labels != IGNORE], minlength=NUM_CLASSES).tolist()
    return counts + [int((labels == IGNORE).sum())]


def task_stats(va: np.ndarray | None, au: np.ndarray | None) -> dict:
    """Sums that add over samples into the manifest's label statistics: VA [frames, sum v, sum a,
    sum v^2, sum a^2]; AU [known frames per AU (12), positives per AU (12)]."""
    out: dict[str, list] = {}
    if va is not None:
        known = va[~np.isnan(va).any(axis=1)].astype(np.float64)
        out["va"] = [len(known), *known.sum(axis=0).tolist(), *(known**2).sum(axis=0).tolist()]
    if au is not None:
        out["au"] = [*(au != IGNORE).sum(axis=0).tolist(), *(au == 1).sum(axis=0).tolist()]
    return out


def _task_json(va: np.ndarray | None, au: np.ndarray | None) -> dict:
    out: dict[str, list] = {}
    if va is not None:
        out["va"] = [None if np.isnan(row).any() else [round(float(row[0]), 4), round(float(row[1]), 4)] for row in va]
    if au is not None:
        out["au"] = [[int(x) for x in row] for row in au]
    return out


def fit_tasks(track: TrackSource, frames: int) -> tuple[FitResult, dict[str, np.ndarray | None]]:
    """Every task's labels of a track fitted to the decoded frame count (LabelFileError naming
    the file when one is too far off); VA is padded with NaN, the others with -1. A track
    without an annotation file (a test-list track) has every EXPR label unknown."""
    labels_in = track.labels if track.annotation else np.full(frames, IGNORE, np.int64)
    fit = fit_to_frames(labels_in, frames, source=track.annotation)
    files = dict(track.task_files)
    other: dict[str, np.ndarray | None] = {}
    for task in TASKS[1:]:
        values = getattr(track, task)
        other[task] = None if values is None else fit_to_frames(
            values, frames, source=files.get(task, track.annotation), fill=np.nan if task == "va" else IGNORE
        ).labels
    return fit, other


def _chunk_words(job: VideoJob, first: int, frames: int, fps: float) -> list[dict]:
    start, end = first / fps, (first + frames) / fps
    return [{"start": w.start, "end": w.end, "word": w.word} for w in job.words if w.start < end and w.end > start]


def _chunk_audio(audio: np.ndarray | None, first: int, frames: int, fps: float, rate: int) -> np.ndarray:
    if audio is None:
        return np.zeros(0, np.float32)
    begin = frame_sample(first, fps, rate)
    length = frame_sample(frames, fps, rate)
    piece = audio[begin : begin + length]
    if len(piece) < length:
        piece = np.concatenate([piece, np.zeros(length - len(piece), np.float32)])
    return piece


def _located_faces(job: VideoJob, settings: PackSettings, result: VideoResult) -> dict[str, dict[int, Detection] | None]:
    """Per track, frame -> detection where its faces come from the tracker (None: they do not).

    Detections come from `job.faces` (pack's per-video cache) when that was made of this file
    with these settings; otherwise this task detects them and hands them back in
    `result.faces` for the cache.
    """
    needs = [t for t in job.tracks if t.crops is None]
    if settings.faces == "frame" or not needs:
        return {t.name: None for t in job.tracks}
    detector, tracker = DetectorSettings(min_face=settings.min_face), TrackerSettings()
    faces = None
    if job.faces:
        try:
            cached = VideoFaces.from_json(job.faces)
            faces = cached if cache_matches(cached, job.path, detector, tracker) else None
        except (ValueError, KeyError, TypeError, IndexError):
            faces = None
    if faces is None:
        result.faces = detect_video(job.path, Detector(detector), tracker).to_json()
        faces = VideoFaces.from_json(result.faces)  # as a re-pack reads it back: the same bytes
    mapped = faces_for_tracks(faces, [t.side for t in needs])
    return {t.name: mapped[t.side] if t.crops is None else None for t in job.tracks}


def pack_video(job: VideoJob, settings: PackSettings) -> VideoResult:
    """All samples of one video (one Ray task). A video that cannot be read is skipped whole."""
    result = VideoResult(job.video, job.split)
    fixed_fresh_memory()
    try:
        rate = open_rate(job.path)
        encoders = {t.name: ChunkEncoder(settings, rate) for t in job.tracks}
        scalers = {t.name: VideoReformatter() for t in job.tracks}
        decode = any(t.crops is None for t in job.tracks)
        located = _located_faces(job, settings, result)
        frames = 0
        for index, frame in enumerate(source_frames(job.path, decode)):
            rgb = frame.to_ndarray(format="rgb24", threads=1, interpolation=SCALE_EXACT) if frame is not None else None
            for track in job.tracks:
                face = track_face(track, rgb, index, settings.face_size, located[track.name])
                encoders[track.name].add(_encoder_frame(face, settings.face_size, scalers[track.name]), face is not None)
            frames = index + 1
        audio = read_audio(job.path, settings.sample_rate)
    except (VideoReadError, FaceVideoError, av.error.FFmpegError) as exc:
        result.skipped.append((job.path, f"unreadable video: {exc}"))
        return result
    result.frames = frames
    result.faceless = [t.name for t in job.tracks if encoders[t.name].faces == 0]
    fps = float(rate)
    for track in job.tracks:
        try:
            fit, other = fit_tasks(track, frames)
        except LabelFileError as exc:
            result.skipped.append((str(exc).split(":", 1)[0], str(exc)))
            continue
        result.fitted.append((track.name, fit))
        encoder = encoders[track.name]
        encoder.flush()
        for first, count, mp4, present in encoder.chunks:
            labels = fit.labels[first : first + count]
            va, au = (None if other[t] is None else other[t][first : first + count] for t in ("va", "au"))
            meta = {
                "face": present,
                "video": job.video,
                "track": track.name,
                "first_frame": first,
                "frames": count,
                "fps": fps,
                "labels": [int(v) for v in labels],
                "words": _chunk_words(job, first, count, fps),
                "source": job.path,
                "annotation": track.annotation,
                "has_audio": audio is not None,
                "sample_rate": settings.sample_rate,
                **_task_json(va, au),
            }
            wav = encode_wav(_chunk_audio(audio, first, count, fps, settings.sample_rate), settings.sample_rate)
            members = {
                "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode(),
                "mp4": mp4,
                "wav": wav,
            }
            result.samples.append(
                Sample(
                    sample_key(track.name, first), members, count, _label_counts(labels), task_stats(va, au),
                    count - sum(present),
                )
            )
    return result
