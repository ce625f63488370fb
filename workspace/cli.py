"""`cdw`: the command line. Each command is a thin shell over the Python API; no logic lives here."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import click
from rich.console import Console
from rich.table import Table

from servers import control, provision
from servers.presets import ROLES, PresetError, load_catalog
from servers.provision import ProvisionError

from . import health
from .benchmark import BENCHMARKS
from .benchmark import get as get_benchmark
from .format import num, span, with_interval

console = Console(highlight=False, soft_wrap=True)
DEFAULT_PRESET = "cpu"


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {message}")
    sys.exit(code)


def url_options(f):
    """--weak-url/--strong-url/--judge-url: point any command at OpenAI-compatible servers directly."""
    for role in reversed(ROLES):
        f = click.option(
            f"--{role}-url",
            default=None,
            metavar="URL[,URL…]",
            help=f"{role} server base URL(s), comma-separated replicas (else ${'CDW_' + role.upper() + '_URL'}, "
            "else what `cdw serve` started)",
        )(f)
    return f


def _urls(kw: dict) -> dict[str, str | None]:
    return {r: kw.pop(f"{r}_url", None) for r in ROLES}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Collaborative Decoding Workspace: a weak model writes, a policy hands spans to a strong model."""


# ---------------------------------------------------------------- models


@main.group()
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
        _fail(str(e))


@models.command("list")
def models_list() -> None:
    """Show every model of every preset and whether it is in the cache."""
    cat = load_catalog()
    t = Table("model", "source", "cached", "used by")
    for name, spec in cat.models.items():
        prov = provision.load_provenance(spec)
        users = [f"{p.name}/{r.role}" for p in cat.presets.values() for r in p.own_servers() if r.model == name]
        src = spec.hub or "built locally"
        t.add_row(name, src, prov["source"] if prov else "[dim]no[/]", ", ".join(users))
    console.print(t)


# ---------------------------------------------------------------- serve / status


def _pairs(values: tuple[str, ...], what: str) -> dict[str, int]:
    """ROLE=N flags (repeatable, or comma-separated) as a dict."""
    out: dict[str, int] = {}
    for v in values:
        for item in v.split(","):
            role, sep, n = item.partition("=")
            if not sep or not n.strip().isdigit():
                _fail(f"{what} {item!r}: write ROLE=N, e.g. {what} weak=2")
            out[role.strip()] = int(n)
    return out


def slurm_options(f):
    """What a SLURM job asks for: --partition, --account, --time and any further sbatch arguments."""
    f = click.option("--sbatch-arg", "sbatch_args", multiple=True, metavar="ARG",
                     help="a further sbatch option, passed on as it is (repeatable), e.g. "
                     "--sbatch-arg=--qos=high")(f)  # fmt: skip
    f = click.option("--time", "time_limit", default=None, metavar="LIMIT",
                     help="SLURM time limit per job (minutes or [D-]HH:MM:SS; default: the "
                     "partition's)")(f)  # fmt: skip
    f = click.option("--account", default=None, help="SLURM account to charge")(f)
    f = click.option("--partition", default=None, help="SLURM partition (default: the cluster's)")(f)
    return f


def job_options(f):
    """--slurm (this command as a SLURM job), --wait, and what the job asks for."""
    f = slurm_options(f)
    f = click.option("--wait", "wait_job", is_flag=True,
                     help="with --slurm: wait for the job, print its output and exit with its status")(f)  # fmt: skip
    f = click.option("--slurm", "as_job", is_flag=True,
                     help="run this command as a SLURM job (it finds the servers as this command "
                     "would)")(f)  # fmt: skip
    return f


JOB_PARAMS = ("as_job", "wait_job", "partition", "account", "time_limit", "sbatch_args")


def command_line(ctx: click.Context, drop: tuple[str, ...] = JOB_PARAMS) -> list[str]:
    """The command line that gave `ctx`'s values (without `cdw` and the `drop`ped parameters): options the user
    set, in the command's own spelling, so a job can run the same command."""
    from click.core import ParameterSource

    names, c = [], ctx
    while c.parent is not None:
        names.insert(0, c.info_name)
        c = c.parent
    args: list[str] = []
    for p in ctx.command.params:
        if p.name in drop or ctx.get_parameter_source(p.name) in (None, ParameterSource.DEFAULT):
            continue
        v = ctx.params[p.name]
        values = list(v) if p.multiple or (isinstance(p, click.Argument) and p.nargs != 1) else [v]
        if isinstance(p, click.Argument):
            args += [str(x) for x in values]
        elif getattr(p, "is_flag", False) and not getattr(p, "count", False):
            flag = p.opts[0] if v else (p.secondary_opts[0] if p.secondary_opts else None)
            args += [flag] if flag else []
        else:
            for x in values:
                args += [p.opts[0], str(x)]
    return names + args


