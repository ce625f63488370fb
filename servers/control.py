"""Start, stop and report a preset's servers, on this machine (`launcher`) or as SLURM jobs (`cluster`).

The shells (`cdw serve`, `cdw status`) and tests come here rather than choosing between the two themselves;
`launcher` and `cluster` never import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import cluster, launcher
from .cluster import JobReport
from .presets import Catalog
from .runtime import JobRecord, ServerRecord, read_state
from .startup import LaunchError, StartEvent


def start(
    preset: str,
    roles: list[str] | None = None,
    *,
    slurm: bool = False,
    data_parallel: dict[str, int] | None = None,
    host: str | None = None,
    timeout: float = 900.0,
    on_event: Callable[[StartEvent], None] = lambda e: None,
    catalog: Catalog | None = None,
    **job_args,
) -> list[ServerRecord]:
    """Start `roles` of `preset` (all by default) here, or with `slurm` as SLURM jobs, and wait until every server
    is healthy; returns their records. `job_args` (options, replicas, gpus_per_role, cpus_per_role, resume,
    queue_timeout, python) are `cluster.serve_slurm`'s and need `slurm`."""
    common = dict(data_parallel=data_parallel, timeout=timeout, on_event=on_event, catalog=catalog)
    if slurm:
        return cluster.serve_slurm(preset, roles, host=host, **common, **job_args)
    if job_args:
        raise LaunchError(f"{', '.join(sorted(job_args))}: for SLURM jobs only (slurm=True)")
    return launcher.serve(preset, roles, host=host or launcher.HOST, **common)


@dataclass(frozen=True)
class Stopped:
    servers: tuple[ServerRecord, ...]  # every server record removed (processes here, servers in jobs)
    jobs: tuple[JobRecord, ...]  # the SLURM jobs cancelled


def stop(preset: str | None = None) -> Stopped:
    """Stop every server this workspace started (or one preset's): cancel its recorded SLURM jobs (by job id),
    stop its recorded processes here, and remove their records."""
    state = read_state()
    jobs = tuple(j for j in state.jobs if preset is None or j.preset == preset)
    records = [r for r in state.servers if preset is None or r.preset == preset]
    if jobs:
        cluster.cancel_jobs(list(jobs))
    return Stopped(tuple(launcher.stop(records=records)), jobs)


@dataclass(frozen=True)
class Status:
    active: str | None  # the preset the client uses by default
    servers: tuple[ServerRecord, ...]  # every recorded server, here or in a job
    jobs: tuple[JobReport, ...]  # every recorded SLURM job with SLURM's word on it


def status(preset: str | None = None) -> Status:
    """What this workspace started (all, or one preset's): its servers and its SLURM jobs' states (SLURM is asked
    only when jobs are recorded)."""
    state = read_state()
    servers = tuple(r for r in state.servers if preset is None or r.preset == preset)
    return Status(state.active, servers, tuple(cluster.report(preset)))
