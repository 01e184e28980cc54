"""The demo corpus's voice and words: prosody-like audio and a transcript per segment.

A voiced segment is a run of syllables: harmonic tones whose pitch contour, loudness,
brightness (spectral tilt), vibrato and breathiness depend on the speaker's class
through four *voice groups* (`VOICE_GROUPS`). The two classes of a voice group sound
alike; they differ in the face (face.FACE_GROUPS), and each voice group takes its
two classes from different face groups, so only face and voice together name the class.

Words are drawn per syllable run from a vocabulary that mixes class words, words shared
by a valence (positive / negative / neutral) and fillers shared by all classes: a third
weak cue, useful but never decisive on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Classes that share a voice (ABAW order: Neutral, Anger, Disgust, Fear, Happiness,
# Sadness, Surprise, Other).
VOICE_GROUPS: tuple[tuple[int, int], ...] = (
    (0, 5),  # Neutral, Sadness: low, falling, quiet, dark
    (1, 4),  # Anger, Happiness: high, arched, loud, bright, fast
    (2, 3),  # Disgust, Fear: mid pitch with tremolo, breathy
    (6, 7),  # Surprise, Other: steep rise on every syllable
)


@dataclass(frozen=True)
class Voice:
    """How one voice group speaks. Pitches in Hz, before the speaker's own pitch factor."""

    f0: float
    contour: tuple[float, float, float]  # pitch factor at syllable start, middle, end
    rms: float  # loudness of voiced syllables
    tilt: float  # harmonic k has amplitude k**-tilt: small = bright, large = dark
    vibrato: float  # relative depth of a 6.5 Hz pitch tremolo
    breath: float  # share of noise in the source
    syllable: tuple[float, float]  # syllable length range, seconds


VOICES: tuple[Voice, ...] = (
    Voice(115.0, (1.05, 1.0, 0.88), 0.07, 2.2, 0.0, 0.02, (0.22, 0.34)),
    Voice(230.0, (0.92, 1.15, 0.95), 0.2, 0.8, 0.0, 0.02, (0.10, 0.18)),
    Voice(175.0, (1.0, 1.0, 1.0), 0.1, 1.4, 0.06, 0.35, (0.15, 0.25)),
    Voice(160.0, (0.85, 1.1, 1.45), 0.12, 1.2, 0.0, 0.05, (0.14, 0.24)),
)

SILENCE_RMS = 0.003  # background hiss everywhere, so silence is near zero but not digital zero

VALENCE = {
    0: "neutral",
    7: "neutral",
    4: "positive",
    6: "positive",
    1: "negative",
    2: "negative",
    3: "negative",
    5: "negative",
}
CLASS_WORDS: tuple[tuple[str, ...], ...] = (
    ("okay", "fine", "usual"),
    ("furious", "stop", "enough"),
    ("gross", "yuck", "nasty"),
    ("scared", "help", "afraid"),
    ("great", "love", "wonderful"),
    ("sorry", "miss", "alone"),
    ("wow", "really", "unexpected"),
    ("whatever", "anyway", "something"),
)
VALENCE_WORDS = {
    "neutral": ("maybe", "today", "so"),
    "positive": ("yes", "nice", "oh"),
    "negative": ("no", "bad", "why"),
}
FILLERS = ("the", "and", "I", "you", "it", "well", "just", "that")


def voice_group(label: int) -> int:
    """Index of the voice group a class belongs to."""
    for g, members in enumerate(VOICE_GROUPS):
        if label in members:
            return g
    raise ValueError(f"label {label} is not a class 0..7")


@dataclass(frozen=True)
class Utterance:
    """One voiced segment: its samples and the syllable spans (seconds, from segment start)."""

    samples: np.ndarray  # float32, length = the segment's samples
    syllables: list[tuple[float, float]]
    f0: float  # mean pitch in Hz over voiced samples (speaker factor included)


def speak(
    label: int, seconds: float, rate: int, rng: np.random.Generator, pitch: float, loudness: float
) -> Utterance:
    """Synthesise a segment of `seconds` spoken in class `label`'s voice.

    `pitch` and `loudness` are the speaker's factors (per person, per video), so that
    absolute pitch alone overlaps between neighbouring groups, as between real speakers.
    """
    voice = VOICES[voice_group(label)]
    pitch *= rng.uniform(0.95, 1.05)  # no two utterances quite alike
    n = round(seconds * rate)
    f0 = np.zeros(n, dtype=np.float64)
    env = np.zeros(n, dtype=np.float64)
    syllables: list[tuple[float, float]] = []
    t = rng.uniform(0.03, 0.08)
    while True:
        length = rng.uniform(*voice.syllable)
        if t + length > seconds - 0.03:
            if syllables or seconds - 0.03 - t < 0.05:
                break
            length = seconds - 0.03 - t  # a short segment still gets one (short) syllable
        a, b = round(t * rate), round((t + length) * rate)
        x = np.linspace(0.0, 1.0, b - a)
        f0[a:b] = voice.f0 * pitch * np.interp(x, (0.0, 0.5, 1.0), voice.contour)
        env[a:b] = np.sin(np.pi * x) ** 0.6 * rng.uniform(0.75, 1.0)
        syllables.append((t, t + length))
        t += length + rng.uniform(0.03, 0.12)
    voiced = env > 0
    time = np.arange(n) / rate
    if voice.vibrato:
        f0 *= 1.0 + voice.vibrato * np.sin(2 * np.pi * 6.5 * time + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    source = np.zeros(n, dtype=np.float64)
    if voiced.any():
        source[voiced] = _harmonics(phase[voiced], voice.tilt, int(0.45 * rate / float(f0.max())))
        source /= max(float(np.sqrt(np.mean(source[voiced] ** 2))), 1e-9)
    noise = rng.standard_normal(n)
    source = (1 - voice.breath) * source + voice.breath * noise
    samples = voice.rms * loudness * env * source
    mean_f0 = float(f0[voiced].mean()) if voiced.any() else 0.0
    return Utterance(samples.astype(np.float32), syllables, mean_f0)


def _harmonics(phase: np.ndarray, tilt: float, count: int) -> np.ndarray:
    """Sum of sin(k * phase) * k**-tilt for k = 1..count (all below Nyquist, so no aliasing),
    by the recurrence sin(k x) = 2 cos(x) sin((k-1) x) - sin((k-2) x): one sine instead of `count`."""
    two_cos = 2.0 * np.cos(phase)
    before, current = np.zeros_like(phase), np.sin(phase)
    total = current.copy()
    for k in range(2, max(count, 1) + 1):
        before, current = current, two_cos * current - before
        total += k**-tilt * current
    return total


def words(
    label: int, syllables: list[tuple[float, float]], offset: float, rng: np.random.Generator
) -> list[dict]:
    """Transcript entries for one utterance: a word per one or two syllables."""
    out: list[dict] = []
    i = 0
    while i < len(syllables):
        span = min(int(rng.integers(1, 3)), len(syllables) - i)
        start, end = syllables[i][0], syllables[i + span - 1][1]
        draw = rng.uniform()
        if draw < 0.4:
            pool = CLASS_WORDS[label]
        elif draw < 0.7:
            pool = VALENCE_WORDS[VALENCE[label]]
        else:
            pool = FILLERS
        word = pool[int(rng.integers(len(pool)))]
        out.append({"start": round(offset + start, 3), "end": round(offset + end, 3), "word": word})
        i += span
    return out
