"""`mmexpr pack SOURCE OUT`: videos + labels -> WebDataset tar shards + manifest.json per split.

How a run proceeds, and why:

1. `sources.discover` lists the tracks per video and every input it cannot use.
2. Each video is packed by one Ray task (`encode.pack_video`): the local Ray cluster on
   127.0.0.1 by default, or an existing one with `ray_address`. Tasks return bytes to the
   driver, which is the only writer, so workers need no shared filesystem for OUT.
3. The driver stores each finished video as a *part* in `OUT/<split>/.work/<video>.tar`
   (+ `.json` with its counts, written last as the completion marker). An interrupted run
   leaves finished parts behind; re-running packs only the videos without one.
4. When every video of a split is done, parts are concatenated in sorted order into
   `shard-NNNNNN.tar` files of about `shard_mb` MB and the manifest is written; `.work`
   is removed. Shard boundaries depend only on sample sizes, tar headers carry fixed
   metadata (mtime 0, root, 0444) and encoding is single-threaded and bitexact, so the
   same input and settings give byte-identical shards, interrupted or not.

Every file appears under its final name only when complete (write to a dot-temp, then
rename). Nothing already in OUT is replaced without `overwrite=True`: a finished split
with the same settings is left as is, one with other settings is an error.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mmexpr.data.encode import PackSettings, VideoResult, pack_video
from mmexpr.data.manifest import (
    MANIFEST,
    VERSION,
    Manifest,
    ShardInfo,
    read_manifest,
    write_manifest,
)
from mmexpr.data.sources import (
    EXPECTED_SHAPE,
    FACE_MODES,
    Discovery,
    Skipped,
    SourceError,
    VideoJob,
    discover,
    faces_mode,
)
from mmexpr.errors import UserError
from mmexpr.labels import NUM_AUS, NUM_CLASSES, FitResult, warn_fitted
from mmexpr.local_ray import start_ray
from mmexpr.progress import Progress

WORK = ".work"
FACES = ".faces"
SHARD_PATTERN = "shard-{:06d}.tar"


class PackError(UserError, RuntimeError):
    """OUT holds data this run would have to replace; the message says what and how."""


@dataclass
class SplitSummary:
    split: str
    videos: int = 0
    tracks: int = 0
    samples: int = 0
    frames: int = 0
    shards: int = 0
    bytes: int = 0
    faceless: int = 0  # frames without a face (missing crops)
    already_packed: bool = False
    tasks: dict = field(default_factory=dict)  # the manifest's per-task label statistics

    def task_line(self) -> str:
        parts = []
        for task, st in self.tasks.items():
            text = f"{task} {st['tracks']} tracks {st['frames']} frames"
            if task == "va":
                text += f" (mean {st['mean'][0]:+.2f},{st['mean'][1]:+.2f} std {st['std'][0]:.2f},{st['std'][1]:.2f})"
            if task == "au":
                text += f" (positive rate {min(st['positive_rate']):.2f}..{max(st['positive_rate']):.2f})"
            parts.append(text)
        return f"  {self.split}: " + "; ".join(parts)


@dataclass
class PackSummary:
    out: str
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    packed_frames: int = 0  # frames encoded in this run (0 if everything was already there)
    packed_seconds_of_video: float = 0.0
    faceless: list[str] = field(default_factory=list)  # tracks in which no face was found

    def __str__(self) -> str:
        if self.splits and all(s.already_packed for s in self.splits.values()):
            lines = [f"{self.out}: already packed with these settings, nothing to do"]
        else:
            lines = [f"packed into {self.out} in {self.seconds:.1f} s"]
        lines.append(f"  {'split':<12}{'videos':>8}{'tracks':>8}{'samples':>9}{'frames':>10}{'no face':>9}"
                     f"{'shards':>8}{'MB':>9}")
        for s in self.splits.values():
            note = "  (already packed)" if s.already_packed else ""
            lines.append(
                f"  {s.split:<12}{s.videos:>8}{s.tracks:>8}{s.samples:>9}{s.frames:>10}{s.faceless:>9}{s.shards:>8}"
                f"{s.bytes / 1e6:>9.2f}{note}"
            )
        lines += [s.task_line() for s in self.splits.values() if s.tasks]
        if self.faceless:
            lines.append(f"no face in any frame of {len(self.faceless)} track(s) (packed with face 0, audio kept):")
            lines += [f"  {name}" for name in self.faceless]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} input(s):")
            lines += [f"  {s.path}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)


# ---------------------------------------------------------------- deterministic tar files


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))


def _member_bytes(data: bytes) -> int:
    return 512 + -(-len(data) // 512) * 512


def _atomic_write(path: Path, write) -> None:
    """Run write(tmp_path), then rename to `path`: a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    tmp.replace(path)