def _as_job(kw: dict) -> bool:
    """With --slurm, submit this very command as a SLURM job (with --wait, wait for it and exit with its status)
    and return True; without, check no job option was given and return False."""
    from servers import jobs, sbatch
    from servers.sbatch import SlurmError
    from servers.startup import log_tail

    as_job, wait_job = kw.pop("as_job"), kw.pop("wait_job")
    if wait_job and not as_job:
        _fail("--wait and the SLURM options need --slurm")
    options = _slurm_opts(kw, as_job)
    if not as_job:
        return False
    args = command_line(click.get_current_context())
    try:
        job = jobs.submit_cli(f"cdw-{args[0]}", args, options)
        err_console = Console(stderr=True, highlight=False, soft_wrap=True)
        err_console.print(f"submitted SLURM job {job.job_id}: cdw {' '.join(args)}\n  output {job.log}\n"
                          f"  errors {job.errors}")  # fmt: skip
        if not wait_job:
            return True
        report = lambda s: err_console.print(f"  job {job.job_id}: {s.describe()}")  # noqa: E731
        st = sbatch.wait_ended([job.job_id], timeout=None, poll=5.0, on_state=report)[job.job_id]
    except SlurmError as e:
        _fail(str(e))
    if job.log.exists():
        click.echo(job.log.read_text(errors="replace"), nl=False)
    code = jobs.exit_status(st)
    if code:
        err_console.print(f"[red]job {job.job_id} ended {st.describe()}[/]; last lines of {job.errors}:")
        err_console.print(log_tail(str(job.errors), 20), markup=False)
    sys.exit(code)


def _slurm_opts(kw: dict, slurm: bool):
    """The SLURM options of `slurm_options`, taken out of `kw`; given without --slurm, a clear error."""
    from servers.sbatch import SlurmOptions

    options = SlurmOptions(partition=kw.pop("partition"), account=kw.pop("account"), time=kw.pop("time_limit"),
                           extra=tuple(kw.pop("sbatch_args")))  # fmt: skip
    if not slurm and options != SlurmOptions():
        _fail("--partition, --account, --time and --sbatch-arg need --slurm")
    return options


@main.command()
@click.option(
    "--preset", default=None, help="cpu (default) | tiny | paper | paper-multi-gpu; with --stop: only this one"
)
@click.option("--roles", default=None, help="comma-separated subset of weak,strong,judge")
@click.option("--stop", is_flag=True,
              help="stop the servers `cdw serve` started (only those: by recorded pid, or scancel by "
              "job id)")  # fmt: skip
@click.option("--timeout", default=900.0, show_default=True,
              help="seconds to wait for the servers' /health (with --slurm: from submission)")  # fmt: skip
@click.option("--slurm", is_flag=True, help="run each server as a SLURM job (README: On a SLURM cluster)")
@click.option("--resume", is_flag=True, help="with --slurm: submit replacements for jobs that ended")
@click.option("--replicas", multiple=True, metavar="ROLE=N", help="with --slurm: N jobs serving ROLE")
@click.option("--data-parallel", "data_parallel", multiple=True, metavar="ROLE=N",
              help="vLLM's data parallelism for ROLE's server: N engines, N times the GPUs")  # fmt: skip
@click.option("--gpus-per-role", type=int, default=None,
              help="with --slurm: GPUs per server job (default 1 on GPU presets, 0 on CPU ones)")  # fmt: skip
@click.option("--cpus-per-role", type=int, default=None,
              help="with --slurm: CPUs per server job (default 1 on CPU presets, 4 on GPU ones)")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="with --slurm: print each job's batch script, submit nothing")
@click.option("--foreground", is_flag=True,
              help="serve --roles here until SIGTERM or Ctrl-C (the body of a SLURM server job)")  # fmt: skip
@click.option("--host", default=None,
              help="with --foreground or --slurm: the address servers listen on (default: in a SLURM job the node's "
              "name, else 127.0.0.1)")  # fmt: skip
