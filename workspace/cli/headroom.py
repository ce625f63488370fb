"""`cdw headroom`: what a policy could reach on a benchmark whose answers are code, from the baselines on record
(`workspace/headroom.py`)."""

from __future__ import annotations

import json

import click

from ..benchmarks import names
from ..format import num
from .options import console, fail
from .tables import Column, say, show


@click.command("headroom")
@click.option("--benchmark", default="humaneval", show_default=True, type=click.Choice(list(names())),
              help="a benchmark whose answers are code")  # fmt: skip
@click.option("--split", default=None, help="one half of its problems (train, test); default: all of them")
@click.option("--baselines", "record", default=None, help="the baselines record to read (default: the largest that "
              "holds every problem asked for)")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def headroom_cmd(benchmark: str, split: str | None, record: str | None, as_json: bool) -> None:
    """The ceiling, from the weak and strong models' own answers on record: each answer's characters by kind
    (prose, copied from the problem, comment, header, implementation, demo), what the weak model gets right (import
    lines, the signature, the strong implementation, a common prefix), and upper bounds on f_weak and f_weak_code
    when the weak model writes the header and the strong one the rest."""
    from ..headroom import HeadroomError, headroom

    try:
        h = headroom(benchmark, split, record)
    except HeadroomError as e:
        fail(str(e))
    if as_json:
        click.echo(json.dumps(h.to_json(), ensure_ascii=False, indent=2))
        return
    say(console, [f"{h.benchmark} · {h.prompts} (n={h.n})", f"baselines {h.baselines}",
                  " / ".join(f"{r}: {m}" for r, m in h.models.items())], style="bold")  # fmt: skip
    rows = [[k.kind, num(k.strong), num(k.weak)] for k in h.kinds]
    rows.append(["scored (in the extracted program)", num(h.strong_scored), num(h.weak_scored)])
    show(console, f"characters by kind (shares of {h.strong_chars} strong, {h.weak_chars} weak)",
         ["kind", Column("strong", wrap=False), Column("weak", wrap=False)], rows)  # fmt: skip
    facts = [
        ["code opens with an import line (strong / weak)", f"{h.strong_opens_with_import} / "
         f"{h.weak_opens_with_import} of {h.n}"],
        ["weak answer holds the problem's signature line verbatim", f"{h.weak_exact_signature} of {h.n}"],
        ["strong implementation characters the weak answer has on the same line, verbatim",
         f"{num(h.weak_reproduces_implementation)} of {h.strong_implementation_chars}"],
        ["common prefix of the two answers (characters per problem; share of the strong characters)",
         f"{h.common_prefix_mean:.1f}; {num(h.common_prefix_share)}"],
        ["problems whose common prefix goes past the strong answer's first line",
         f"{h.common_prefix_past_first_line} of {h.n}"],
    ]  # fmt: skip
    show(console, "what the weak model gets right", ["quantity", Column("value", wrap=False)], facts)
    bounds = [[b.name, b.weak_writes, b.strong_writes, num(b.f_weak), num(b.f_weak_code)] for b in h.bounds]
    show(console, "upper bounds (the weak share of an answer made of the two models' parts)",
         ["bound", "weak writes", "strong writes", Column("f_weak", wrap=False), Column("f_weak_code", wrap=False)],
         bounds)  # fmt: skip
    say(console, ["f_weak_code: the weak share of the characters the benchmark scores (the extracted program)",
                  "recovery 1.0 only when the made-up answer scores as the strong one does (the strong header "
                  "bounds: it is the strong answer)"], style="dim")  # fmt: skip