def _write_tar(path: Path, samples: Iterable[tuple[str, dict[str, bytes]]]) -> None:
    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
            for key, members in samples:
                for ext in sorted(members):
                    _add(tar, f"{key}.{ext}", members[ext])

    _atomic_write(path, write)


def _read_tar_samples(path: Path) -> list[tuple[str, dict[str, bytes]]]:
    """Samples of a part file in order, grouped by key."""
    out: list[tuple[str, dict[str, bytes]]] = []
    with tarfile.open(path) as tar:
        for info in tar:
            key, ext = info.name.split(".", 1)
            data = tar.extractfile(info).read()
            if not out or out[-1][0] != key:
                out.append((key, {}))
            out[-1][1][ext] = data
    return out


# ---------------------------------------------------------------- parts (one per video)


def _part_paths(split_dir: Path, video: str) -> tuple[Path, Path]:
    work = split_dir / WORK
    return work / f"{video}.tar", work / f"{video}.json"


def _write_part(split_dir: Path, result: VideoResult, job: VideoJob) -> dict:
    tar_path, meta_path = _part_paths(split_dir, result.video)
    _write_tar(tar_path, ((s.key, s.members) for s in result.samples))
    meta = {
        "video": result.video,
        "frames": result.frames,
        "seconds": result.frames / float(json.loads(result.samples[0].members["json"])["fps"]) if result.samples else 0.0,
        "tracks": sorted({json.loads(s.members["json"])["track"] for s in result.samples}),
        "samples": [
            {
                "key": s.key,
                "frames": s.frames,
                "label_counts": s.label_counts,
                "track": json.loads(s.members["json"])["track"],
                "task_stats": s.task_stats,
                "faceless": s.faceless,
                "bytes": sum(_member_bytes(d) for d in s.members.values()),
            }
            for s in result.samples
        ],
        "skipped": [{"path": p, "reason": r} for p, r in result.skipped],
        "fitted": [[name, f.padded, f.truncated] for name, f in result.fitted],
        "faceless": sorted(result.faceless),
    }
    _atomic_write(meta_path, lambda tmp: tmp.write_text(json.dumps(meta, sort_keys=True)))
    return meta


def _read_part_meta(split_dir: Path, video: str) -> dict | None:
    _, meta_path = _part_paths(split_dir, video)
    return json.loads(meta_path.read_text()) if meta_path.is_file() else None


# ---------------------------------------------------------------- what OUT already holds


def _run_settings(settings: PackSettings, shard_mb: float) -> dict:
    return {**settings.to_dict(), "shard_mb": shard_mb, "format_version": VERSION}


def inputs_digest(jobs: list[VideoJob]) -> str:
    """Which inputs a split was packed from (names, sizes, labels), so that shards of another
    corpus at the same OUT are never taken for "already packed". Paths are left out: a
    corpus moved elsewhere is still the same corpus."""
    h = hashlib.sha256()
    for job in sorted(jobs, key=lambda j: j.video):
        h.update(f"{job.video}\0{os.path.getsize(job.path)}\0".encode())
        for track in job.tracks:
            h.update(f"{track.name}\0".encode())
            h.update(np.asarray(track.labels, np.int64).tobytes())
            for task, values in (("va", track.va), ("au", track.au)):
                if values is not None:  # absent for EXPR-only corpora, whose digest stays as it was
                    h.update(f"{task}\0".encode() + np.ascontiguousarray(values).tobytes())
    return h.hexdigest()[:16]


def _differences(stored: dict | None, run: dict) -> str:
    if not isinstance(stored, dict):
        return "unreadable stored settings"
    keys = sorted(k for k in set(stored) | set(run) if stored.get(k) != run.get(k))
    return ", ".join(f"{k}: packed {stored.get(k)!r}, asked {run.get(k)!r}" for k in keys)


