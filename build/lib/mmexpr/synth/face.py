"""Draw the demo corpus's cartoon face with numpy: oval, eyes, brows, nose, mouth.

The expression is a short vector of continuous parameters (brow height and tilt, eye
opening, mouth opening, curvature and width). The classes map onto four *face groups*
(see `FACE_GROUPS` and the design in mmexpr/data/synth.py): the two classes of a group
share one expression, so the face alone tells the group but not the class.

Everything is drawn with soft (anti-aliased) edges, because hard one-pixel edges cost
H.264 bits and make the picture flicker under small head motion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Classes (ABAW order: Neutral, Anger, Disgust, Fear, Happiness, Sadness, Surprise, Other)
# that share a face. Each pair is split apart by the voice (speech.VOICE_GROUPS).
FACE_GROUPS: tuple[tuple[int, int], ...] = (
    (0, 7),  # Neutral, Other: relaxed face
    (1, 2),  # Anger, Disgust: lowered, tilted brows, narrowed eyes, pressed frowning mouth
    (3, 6),  # Fear, Surprise: raised brows, wide eyes, open mouth
    (4, 5),  # Happiness, Sadness: curved wide mouth, half-closed eyes, worried brows
)

# Expression parameters, in this order.
PARAMS = ("brow_raise", "brow_tilt", "eye_open", "mouth_open", "mouth_curve", "mouth_width")
_QUANT = 64.0
_GROUP_EXPRESSION = np.array(
    [
        [0.0, 0.0, 0.65, 0.0, 0.0, 0.5],
        [-0.35, 0.9, 0.3, 0.0, -0.7, 0.25],
        [0.9, -0.2, 1.0, 0.75, 0.0, 0.25],
        [0.3, -0.7, 0.4, 0.1, 0.9, 1.0],
    ],
    dtype=np.float32,
)


def face_group(label: int) -> int:
    """Index of the face group a class belongs to."""
    for g, members in enumerate(FACE_GROUPS):
        if label in members:
            return g
    raise ValueError(f"label {label} is not a class 0..7")


def expression(label: int, intensity: float) -> np.ndarray:
    """Parameters of a class's face at an intensity in (0, 1]; 0 would be the neutral face."""
    neutral = _GROUP_EXPRESSION[0]
    return neutral + np.float32(intensity) * (_GROUP_EXPRESSION[face_group(label)] - neutral)


@dataclass(frozen=True)
class FaceStyle:
    """What one person looks like in one video; varied per video so that a model must
    read the expression rather than memorise a video's pixels."""

    center: tuple[float, float]  # pixels (x, y) in the frame
    radius: float  # half the face height in pixels
    skin: tuple[float, float, float]  # RGB 0..255
    features: tuple[float, float, float]  # brows/pupils RGB
    lips: tuple[float, float, float]
    sway: tuple[
        float, float, float, float
    ]  # head motion: amplitude x, y (px), frequency (Hz), phase


def random_style(rng: np.random.Generator, box: tuple[int, int, int, int]) -> FaceStyle:
    """A random person placed inside `box` = (x0, y0, x1, y1) of the frame."""
    x0, y0, x1, y1 = box
    size = min(x1 - x0, y1 - y0)
    radius = size * rng.uniform(0.3, 0.4)
    cx = (x0 + x1) / 2 + rng.uniform(-0.08, 0.08) * size
    cy = (y0 + y1) / 2 + rng.uniform(-0.06, 0.06) * size
    tone = rng.uniform(0.0, 1.0)  # dark to light skin
    skin = np.array([95, 60, 40]) + tone * np.array([150, 140, 130]) + rng.uniform(-10, 10, 3)
    features = rng.uniform(15, 55, 3)
    lips = skin * 0.55 + np.array([90, 0, 10]) + rng.uniform(-10, 10, 3)  # contrasts with any skin
    sway = (
        rng.uniform(0.5, 3.0),
        rng.uniform(0.5, 2.0),
        rng.uniform(0.15, 0.6),
        rng.uniform(0, 2 * np.pi),
    )
    return FaceStyle(
        center=(float(cx), float(cy)),
        radius=float(radius),
        skin=tuple(float(v) for v in np.clip(skin, 0, 255)),
        features=tuple(float(v) for v in features),
        lips=tuple(float(v) for v in np.clip(lips, 0, 255)),
        sway=tuple(float(v) for v in sway),
    )


