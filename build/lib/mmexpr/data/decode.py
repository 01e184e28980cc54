"""Decode shard members straight from the bytes in memory: mp4 with decord, wav with `wave`.

Nothing touches the disk: a tar member arrives as bytes, `decord.VideoReader` reads it
through a file-like object. One decoding thread per reader, because the loader already
runs one process per core (DataLoader workers); extra threads only contend.
"""

from __future__ import annotations

import io
import wave

import numpy as np


class MemberError(Exception):
    """A shard member that cannot be decoded; the loader skips the sample and counts it."""


def decode_video(data: bytes, size: int | None = None) -> np.ndarray:
    """All frames of an mp4 as uint8 [F, H, W, 3] RGB, resized to size x size if given.

    Resizing is done here with torch, not by decord's width/height: decord 0.6 fails on
    get_batch with a target size of another aspect than its internal buffer.
    """
    import decord

    try:
        reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
        count = len(reader)
        if count == 0:
            raise MemberError("mp4 holds no frames")
        frames = reader.get_batch(list(range(count))).asnumpy()
    except decord.DECORDError as exc:
        raise MemberError(f"mp4 does not decode: {exc}") from None
    except RuntimeError as exc:  # decord raises plain RuntimeErrors for bad containers
        raise MemberError(f"mp4 does not decode: {exc}") from None
    return resize_frames(frames, size)


def resize_frames(frames: np.ndarray, size: int | None) -> np.ndarray:
    """[F, H, W, 3] uint8 -> [F, size, size, 3] (bilinear, antialiased); unchanged if already so."""
    if not size or frames.shape[1:3] == (size, size):
        return frames
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """(float32 mono samples in [-1, 1], sample rate) from PCM16 wav bytes."""
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                raise MemberError(f"wav is {w.getnchannels()} channel(s) x {8 * w.getsampwidth()} bit; expected mono PCM16")
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    except (wave.Error, EOFError) as exc:
        raise MemberError(f"wav does not decode: {exc}") from None
    return pcm.astype(np.float32) / 32768.0, rate
