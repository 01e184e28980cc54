"""`mmexpr bench faces`: how fast, per core, is the face tracker at 640x360, and does it find the faces?

One run, one set of FER2013 scenes (`synth/scenes.py`, 640x360 H.264, one and two people,
a stretch without faces), single-threaded (torch and the decoder on one thread), timed in
CPU seconds of this process:

- baseline: decoding every frame of the scenes to RGB, nothing else (PyAV, the decoder
  `pack` uses);
- faces: `faces.video.detect_video` over the same files: decoding, MTCNN on every frame,
  linking and smoothing the tracks;
- tracking alone: `faces.track.link` over the detections the run found, to show where the
  time goes.

Printed: the ratio of face-tracking to decode-only frames/s (goal 0.01: detection may cost up
to a hundred decodes, which keeps an Aff-Wild2-sized corpus within hours on one node),
tracking's share of the time,
recall at IoU 0.5 and the identity switches on the same scenes, and the projected wall time
of face tracking for an Aff-Wild2-sized corpus (2.6 M frames) on a 16-core node, one video
per core.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mmexpr.bench.table import Ratio, print_table
from mmexpr.faces.detect import Detector, DetectorSettings
from mmexpr.faces.track import link
from mmexpr.faces.video import detect_video, rgb_frames
from mmexpr.synth.real import load_faces, require_shared_data, write_muxed_video
from mmexpr.synth.scenes import SceneSpec, detectable_pool, make_scene, score_tracks

AFF_WILD2_FRAMES = 2_600_000


def _cpu() -> float:
    return time.process_time()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mmexpr bench faces", description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=4, help="scenes, alternately one and two people")
    p.add_argument("--frames", type=int, default=100, help="frames per scene")
    p.add_argument("--min-face", type=int, default=None, help="detector's smallest face side (default: its own)")
    p.add_argument("--cores", type=int, default=16, help="cores of the node the projection is for")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    faces = load_faces(require_shared_data())
    settings = DetectorSettings() if args.min_face is None else DetectorSettings(min_face=args.min_face)
    detector = Detector(settings)
    pool, tried = detectable_pool(faces, detector, 4 * args.scenes, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        scenes, paths = [], []
        for k in range(args.scenes):
            scene = make_scene(faces, SceneSpec(people=1 + k % 2, frames=args.frames), args.seed + k, pool)
            scenes.append(scene)
            paths.append(write_muxed_video(Path(tmp) / f"scene{k}.mp4", scene.frames, scene.fps, None, 16000))
        frames = sum(len(s.frames) for s in scenes)

        begin = _cpu()
        decoded = sum(1 for path in paths for _ in rgb_frames(str(path)))
        decode_fps = decoded / (_cpu() - begin)

        begin = _cpu()
        results = [detect_video(path, detector) for path in paths]
        faces_fps = frames / (_cpu() - begin)

        per_frame_runs = []
        for path in paths:
            per_frame_runs.append([detector(rgb, i) for i, rgb in enumerate(rgb_frames(str(path)))])
        begin = _cpu()
        for per_frame in per_frame_runs:
            link(per_frame)
        link_seconds = _cpu() - begin

    scores = [score_tracks(s, r.tracks, faces.images[:0], crop_every=10**9) for s, r in zip(scenes, results, strict=True)]
    recall = sum(s.found for s in scores) / max(sum(s.visible for s in scores), 1)
    switches = max(max(s.switches) for s in scores)
    total_seconds = frames / faces_fps
    hours = AFF_WILD2_FRAMES / (faces_fps * args.cores) / 3600
    print_table(
        f"faces: MTCNN (min_face {settings.min_face}) + tracker at 640x360, one core, {args.scenes} scenes x {args.frames} frames",
        [
            Ratio("face tracking vs decoding alone (frames/s)", faces_fps / decode_fps, 0.01, True,
                  f"{faces_fps:.1f} vs {decode_fps:.0f} frames/s/core"),
            Ratio("tracking's share of the face-tracking time", link_seconds / total_seconds, 0.05, False,
                  f"{link_seconds * 1000:.0f} ms of {total_seconds:.1f} s"),
            Ratio("recall at IoU 0.5", recall, 0.9, True, f"{sum(s.found for s in scores)} of {sum(s.visible for s in scores)} person-frames"),
            Ratio("most identity switches in one video", float(switches), 1.0, False,
                  "per person: " + " ".join(str(s.switches) for s in scores)),
        ],
        notes=[
            f"projected: {AFF_WILD2_FRAMES / 1e6:.1f} M frames (Aff-Wild2) on a {args.cores}-core node, one video per "
            f"core: {hours:.1f} h of face tracking ({faces_fps * args.cores:.0f} frames/s)",
            f"scene faces: FER2013 training images the detector finds alone ({len(pool)} of the {tried} tried, "
            f"{len(pool) / max(tried, 1):.0%})",
            "a switch is also counted where a person comes back after the scenes' no-face stretch "
            "(longer than the tracker's max_gap, so a new identity by design)",
            "CPU seconds of this process; on a machine whose cores are shared, wall time is longer",
        ],
    )
    return 0 if np.isfinite(faces_fps) else 1


if __name__ == "__main__":
    raise SystemExit(main())