def _alpha(signed_distance: np.ndarray, pixel: float) -> np.ndarray:
    """Coverage of a shape from its (approximate) signed distance, one pixel of soft edge."""
    return np.clip(0.5 - signed_distance / pixel, 0.0, 1.0)


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, a: float, b: float) -> np.ndarray:
    """Approximate signed distance to an ellipse (exact on its axes; good enough for a soft edge)."""
    return (np.sqrt(((u - cu) / a) ** 2 + ((v - cv) / b) ** 2) - 1.0) * min(a, b)


def _segment(
    u: np.ndarray, v: np.ndarray, p: tuple[float, float], q: tuple[float, float]
) -> np.ndarray:
    """Distance to the line segment p-q."""
    du, dv = q[0] - p[0], q[1] - p[1]
    t = np.clip(((u - p[0]) * du + (v - p[1]) * dv) / (du * du + dv * dv), 0.0, 1.0)
    return np.sqrt((u - p[0] - t * du) ** 2 + (v - p[1] - t * dv) ** 2)


def _rows(coords: np.ndarray, lo: float, hi: float) -> slice:
    """The index range of sorted face coordinates (a row or column axis) inside [lo, hi]."""
    return slice(int(np.searchsorted(coords, lo)), int(np.searchsorted(coords, hi)))


def _blend(patch: np.ndarray, alpha: np.ndarray, color: np.ndarray | tuple[float, ...]) -> None:
    patch += alpha[..., None] * (np.asarray(color, dtype=np.float32) - patch)


class FacePainter:
    """Draws one person's face into frames. The head (oval, shading, nose) does not change
    with the expression, so it is rendered once and only moved by whole pixels as the head
    sways; the eyes, brows and mouth are redrawn per frame on bands of the head's patch.
    That keeps a frame well under a millisecond."""

    def __init__(self, style: FaceStyle, frame_shape: tuple[int, ...]) -> None:
        self.style = style
        self.height, self.width = int(frame_shape[0]), int(frame_shape[1])
        r = style.radius
        self.cx, self.cy = round(style.center[0]), round(style.center[1])
        self.half_w, self.half_h = int(0.85 * r) + 2, int(1.05 * r) + 2
        u = (
            np.arange(-self.half_w, self.half_w + 1, dtype=np.float32) + self.cx - style.center[0]
        ) / r
        v = (
            np.arange(-self.half_h, self.half_h + 1, dtype=np.float32) + self.cy - style.center[1]
        ) / r
        self.u, self.v = u[None, :], v[:, None]
        self.px = 1.0 / r  # one pixel in face units
        # Face oval, lit from above-left so it reads as a head, not a disc; then the nose.
        skin = np.asarray(style.skin, dtype=np.float32)
        shade = 1.0 - 0.18 * ((self.u + 0.25) ** 2 + (self.v + 0.3) ** 2)
        color = skin * shade[..., None]
        nose = _alpha(_ellipse(self.u, self.v, 0.0, 0.12, 0.07, 0.12), self.px) * 0.35
        color += nose[..., None] * (skin * 0.7 - color)
        self.head_alpha = _alpha(_ellipse(self.u, self.v, 0.0, 0.0, 0.78, 1.0), self.px)[..., None]
        self.head_color = color
        self._sprites: dict[bytes, np.ndarray] = {}

    def offset(self, t: float) -> tuple[int, int]:
        """Whole-pixel head position at time t (a slow sway, different per person)."""
        ax, ay, freq, phase = self.style.sway
        dx = ax * np.sin(2 * np.pi * freq * t + phase)
        dy = ay * np.sin(2 * np.pi * freq * 1.3 * t + 2 * phase)
        return round(float(dx)), round(float(dy))

    def sprite(self, params: np.ndarray) -> np.ndarray:
        """The head's colour with the features of `params` drawn on it.

        Expressions are quantised to 1/64 so that steady stretches (most frames) reuse a
        cached sprite; the step is far below what 112 px can show."""
        q = np.round(np.asarray(params, dtype=np.float32) * _QUANT).astype(np.int32)
        key = q.tobytes()
        color = self._sprites.get(key)
        if color is None:
            color = self.head_color.copy()
            _draw_features(color, self.u, self.v, self.px, self.style, q / _QUANT)
            if len(self._sprites) >= 512:
                self._sprites.clear()
            self._sprites[key] = color
        return color

    def draw(self, frame: np.ndarray, params: np.ndarray, t: float) -> None:
        """Draw the face with expression `params` (see PARAMS) at time t, in place."""
        dx, dy = self.offset(t)
        cx, cy = self.cx + dx, self.cy + dy
        fx0, fx1 = max(cx - self.half_w, 0), min(cx + self.half_w + 1, self.width)
        fy0, fy1 = max(cy - self.half_h, 0), min(cy + self.half_h + 1, self.height)
        if fx1 <= fx0 or fy1 <= fy0:
            return
        px0, py0 = fx0 - (cx - self.half_w), fy0 - (cy - self.half_h)
        cols = slice(px0, px0 + fx1 - fx0)
        rows = slice(py0, py0 + fy1 - fy0)
        patch = frame[fy0:fy1, fx0:fx1].astype(np.float32)
        patch += self.head_alpha[rows, cols] * (self.sprite(params)[rows, cols] - patch)
        frame[fy0:fy1, fx0:fx1] = (patch + 0.5).astype(np.uint8)


