"""Aligned face crops: a similarity transform (rotation, scale, shift) from five landmarks.

Aligning to fixed eye, nose and mouth positions, rather than cutting the box, keeps the
face at the same place and size in every frame of a track whatever the head's roll, which is
what the per-frame visual encoder of the model expects (Aff-Wild2's own crops are aligned).
The template is the usual 5-point one for 112 px faces, scaled to the crop size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity that maps points `src` [K, 2] onto `dst` [K, 2] best in least squares
    (Umeyama, without reflection)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sv, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    scale = np.trace(np.diag(sv) @ sign) / max(s.var(0).sum(), 1e-12)
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_d - scale * rot @ mu_s
    return matrix


def align_face(rgb: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """The face with these landmarks as a `size` x `size` RGB crop (black outside the frame)."""
    forward = similarity(np.asarray(landmarks, np.float64), TEMPLATE_112 * (size / 112.0))
    inverse = np.linalg.inv(np.vstack([forward, [0.0, 0.0, 1.0]]))[:2]  # crop pixel -> frame pixel
    image = Image.fromarray(np.ascontiguousarray(rgb))
    out = image.transform((size, size), Image.AFFINE, data=tuple(inverse.reshape(-1)), resample=Image.BILINEAR)
    return np.asarray(out)
