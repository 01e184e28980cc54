"""Scenes for the face detector and tracker: real FER2013 faces moving through larger frames.

A face tracker has to be judged on faces it was not built around, in the situations a raw
video brings: a small face far from the centre, a face growing and shrinking as the person
comes closer, two people side by side, and stretches where nobody is in the frame. So each
scene pastes one FER2013 face per person (48x48 grayscale, upscaled) into a 640x360 frame
over a smooth coloured background, moves it along a straight line while its size changes,
and blanks every face for one stretch in the middle. The central part of the pasted square
(`FACE_REGION`) is the ground-truth box of its person; the person's FER class is its EXPR label (-1 while not visible).

`write_scene_corpus` writes such scenes in Aff-Wild2 layout (no `cropped_aligned/`), with
`_left`/`_right` annotation files for two-person scenes, so `pack` and `predict --videos`
run their detector on them exactly as on a user's recordings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mmexpr.faces.align import TEMPLATE_112, align_face, similarity
from mmexpr.faces.track import iou
from mmexpr.labels import IGNORE, track_name, write_annotation
from mmexpr.synth.real import Faces, write_muxed_video

WIDTH, HEIGHT = 640, 360
# Where the face is inside a FER2013 image (x1, y1, x2, y2 as shares of its side): the images
# are registered crops with the face centred and filling most of the 48x48 square, so the
# ground-truth box is its central part rather than the whole pasted square (hair, neck and
# background fill the border).
FACE_REGION = (0.1, 0.1, 0.9, 0.9)


@dataclass(frozen=True)
class SceneSpec:
    people: int = 1  # 1 or 2; two people keep to the left and the right half of the frame
    frames: int = 90
    fps: int = 25
    min_size: int = 64  # side of the pasted face, pixels of the frame
    max_size: int = 144
    gap: tuple[float, float] = (0.45, 0.6)  # share of the video where no face is visible
    width: int = WIDTH
    height: int = HEIGHT


@dataclass
class Scene:
    frames: np.ndarray  # uint8 [N, H, W, 3]
    squares: np.ndarray  # float64 [P, N, 4] pasted image x1, y1, x2, y2; NaN where the person is not visible
    faces: np.ndarray  # uint8 [P, 48, 48] the FER2013 image of each person, left to right
    labels: np.ndarray  # int64 [P] EXPR class of each person
    fps: int

    @property
    def boxes(self) -> np.ndarray:
        """Ground-truth face boxes [P, N, 4]: FACE_REGION of each pasted square."""
        x1, y1 = self.squares[..., 0:1], self.squares[..., 1:2]
        side = self.squares[..., 2:3] - x1
        region = np.asarray(FACE_REGION)
        return np.concatenate([x1, y1, x1, y1], axis=-1) + side * region

    def visible(self, person: int) -> np.ndarray:
        return ~np.isnan(self.squares[person, :, 0])


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth colour field with some texture, so the detector sees more than a flat wall."""
    coarse = rng.integers(40, 220, size=(5, 9, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
    texture = rng.normal(0.0, 6.0, size=(height, width, 1))
    return np.clip(smooth + texture, 0, 255).astype(np.uint8)


def _path(rng: np.random.Generator, spec: SceneSpec, person: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre [N, 2] and side [N] of one person's face: a straight line, the size changing."""
    n = spec.frames
    grow = rng.random() < 0.5
    sizes = np.linspace(spec.min_size, spec.max_size, n) if grow else np.linspace(spec.max_size, spec.min_size, n)
    half = spec.max_size / 2 + 4
    if spec.people == 1:
        lo_x, hi_x = half, spec.width - half
    else:
        lo_x, hi_x = (half, spec.width / 2 - half) if person == 0 else (spec.width / 2 + half, spec.width - half)
    lo_y, hi_y = half, spec.height - half
    start = np.array([rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)])
    end = np.array([rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)])
    t = np.linspace(0.0, 1.0, n)[:, None]
    return start + (end - start) * t, sizes


def make_scene(faces: Faces, spec: SceneSpec, seed: int, pool: np.ndarray | None = None) -> Scene:
    """One scene with faces drawn from `pool` (indices into `faces`; default: every FER2013
    training image); the same faces, spec, seed and pool give the same frames."""
    if spec.people not in (1, 2):
        raise ValueError(f"SceneSpec.people is {spec.people}; expected 1 or 2")
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(faces.split == 0) if pool is None else np.asarray(pool)
    chosen = rng.choice(pool, size=spec.people, replace=False)
    background = _background(rng, spec.height, spec.width)
    frames = np.repeat(background[None], spec.frames, axis=0)
    squares = np.full((spec.people, spec.frames, 4), np.nan)
    gap = range(int(spec.gap[0] * spec.frames), int(spec.gap[1] * spec.frames))
    for p, index in enumerate(chosen):
        face = Image.fromarray(faces.images[index])
        centres, sizes = _path(rng, spec, p)
        for i in range(spec.frames):
            if i in gap:
                continue
            side = int(round(sizes[i]))
            x1 = int(round(centres[i, 0] - side / 2))
            y1 = int(round(centres[i, 1] - side / 2))
            pasted = np.asarray(face.resize((side, side), Image.BILINEAR))
            frames[i, y1 : y1 + side, x1 : x1 + side] = pasted[..., None]
            squares[p, i] = (x1, y1, x1 + side, y1 + side)
    return Scene(frames, squares, faces.images[chosen], faces.labels[chosen], spec.fps)


def scene_labels(scene: Scene, person: int) -> np.ndarray:
    """Per-frame EXPR labels of one person: its FER class where visible, -1 elsewhere."""
    labels = np.full(len(scene.frames), IGNORE, np.int64)
    labels[scene.visible(person)] = int(scene.labels[person])
    return labels


def write_scene_corpus(out: Path, faces: Faces, specs: list[SceneSpec], seed: int = 0,
                       split_folder: str = "Train_Set", pool: np.ndarray | None = None) -> list[Scene]:
    """Scenes as videos/scene<k>.mp4 (no audio) + annotations/<split_folder>/scene<k>[_left|_right].txt."""
    scenes = []
    for k, spec in enumerate(specs):
        scene = make_scene(faces, spec, seed + k, pool)
        name = f"scene{k:03d}"
        write_muxed_video(out / "videos" / f"{name}.mp4", scene.frames, scene.fps, None, 16000)
        sides = [""] if spec.people == 1 else ["left", "right"]
        for person, side in enumerate(sides):
            write_annotation(out / "annotations" / split_folder / f"{track_name(name, side)}.txt",
                             scene_labels(scene, person))
        scenes.append(scene)
    return scenes


@dataclass
class SceneScore:
    """How a tracker did on one scene: what the face-tracker goals are measured by."""

    visible: int  # person-frames with a face in view
    found: int  # of those, with a tracked box of IoU >= 0.5
    switches: list[int]  # per person: changes of track id between its found frames
    crops_compared: int
    crops_matched: int  # aligned crops most like their own source face among the candidates

    @property
    def recall(self) -> float:
        return self.found / max(self.visible, 1)

    @property
    def crop_match(self) -> float:
        return self.crops_matched / max(self.crops_compared, 1)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-9))