def _prepare_split(split_dir: Path, run: dict, overwrite: bool) -> bool:
    """True if the split is already packed with these settings; raises if OUT would be clobbered."""
    manifest = split_dir / MANIFEST
    work_settings = split_dir / WORK / "settings.json"
    if overwrite and split_dir.is_dir():
        for path in split_dir.glob("shard-*.tar"):
            path.unlink()
        manifest.unlink(missing_ok=True)
        shutil.rmtree(split_dir / WORK, ignore_errors=True)
    if manifest.is_file():
        try:
            stored = json.loads(manifest.read_text()).get("settings")
        except json.JSONDecodeError:
            stored = None
        if stored == run:
            return True
        raise PackError(
            f"{manifest}: this split is already packed with other settings ({_differences(stored, run)}); "
            "pass --overwrite to replace it, or choose another OUT"
        )
    if work_settings.is_file():
        if json.loads(work_settings.read_text()) != run:
            raise PackError(
                f"{work_settings}: an unfinished pack with other settings is here; "
                "re-run with those settings to finish it, or pass --overwrite to start again"
            )
        return False
    if any(split_dir.glob("shard-*.tar")):
        raise PackError(f"{split_dir}: holds shards without a manifest or pack state; pass --overwrite to replace them")
    (split_dir / WORK).mkdir(parents=True, exist_ok=True)
    _atomic_write(work_settings, lambda tmp: tmp.write_text(json.dumps(run)))
    return False


# ---------------------------------------------------------------- Ray


def _start_ray(ray_address: str | None, num_cpus: int | None) -> bool:
    """Connect to Ray; start a loopback-only local cluster unless one is given. True if started."""
    return start_ray(ray_address, num_cpus=num_cpus, log_to_driver=False)


def _faces_cache(out: Path, video: str) -> Path:
    """Detections of one video, kept beside the splits: `--overwrite` replaces shards, not them
    (the detections depend on the video and the detector settings, both checked on use)."""
    return out / FACES / f"{video}.json"


def _with_cached_faces(job: VideoJob, out: Path) -> VideoJob:
    path = _faces_cache(out, job.video)
    return replace(job, faces=path.read_text()) if path.is_file() else job


def _keep_faces(out: Path, result: VideoResult) -> None:
    if result.faces:
        path = _faces_cache(out, result.video)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, lambda tmp: tmp.write_text(result.faces))


def _run_tasks(jobs: list[VideoJob], settings: PackSettings, out: Path, progress: bool, ray_address, num_cpus) -> dict:
    """Pack `jobs` as Ray tasks; write each video's part as soon as it arrives. Returns metas."""
    metas: dict[str, dict] = {}
    started = _start_ray(ray_address, num_cpus)
    import ray  # lazy: Ray only after local_ray.start_ray (it sets env Ray reads at import)

    try:
        task = ray.remote(num_cpus=1, max_retries=1)(pack_video)
        pending = {task.remote(_with_cached_faces(job, out), settings): job for job in jobs}
        sizes = [max(len(t.labels) for t in job.tracks) for job in jobs]
        total_frames = sum(sizes) if all(sizes) else None  # a test-list video's length is known once packed
        videos = 0
        with Progress(total_frames, "pack", "frame", enabled=progress) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(done[0])
                try:
                    result: VideoResult = ray.get(done[0])
                except Exception as exc:  # a crashed task must not stop the run
                    result = VideoResult(job.video, job.split, skipped=[(job.path, f"pack task failed: {exc}")])
                _keep_faces(out, result)
                metas[job.video] = _write_part(out / job.split, result, job)
                videos += 1
                bar.update(result.frames, videos=f"{videos}/{len(jobs)}")
    finally:
        if started:
            ray.shutdown()
    return metas


# ---------------------------------------------------------------- shards + manifest