@slurm_options
def serve(preset: str, roles: str | None, stop: bool, timeout: float, slurm: bool, resume: bool, replicas,
          data_parallel, gpus_per_role, cpus_per_role, dry_run: bool, foreground: bool, host: str | None,
          **kw) -> None:  # fmt: skip
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
            _fail(str(e))
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
    slurm_opts = _slurm_opts(kw, slurm or foreground)  # a job's own --foreground ignores them
    if foreground:
        try:
            code = launcher.serve_foreground(preset, role_list, host=host, data_parallel=dp, timeout=timeout,
                                             log=console.print)  # fmt: skip
        except (LaunchError, PresetError) as e:
            _fail(str(e))
        sys.exit(code)
    if not slurm and (resume or replicas or dry_run or gpus_per_role is not None):
        _fail("--resume, --replicas, --dry-run and --gpus-per-role need --slurm")
    if dry_run:
        try:
            jobs = cluster.scripts(preset, role_list, options=slurm_opts, host=host, timeout=timeout,
                                   replicas=_pairs(replicas, "--replicas"), data_parallel=dp,
                                   gpus_per_role=gpus_per_role, cpus_per_role=cpus_per_role)  # fmt: skip
        except (LaunchError, PresetError, SlurmError) as e:
            _fail(str(e))
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
                        cpus_per_role=cpus_per_role, resume=resume) if slurm else {}  # fmt: skip
        recs = control.start(preset, role_list, slurm=slurm, data_parallel=dp, host=host, timeout=timeout,
                             on_event=on_event, **job_args)  # fmt: skip
    except (LaunchError, PresetError, SlurmError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted; the servers (or SLURM jobs) this call started were stopped", 130)
    console.print(f"[green]✓[/] preset {preset}: {len(recs)} server(s) up in {time.monotonic() - t0:.0f} s")
    for r in recs:
        where = f"  job {r.job_id} on {r.node}" if r.job_id else ""
        console.print(f"  {'+'.join(r.serves)}: {r.url}  model {r.model}{where}  log {r.log}")


@main.command()
@url_options
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(as_json: bool, **kw) -> None:
    """Per role: URL, served model, health, vLLM version, and where the endpoint came from."""
    from servers.sbatch import SlurmError

    rows = asyncio.run(health.status(_urls(kw)))
    try:
        jobs = control.status().jobs
    except SlurmError as e:
        _fail(f"the runtime file lists SLURM jobs, but SLURM cannot be asked about them: {e}")
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
    t = Table("role", "url", "model", "health", "vLLM", "from")
    for col in t.columns[:3]:
        col.no_wrap = True
    notes = []
    for s in rows:
        if s.endpoint is None:
            t.add_row(s.role, "—", "—", "[red]no server[/]", "", s.error or "")
            continue
        for r in s.replicas:
            state = "[green]healthy[/]" if r.healthy else f"[red]down[/] {r.error or ''}"
            t.add_row(s.role, r.url, ", ".join(r.models) or "?", state, r.version or "", s.endpoint.origin)
        if s.endpoint.note:
            notes.append(f"[yellow]{s.role}: {s.endpoint.note}[/]")
    console.print(t)
    for n in notes:
        console.print(n)
    if jobs:
        jt = Table("SLURM job", "name", "state", "node", "serves", "log", title="SLURM jobs (cdw serve --slurm)")
        for col in jt.columns[:4]:
            col.no_wrap = True
        for j in jobs:
            colour = "green" if j.state.state == "RUNNING" else "yellow" if j.state.active else "red"
            serves = ", ".join(f"{'+'.join(r.serves)} {r.url}" for r in j.servers) or "+".join(j.job.roles)
            jt.add_row(j.job.job_id, j.job.name, f"[{colour}]{j.state.state}[/]", j.state.node, serves, j.job.log)
        console.print(jt)
        for j in jobs:
            if not j.state.active:
                console.print(f"[red]job {j.job.job_id} ({j.job.name}) ended: {j.state.describe()}[/]; "
                              "`cdw serve --slurm --resume` submits a replacement")  # fmt: skip
                console.print(j.log, markup=False)
    if not all(s.healthy for s in rows) or any(not j.state.active for j in jobs):
        sys.exit(1)


@main.command()
@url_options
def check(**kw) -> None:
    """Send one real request to each role and show its answer."""
    ok = True
    for c in asyncio.run(health.check(_urls(kw))):
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


@main.command("decode")
@click.argument("instruction")
@click.option("--policy", "spec", default="margin(tau=0.05, span=sentence)", show_default=True, help="policy spec")
@click.option("--max-tokens", default=256, show_default=True, help="answer length limit (weak tokens)")
@click.option("--json", "as_json", is_flag=True, help="print the decode as JSON")
@url_options
def decode_cmd(instruction: str, spec: str, max_tokens: int, as_json: bool, **kw) -> None:
    """Collaboratively decode one INSTRUCTION; weak spans plain, strong spans highlighted."""
    from .endpoints import EndpointError
    from .engine import EngineSettings, Models, decode
    from .policies import PolicyError, load_policy

    try:
        policy = load_policy(spec)
        models = Models.from_endpoints(_urls(kw))
    except (PolicyError, EndpointError) as e:
        _fail(str(e))

    async def run():
        try:
            return await decode(instruction, policy, models, EngineSettings(max_tokens=max_tokens))
        finally:
            await models.close()

    d = asyncio.run(run())
    if as_json:
        click.echo(json.dumps(d.to_json(), ensure_ascii=False, indent=2))
    else:
        for seg in d.segments:
            console.print(seg.text, style="bold magenta" if seg.author == "strong" else None, end="", markup=False)
        console.print()
        console.print(
            f"[dim]f_weak {num(d.f_weak, 2)} · {d.num_deferrals} deferral(s) · {d.finish_reason} · "
            f"{d.seconds:.1f} s · {policy.describe()} · [bold magenta]strong[/bold magenta] / weak[/dim]"
        )
    if d.error:
        console.print(f"[bold red]error:[/] {d.error}")
        sys.exit(1)


# ---------------------------------------------------------------- evaluation


BENCHMARK_NAMES = list(BENCHMARKS)


def prompt_options(f):
    """Which prompts: the canonical set (default), the first N of it, or a JSONL file."""
    f = click.option("--prompts", "prompts_file", default=None, metavar="FILE.jsonl", help="a JSONL prompt set")(f)
    f = click.option("--n", "n", type=int, default=None, help="the first N prompts of the canonical set")(f)
    f = click.option("--canonical", is_flag=True, help="the canonical 100 (the default)")(f)
    f = click.option("--confirm", is_flag=True,
                     help="the 300-prompt confirmation set (a certified result confirmed at n = 400)")(f)  # fmt: skip
    f = click.option("--max-tokens", type=int, default=None,
                     help="answer length limit, in each author's tokens (default: the benchmark's, 256 for "
                     "alpaca_eval, 512 for humaneval)")(f)  # fmt: skip
    f = click.option("--benchmark", default="alpaca_eval", show_default=True, type=click.Choice(BENCHMARK_NAMES),
                     help="what to evaluate on: alpaca_eval (judged) or humaneval (unit tests)")(f)  # fmt: skip
    f = click.option("--no-cache", is_flag=True, help="do not answer repeated requests from the call cache")(f)
    f = click.option("--split", type=click.Choice(["train", "test"]), default=None,
                     help="humaneval only: one fixed half of the problems (train: for traces and probes; test: "
                     "held out)")(f)  # fmt: skip
    return f


def _prompt_set(kw: dict):
    from .data import DataError, resolve

    canonical, n, path, confirm = kw.pop("canonical"), kw.pop("n"), kw.pop("prompts_file"), kw.pop("confirm")
    split = kw.pop("split")
    if sum(x is not None and x is not False for x in (n, path, split)) + canonical + confirm > 1:
        _fail("choose one of --canonical, --confirm, --n N, --split HALF, --prompts FILE")
    bench = get_benchmark(kw["benchmark"])
    if split and bench.scoring != "tests":
        _fail("--split is for --benchmark humaneval (its fixed halves)")
    if bench.scoring == "tests":
        if path or confirm:
            _fail(f"--benchmark {bench.name} runs on its own problems: use --n N, --split HALF or leave it out")
        try:
            return bench.prompts(f"{bench.name}:{split}" if split else n)
        except DataError as e:
            _fail(str(e))
    try:
        if confirm:
            return resolve("confirmation")
        return resolve(path) if path else resolve(n) if n is not None else resolve("canonical")
    except DataError as e:
        _fail(str(e))


def _setup(kw: dict):
    from .cache import CallCache
    from .endpoints import EndpointError
    from .engine import EngineSettings
    from .evaluate import EvalSettings, Setup

    cache = None if kw.pop("no_cache") else CallCache()
    bench = get_benchmark(kw.pop("benchmark"))
    max_tokens = kw.pop("max_tokens")
    settings = EvalSettings(EngineSettings(max_tokens=max_tokens or bench.max_tokens), benchmark=bench.name)
    try:
        return Setup.from_endpoints(_urls(kw), cache), settings
    except EndpointError as e:
        _fail(str(e))


def _run(coro, resource, errors):
    """Run `coro`, close `resource` (a client or setup) afterwards, and turn `errors` into a clean exit."""

    async def go():
        try:
            return await coro
        finally:
            await resource.close()

    try:
        return asyncio.run(go())
    except errors as e:
        _fail(str(e))


def _ci(ev, key: str) -> str:
    """A number with its 95% interval: f_weak from the summary, the fitted ones from the certification rule's fit."""
    src = ev.summary if key == "f_weak" else ev.certification
    v = getattr(src, key) if src else None
    return with_interval(v, src.ci.get(key) if src else None)


def _show_evaluation(ev) -> None:
    s, c = ev.summary, ev.certification
    t = Table(title=f"evaluation {ev.id} · {ev.policy} · {ev.prompts} (n={ev.n})")
    t.add_column("quantity")
    t.add_column("value [95% CI]")
    tests = ev.baselines.scored_by_tests
    t.add_row("f_weak", _ci(ev, "f_weak"))
    if tests:
        t.add_row("utility (pass@1, unit tests)", _ci(ev, "utility"))
        t.add_row("U_weak (weak model's own pass rate)", _ci(ev, "u_weak"))
        t.add_row("U_strong (strong model's own pass rate)", _ci(ev, "u_strong"))
    else:
        t.add_row("utility (length-controlled winrate vs reference)", _ci(ev, "utility"))
        t.add_row("U_weak", _ci(ev, "u_weak"))
    t.add_row("recovery", _ci(ev, "recovery"))
    t.add_row(
        "recovery, one-sided 95% lower bound",
        num(c.recovery_lower if c else None)
        + (f" ({c.dropped} of {c.n_boot} resamples had no gap: counted as failures)" if c and c.dropped else ""),
    )
    if not tests:
        t.add_row("raw winrate (no length control)", num(s.raw_winrate if s else None))
        t.add_row("recovery with alpaca_eval's penalised LC", num(c.recovery_penalised if c else None))
    t.add_row("tested" if tests else "judged", f"{s.n if s else 0} of {ev.n}")
    t.add_row("verified", "[green]yes[/]" if ev.verified else "[yellow]no[/] (why: below)")
    reasons = ev.reasons()
    t.add_row("certified", "[green]yes[/]" if not reasons else "[yellow]no[/] (why: below)")
    console.print(t)
    if reasons:
        console.print("[yellow]not certified:[/]")
        for r in reasons:
            console.print(f"  - {r}", markup=False)
    if ev.note:
        console.print(f"[yellow]no numbers: {ev.note}[/]")
    for pid, err in ev.errors[:10]:
        console.print(f"[red]  {pid}:[/] {err}")
    if len(ev.errors) > 10:
        console.print(f"[red]  … and {len(ev.errors) - 10} more[/]")
    timings = " · ".join(f"{k} {v:.0f} s" for k, v in ev.timings.items())
    console.print(f"[dim]{timings} · record records/evaluations/{ev.id}.jsonl[/]")


def _run_evaluations(spec: str, kw: dict, grid: bool = False):
    from .evaluate import EvaluationError, evaluate, sweep
    from .policies import PolicyError
    from .store import StoreError

    prompts = _prompt_set(kw)
    setup, settings = _setup(kw)

    async def run():
        try:
            if grid:
                return await sweep(spec, prompts, setup, settings)
            return [await evaluate(spec, prompts, setup, settings)]
        finally:
            await setup.close()

    try:
        return asyncio.run(run())
    except (EvaluationError, StoreError, PolicyError) as e:
        _fail(str(e))


@main.command("eval")
@click.option("--policy", "spec", required=True, help="policy spec, e.g. 'margin(tau=0.05, span=sentence)'")
@click.option("--json", "as_json", is_flag=True, help="print the numbers as JSON")
@prompt_options
@url_options
@job_options
def eval_cmd(spec: str, as_json: bool, **kw) -> None:
    """Evaluate a policy: decode, judge against the reference, report f_weak, utility, recovery with 95% CIs.

    Running the same evaluation again resumes it (a finished one is read back without calling any server).
    With --slurm it runs as a SLURM job (a cancelled or pre-empted one resumes the same way).
    """
    if _as_job(kw):
        return
    (ev,) = _run_evaluations(spec, kw)
    if as_json:
        click.echo(json.dumps(ev.to_json(), ensure_ascii=False, indent=2))
    else:
        _show_evaluation(ev)
    if ev.errors:
        sys.exit(2)


@main.command()
@click.option("--policy", "spec", required=True, help="a spec with lists, e.g. 'margin(tau=[0.02,0.05,0.1])'")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object per point")
@prompt_options
@url_options
@job_options
def sweep(spec: str, as_json: bool, **kw) -> None:
    """Evaluate every point of a policy grid on the same prompts (baselines are computed once); with --slurm, as
    a SLURM job (useful for long sweeps)."""
    if _as_job(kw):
        return
    evs = _run_evaluations(spec, kw, grid=True)
    if as_json:
        click.echo(json.dumps([e.to_json() for e in evs], ensure_ascii=False, indent=2))
        return
    t = Table(title=f"sweep {spec} · {evs[0].prompts} (n={evs[0].n})")
    for col in ("policy", "f_weak", "recovery", "utility", "judged", "certified", "id"):
        t.add_column(col)
    for e in evs:
        judged = f"{e.summary.n if e.summary else 0}/{e.n}"
        cert = "[green]yes[/]" if e.certified else "no"
        t.add_row(e.policy, _ci(e, "f_weak"), _ci(e, "recovery"), _ci(e, "utility"), judged, cert, e.id)
    console.print(t)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print the baselines as JSON")
@prompt_options
@url_options
def baselines(as_json: bool, **kw) -> None:
    """Show (computing them once if needed) U_weak, U_strong and the gap for the current servers and prompts."""
    from .evaluate import EvaluationError, ensure_baselines

    prompts = _prompt_set(kw)
    setup, settings = _setup(kw)

    b = _run(ensure_baselines(prompts, setup, settings), setup, EvaluationError)
    info = b.to_json()
    if as_json:
        click.echo(json.dumps(info, ensure_ascii=False, indent=2))
        return
    t = Table(title=f"baselines {b.id} · {info['prompts']} (n={info['n']})")
    t.add_column("")
    t.add_column("")
    if b.scored_by_tests:
        t.add_row("U_weak (weak model's own pass@1)", num(info["u_weak"]))
        t.add_row("U_strong (strong model's own pass@1)", num(info["u_strong"]))
    else:
        t.add_row("U_weak (weak only vs reference)", num(info["u_weak"]))
        t.add_row("U_strong (reference vs itself)", "0.500")
    t.add_row("gap", num(info["gap"]))
    for role, name in info["models"].items():
        t.add_row(f"{role} model", name)
    t.add_row("judge", info["judge"])
    t.add_row("computed", f"{info['created']} ({', '.join(f'{k} {v:.0f} s' for k, v in info['timings'].items())})")
    console.print(t)
    for pid, err in b.errors[:10]:
        console.print(f"[red]  {pid}:[/] {err}")


@main.command("judge-check")
@click.option("--baselines", "baselines_id", default=None, help="baselines record id (default: the newest)")
@click.option("--pairs", default=20, show_default=True, help="how many of its stored pairs to re-judge")
@click.option("--json", "as_json", is_flag=True)
@url_options
def judge_check_cmd(baselines_id: str | None, pairs: int, as_json: bool, **kw) -> None:
    """Re-judge a frozen set of stored pairs (weak answer vs reference), bypassing the cache, and report drift."""
    from .endpoints import EndpointError
    from .evaluate import EvaluationError, judge_check
    from .store import list_records

    ids = list_records("baselines")
    if not ids:
        _fail("no baselines on record yet: run `cdw baselines` or `cdw eval` first")
    try:
        from .client import ModelClient
        from .endpoints import resolve_endpoint

        client = ModelClient(resolve_endpoint("judge", _urls(kw)["judge"]))
    except EndpointError as e:
        _fail(str(e))

    d = _run(judge_check(baselines_id or ids[-1], client, pairs), client, EvaluationError)
    if as_json:
        click.echo(json.dumps(d.to_json(), indent=2))
    else:
        if d.n == 0:
            console.print(f"[red]no pair of {d.baselines_id} could be re-judged ({len(d.errors)} error(s))[/]")
        else:
            console.print(
                f"re-judged {d.n} pairs of baselines {d.baselines_id}: mean |Δ| {d.mean_abs_delta:.4f}, "
                f"max |Δ| {d.max_abs_delta:.4f}, {d.flipped} verdict(s) flipped, {len(d.errors)} error(s)"
            )
        if d.judge_changed:
            console.print(f"[yellow]the judge is not the one that made these preferences: {d.judge_changed}[/]")
    for pid, err in d.errors[:5]:
        console.print(f"[red]  {pid}:[/] {err}")
    if d.errors or d.n == 0 or d.max_abs_delta > 0.05:
        sys.exit(1)


@main.command()
@click.argument("evaluation_id")
@click.option("--replay", "replay_k", type=int, default=0, metavar="K",
              help="also decode and judge K seeded prompts again, without the call cache, and compare")  # fmt: skip
@click.option("--json", "as_json", is_flag=True)
@url_options
def verify(evaluation_id: str, replay_k: int, as_json: bool, **kw) -> None:
    """Check an evaluation record offline: ids, signatures and trusted key, texts vs segments, verdicts vs the
    texts they judged, baselines. Exit 0 when it verifies, 1 with the reasons when it does not."""
    from .records import check

    c = check("evaluation", evaluation_id)
    out = {"evaluation_id": evaluation_id, "valid": c.valid, "verified": c.verified, "reason": c.reason,
           "problems": list(c.problems), "signed_by": c.signed_by, "trusted_by": c.trusted_by}  # fmt: skip
    ok = c.verified
    if replay_k:
        from .endpoints import EndpointError
        from .evaluate import EvaluationError, Setup, replay

        try:
            setup = Setup.from_endpoints(_urls(kw))  # no call cache: ask the servers again
        except EndpointError as e:
            _fail(str(e))
        r = _run(replay(evaluation_id, setup, replay_k), setup, EvaluationError)
        out["replay"] = r.to_json()
        ok = ok and r.agrees
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        if c.verified:
            console.print(f"[green]✓[/] {evaluation_id} verifies (signed by {c.trusted_by})")
        else:
            console.print(f"[red]✗[/] {evaluation_id} does not verify: {c.reason}")
            for p in c.problems[:20]:
                console.print(f"  [red]-[/] {p}")
        if "replay" in out:
            r = out["replay"]
            console.print(f"replay of {len(r['prompt_ids'])} prompts: {r['same_text']} same text, "
                          f"{r['same_verdict']} same verdict (±{r['tolerance']})")  # fmt: skip
            for m in r["mismatches"]:
                console.print(f"  [red]-[/] {m['prompt_id']}: {m['what']}")
    sys.exit(0 if ok else 1)


@main.command()
def keys() -> None:
    """This workspace's public key: the line to add to records/trusted_keys.txt (by a commit the group reviews)."""
    from .signing import key_path, public_key, trusted_keys, trusted_keys_file

    key = public_key()
    trusted = trusted_keys().get(key)
    console.print(f"{key} {os.environ.get('USER', 'someone')}@workspace")
    console.print(f"[dim]private key {key_path()} · "
                  f"{'trusted as ' + trusted.who if trusted else 'not in ' + str(trusted_keys_file())}[/]")  # fmt: skip


# ---------------------------------------------------------------- forum: findings, leaderboard, published page
# (workspace/forum.py, workspace/leaderboard.py, workspace/site.py; numbers always come from evaluation records)

_EDITOR_NOTE = "<!-- Write the finding in markdown below this line (it is removed). See findings/README.md. -->\n"


def _with_finding_warnings(fn, *args, **kw):
    """Call fn, printing each skipped malformed finding as a warning instead of failing."""
    import warnings

    from .forum import FindingWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FindingWarning)
        out = fn(*args, **kw)
    for w in caught:
        if issubclass(w.category, FindingWarning):
            console.print(f"[yellow]warning: {w.message}[/]")
    return out


