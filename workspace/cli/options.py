"""The options several commands share (servers, prompts, SLURM jobs) and the helpers that read them."""

from __future__ import annotations

import asyncio
import sys

import click
from rich.console import Console

from servers.presets import ROLES

from ..benchmarks import DEFAULT, names
from ..benchmarks import get as get_benchmark

console = Console(highlight=False, soft_wrap=True)


def fit_to_terminal() -> None:
    """Size the shared console to the terminal (or $COLUMNS) as it is now, not as it was when this was imported."""
    console.width = Console().width


def fail(message: str, code: int = 1) -> None:
    """Print `message` as an error and exit with `code`."""
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


def urls(kw: dict) -> dict[str, str | None]:
    """The --ROLE-url values, taken out of `kw`."""
    return {r: kw.pop(f"{r}_url", None) for r in ROLES}


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


def submitted_as_job(kw: dict) -> bool:
    """With --slurm, submit this very command as a SLURM job (with --wait, wait for it and exit with its status)
    and return True; without, check no job option was given and return False."""
    from servers import jobs, sbatch
    from servers.sbatch import SlurmError
    from servers.startup import log_tail

    as_job, wait_job = kw.pop("as_job"), kw.pop("wait_job")
    if wait_job and not as_job:
        fail("--wait and the SLURM options need --slurm")
    options = take_slurm_options(kw, as_job)
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
        fail(str(e))
    if job.log.exists():
        click.echo(job.log.read_text(errors="replace"), nl=False)
    code = jobs.exit_status(st)
    if code:
        err_console.print(f"[red]job {job.job_id} ended {st.describe()}[/]; last lines of {job.errors}:")
        err_console.print(log_tail(str(job.errors), 20), markup=False)
    sys.exit(code)


def take_slurm_options(kw: dict, slurm: bool):
    """The SLURM options of `slurm_options`, taken out of `kw`; given without --slurm, a clear error."""
    from servers.sbatch import SlurmOptions

    options = SlurmOptions(partition=kw.pop("partition"), account=kw.pop("account"), time=kw.pop("time_limit"),
                           extra=tuple(kw.pop("sbatch_args")))  # fmt: skip
    if not slurm and options != SlurmOptions():
        fail("--partition, --account, --time and --sbatch-arg need --slurm")
    return options


BENCHMARK_NAMES = list(names())


def stop_options(f):
    """--stop-below: end an evaluation once its first prompts show its recovery is below a target."""
    return click.option(
        "--stop-below", "stop_below", type=float, default=None, metavar="RECOVERY",
        help="early stopping: run the prompts in stages and stop once the recovery is shown to be below RECOVERY "
        "(e.g. 0.98, the bar); a policy truly at RECOVERY is stopped in at most 5% of evaluations (README: Early "
        "stopping). A stopped evaluation is never certified; run it again without this flag to go on",
    )(f)  # fmt: skip


def stop_rule(kw: dict):
    """The early stopping rule --stop-below names (None without it), taken out of `kw`."""
    from ..stats import StatsError, StopRule

    target = kw.pop("stop_below")
    if target is None:
        return None
    try:
        return StopRule(target)
    except StatsError as e:
        fail(f"--stop-below: {e}")


def prompt_options(f):
    """Which prompts: the canonical set (default), the first N of it, or a JSONL file."""
    f = click.option("--prompts", "prompts_file", default=None, metavar="FILE.jsonl", help="a JSONL prompt set")(f)
    f = click.option("--n", "n", type=int, default=None, help="the first N prompts of the canonical set")(f)
    f = click.option("--canonical", is_flag=True, help="the canonical 100 (the default)")(f)
    f = click.option("--confirm", is_flag=True,
                     help="the 300-prompt confirmation set (a certified result confirmed at n = 400)")(f)  # fmt: skip
    f = click.option("--max-tokens", type=int, default=None,
                     help="answer length limit, in each author's tokens (default: the benchmark's, "
                     + ", ".join(f"{get_benchmark(b).max_tokens} for {b}" for b in BENCHMARK_NAMES)
                     + ")")(f)  # fmt: skip
    f = click.option("--benchmark", default=DEFAULT, show_default=True, type=click.Choice(BENCHMARK_NAMES),
                     help="what to evaluate on: " + " or ".join(
                         f"{b} ({'judged' if get_benchmark(b).needs_judge else 'scored alone'})"
                         for b in BENCHMARK_NAMES))(f)  # fmt: skip
    f = click.option("--no-cache", is_flag=True, help="do not answer repeated requests from the call cache")(f)
    f = reuse_option(f)
    f = click.option("--split", type=click.Choice(["train", "test"]), default=None,
                     help="benchmarks with fixed halves (humaneval): one half of the problems (train: for traces "
                     "and probes; test: held out)")(f)  # fmt: skip
    return f


def prompt_set(kw: dict):
    """The prompt set the options name (`resolve_prompts` of the benchmark: the flags only say which spec)."""
    from ..benchmarks import DataError, resolve_prompts

    canonical, n, path, confirm = kw.pop("canonical"), kw.pop("n"), kw.pop("prompts_file"), kw.pop("confirm")
    split = kw.pop("split")
    if sum(x is not None and x is not False for x in (n, path, split)) + canonical + confirm > 1:
        fail("choose one of --canonical, --confirm, --n N, --split HALF, --prompts FILE")
    bench = get_benchmark(kw["benchmark"])
    if split and f"{bench.name}:{split}" not in bench.sets():
        fail(f"--split: {bench.name} has no fixed halves")
    spec = "confirmation" if confirm else path if path else f"{bench.name}:{split}" if split else n
    try:
        return resolve_prompts(bench, spec)
    except DataError as e:
        fail(str(e))


def reuse_option(f):
    """`--no-reuse`: ask the servers even what continues an answer they gave before (workspace/reuse.py)."""
    return click.option("--no-reuse", is_flag=True,
                        help="do not answer requests that continue a known greedy answer from it (the call cache "
                        "still answers repeated requests); also CDW_REUSE=off")(f)  # fmt: skip


def reuse_store(kw: dict):
    """The store of known continuations the options ask for (None: --no-reuse or CDW_REUSE=off)."""
    import sqlite3

    from servers.settings import reuse

    from ..reuse import ContinuationStore

    off = kw.pop("no_reuse")
    try:
        if off or not reuse():
            return None
        return ContinuationStore()
    except ValueError as e:
        fail(str(e))
    except sqlite3.Error as e:
        fail(f"the known continuations cannot be opened ({e}): move .cdw/cache/continuations.sqlite away, or run "
             "with --no-reuse")  # fmt: skip


def eval_setup(kw: dict):
    from ..cache import CallCache
    from ..endpoints import EndpointError
    from ..engine import EngineSettings
    from ..evaluate import EvalSettings, Setup

    cache = None if kw.pop("no_cache") else CallCache()
    reuse = reuse_store(kw)
    bench = get_benchmark(kw.pop("benchmark"))
    max_tokens = kw.pop("max_tokens")
    engine = EngineSettings(max_tokens=max_tokens) if max_tokens else bench.engine_settings()
    settings = EvalSettings(engine, benchmark=bench.name)
    try:
        return Setup.from_endpoints(urls(kw), cache, reuse=reuse), settings
    except EndpointError as e:
        fail(str(e))


def run_closing(coro, resource, errors):
    """Run `coro`, close `resource` (a client or setup) afterwards, and turn `errors` into a clean exit."""

    async def go():
        try:
            return await coro
        finally:
            await resource.close()

    try:
        return asyncio.run(go())
    except errors as e:
        fail(str(e))