def _assemble(split: str, split_dir: Path, jobs: list[VideoJob], metas: dict[str, dict], run: dict,
              skipped: list[Skipped], listed: list[str] | None = None) -> Manifest:
    limit = float(run["shard_mb"]) * 1e6
    groups: list[list[tuple[str, dict]]] = [[]]  # per shard: (video, sample meta)
    size = 0
    for job in jobs:
        for sample in metas[job.video]["samples"]:
            if groups[-1] and size + sample["bytes"] > limit:
                groups.append([])
                size = 0
            groups[-1].append((job.video, sample))
            size += sample["bytes"]
    groups = [g for g in groups if g]
    cache: dict[str, dict[str, dict[str, bytes]]] = {}

    def members(video: str, key: str) -> dict[str, bytes]:
        if video not in cache:
            cache.clear()  # parts are read one at a time, in order
            cache[video] = dict(_read_tar_samples(_part_paths(split_dir, video)[0]))
        return cache[video][key]

    shards = []
    for index, group in enumerate(groups):
        name = SHARD_PATTERN.format(index)
        path = split_dir / name
        _write_tar(path, ((s["key"], members(v, s["key"])) for v, s in group))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        shards.append(
            ShardInfo(
                url=name,
                samples=len(group),
                frames=sum(s["frames"] for _, s in group),
                bytes=path.stat().st_size,
                sha256=digest,
                keys=tuple(s["key"] for _, s in group),
                sample_frames=tuple(s["frames"] for _, s in group),
            )
        )
    histogram = np.zeros(NUM_CLASSES + 1, np.int64)
    for job in jobs:
        for sample in metas[job.video]["samples"]:
            histogram += np.asarray(sample["label_counts"])
    tracks = sorted({t for job in jobs for t in metas[job.video]["tracks"]})
    faceless: dict[str, int] = {t: 0 for t in tracks}
    for job in jobs:
        for sample in metas[job.video]["samples"]:
            faceless[sample["track"]] += int(sample.get("faceless", 0))
    extra = {
        "videos": sum(1 for job in jobs if metas[job.video]["samples"]),
        "faceless_frames": {"total": sum(faceless.values()), "tracks": faceless},
        "tasks": split_task_stats([sample for job in jobs for sample in metas[job.video]["samples"]]),
        "faceless_tracks": sorted(t for job in jobs for t in metas[job.video].get("faceless", [])),
    }
    if listed is not None:
        packed = set(tracks)
        extra["test_list"] = {"tracks": listed, "missing": [t for t in listed if t not in packed]}
    return Manifest(
        split=split,
        root=str(split_dir),
        shards=tuple(shards),
        settings=run,
        label_histogram=histogram.tolist(),
        tracks=tuple(tracks),
        skipped=tuple(s.to_dict() for s in skipped),
        extra=extra,
    )


def split_task_stats(samples: list[dict]) -> dict:
    """Per task: tracks and labelled frames; VA mean/std, AU positive rates (manifest "tasks")."""
    expr_tracks = {s["track"] for s in samples if sum(s["label_counts"][:NUM_CLASSES])}
    out: dict[str, dict] = {
        "expr": {"tracks": len(expr_tracks), "frames": int(sum(sum(s["label_counts"][:NUM_CLASSES]) for s in samples))}
    }
    va = [s["task_stats"]["va"] for s in samples if "va" in s.get("task_stats", {})]
    if va:
        n, sv, sa, svv, saa = np.asarray(va, np.float64).sum(axis=0)
        mean = [sv / n, sa / n] if n else [0.0, 0.0]
        std = [float(np.sqrt(max(0.0, q / n - m * m))) if n else 0.0 for q, m in ((svv, mean[0]), (saa, mean[1]))]
        out["va"] = {"tracks": len({s["track"] for s in samples if "va" in s.get("task_stats", {})}),
                     "frames": int(n), "mean": [round(float(m), 6) for m in mean], "std": [round(x, 6) for x in std]}
    au = [s["task_stats"]["au"] for s in samples if "au" in s.get("task_stats", {})]
    if au:
        sums = np.asarray(au, np.int64).sum(axis=0)
        known, positive = sums[:NUM_AUS], sums[NUM_AUS:]
        rates = np.divide(positive, known, out=np.zeros(NUM_AUS), where=known > 0)
        out["au"] = {"tracks": len({s["track"] for s in samples if "au" in s.get("task_stats", {})}),
                     "frames": int(known.max()), "known": known.tolist(), "positives": positive.tolist(),
                     "positive_rate": [round(float(r), 6) for r in rates]}
    return out


def _split_skipped(found: Discovery, split: str, metas: dict[str, dict], jobs: list[VideoJob]) -> list[Skipped]:
    """Inputs this split left out: its own annotation or test-list problems, video problems,
    and the ones of no one split."""
    own = [s for s in found.skipped if s.split == split]
    task_skips = [Skipped(d["path"], d["reason"], split) for job in jobs for d in metas[job.video]["skipped"]]
    return own + task_skips + [s for s in found.skipped if not s.split]