@main.group("findings")
def findings_group() -> None:
    """The research forum: read and post findings (markdown files in findings/)."""


@findings_group.command("list")
@click.option("--kind", type=click.Choice(["hypothesis", "negative", "result", "insight"]), default=None)
@click.option("--policy", default=None, help="a policy spec or family name, e.g. 'margin'")
@click.option("--since", default=None, metavar="DATE", help="only findings created at or after this ISO date/time")
@click.option("--text", default=None, help="only findings whose title, body or tags contain this text")
@click.option("--json", "as_json", is_flag=True, help="print the findings as JSON")
def findings_list(kind, policy, since, text, as_json: bool) -> None:
    """Findings, newest first."""
    from .forum import FindingError, get_findings

    try:
        found = _with_finding_warnings(get_findings, kind=kind, policy=policy, since=since, text=text)
    except FindingError as e:
        _fail(str(e))
    if as_json:
        click.echo(json.dumps([f.to_json() for f in found], ensure_ascii=False, indent=2))
        return
    t = Table("created (UTC)", "kind", "title", "author", "policy / evaluation", "id")
    for f in found:
        cite = " · ".join(x for x in (f.policy, f.evaluation) if x)
        t.add_row(f"{f.created:%Y-%m-%d %H:%M}", f.kind, f.title, f.author, cite, f.id)
    console.print(t)
    if not found:
        console.print("[dim]no findings (see findings/README.md to write one: `cdw findings add`)[/]")


