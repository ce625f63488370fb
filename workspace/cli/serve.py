"""`cdw models|serve|status|check`: the model servers: provision, start, stop, and ask them how they are."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time

import click

from servers import control, provision
from servers.presets import PresetError, load_catalog
from servers.provision import ProvisionError

from .. import health
from .options import console, fail, slurm_options, take_slurm_options, url_options, urls
from .tables import Column, show

DEFAULT_PRESET = "cpu"


@click.group()
def models() -> None:
    """Provision the models of a preset into the local cache."""


@models.command("fetch")
@click.argument("preset", default=DEFAULT_PRESET)
def models_fetch(preset: str) -> None:
    """Fetch (or build) every model PRESET serves: the hub first, else the offline sources. Idempotent."""
    try:
        for m in provision.fetch_preset(preset, log=lambda s: console.print(f"  {s}")):
            verb = "fetched" if m.fetched else "already here"
            console.print(f"[green]✓[/] {m.name}: {verb} → {m.path} (serves as {m.served_name!r}; {m.source})")
    except (PresetError, ProvisionError) as e:
        fail(str(e))


@models.command("list")
def models_list() -> None:
    """Show every model of every preset and whether it is in the cache."""
    cat = load_catalog()
    rows = []
    for name, spec in cat.models.items():
        prov = provision.load_provenance(spec)
        users = [f"{p.name}/{r.role}" for p in cat.presets.values() for r in p.own_servers() if r.model == name]
        src = spec.hub or "built locally"
        rows.append([name, src, prov["source"] if prov else "[dim]no[/]", ", ".join(users)])
    show(console, None, ["model", "source", "cached", "used by"], rows)


def _pairs(values: tuple[str, ...], what: str) -> dict[str, int]:
    """ROLE=N flags (repeatable, or comma-separated) as a dict."""
    out: dict[str, int] = {}
    for v in values:
        for item in v.split(","):
            role, sep, n = item.partition("=")
            if not sep or not n.strip().isdigit():
                fail(f"{what} {item!r}: write ROLE=N, e.g. {what} weak=2")
            out[role.strip()] = int(n)
    return out


@click.command()
@click.option(
    "--preset", default=None, help="cpu (default) | tiny | paper | paper-multi-gpu; with --stop: only this one"
)
@click.option("--roles", default=None, help="comma-separated subset of weak,strong,judge")
@click.option("--stop", is_flag=True,
              help="stop the servers `cdw serve` started (only those: by recorded pid, or scancel by "
              "job id)")  # fmt: skip
@click.option("--timeout", default=900.0, show_default=True,
              help="seconds to wait for the servers' /health (with --slurm: from each job's start)")  # fmt: skip
@click.option(
    "--queue-timeout",
    type=float,
    default=None,
    help="with --slurm: seconds a job may wait in the queue before it is cancelled (default: no limit)",
)
@click.option(
    "--python",
    "python",
    default=None,
    metavar="PATH",
    help="with --slurm: the Python the jobs run (default: this one), e.g. .venv-gpu/bin/python",
)
@click.option("--slurm", is_flag=True, help="run each server as a SLURM job (README: On a SLURM cluster)")
@click.option("--resume", is_flag=True, help="with --slurm: submit replacements for jobs that ended")
@click.option("--replicas", multiple=True, metavar="ROLE=N", help="with --slurm: N jobs serving ROLE")
@click.option("--data-parallel", "data_parallel", multiple=True, metavar="ROLE=N",
              help="vLLM's data parallelism for ROLE's server: N engines, N times the GPUs")  # fmt: skip
@click.option("--gpus-per-role", type=int, default=None,
              help="with --slurm: GPUs per server job (default 1 on GPU presets, 0 on CPU ones)")  # fmt: skip
@click.option("--cpus-per-role", type=int, default=None,
              help="with --slurm: CPUs per server job (default 1 on CPU presets, 4 on GPU ones)")  # fmt: skip
@click.option("--dry-run", is_flag=True,
              help="print each server's command line and environment (with --slurm: each job's batch script); "
              "start nothing")  # fmt: skip
@click.option("--foreground", is_flag=True,
              help="serve --roles here until SIGTERM or Ctrl-C (the body of a SLURM server job)")  # fmt: skip
@click.option("--host", default=None,
              help="with --foreground or --slurm: the address servers listen on (default: in a SLURM job the node's "
              "name, else 127.0.0.1)")  # fmt: skip
@slurm_options
def serve(preset: str, roles: str | None, stop: bool, timeout: float, queue_timeout: float | None,
          python: str | None, slurm: bool, resume: bool, replicas, data_parallel, gpus_per_role, cpus_per_role,
          dry_run: bool, foreground: bool, host: str | None, **kw) -> None:  # fmt: skip
    """Start one vLLM server per role of a preset in the background and wait until all are healthy.

    With --slurm, each server is a SLURM job (`sbatch`), and this waits for the jobs to start and their servers to
    be healthy; their node URLs go into the runtime file, so every other command uses them.
    """
    from servers import cluster, launcher
    from servers.sbatch import SlurmError
    from servers.startup import LaunchError, StartEvent

    if stop:
        try:
            stopped = control.stop(preset)
        except SlurmError as e:
            fail(str(e))
        for j in stopped.jobs:
            console.print(f"[green]✓[/] cancelled SLURM job {j.job_id} ({j.name})")
        for r in stopped.servers:
            where = f"job {r.job_id} on {r.node}" if r.job_id else f"pid {r.pid}"
            console.print(f"[green]✓[/] stopped {r.preset}/{r.role} ({where}, {r.url})")
        if not stopped.servers and not stopped.jobs:
            console.print("no servers recorded as started by cdw")
        return
    preset = preset or DEFAULT_PRESET
    role_list = roles.split(",") if roles else None
    dp = _pairs(data_parallel, "--data-parallel")
    slurm_opts = take_slurm_options(kw, slurm or foreground)  # a job's own --foreground ignores them
    if foreground:
        try:
            code = launcher.serve_foreground(preset, role_list, host=host, data_parallel=dp, timeout=timeout,
                                             log=console.print)  # fmt: skip
        except (LaunchError, PresetError) as e:
            fail(str(e))
        sys.exit(code)
    if not slurm and (resume or replicas or gpus_per_role is not None or queue_timeout is not None or python):
        fail("--resume, --replicas, --gpus-per-role, --queue-timeout and --python need --slurm")
    if dry_run and not slurm:
        from servers import build

        try:
            plans = launcher.plan(preset, role_list, host=host or launcher.HOST, data_parallel=dp)
            build.check(load_catalog().preset(preset), build.probe())
        except PresetError as e:
            fail(str(e))
        except LaunchError as e:  # still print the plan: it is what a right build would run
            click.echo("# " + "\n# ".join(f"not here: {e}".splitlines()))
        for p in plans:
            click.echo(f"# ---- {p.role} server (answers {', '.join(p.serves)}): model {p.model}, log {p.log}")
            click.echo("\n".join(f"export {k}={shlex.quote(v)}" for k, v in sorted(p.env.items())))
            click.echo(shlex.join(p.command))
        return
    if dry_run:
        try:
            jobs = cluster.scripts(preset, role_list, options=slurm_opts, host=host, timeout=timeout, python=python,
                                   replicas=_pairs(replicas, "--replicas"), data_parallel=dp,
                                   gpus_per_role=gpus_per_role, cpus_per_role=cpus_per_role)  # fmt: skip
        except (LaunchError, PresetError, SlurmError) as e:
            fail(str(e))
        for job, text in jobs:
            click.echo(f"# ---- job {job.name}: {job.label}, {job.gpus} GPU(s), {job.cpus} CPU(s)\n{text}")
        return
    last: dict[str, str] = {}

    def on_event(e: StartEvent) -> None:
        if e.state != last.get(e.role) or (e.state in ("starting", "queued") and int(e.elapsed) % 15 == 0):
            if e.state == "running":
                console.print(f"  {e.role}: already running ({e.detail})")
            elif e.state == "healthy":
                detail = f" ({e.detail})" if e.detail else ""
                console.print(f"  [green]✓[/] {e.role}: healthy after {e.elapsed:.0f} s{detail}")
            elif e.state in ("starting", "queued"):
                detail = f": {e.detail}" if e.detail else ""
                console.print(f"  … {e.role}: {e.state} ({e.elapsed:.0f} s){detail}")
            last[e.role] = e.state

    t0 = time.monotonic()
    try:
        job_args = dict(options=slurm_opts, replicas=_pairs(replicas, "--replicas"), gpus_per_role=gpus_per_role,
                        cpus_per_role=cpus_per_role, resume=resume, queue_timeout=queue_timeout,
                        python=python) if slurm else {}  # fmt: skip
        recs = control.start(preset, role_list, slurm=slurm, data_parallel=dp, host=host, timeout=timeout,
                             on_event=on_event, **job_args)  # fmt: skip
    except (LaunchError, PresetError, SlurmError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted; the servers (or SLURM jobs) this call started were stopped", 130)
    console.print(f"[green]✓[/] preset {preset}: {len(recs)} server(s) up in {time.monotonic() - t0:.0f} s")
    for r in recs:
        where = f"  job {r.job_id} on {r.node}" if r.job_id else ""
        console.print(f"  {'+'.join(r.serves)}: {r.url}  model {r.model}{where}  log {r.log}")


def _check_exact(endpoints: dict, n: int, max_tokens: int | None) -> None:
    from workspace.endpoints import EndpointError
    from workspace.evaluate import EvaluationError, Setup, check_exact

    async def run():
        async with Setup.from_endpoints(endpoints) as setup:
            return await check_exact(setup, n, max_tokens=max_tokens)

    try:
        report = asyncio.run(run())
    except (EndpointError, EvaluationError) as e:
        fail(str(e))
    console.print(f"exact greedy decoding: the first {n} canonical {report.benchmark} prompts, max_tokens "
                  f"{report.max_tokens}")  # fmt: skip
    for role, facts in report.decoding.get("servers", {}).items():
        console.print(f"  {role}: " + ", ".join(f"{k} {v}" for k, v in facts.items()), markup=False)
    for c in report.checks:
        mark = "[green]✓[/]" if c.ok else "[red]✗[/]"
        console.print(f"{mark} {c.policy} = the {c.role} model's own answers: {c.equal}/{c.n}")
        d = c.first
        if d is not None and d.offset < 0:
            console.print(f"    first failure: {d.prompt_id}: {d.own}", markup=False)
        elif d is not None:
            console.print(f"    first difference: {d.prompt_id} at character {d.offset}", markup=False)
            console.print(f"      decoded: {d.decoded!r}\n      own:     {d.own!r}", markup=False)
    if not report.ok:
        sys.exit(1)


@click.command()
@url_options
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(as_json: bool, **kw) -> None:
    """Per role: URL, served model, health, vLLM version, and where the endpoint came from."""
    from servers.sbatch import SlurmError

    rows = asyncio.run(health.status(urls(kw)))
    try:
        jobs = control.status().jobs
    except SlurmError as e:
        fail(f"the runtime file lists SLURM jobs, but SLURM cannot be asked about them: {e}")
    if as_json:

        def job_json(j):
            return {"job_id": j.job.job_id, "name": j.job.name, "preset": j.job.preset, "state": j.state.state,
                    "node": j.state.node, "reason": j.state.reason, "exit_code": j.state.exit_code,
                    "urls": [r.url for r in j.servers], "log": j.job.log, "log_tail": j.log}  # fmt: skip

        out = [
            {
                "role": s.role, "healthy": s.healthy, "error": s.error,
                "origin": s.endpoint.origin if s.endpoint else None, "note": s.endpoint.note if s.endpoint else "",
                "replicas": [vars(r) | {"models": list(r.models)} for r in s.replicas],
                "jobs": [job_json(j) for j in jobs
                         if s.role in ({x for r in j.servers for x in r.serves} or set(j.job.roles))],
            }
            for s in rows
        ]  # fmt: skip
        click.echo(json.dumps(out, indent=2))
        return
    table, notes = [], []
    for s in rows:
        if s.endpoint is None:
            table.append([s.role, "—", "—", "[red]no server[/]", "", s.error or ""])
            continue
        for r in s.replicas:
            state = "[green]healthy[/]" if r.healthy else f"[red]down[/] {r.error or ''}"
            table.append([s.role, r.url, ", ".join(r.models) or "?", state, r.version or "", s.endpoint.origin])
        if s.endpoint.note:
            notes.append(f"[yellow]{s.role}: {s.endpoint.note}[/]")
    show(console, None, ["role", Column("url", wrap=False), Column("model", wrap=False), "health", "vLLM", "from"],
         table)  # fmt: skip
    for n in notes:
        console.print(n, soft_wrap=False)
    if jobs:
        job_rows = []
        for j in jobs:
            colour = "green" if j.state.state == "RUNNING" else "yellow" if j.state.active else "red"
            serves = ", ".join(f"{'+'.join(r.serves)} {r.url}" for r in j.servers) or "+".join(j.job.roles)
            job_rows.append([j.job.job_id, j.job.name, f"[{colour}]{j.state.state}[/]", j.state.node, serves,
                             j.job.log])  # fmt: skip
        show(console, "SLURM jobs (cdw serve --slurm)", [Column("SLURM job", wrap=False), "name",
             Column("state", wrap=False), Column("node", wrap=False), "serves", "log"], job_rows, key=1)  # fmt: skip
        for j in jobs:
            if not j.state.active:
                console.print(f"[red]job {j.job.job_id} ({j.job.name}) ended: {j.state.describe()}[/]; "
                              "`cdw serve --slurm --resume` submits a replacement", soft_wrap=False)  # fmt: skip
                console.print(j.log, markup=False, soft_wrap=False)
    if not all(s.healthy for s in rows) or any(not j.state.active for j in jobs):
        sys.exit(1)


@click.command()
@url_options
@click.option("--exact", is_flag=True,
              help="decode canonical prompts with never and always and compare them with the models' own answers "
              "(the first check on a new machine or GPU)")  # fmt: skip
@click.option("--n", "n", default=10, show_default=True, help="with --exact: how many canonical prompts")
@click.option("--max-tokens", type=int, default=None, help="with --exact: the answer budget (default: the benchmark's)")
def check(exact: bool, n: int, max_tokens: int | None, **kw) -> None:
    """Send one real request to each role and show its answer; with --exact, check that decoding is exact."""
    if exact:
        _check_exact(urls(kw), n, max_tokens)
        return
    ok = True
    for c in asyncio.run(health.check(urls(kw))):
        mark = "[green]✓[/]" if c.ok else "[red]✗[/]"
        console.print(f"{mark} [bold]{c.role}[/] ({c.seconds:.1f} s) {c.request}")
        console.print(f"    → {c.answer.strip()!r}" if c.ok else f"    {c.answer}")
        if c.detail:
            console.print(f"    {c.detail}")
        if c.note:
            console.print(f"    [yellow]note: {c.note}[/]")
        ok &= c.ok
    if not ok:
        sys.exit(1)