def expected_crop(image: np.ndarray, square: np.ndarray, landmarks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """What the aligned crop with these landmarks shows if the face in `square` is `image`:
    the source image resampled through crop -> frame -> source, and the mask of crop pixels
    that fall on the pasted square."""
    forward = np.vstack([similarity(np.asarray(landmarks, np.float64), TEMPLATE_112 * (size / 112.0)), [0, 0, 1]])
    k = image.shape[0] / (square[2] - square[0])
    to_source = np.array([[k, 0, -square[0] * k], [0, k, -square[1] * k], [0, 0, 1]])
    crop_to_source = (to_source @ np.linalg.inv(forward))[:2]
    data = tuple(crop_to_source.reshape(-1))
    warped = np.asarray(Image.fromarray(image).transform((size, size), Image.AFFINE, data=data, resample=Image.BILINEAR))
    inside = np.asarray(Image.fromarray(np.full(image.shape, 255, np.uint8)).transform(
        (size, size), Image.AFFINE, data=data, resample=Image.NEAREST)) == 255
    return warped, inside


def score_tracks(scene: Scene, tracks: list, distractors: np.ndarray, crop_size: int = 112,
                 crop_every: int = 5, min_match: float = 0.8) -> SceneScore:
    """Recall at IoU 0.5, identity switches and crop fidelity of face tracks on one scene.

    A crop (aligned from the tracked landmarks in the scene's own frame) matches when its
    normalised correlation, over the pixels that show the pasted square, with what the
    person's own FER image looks like through the same alignment (`expected_crop`) is at
    least `min_match` and higher than with any other face of the scene or `distractors`
    put in the same place."""
    by_frame = [t.by_frame() for t in tracks]
    candidates = np.concatenate([scene.faces, distractors])
    boxes = scene.boxes
    visible = found = compared = matched = 0
    switches = []
    for person in range(len(scene.faces)):
        ids: list[int] = []
        for i in np.flatnonzero(scene.visible(person)):
            visible += 1
            best, best_iou = None, 0.5
            for t, dets in zip(tracks, by_frame, strict=True):
                d = dets.get(int(i))
                if d is not None and iou(d.box, boxes[person, i]) >= best_iou:
                    best, best_iou = (t.id, d), iou(d.box, boxes[person, i])
            if best is None:
                continue
            found += 1
            ids.append(best[0])
            if found % crop_every == 0:
                crop = np.asarray(Image.fromarray(align_face(scene.frames[i], best[1].landmarks, crop_size)).convert("L"))
                scores = []
                for c in candidates:
                    want, inside = expected_crop(c, scene.squares[person, i], best[1].landmarks, crop_size)
                    scores.append(_ncc(crop[inside], want[inside]) if inside.sum() > 16 else -1.0)
                compared += 1
                matched += int(np.argmax(scores) == person and scores[person] >= min_match)
        switches.append(sum(a != b for a, b in zip(ids, ids[1:], strict=False)))
    return SceneScore(visible, found, switches, compared, matched)


def detectable_pool(faces: Faces, detector, count: int, seed: int = 0, split: int = 0) -> tuple[np.ndarray, int]:
    """`count` FER2013 images (indices) in which `detector` finds the face when shown alone,
    at 112 px on a grey canvas, and how many images were tried to find them.

    FER2013 holds profiles, occluded and cartoon faces and a few non-faces that no frontal
    detector finds even alone; scenes built from this pool measure what the scene adds
    (clutter, motion, scale, compression, gaps, two people), and the share found alone is
    reported beside them."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.flatnonzero(faces.split == split))
    side, canvas = 112, 192
    offset = (canvas - side) // 2
    truth = np.array([offset, offset, offset, offset]) + side * np.asarray(FACE_REGION)
    kept: list[int] = []
    tried = 0
    for index in order:
        if len(kept) == count:
            break
        tried += 1
        frame = np.full((canvas, canvas, 3), 128, np.uint8)
        frame[offset : offset + side, offset : offset + side] = np.asarray(
            Image.fromarray(faces.images[index]).resize((side, side), Image.BILINEAR))[..., None]
        found = detector(frame, 0)
        if len(found) == 1 and iou(found[0].box, truth) >= 0.5:
            kept.append(int(index))
    return np.asarray(kept, np.int64), tried
