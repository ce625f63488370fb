"""`cdw decode|eval|sweep|baselines|judge-check`: decode one instruction, evaluate policies, show the numbers."""

from __future__ import annotations

import asyncio
import json
import sys

import click

from ..format import num, with_interval
from .options import (
    console,
    eval_setup,
    fail,
    job_options,
    prompt_options,
    prompt_set,
    reuse_option,
    reuse_store,
    run_closing,
    stop_options,
    stop_rule,
    submitted_as_job,
    url_options,
    urls,
)
from .tables import Column, say, show


@click.command("decode")
@click.argument("instruction")
@click.option("--policy", "spec", default="margin(tau=0.05, span=sentence)", show_default=True, help="policy spec")
@click.option("--max-tokens", default=256, show_default=True, help="answer length limit (weak tokens)")
@click.option("--json", "as_json", is_flag=True, help="print the decode as JSON")
@reuse_option
@url_options
def decode_cmd(instruction: str, spec: str, max_tokens: int, as_json: bool, **kw) -> None:
    """Collaboratively decode one INSTRUCTION; weak spans plain, strong spans highlighted."""
    from ..endpoints import EndpointError
    from ..engine import EngineSettings, Models, decode
    from ..policies import PolicyError, load_policy

    try:
        policy = load_policy(spec)
        models = Models.from_endpoints(urls(kw), reuse=reuse_store(kw))
    except (PolicyError, EndpointError) as e:
        fail(str(e))

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


def _ci(ev, key: str) -> str:
    """A number with its 95% interval: shares of characters from the summary, the fitted ones from the certification
    rule's fit."""
    src = ev.summary if key in ("f_weak", "f_weak_code", "copy_share") else ev.certification
    v = getattr(src, key) if src else None
    return with_interval(v, src.ci.get(key) if src else None)


def show_evaluation(ev) -> None:
    s, c = ev.summary, ev.certification
    judged = ev.baselines.needs_judge
    rows = [("f_weak", _ci(ev, "f_weak"))]
    if s and s.f_weak_code is not None:
        rows.append(("f_weak_code (weak share of the scored code)", _ci(ev, "f_weak_code")))
        rows.append(("copy share (weak code copying the prompt)", _ci(ev, "copy_share")))
    if not judged:
        rows.append(("utility (pass@1, unit tests)", _ci(ev, "utility")))
        rows.append(("U_weak (weak model's own pass rate)", _ci(ev, "u_weak")))
        rows.append(("U_strong (strong model's own pass rate)", _ci(ev, "u_strong")))
    else:
        rows.append(("utility (length-controlled winrate vs reference)", _ci(ev, "utility")))
        rows.append(("U_weak", _ci(ev, "u_weak")))
    rows.append(("recovery", _ci(ev, "recovery")))
    dropped = f" ({c.dropped} of {c.n_boot} resamples had no gap: counted as failures)" if c and c.dropped else ""
    rows.append(("recovery, one-sided 95% lower bound", num(c.recovery_lower if c else None) + dropped))
    if judged:
        rows.append(("raw winrate (no length control)", num(s.raw_winrate if s else None)))
        rows.append(("recovery with alpaca_eval's penalised LC", num(c.recovery_penalised if c else None)))
    rows.append(("judged" if judged else "tested", f"{s.n if s else 0} of {ev.n}"))
    if ev.stopped is not None:
        rows.append(("stopped early", f"[yellow]after {ev.stopped.n} of {ev.n} prompts[/] (why: below)"))
    rows.append(("verified", "[green]yes[/]" if ev.verified else "[yellow]no[/] (why: below)"))
    reasons = ev.reasons()
    rows.append(("certified", "[green]yes[/]" if not reasons else "[yellow]no[/] (why: below)"))
    show(console, f"evaluation {ev.id} · {ev.policy} · {ev.prompts} (n={ev.n})", ["quantity", "value [95% CI]"], rows)
    if reasons:
        console.print("[yellow]not certified:[/]")
        for r in reasons:
            console.print(f"  - {r}", markup=False, soft_wrap=False)
    if ev.note:
        console.print(f"[yellow]no numbers: {ev.note}[/]", soft_wrap=False)
    for pid, err in ev.errors[:10]:
        console.print(f"[red]  {pid}:[/] {err}", soft_wrap=False)
    if len(ev.errors) > 10:
        console.print(f"[red]  … and {len(ev.errors) - 10} more[/]")
    req = ev.requests()
    if req["saved"] is not None:
        parts = [f"{role} requests {sum(r.values())} ({r['reuse']} known, {r['cache']} cached)"
                 for role, r in ((role, req[role]) for role in ("weak", "strong"))]  # fmt: skip
        say(console, [*parts, f"{req['saved']:.0%} answered without a server"], style="dim")
    timings = [f"{k} {v:.0f} s" for k, v in ev.timings.items()]
    say(console, [*timings, f"record records/evaluations/{ev.id}.jsonl"], style="dim")


def _run_evaluations(spec: str, kw: dict, grid: bool = False):
    from ..evaluate import EvaluationError, evaluate, sweep
    from ..policies import PolicyError
    from ..records.log import StoreError

    stop = stop_rule(kw)
    prompts = prompt_set(kw)
    setup, settings = eval_setup(kw)

    async def run():
        try:
            if grid:
                return [p.evaluation for p in await sweep(spec, prompts, setup, settings, stop=stop)]
            return [await evaluate(spec, prompts, setup, settings, stop=stop)]
        finally:
            await setup.close()

    try:
        return asyncio.run(run())
    except (EvaluationError, StoreError, PolicyError) as e:
        fail(str(e))