def pack_corpus(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    splits: list[str] | None = None,
    chunk_frames: int = PackSettings.chunk_frames,
    face_size: int = PackSettings.face_size,
    shard_mb: float = 256,
    overwrite: bool = False,
    ray_address: str | None = None,
    progress: bool = True,
    num_cpus: int | None = None,
    annotations: str | os.PathLike | None = None,
    test_list: str | os.PathLike | None = None,
    faces: str | None = None,
    min_face: int = PackSettings.min_face,
) -> PackSummary:
    """Pack SOURCE (Aff-Wild2 layout) into OUT/<split>/shard-*.tar + manifest.json; with
    `test_list`, also split `test`: the listed tracks, every label -1. `faces`: "detect" or
    "frame" for tracks without `cropped_aligned/` (None: `faces_mode`)."""
    if chunk_frames < 1 or face_size < 16 or face_size % 2 or shard_mb <= 0 or min_face < 12:
        raise UserError(
            f"pack settings: chunk_frames={chunk_frames} (>= 1), face_size={face_size} (even, >= 16), "
            f"shard_mb={shard_mb} (> 0), min_face={min_face} (>= 12)"
        )
    faces = faces or faces_mode(source)
    if faces not in FACE_MODES:
        raise UserError(f"pack settings: faces={faces!r}; expected one of {', '.join(FACE_MODES)}")
    begin = time.perf_counter()
    settings = PackSettings(chunk_frames=chunk_frames, face_size=face_size, faces=faces, min_face=min_face)
    run = _run_settings(settings, shard_mb)
    found = discover(source, splits, annotations=annotations, test_list=test_list)
    if not found.jobs:
        reasons = "\n".join(f"  {s.path}: {s.reason}" for s in found.skipped) or "  (no annotation files)"
        raise SourceError(f"{source}: nothing packable\n{reasons}\n  {EXPECTED_SHAPE}")
    out = Path(out)
    summary = PackSummary(out=str(out))
    jobs_by_split = {split: [j for j in found.jobs if j.split == split] for split in found.splits()}
    todo_splits = []
    split_runs = {split: {**run, "inputs": inputs_digest(jobs)} for split, jobs in jobs_by_split.items()}
    for split, jobs in jobs_by_split.items():
        if _prepare_split(out / split, split_runs[split], overwrite):
            summary.splits[split] = _summary_from_manifest(out / split, split, jobs)
        else:
            todo_splits.append(split)
    metas: dict[str, dict] = {}
    missing: list[VideoJob] = []
    for split in todo_splits:
        for job in jobs_by_split[split]:
            meta = _read_part_meta(out / split, job.video)
            if meta is None:
                missing.append(job)
            else:
                metas[job.video] = meta
    if missing:
        metas.update(_run_tasks(missing, settings, out, progress, ray_address, num_cpus))
        summary.packed_frames = sum(metas[j.video]["frames"] for j in missing)
        summary.packed_seconds_of_video = sum(metas[j.video]["seconds"] for j in missing)
    warn_fitted(
        [(n, FitResult(np.zeros(0, np.int64), p, t)) for m in metas.values() for n, p, t in m["fitted"]]
    )
    for split in todo_splits:
        jobs = jobs_by_split[split]
        skipped = _split_skipped(found, split, metas, jobs)
        summary.skipped += [s for s in skipped if s not in summary.skipped]
        summary.faceless += sorted(t for j in jobs for t in metas[j.video].get("faceless", []))
        if not any(metas[j.video]["samples"] for j in jobs):
            summary.splits[split] = SplitSummary(split)
            continue
        listed = found.test_tracks if split == "test" and test_list is not None else None
        manifest = _assemble(split, out / split, jobs, metas, split_runs[split], skipped, listed)
        write_manifest(manifest, out / split)
        shutil.rmtree(out / split / WORK, ignore_errors=True)
        summary.splits[split] = SplitSummary(
            split,
            videos=manifest.extra["videos"],
            tracks=len(manifest.tracks),
            samples=manifest.samples,
            frames=manifest.frames,
            shards=len(manifest.shards),
            bytes=sum(s.bytes for s in manifest.shards),
            tasks=manifest.task_stats(),
            faceless=manifest.extra["faceless_frames"]["total"],
        )
    if not any(s.samples or s.already_packed for s in summary.splits.values()):
        raise SourceError(f"{source}: nothing packable\n" + "\n".join(f"  {s.path}: {s.reason}" for s in summary.skipped))
    summary.seconds = time.perf_counter() - begin
    return summary


def _summary_from_manifest(split_dir: Path, split: str, jobs: list[VideoJob]) -> SplitSummary:
    m = read_manifest(split_dir / MANIFEST)
    return SplitSummary(
        split,
        videos=int(m.extra.get("videos", len(jobs))),
        tracks=len(m.tracks),
        samples=m.samples,
        frames=m.frames,
        shards=len(m.shards),
        bytes=sum(s.bytes for s in m.shards),
        faceless=int(m.extra.get("faceless_frames", {}).get("total", 0)),
        already_packed=True,
        tasks=m.task_stats(),
    )
