"""`cdw score`: score one answer file exactly as an evaluation would, to see why it passed or failed."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click

from ..benchmarks import DataError, TestedBenchmark, names
from .options import console, fail


@click.command("score")
@click.option("--benchmark", required=True, type=click.Choice(names()), help="the benchmark the problem is from")
@click.option("--problem", "problem_id", required=True, metavar="ID", help="the problem's id, e.g. HumanEval/7")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help='print {"status", "program", "output"} as JSON')
def score_cmd(benchmark: str, problem_id: str, file: Path, as_json: bool) -> None:
    """Score the answer in FILE (a model's whole reply) to one problem, exactly as an evaluation scores it: the
    same extraction, program and tests in the same sandbox. Exit 0 when it passed, 1 otherwise."""
    from ..benchmarks import get

    bench = get(benchmark)
    if not isinstance(bench, TestedBenchmark):
        fail(f"{bench.name} answers are judged against a reference, not scored alone: `cdw score` cannot score one")
    answer = file.read_text(encoding="utf-8", errors="replace")
    try:
        program = bench.scored_text(answer, problem_id)
        outcome = asyncio.run(bench.score(answer, problem_id, bench.pool()))
    except KeyError:
        fail(f"{problem_id!r} is not one of {bench.name}'s problems")
    except DataError as e:
        fail(str(e))
    out = {"status": outcome.status, "program": program, "output": outcome.output}
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        colour = "green" if outcome.status == "passed" else "red"
        console.print(f"[{colour}]{outcome.status}[/] {bench.name} {problem_id} ({outcome.seconds:.2f} s)")
        if program:
            console.print("[bold]program[/]")
            click.echo(program.rstrip("\n"))
        if outcome.output.strip():
            console.print("[bold]output[/]")
            click.echo(outcome.output.rstrip("\n"))
    sys.exit(0 if outcome.status == "passed" else 1)