@findings_group.command("show")
@click.argument("finding_id")
def findings_show(finding_id: str) -> None:
    """One finding; a cited evaluation's numbers are read from its record, never from the text."""
    from rich.markdown import Markdown

    from .evaluate import EvaluationError, load_evaluation
    from .forum import FindingError, get_finding

    try:
        f = get_finding(finding_id)
    except FindingError as e:
        _fail(str(e))
    console.print(f"[bold]{f.title}[/]  [dim]({f.kind})[/]", markup=True, highlight=False)
    meta = [f.author, f"{f.created:%Y-%m-%d %H:%M} UTC", f.policy or "", " ".join(f"#{t}" for t in f.tags)]
    console.print(" · ".join(m for m in meta if m), style="dim", markup=False)
    if f.evaluation:
        try:
            _show_evaluation(load_evaluation(f.evaluation))
        except EvaluationError as e:
            console.print(f"[red]evaluation {f.evaluation} cannot be read: {e}[/]")
    console.print(Markdown(f.body))


@findings_group.command("add")
@click.option("--title", required=True)
@click.option("--kind", required=True, type=click.Choice(["hypothesis", "negative", "result", "insight"]))
@click.option("--author", default=None, help="default: $CDW_AUTHOR, else your login name")
@click.option("--policy", default=None, help="the policy spec it is about (a result takes its evaluation's)")
@click.option("--evaluation", default=None, help="evaluation id (required for a result; its numbers are shown)")
@click.option("--tag", "tags", multiple=True, help="a tag (repeatable)")
@click.option("--body-file", type=click.File("r", encoding="utf-8"), default=None, help="markdown body ('-': stdin)")
def findings_add(title, kind, author, policy, evaluation, tags, body_file) -> None:
    """Post a finding. Without --body-file, $EDITOR opens for the body."""
    from .forum import FindingError, default_author, share_finding

    if body_file is not None:
        body = body_file.read()
    else:
        edited = click.edit(_EDITOR_NOTE, extension=".md", require_save=True)
        if edited is None:
            _fail("no body written: nothing posted")
        body = edited.replace(_EDITOR_NOTE.strip(), "", 1)
    try:
        fid = share_finding(title, kind, body, author or default_author(), policy, evaluation, tags)
    except FindingError as e:
        _fail(str(e))
    console.print(f"[green]✓[/] posted {fid}")