@click.command("eval")
@click.option("--policy", "spec", required=True, help="policy spec, e.g. 'margin(tau=0.05, span=sentence)'")
@click.option("--json", "as_json", is_flag=True, help="print the numbers as JSON")
@stop_options
@prompt_options
@url_options
@job_options
def eval_cmd(spec: str, as_json: bool, **kw) -> None:
    """Evaluate a policy: decode, judge against the reference, report f_weak, utility, recovery with 95% CIs.

    Running the same evaluation again resumes it (a finished one is read back without calling any server).
    With --slurm it runs as a SLURM job (a cancelled or pre-empted one resumes the same way). With --stop-below R
    it runs in stages and stops once its first prompts show that its recovery is below R (never certified; run
    it again without the flag to go on).
    """
    if submitted_as_job(kw):
        return
    (ev,) = _run_evaluations(spec, kw)
    if as_json:
        click.echo(json.dumps(ev.to_json(), ensure_ascii=False, indent=2))
    else:
        show_evaluation(ev)
    if ev.errors:
        sys.exit(2)


@click.command()
@click.option("--policy", "spec", required=True, help="a spec with lists, e.g. 'margin(tau=[0.02,0.05,0.1])'")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object per point")
@stop_options
@prompt_options
@url_options
@job_options
def sweep(spec: str, as_json: bool, **kw) -> None:
    """Evaluate every point of a policy grid on the same prompts (baselines are computed once); with --slurm, as
    a SLURM job (useful for long sweeps)."""
    if submitted_as_job(kw):
        return
    evs = _run_evaluations(spec, kw, grid=True)
    if as_json:
        click.echo(json.dumps([e.to_json() for e in evs], ensure_ascii=False, indent=2))
        return
    rows = []
    for e in evs:
        judged = f"{e.summary.n if e.summary else 0}/{e.n}"
        cert = "[green]yes[/]" if e.certified else f"no (stopped at {e.stopped.n})" if e.stopped else "no"
        rows.append([e.policy, _ci(e, "f_weak"), _ci(e, "recovery"), _ci(e, "utility"), judged, cert, e.id])
    numbers = [Column(c, wrap=False) for c in ("f_weak", "recovery", "utility", "judged")]
    show(console, f"sweep {spec} · {evs[0].prompts} (n={evs[0].n})",
         ["policy", *numbers, "certified", Column("id", wrap=False)], rows)  # fmt: skip


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print the baselines as JSON")
@prompt_options
@url_options
def baselines(as_json: bool, **kw) -> None:
    """Show (computing them once if needed) U_weak, U_strong and the gap for the current servers and prompts."""
    from ..evaluate import EvaluationError, ensure_baselines

    prompts = prompt_set(kw)
    setup, settings = eval_setup(kw)

    b = run_closing(ensure_baselines(prompts, setup, settings), setup, EvaluationError)
    info = b.to_json()
    if as_json:
        click.echo(json.dumps(info, ensure_ascii=False, indent=2))
        return
    rows = []
    if not b.needs_judge:
        rows.append(("U_weak (weak model's own pass@1)", num(info["u_weak"])))
        rows.append(("U_strong (strong model's own pass@1)", num(info["u_strong"])))
    else:
        rows.append(("U_weak (weak only vs reference)", num(info["u_weak"])))
        rows.append(("U_strong (reference vs itself)", "0.500"))
    rows.append(("gap", num(info["gap"])))
    for role, name in info["models"].items():
        rows.append((f"{role} model", name))
    rows.append(("judge", info["judge"]))
    rows.append(("computed", f"{info['created']} ({', '.join(f'{k} {v:.0f} s' for k, v in info['timings'].items())})"))
    show(console, f"baselines {b.id} · {info['prompts']} (n={info['n']})", ["", ""], rows)
    for pid, err in b.errors[:10]:
        console.print(f"[red]  {pid}:[/] {err}")


@click.command("judge-check")
@click.option("--baselines", "baselines_id", default=None, help="baselines record id (default: the newest)")
@click.option("--pairs", default=20, show_default=True, help="how many of its stored pairs to re-judge")
@click.option("--json", "as_json", is_flag=True)
@url_options
def judge_check_cmd(baselines_id: str | None, pairs: int, as_json: bool, **kw) -> None:
    """Re-judge a frozen set of stored pairs (weak answer vs reference), bypassing the cache, and report drift."""
    from ..endpoints import EndpointError
    from ..evaluate import EvaluationError, judge_check
    from ..records.log import list_records

    ids = list_records("baselines")
    if not ids:
        fail("no baselines on record yet: run `cdw baselines` or `cdw eval` first")
    try:
        from ..client import ModelClient
        from ..endpoints import resolve_endpoint

        client = ModelClient(resolve_endpoint("judge", urls(kw)["judge"]))
    except EndpointError as e:
        fail(str(e))

    d = run_closing(judge_check(baselines_id or ids[-1], client, pairs), client, EvaluationError)
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
