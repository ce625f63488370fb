"""`cdw serve --slurm`: a preset's servers as SLURM jobs, reached at their nodes' addresses.

Each job runs the same launcher on its node (`cdw serve --foreground`), with its own runtime folder
`<CDW_HOME>/slurm/<job id>/`: its `servers.json` says where its servers listen, and their vLLM logs are beside it.
This side records each job in the runtime file as soon as `sbatch` answers (so `cdw serve --stop` can always
cancel it), reads the job's runtime file to learn its servers' URLs, waits for /health and one generated token as
the local launcher does, then records the servers, so the client routes across them like any replicas.

CDW_HOME must be on a filesystem every node sees (the project checkout usually is): the jobs write there and
this side reads it.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from . import sbatch
from .build import check as check_build
from .build import probe as probe_build
from .presets import Catalog, Preset, load_catalog
from .runtime import JobRecord, ServerRecord, locked_state, read_state
from .sbatch import JobState, SlurmError, SlurmOptions
from .settings import PROJECT_ROOT, job_environment, job_runtime_setup, paths
from .startup import LaunchError, StartEvent, is_healthy, log_tail, owned_specs, warm_up

POLL_S = 2.0  # between two looks at the queue and the servers while jobs start


@dataclass(frozen=True)
class JobPlan:
    """One job to submit: which servers it runs and what it asks for."""

    name: str
    roles: tuple[str, ...]  # the roles whose servers it runs (owners)
    replica: int
    gpus: int
    cpus: int
    data_parallel: dict[str, int]

    @property
    def label(self) -> str:
        return label(self.roles, self.replica)


def label(roles: tuple[str, ...], replica: int) -> str:
    """How progress lines name a job: its roles, and its replica number past the first (`weak[1]`)."""
    return "+".join(roles) + (f"[{replica}]" if replica else "")


def plan(
    preset: Preset,
    roles: list[str] | None = None,
    *,
    replicas: dict[str, int] | None = None,
    gpus_per_role: int | None = None,
    cpus_per_role: int | None = None,
    data_parallel: dict[str, int] | None = None,
) -> list[JobPlan]:
    """The jobs for `roles` of `preset`: one per server and replica, or one in all for a `slurm_jobs = "one"` preset.

    GPUs: `gpus_per_role` (default 1 on a GPU preset, 0 on a CPU one) times the role's data-parallel size; a
    one-job preset's servers share `gpus_per_role` GPUs, as its memory plan says.
    """
    specs = owned_specs(preset, roles)
    replicas = {k: v for k, v in (replicas or {}).items()}
    data_parallel = dict(data_parallel or {})
    for what, d in (("--replicas", replicas), ("--data-parallel", data_parallel)):
        for role, n in d.items():
            if role not in {s.role for s in specs}:
                owner = preset.roles[role].served_by if role in preset.roles else None
                hint = f" (it is served by {owner}: name {owner})" if owner else ""
                raise LaunchError(f"{what} {role}={n}: no {role} server in this start{hint}")
            if n < 1:
                raise LaunchError(f"{what} {role}={n}: must be at least 1")
    gpus = gpus_per_role if gpus_per_role is not None else (1 if preset.device == "gpu" else 0)
    cpus = cpus_per_role if cpus_per_role is not None else (1 if preset.device == "cpu" else 4)
    if preset.slurm_jobs == "one":
        if any(n > 1 for n in replicas.values()) or any(n > 1 for n in data_parallel.values()):
            raise LaunchError(
                f"preset {preset.name} runs its servers in one job sharing one GPU's memory plan: replicas and data "
                "parallelism need a preset with a job per server (e.g. paper-multi-gpu)"
            )
        roles_ = tuple(s.role for s in specs)
        return [JobPlan(f"cdw-{preset.name}-{'-'.join(roles_)}-0", roles_, 0, gpus, cpus * len(roles_), {})]
    out = []
    for s in specs:
        dp = data_parallel.get(s.role, 1)
        for i in range(replicas.get(s.role, 1)):
            out.append(JobPlan(f"cdw-{preset.name}-{s.role}-{i}", (s.role,), i, gpus * dp, cpus * dp,
                               {s.role: dp} if dp > 1 else {}))  # fmt: skip
    return out


def _job_files(name: str) -> tuple[Path, Path]:
    folder = paths().slurm
    return folder / f"{name}.sbatch", folder / f"{name}-%j.log"


def server_script(job: JobPlan, preset: Preset, options: SlurmOptions, host: str | None, timeout: float,
                  python: str | None = None) -> str:  # fmt: skip
    """The batch script of one server job: `cdw serve --foreground` for its roles, in its own runtime folder, run by
    `python` (default: this one; a GPU node may need another venv's, e.g. .venv-gpu/bin/python). The job asks for
    the preset's memory (`mem`) unless the options name some."""
    _, log = _job_files(job.name)
    command = [python or sys.executable, "-m", "workspace.cli", "serve", "--foreground", "--preset", preset.name,
               "--roles", ",".join(job.roles), "--timeout", str(int(timeout))]  # fmt: skip
    if host:
        command += ["--host", host]
    for role, n in job.data_parallel.items():
        command += ["--data-parallel", f"{role}={n}"]
    run_dir = shlex.quote(str(paths().slurm.resolve())) + '/"$SLURM_JOB_ID"'
    setup = [*job_runtime_setup(run_dir), 'echo "job $SLURM_JOB_ID on $(hostname): $(date -Is)"']
    opts = replace(options, gpus=job.gpus, cpus=job.cpus, mem=options.mem or preset.mem)
    return sbatch.render(job.name, command, opts, log=log.resolve(), workdir=PROJECT_ROOT, env=job_environment(),
                         setup=setup)  # fmt: skip


def scripts(
    preset_name: str,
    roles: list[str] | None = None,
    *,
    options: SlurmOptions | None = None,
    host: str | None = None,
    timeout: float = 900.0,
    catalog: Catalog | None = None,
    python: str | None = None,
    **plan_args,
) -> list[tuple[JobPlan, str]]:
    """Each job `serve_slurm` would submit, with its batch script, submitting nothing (`cdw serve --dry-run`)."""
    preset = (catalog or load_catalog()).preset(preset_name)
    return [(j, server_script(j, preset, options or SlurmOptions(), host, timeout, python))
            for j in plan(preset, roles, **plan_args)]  # fmt: skip


def job_log(job: JobRecord) -> str:
    """The job's output and, if its servers wrote logs, the end of each."""
    out = [f"--- {job.log}", log_tail(job.log, 30)]
    for f in sorted(Path(job.run_dir).glob("*.log")):
        out += [f"--- {f}", log_tail(str(f), 20)]
    return "\n".join(out)


def _ended_message(job: JobRecord, st: JobState) -> str:
    return f"job {job.job_id} ({job.name}) ended: {st.describe()}.\n{job_log(job)}"


def submit_servers(preset: Preset, plans: list[JobPlan], options: SlurmOptions, host: str | None,
                   timeout: float, python: str | None = None) -> list[JobRecord]:  # fmt: skip
    """Submit each planned job, recording it in the runtime file as soon as SLURM accepts it."""
    out = []
    for job in plans:
        script, log = _job_files(job.name)
        job_id = sbatch.submit(script, server_script(job, preset, options, host, timeout, python))
        rec = JobRecord(job_id=job_id, name=job.name, preset=preset.name, roles=job.roles, replica=job.replica,
                        script=str(script), log=str(log).replace("%j", job_id),
                        run_dir=str(paths().slurm.resolve() / job_id), submitted_at=time.time(),
                        gpus=job.gpus)  # fmt: skip
        with locked_state() as box:
            box[0] = replace(box[0], jobs=box[0].jobs + (rec,))
        out.append(rec)
    return out


def cancel_jobs(jobs: list[JobRecord], wait_s: float = 120.0) -> dict[str, JobState]:
    """scancel exactly these jobs, wait until SLURM has ended them, and drop them and their servers from the
    runtime file."""
    ids = [j.job_id for j in jobs]
    sbatch.cancel(ids)
    last = sbatch.wait_ended(ids, timeout=wait_s)
    with locked_state() as box:
        s = box[0]
        box[0] = replace(s, jobs=tuple(j for j in s.jobs if j.job_id not in ids),
                         servers=tuple(r for r in s.servers if r.job_id not in ids))  # fmt: skip
    return last


@dataclass(frozen=True)
class JobReport:
    job: JobRecord
    state: JobState
    servers: tuple[ServerRecord, ...]
    log: str = ""  # for a job that ended: its log's tail


def report(preset: str | None = None) -> list[JobReport]:
    """Every recorded job (of one preset, or all) with its state, its servers and, if it ended, its log's tail."""
    state = read_state()
    jobs = [j for j in state.jobs if preset is None or j.preset == preset]
    if not jobs:
        return []
    st = sbatch.states(j.job_id for j in jobs)
    return [
        JobReport(
            j,
            st[j.job_id],
            tuple(r for r in state.servers if r.job_id == j.job_id),
            "" if st[j.job_id].active else job_log(j),
        )  # fmt: skip
        for j in jobs
    ]


def _wait(preset: Preset, jobs: list[JobRecord], timeout: float, on_event: Callable[[StartEvent], None],
          queue_timeout: float | None = None) -> None:  # fmt: skip
    """Wait until every job's servers are healthy: `queue_timeout` seconds at most (None: no limit) for a job to
    start, then `timeout` seconds from its start for its servers to be healthy. A job queued for 45 minutes is not
    a server that failed to start."""
    t0 = time.monotonic()
    pending = {j.job_id: j for j in jobs}
    started: dict[str, float] = {}
    warmed: set[str] = set()
    names = {j.job_id: label(j.roles, j.replica) for j in jobs}
    while pending:
        st = sbatch.states(pending)
        for jid, job in list(pending.items()):
            elapsed, s = time.monotonic() - t0, st[jid]
            if not s.active:
                on_event(StartEvent(names[jid], "failed", elapsed, s.describe()))
                raise LaunchError(_ended_message(job, s))
            if s.state != "RUNNING":
                on_event(StartEvent(names[jid], "queued", elapsed, s.describe()))
                if queue_timeout is not None and elapsed > queue_timeout:
                    raise LaunchError(f"job {jid} ({names[jid]}) still queued after {elapsed:.0f} s ({s.describe()}); "
                                      "raise --queue-timeout, or ask for less (--time, --partition)")  # fmt: skip
                continue
            started.setdefault(jid, elapsed)
            recs = [r for r in read_state(Path(job.run_dir) / "servers.json").servers if r.role in job.roles]
            for r in recs:
                if r.url not in warmed and is_healthy(r.url):
                    error = warm_up(r)
                    if error is not None:
                        raise LaunchError(f"the {r.role} server of job {jid} ({r.url}) is up but cannot generate "
                                          f"({error}).\n{job_log(job)}")  # fmt: skip
                    warmed.add(r.url)
            if len(recs) == len(job.roles) and all(r.url in warmed for r in recs):
                node = s.node or recs[0].url.split("//")[1].split(":")[0]
                with locked_state() as box:
                    mine = tuple(replace(r, preset=preset.name, job_id=jid, node=node) for r in recs)
                    box[0] = replace(box[0], servers=box[0].servers + mine)
                queued = started[jid]
                on_event(StartEvent(names[jid], "healthy", time.monotonic() - t0,
                                    f"job {jid} on {node}: {queued:.0f} s queued, "
                                    f"{time.monotonic() - t0 - queued:.0f} s from job start to healthy"))  # fmt: skip
                del pending[jid]
            else:
                on_event(StartEvent(names[jid], "starting", elapsed, f"job {jid} on {s.node}"))
        late = [j for j in pending if j in started and time.monotonic() - t0 - started[j] > timeout]
        if late:
            raise LaunchError(f"{', '.join(names[j] for j in late)} not healthy {timeout:.0f} s after the job started "
                              f"(raise --timeout?).\n{job_log(pending[late[0]])}")  # fmt: skip
        if pending:
            time.sleep(POLL_S)


def serve_slurm(
    preset_name: str,
    roles: list[str] | None = None,
    *,
    options: SlurmOptions | None = None,
    replicas: dict[str, int] | None = None,
    data_parallel: dict[str, int] | None = None,
    gpus_per_role: int | None = None,
    cpus_per_role: int | None = None,
    host: str | None = None,
    resume: bool = False,
    timeout: float = 900.0,
    queue_timeout: float | None = None,
    python: str | None = None,
    on_event: Callable[[StartEvent], None] = lambda e: None,
    catalog: Catalog | None = None,
) -> list[ServerRecord]:
    """Start a preset's servers as SLURM jobs and wait until every one is healthy; returns their records.

    `timeout` counts from each job's start, `queue_timeout` (None: no limit) the time it may wait in the queue.
    `python` runs the jobs (default: this interpreter); its vLLM must be a build the preset can run on.

    Jobs already running for the preset are kept. A recorded job that has ended (failed, pre-empted, out of time)
    is reported with its log's tail; with `resume`, a replacement is submitted instead. On any failure or Ctrl-C,
    the jobs this call submitted are cancelled again.
    """
    sbatch.require()
    options = options or SlurmOptions()
    catalog = catalog or load_catalog()
    preset = catalog.preset(preset_name)
    # Here (a login node, perhaps without a GPU) only the build is checked; each job checks its platform too.
    check_build(preset, probe_build(python), here=False)
    plans = plan(preset, roles, replicas=replicas, gpus_per_role=gpus_per_role, cpus_per_role=cpus_per_role,
                 data_parallel=data_parallel)  # fmt: skip
    state = read_state()
    local = [r for r in state.servers if r.preset == preset.name and r.job_id is None]
    if local:
        urls = ", ".join(r.url for r in local)
        raise LaunchError(f"preset {preset.name} has servers started on this machine ({urls}): stop them first "
                          f"(`cdw serve --stop --preset {preset.name}`)")  # fmt: skip
    existing = {j.name: j for j in state.jobs if j.preset == preset.name}
    known = sbatch.states(j.job_id for j in existing.values())
    to_submit, waiting, ended, stale = [], [], [], set()
    for p in plans:
        job = existing.get(p.name)
        if job is None:
            to_submit.append(p)
        elif known[job.job_id].active:
            mine = [r for r in state.servers if r.job_id == job.job_id]
            if {r.role for r in mine} == set(job.roles) and all(r.node == known[job.job_id].node for r in mine):
                on_event(StartEvent(p.label, "running", 0.0, f"job {job.job_id} on {known[job.job_id].node}"))
            else:  # still starting, or requeued by SLURM (same id, perhaps another node): wait for it afresh
                stale.add(job.job_id)
                waiting.append(job)
        else:
            ended.append((p, job))
    if ended and not resume:
        msgs = "\n\n".join(_ended_message(j, known[j.job_id]) for _, j in ended)
        raise LaunchError(f"{msgs}\n\nSubmit replacements with `cdw serve --slurm --resume`, or forget these jobs with "
                          f"`cdw serve --stop --preset {preset.name}`.")  # fmt: skip
    if stale:
        with locked_state() as box:
            box[0] = replace(box[0], servers=tuple(r for r in box[0].servers if r.job_id not in stale))
    if ended:
        gone = {j.job_id for _, j in ended}
        with locked_state() as box:
            s = box[0]
            box[0] = replace(s, jobs=tuple(j for j in s.jobs if j.job_id not in gone),
                             servers=tuple(r for r in s.servers if r.job_id not in gone))  # fmt: skip
        to_submit += [p for p, _ in ended]
    submitted: list[JobRecord] = []
    try:
        submitted = submit_servers(preset, to_submit, options, host, timeout, python)
        with locked_state() as box:
            box[0] = replace(box[0], active=preset.name)
        # A one-job preset that starts its servers one after another (a shared GPU) gets the time for each of them.
        sequential = max((len(p.roles) for p in plans), default=1) if not preset.parallel_start else 1
        _wait(preset, waiting + submitted, timeout * sequential, on_event, queue_timeout)
    except BaseException:
        if submitted:
            cancel_jobs(submitted, wait_s=60.0)
        raise
    state = read_state()
    ids = {j.job_id for j in state.jobs if j.preset == preset.name and j.name in {p.name for p in plans}}
    return [r for r in state.servers if r.job_id in ids]


__all__ = ["JobPlan", "JobReport", "SlurmError", "SlurmOptions", "cancel_jobs", "plan", "report", "scripts",
           "serve_slurm"]  # fmt: skip