def _board_table(title: str, entries, ranked: bool = False, utility: str | None = None) -> Table:
    """A leaderboard table; `utility` names a column showing each evaluation's utility (tests benchmarks: pass@1)."""
    t = Table(title=title, title_justify="left")
    if ranked:
        t.add_column("#")
    t.add_column("policy", overflow="fold")
    for col in ("f_weak", "recovery", *([utility] if utility else []), "n", "when"):
        t.add_column(col, no_wrap=True)
    t.add_column("finding / note")
    t.add_column("evaluation", no_wrap=True)

    def num_over_span(v, iv) -> str:  # the point, and its 95% interval below it
        return num(v, missing="—") + (f"\n[dim]{span(iv)}[/]" if v is not None and iv else "")

    for e in entries:
        notes = "\n".join(x for x in (e.finding_title, e.note and f"[dim]{e.note}[/]") if x)
        row = [str(e.rank or "")] if ranked else []
        row += [e.policy, num_over_span(e.f_weak, e.f_weak_ci), num_over_span(e.recovery, e.recovery_ci)]
        row += [num(e.utility, missing="—") if e.evaluation else ""] if utility else []
        row += [f"{e.judged}/{e.n}" if e.evaluation else ""]
        row += [(e.created or "")[:10], notes, e.evaluation or ""]
        t.add_row(*row)
    return t


