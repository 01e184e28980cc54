"""Where a job runs, from the `--on` option: local, a Ray cluster (Jobs API) or SLURM.

Parsed once at the edge so that the rest of the code gets a plain, checked value.
`ray://HOST:PORT` is the address people copy from Ray's docs (the Ray Client port); jobs
are submitted through the Jobs API, which lives on the same host's dashboard (port 8265),
so that form is mapped to `http://HOST:8265`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from mmexpr.errors import UserError

DASHBOARD_PORT = 8265


class TargetError(UserError, ValueError):
    """An `--on` value that names no place a job can run."""


@dataclass(frozen=True)
class Target:
    kind: Literal["local", "ray", "slurm"]
    address: str = ""  # for ray: the Jobs API base URL, http(s)://HOST:PORT

    def __str__(self) -> str:
        return self.address or self.kind


def parse_target(text: str) -> Target:
    """`local` | `slurm` | `ray://HOST[:PORT]` | `http(s)://HOST[:PORT]` -> Target."""
    text = text.strip()
    if text in ("local", "slurm"):
        return Target(text)
    parts = urlsplit(text)
    if parts.scheme in ("ray", "http", "https") and parts.hostname:
        if parts.path not in ("", "/"):
            raise TargetError(f"--on {text}: expected no path after HOST:PORT")
        try:
            port = parts.port
        except ValueError as exc:
            raise TargetError(f"--on {text}: {exc}") from None
        if parts.scheme == "ray":
            return Target("ray", f"http://{_host(parts.hostname)}:{DASHBOARD_PORT}")
        return Target("ray", f"{parts.scheme}://{_host(parts.hostname)}:{port or DASHBOARD_PORT}")
    raise TargetError(
        f"--on {text}: expected local, slurm, ray://HOST:PORT or http://HOST:8265 (the Ray dashboard)"
    )


def _host(name: str) -> str:
    return f"[{name}]" if ":" in name else name