def _draw_features(
    patch: np.ndarray, u: np.ndarray, v: np.ndarray, px: float, style: FaceStyle, params: np.ndarray
) -> None:
    """Eyes, brows and mouth for one expression, drawn on the patch in place."""
    brow_raise, brow_tilt, eye_open, mouth_open, mouth_curve, mouth_width = (
        float(p) for p in params
    )
    # The features are drawn on small windows of the patch only (a fifth of its pixels).
    rows = _rows(v[:, 0], -0.72, -0.03)
    for side in (-1.0, 1.0):
        cols = _rows(u[0], -0.6, -0.05) if side < 0 else _rows(u[0], 0.05, 0.6)
        ub, vb, band = u[:, cols], v[rows], patch[rows, cols]
        # Eyes: white, then a pupil clipped to the opening.
        eu, ev = side * 0.33, -0.17
        eb = 0.02 + 0.12 * max(eye_open, 0.0)
        eye = _alpha(_ellipse(ub, vb, eu, ev, 0.16, eb), px)
        _blend(band, eye, (235.0, 235.0, 230.0))
        _blend(band, eye * _alpha(_ellipse(ub, vb, eu, ev, 0.07, 0.07), px), style.features)
        # Brows: inner end moves down with tilt (anger), the whole brow up with raise (surprise).
        bv = -0.42 - 0.16 * brow_raise
        inner = (side * 0.12, bv + 0.1 * brow_tilt)
        outer = (side * 0.52, bv - 0.1 * brow_tilt)
        _blend(band, _alpha(_segment(ub, vb, inner, outer) - 0.06, px), style.features)

    # Mouth: a curved band whose centre line is bent by `mouth_curve` (corners up = smile)
    # and whose thickness grows with `mouth_open`; an open mouth shows a dark inside.
    mw = 0.2 + 0.2 * mouth_width
    rows, cols = _rows(v[:, 0], 0.25, 0.95), _rows(u[0], -mw - 0.05, mw + 0.05)
    u, vm, band = u[:, cols], v[rows], patch[rows, cols]
    x = np.clip(u / mw, -1.0, 1.0)
    centre = 0.5 + 0.16 * mouth_curve * (0.5 - x * x)
    half = (0.05 + 0.2 * max(mouth_open, 0.0)) * np.sqrt(np.clip(1.0 - x * x, 0.0, 1.0))
    dist = np.abs(vm - centre)
    outline = np.where(np.abs(u) > mw, np.maximum(dist - half, np.abs(u) - mw), dist - half)
    _blend(band, _alpha(outline, px), style.lips)
    if mouth_open > 0.0:
        inside = _alpha(dist - (half - 0.04), px) * (np.abs(u) < mw * 0.9)
        _blend(band, inside * min(mouth_open * 4.0, 1.0), (40.0, 15.0, 20.0))


def random_background(
    rng: np.random.Generator, height: int, width: int, avoid: list[tuple[float, ...]]
) -> np.ndarray:
    """A per-video background: a colour gradient plus soft blobs, far enough from the skin
    tones in `avoid` that the face stays visible."""
    for _ in range(100):
        base = rng.uniform(20, 235, 3)
        if all(np.linalg.norm(base - np.asarray(s)) > 90 for s in avoid):
            break
    other = np.clip(base + rng.uniform(-60, 60, 3), 0, 255)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height + 1.0) / 2.0
    img = base[None, None, :] * (1 - ramp[..., None]) + other[None, None, :] * ramp[..., None]
    for _ in range(int(rng.integers(2, 6))):
        bx, by = rng.uniform(0, width), rng.uniform(0, height)
        br = rng.uniform(0.1, 0.35) * max(height, width)
        blob = np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * br * br))
        img += blob[..., None] * rng.uniform(-35, 35, 3)[None, None, :]
    return np.clip(img, 0, 255).astype(np.uint8)