@main.command("leaderboard")
@click.option("--json", "as_json", is_flag=True, help="print the leaderboard as JSON")
@click.option("--benchmark", "benchmark", default=None, type=click.Choice(list(BENCHMARKS)),
              help="only this benchmark (default: every benchmark on record, one table each)")  # fmt: skip
def leaderboard_cmd(as_json: bool, benchmark: str | None) -> None:
    """Certified policies ranked by f_weak (ties by recovery) within each benchmark, from the evaluation records;
    the rest below. Benchmarks are scored differently and never ranked together."""
    from .leaderboard import get_leaderboard, utility_meaning

    board = _with_finding_warnings(get_leaderboard)
    if benchmark is not None:
        board = board.for_benchmark(benchmark)
    if as_json:
        click.echo(json.dumps(board.to_json(), ensure_ascii=False, indent=2))
        return
    for name in board.benchmarks:
        b = board.for_benchmark(name)
        u = "pass@1" if name in BENCHMARKS and BENCHMARKS[name].scoring == "tests" else None
        console.print(f"\n[bold]{name}[/] [dim]({utility_meaning(name)})[/]")
        console.print(_board_table(f"{name}: certified (canonical, recovery ≥ {b.bar})", b.certified + b.baselines,
                                   ranked=True, utility=u))  # fmt: skip
        if b.below_bar:
            console.print(_board_table(f"{name}: canonical, below the bar", b.below_bar, utility=u))
        if b.non_canonical:
            console.print(_board_table(f"{name}: not canonical", b.non_canonical, utility=u))
        if b.unverified:
            console.print(_board_table(f"{name}: unverified (not certified whatever their numbers)", b.unverified,
                                       utility=u))  # fmt: skip
    for rid, why in board.skipped:
        console.print(f"[yellow]warning: evaluation {rid} cannot be read: {why}[/]")


