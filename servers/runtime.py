"""The runtime file: which servers this workspace started, for which roles, at which URLs.

`cdw serve` writes it, `cdw serve --stop` reads the recorded pids and SLURM job ids from it (and stops nothing
else), and the client reads it to find endpoints when none are given by flag or environment variable. Writers
take an exclusive lock and replace the file atomically, so two `cdw serve` at once cannot corrupt it.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from .settings import paths


def process_started(pid: int) -> float:
    """When process `pid` started, in seconds since this machine booted (psutil.Error if there is no such process).
    A wall-clock start time moves when the clock is stepped (NTP, a virtual machine paused or moved): in one test run
    every live server then looked like another process, "exited while starting", and was left running."""
    return psutil.Process(pid).create_time() - psutil.boot_time()


@dataclass(frozen=True)
class ServerRecord:
    preset: str
    role: str  # the role that owns the process
    serves: tuple[str, ...]  # every role this server answers (e.g. strong and judge)
    url: str  # base URL, without /v1
    model: str  # the name the server announces in /v1/models
    model_path: str
    source: str  # where the model came from (hub id, PyPI packages, built locally)
    pid: int
    create_time: float  # when the process started, by the wall clock (as psutil says it)
    log: str
    started_at: float
    notes: dict[str, str] = field(default_factory=dict)  # role -> why this server answers it
    max_in_flight: int | None = None  # the preset's cap on concurrent requests to this server
    request_timeout: float | None = None  # the preset's time limit for one request to this server
    job_id: str | None = None  # the SLURM job running it (`cdw serve --slurm`); its pid is then on `node`
    node: str = ""
    # When the process started, in seconds since this machine booted (`process_started`): guards against stopping an
    # unrelated process that reused the pid. None in runtime files written before it (create_time is compared then).
    since_boot: float | None = None
    # How the server decodes, as the launcher started it (`launcher.engine_facts`): generation config, batch
    # invariance, vLLM platform and version. Records say it (`Header.decoding`).
    engine: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JobRecord:
    """A SLURM job `cdw serve --slurm` submitted: what `--stop` cancels and `cdw status` reports."""

    job_id: str
    name: str  # cdw-<preset>-<roles>[-<replica>]
    preset: str
    roles: tuple[str, ...]  # the roles whose servers it runs (owners, as in ServerRecord.role)
    replica: int
    script: str
    log: str  # the job's own output (SLURM's --output); each server's vLLM log is in run_dir
    run_dir: str  # the job's runtime folder: its launcher's servers.json says where its servers listen
    submitted_at: float
    gpus: int = 0


@dataclass(frozen=True)
class RuntimeState:
    active: str | None  # the preset whose servers the client uses by default
    servers: tuple[ServerRecord, ...]
    jobs: tuple[JobRecord, ...] = ()

    def for_role(self, role: str, preset: str | None = None) -> list[ServerRecord]:
        preset = preset or self.active
        return [s for s in self.servers if s.preset == preset and role in s.serves]


def _file() -> Path:
    return paths().run / "servers.json"


def read_state(path: Path | None = None) -> RuntimeState:
    """Read the runtime file (or another one, e.g. a SLURM job's own); a missing file means nothing was started."""
    f = path or _file()
    if not f.exists():
        return RuntimeState(active=None, servers=())
    try:
        raw = json.loads(f.read_text())
        servers = tuple(ServerRecord(**{**s, "serves": tuple(s["serves"])}) for s in raw.get("servers", []))
        jobs = tuple(JobRecord(**{**j, "roles": tuple(j["roles"])}) for j in raw.get("jobs", []))
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise RuntimeError(f"{f} is not a valid runtime file ({e}); delete it after stopping servers by hand") from e
    return RuntimeState(active=raw.get("active"), servers=servers, jobs=jobs)


def _write(state: RuntimeState) -> None:
    f = _file()
    tmp = f.with_suffix(f".tmp{os.getpid()}")
    data = {
        "active": state.active,
        "servers": [asdict(s) for s in state.servers],
        "jobs": [asdict(j) for j in state.jobs],
    }
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(f)


@contextmanager
def locked_state() -> Iterator[list]:
    """Read-modify-write the runtime file under an exclusive lock.

    Yields a one-element list holding the current state; assign a new `RuntimeState` to `box[0]` and it is
    written when the block exits without error.
    """
    run = paths().run
    run.mkdir(parents=True, exist_ok=True)
    with (run / "servers.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        box = [read_state()]
        before = box[0]
        yield box
        if box[0] is not before:
            _write(box[0])
