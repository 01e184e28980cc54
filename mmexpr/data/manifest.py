"""`<shards>/<split>/manifest.json`: what a split's shards hold, so loaders never scan tars.

It lists every shard (relative URL, samples, frames, bytes, sha256, and each sample's key
and frame count, from which the loader plans epochs exactly), the label histogram, the
pack settings, every skipped input with its reason, and a format version. The shard
folder may be local or any fsspec URL (`s3://bucket/shards`); shard URLs are resolved
against the manifest's folder unless they carry their own scheme.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

from mmexpr.errors import UserError

FORMAT = "mmexpr-shards"
VERSION = 1
MANIFEST = "manifest.json"


class ManifestError(UserError, ValueError):
    """A manifest that is missing, unreadable or of another format version."""


@dataclass(frozen=True)
class ShardInfo:
    url: str  # as written: relative to the manifest folder, or absolute/with scheme
    samples: int
    frames: int
    bytes: int
    sha256: str
    keys: tuple[str, ...]
    sample_frames: tuple[int, ...]

    def to_dict(self) -> dict:
        return {
            "url": self.url,
            "samples": self.samples,
            "frames": self.frames,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "keys": list(self.keys),
            "sample_frames": list(self.sample_frames),
        }


@dataclass(frozen=True)
class Manifest:
    split: str
    root: str  # the folder (or URL) the manifest was read from
    shards: tuple[ShardInfo, ...]
    settings: dict
    label_histogram: list[int]  # per class 0..7, then ignored frames
    tracks: tuple[str, ...]
    skipped: tuple[dict, ...] = ()
    version: int = VERSION
    extra: dict = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.shards)

    @property
    def sample_rate(self) -> int:
        return int(self.settings["sample_rate"])

    @property
    def face_size(self) -> int:
        return int(self.settings["face_size"])

    def class_counts(self) -> list[int]:
        """Labelled frames per class, for class weights."""
        return list(self.label_histogram[:8])

    def task_stats(self) -> dict:
        """Per task: tracks, labelled frames, VA mean/std, AU positive rates (empty: old manifest)."""
        return dict(self.extra.get("tasks", {}))

    def au_positive_rates(self) -> list[float] | None:
        """Share of known frames on which each AU is active, for BCE positive weights."""
        au = self.task_stats().get("au")
        return list(au["positive_rate"]) if au else None

    def url(self, shard: ShardInfo) -> str:
        """Where to open a shard: its own URL if absolute, else relative to the manifest folder."""
        if "://" in shard.url or shard.url.startswith(("/", "pipe:")):
            return shard.url
        return f"{self.root.rstrip('/')}/{shard.url}"

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": self.version,
            "split": self.split,
            "samples": self.samples,
            "frames": self.frames,
            "settings": self.settings,
            "label_histogram": self.label_histogram,
            "tracks": list(self.tracks),
            "shards": [s.to_dict() for s in self.shards],
            "skipped": list(self.skipped),
            **self.extra,
        }


def manifest_path(shards_root: str, split: str) -> str:
    return f"{str(shards_root).rstrip('/')}/{split}/{MANIFEST}"


def _read_text(path: str) -> str:
    if "://" not in path:
        local = Path(path)
        if not local.is_file():
            raise ManifestError(f"{path}: manifest not found; pack the split first (mmexpr pack SOURCE OUT)")
        return local.read_text()

    try:
        with fsspec.open(path, "rt") as f:
            return f.read()
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest not found; pack the split first (mmexpr pack SOURCE OUT)") from None


def read_manifest(path: str | Path) -> Manifest:
    """Read and check one manifest; errors name the file and what is wrong."""
    path = str(path)
    text = _read_text(path)
    try:
        tree = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(tree, dict) or tree.get("format") != FORMAT:
        raise ManifestError(f"{path}: not an mmexpr shard manifest (expected \"format\": \"{FORMAT}\")")
    if tree.get("version") != VERSION:
        raise ManifestError(
            f"{path}: format version {tree.get('version')!r}, this mmexpr reads version {VERSION}; "
            "re-pack the corpus with this version (mmexpr pack --overwrite)"
        )
    try:
        shards = tuple(
            ShardInfo(
                url=s["url"],
                samples=int(s["samples"]),
                frames=int(s["frames"]),
                bytes=int(s["bytes"]),
                sha256=str(s["sha256"]),
                keys=tuple(s["keys"]),
                sample_frames=tuple(int(f) for f in s["sample_frames"]),
            )
            for s in tree["shards"]
        )
        known = {"format", "version", "split", "samples", "frames", "settings", "label_histogram", "tracks", "shards", "skipped"}
        return Manifest(
            split=str(tree["split"]),
            root=path.rsplit("/", 1)[0] if "/" in path else ".",
            shards=shards,
            settings=dict(tree["settings"]),
            label_histogram=[int(v) for v in tree["label_histogram"]],
            tracks=tuple(tree["tracks"]),
            skipped=tuple(tree.get("skipped", ())),
            extra={k: v for k, v in tree.items() if k not in known},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"{path}: missing or invalid field {exc}") from None


def write_manifest(manifest: Manifest, folder: Path) -> Path:
    """Write atomically (temp file, then rename): a manifest exists only for a finished split."""
    path = folder / MANIFEST
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest.to_dict(), indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
    return path