@main.command("site")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="folder for index.html (default .cdw/site)")
def site_cmd(out: str | None) -> None:
    """Write the results page (one self-contained HTML file that works offline) from records and findings."""
    from .site import build_site

    path = _with_finding_warnings(build_site, out)
    console.print(
        f"[green]✓[/] wrote {path} ({path.stat().st_size / 1e6:.1f} MB); open it in a browser: file://{path.resolve()}"
    )


# ---------------------------------------------------------------- agents: the MCP server (workspace/mcp_server.py)


@main.command("mcp")
@click.option("--http", is_flag=True, help="serve streamable HTTP on 127.0.0.1 instead of stdio")
@click.option("--port", default=8765, show_default=True, help="HTTP port (with --http)")
@click.option("--token", default=None, help="bearer token for --http (else $CDW_MCP_TOKEN, else one is generated)")
@click.option("--author", default=None, help="author of the findings agents share (else $CDW_AUTHOR, else login)")
@click.option("--no-cache", is_flag=True, help="do not answer repeated requests from the call cache")
@click.option("--policies", type=click.Path(file_okay=False), default=None,
              help="policy folder to load from and write to (else $CDW_POLICIES_DIR, else policies/)")  # fmt: skip
@click.option("--budget-evals", type=int, default=None, help="evaluations this server may start (enforced)")
@click.option("--budget-prompts", type=int, default=None, help="prompts its evaluations may cover in all (enforced)")
@click.option("--usage", type=click.Path(dir_okay=False), default=None,
              help="file the budgets count in (default: .usage.json in the policy folder)")  # fmt: skip
@click.option("--max-in-flight", type=int, default=None, help="requests in flight per model server (a share)")
@url_options
def mcp_cmd(http: bool, port: int, token: str | None, author: str | None, no_cache: bool, policies, budget_evals,
            budget_prompts, usage, max_in_flight, **kw) -> None:  # fmt: skip
    """Serve the agents' tools over MCP (stdio by default); AGENTS.md has a client configuration."""
    from pathlib import Path

    from .mcp_server import serve, server_config

    config = server_config(_urls(kw), author, not no_cache, Path(policies) if policies else None, budget_evals,
                           budget_prompts, Path(usage) if usage else None, max_in_flight)  # fmt: skip
    serve(config, http=http, port=port, token=token)


def _register_more_commands() -> None:  # in their own modules; imported here so `cdw traces|probe|agents` exist
    from .cli_agents import agents_group
    from .cli_router import probe_group, traces_group

    main.add_command(traces_group)
    main.add_command(probe_group)
    main.add_command(agents_group)


if __name__ == "__main__":  # `python -m workspace.cli`: run the importable module, where every command is registered
    from workspace.cli import main as _main

    _main()
else:
    _register_more_commands()
