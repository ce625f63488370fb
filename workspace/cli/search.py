"""`cdw search`: successive halving over a policy grid on a search split, the finalists evaluated on a held-out split
(`workspace/evaluate/search.py`); progress bars while it runs, each decision as it is made."""

from __future__ import annotations

import asyncio
import json
import sys

import click

from ..benchmarks import DEFAULT
from ..benchmarks import get as get_benchmark
from ..format import num
from .evaluate import show_evaluation
from .options import (
    BENCHMARK_NAMES,
    console,
    eval_setup,
    fail,
    job_options,
    reuse_option,
    stop_options,
    stop_rule,
    submitted_as_job,
    url_options,
)
from .tables import Column, say, show


def _default_split(benchmark: str, half: str) -> str:
    bench = get_benchmark(benchmark)
    name = f"{bench.name}:{half}"
    if name not in bench.sets():
        fail(f"{bench.name} has no fixed halves: name the search split and the held-out one, e.g. --on confirmation "
             "--final canonical")  # fmt: skip
    return name


def show_rung(line: dict, rungs: int) -> None:
    """One decision: every candidate of the rung, its numbers and rank, kept or dropped."""
    rows = []
    for c in sorted(line["candidates"], key=lambda c: c["rank"]):
        state = "[green]kept[/]" if c["kept"] else "dropped"
        rows.append([str(c["rank"]), c["spec"], num(c["f_weak"]), num(c["recovery"]), num(c["utility"]),
                     "yes" if c["reaches"] else "no", state + (f" ({c['errors']} errors)" if c["errors"] else ""),
                     c["evaluation"]])  # fmt: skip
    cols = ["#", "policy", *(Column(c, wrap=False) for c in ("f_weak", "recovery", "utility")), "reaches target",
            "", Column("evaluation", wrap=False)]  # fmt: skip
    show(console, f"rung {line['rung'] + 1} of {rungs} · {line['prompts']} (n={line['n']})", cols, rows, key=1)


@click.command("search")
@click.option("--policy", "specs", required=True, multiple=True,
              help="a grid spec as cdw sweep takes it, e.g. 'margin(tau=[0.03,0.1,0.3,1.0], span=[newline,sentence])'"
              " (repeatable: the grids are joined)")  # fmt: skip
@click.option("--benchmark", default=DEFAULT, show_default=True, type=click.Choice(BENCHMARK_NAMES))
@click.option("--on", "on", default=None, metavar="SPLIT",
              help="the prompt set searched on (default BENCHMARK:train)")  # fmt: skip
@click.option("--final", "final", default=None, metavar="SPLIT",
              help="the held-out prompt set the finalists are evaluated on (default BENCHMARK:test)")  # fmt: skip
@click.option("--n0", default=10, show_default=True, help="prompts of the first rung")
@click.option(
    "--eta", default=2, show_default=True, help="keep 1/ETA of the candidates per rung; grow the subset ETA-fold"
)
@click.option("--finalists", default=1, show_default=True, help="candidates evaluated on the held-out split")
@click.option("--target", default=0.98, show_default=True, help="the recovery the search wants reached")
@click.option("--max-tokens", type=int, default=None, help="answer length limit (default: the benchmark's)")
@click.option("--no-cache", is_flag=True, help="do not answer repeated requests from the call cache")
@click.option("--json", "as_json", is_flag=True, help="print the search (rungs, final, choice) as JSON")
@stop_options
@reuse_option
@url_options
@job_options
def search_cmd(specs: tuple[str, ...], on: str | None, final: str | None, n0: int, eta: int, finalists: int,
               target: float, as_json: bool, **kw) -> None:  # fmt: skip
    """Search a policy grid by successive halving: every candidate on the first N0 prompts of the search split, the
    best 1/ETA kept (f_weak among those whose recovery reaches the target, then the others by utility), the subset
    grown ETA-fold, until the finalists; then the finalists evaluated on the whole held-out split. Everything it
    runs is an ordinary evaluation record; its decisions are recorded in records/searches/ and taken again from
    those records when the same search runs again (which resumes it, or reads it back). --stop-below applies to the
    final evaluations."""
    from ..evaluate import EvaluationError, SearchPlan, search
    from ..policies import PolicyError, expand_spec
    from ..records.log import StoreError

    if submitted_as_job(kw):
        return
    bench = kw["benchmark"]
    stop = stop_rule(kw)
    try:
        plan = SearchPlan(on or _default_split(bench, "train"), final or _default_split(bench, "test"), n0, eta,
                          finalists, target)  # fmt: skip
    except EvaluationError as e:
        fail(str(e))
    setup, settings = eval_setup(kw)
    try:
        on_set, final_set = plan.splits(settings, files=True)
        count = sum(len(expand_spec(s)) for s in specs)
    except (EvaluationError, PolicyError) as e:
        fail(str(e))
    rungs = len(plan.rungs(count, len(on_set)))
    if not as_json:
        evaluations, prompts = plan.cost(count, len(on_set), len(final_set))
        say(console, [f"search of {count} candidates", f"{rungs} rung(s) on {on_set.name}",
                      f"finalists on {final_set.name}", f"at most {evaluations} evaluations, {prompts} prompts"],
            style="dim")  # fmt: skip

    def on_event(kind: str, line: dict) -> None:
        if as_json:
            return
        if kind == "rung":
            show_rung(line, rungs)
        else:
            say(console, [f"final on {line['prompts']}", f"choice {line['choice']}"], style="bold")

    async def run():
        try:
            return await search(list(specs), plan, setup, settings, on_event=on_event, stop=stop, files=True)
        finally:
            await setup.close()

    try:
        result = asyncio.run(run())
    except (EvaluationError, StoreError, PolicyError) as e:
        fail(str(e))
    if as_json:
        click.echo(json.dumps(result.to_json(), ensure_ascii=False, indent=2))
        return
    for ev in result.final:
        show_evaluation(ev)
    say(console, [f"search {result.id}", f"choice {result.choice}", f"record records/searches/{result.id}.jsonl"],
        style="dim")  # fmt: skip
    if any(ev.errors for ev in result.final):
        sys.exit(2)
