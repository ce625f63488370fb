"""What every way of starting servers shares, here or as SLURM jobs: the error, progress events, the health and
first-token checks, a log's tail, and which servers answer which roles."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from .presets import Preset, RoleSpec
from .runtime import ServerRecord


class LaunchError(RuntimeError):
    """A server could not be started; the message says why and, if it died, shows its log's tail."""


@dataclass(frozen=True)
class StartEvent:
    """Progress of one server while it starts (for a progress display)."""

    role: str
    state: str  # "starting" | "healthy" | "running" (already up) | "failed"
    elapsed: float
    detail: str = ""


def log_tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def warm_up(rec: ServerRecord, timeout: float = 120.0) -> str | None:
    """Generate one token; returns an error text, or None if it worked.

    /health can answer 200 while the engine cannot run a forward pass (e.g. an unsupported attention
    shape), so a server only counts as up once it has generated something.
    """
    body = json.dumps({"model": rec.model, "prompt": "Hello", "max_tokens": 1, "temperature": 0}).encode()
    req = urllib.request.Request(
        f"{rec.url}/v1/completions", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            json.loads(r.read())
        return None
    except (urllib.error.URLError, OSError, ValueError) as e:
        return f"{type(e).__name__}: {e}"


def owned_specs(preset: Preset, roles: list[str] | None) -> list[RoleSpec]:
    """The servers that answer `roles` (all of the preset's by default): `served_by` roles map to their owner."""
    wanted = set(roles or preset.roles)
    unknown = wanted - set(preset.roles)
    if unknown:
        raise LaunchError(f"unknown role(s) {', '.join(sorted(unknown))}; roles are weak, strong, judge")
    owners = {preset.roles[r].served_by or r for r in wanted}
    return [s for s in preset.own_servers() if s.role in owners]
