"""`cdw findings|leaderboard|site`: the research forum and what is computed from the records (never from posts)."""

from __future__ import annotations

import json

import click

from ..benchmarks import get as get_benchmark
from ..benchmarks import names
from ..format import num, span
from .evaluate import show_evaluation
from .options import console, fail
from .tables import Column, say, show

_EDITOR_NOTE = "<!-- Write the finding in markdown below this line (it is removed). See findings/README.md. -->\n"


def _with_finding_warnings(fn, *args, **kw):
    """Call fn, printing each skipped malformed finding as a warning instead of failing."""
    import warnings

    from ..forum import FindingWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FindingWarning)
        out = fn(*args, **kw)
    for w in caught:
        if issubclass(w.category, FindingWarning):
            console.print(f"[yellow]warning: {w.message}[/]")
    return out


@click.group("findings")
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
    from ..forum import FindingError, get_findings

    try:
        found = _with_finding_warnings(get_findings, kind=kind, policy=policy, since=since, text=text)
    except FindingError as e:
        fail(str(e))
    if as_json:
        click.echo(json.dumps([f.to_json() for f in found], ensure_ascii=False, indent=2))
        return
    rows = []
    for f in found:
        cite = " · ".join(x for x in (f.policy, f.evaluation) if x)
        rows.append([f"{f.created:%Y-%m-%d %H:%M}", f.kind, f.title, f.author, cite, f.id])
    show(console, None, [Column("created (UTC)", wrap=False), "kind", "title", "author",
         Column("policy / evaluation", wrap=False), Column("id", wrap=False)], rows, key=2)  # fmt: skip
    if not found:
        console.print("[dim]no findings (see findings/README.md to write one: `cdw findings add`)[/]")


@findings_group.command("show")
@click.argument("finding_id")
def findings_show(finding_id: str) -> None:
    """One finding; a cited evaluation's numbers are read from its record, never from the text."""
    from rich.markdown import Markdown

    from ..evaluate import EvaluationError, load_evaluation
    from ..forum import FindingError, get_finding

    try:
        f = get_finding(finding_id)
    except FindingError as e:
        fail(str(e))
    console.print(f"[bold]{f.title}[/]  [dim]({f.kind})[/]", markup=True, highlight=False, soft_wrap=False)
    meta = [f.author, f"{f.created:%Y-%m-%d %H:%M} UTC", f.policy or "", " ".join(f"#{t}" for t in f.tags)]
    say(console, [m for m in meta if m], style="dim")
    if f.evaluation:
        try:
            show_evaluation(load_evaluation(f.evaluation))
        except EvaluationError as e:
            console.print(f"[red]evaluation {f.evaluation} cannot be read: {e}[/]")
    console.print(Markdown(f.body), soft_wrap=False)


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
    from ..forum import FindingError, default_author, share_finding

    if body_file is not None:
        body = body_file.read()
    else:
        edited = click.edit(_EDITOR_NOTE, extension=".md", require_save=True)
        if edited is None:
            fail("no body written: nothing posted")
        body = edited.replace(_EDITOR_NOTE.strip(), "", 1)
    try:
        fid = share_finding(title, kind, body, author or default_author(), policy, evaluation, tags)
    except FindingError as e:
        fail(str(e))
    console.print(f"[green]✓[/] posted {fid}")


def _show_board(title: str, entries, ranked: bool = False, utility: str | None = None, code: bool = False) -> None:
    """A leaderboard table; `utility` names a column showing each evaluation's utility (benchmarks scored alone:
    pass@1); `code` adds f_weak_code (the weak share of the scored code) and the share of it copying the prompt."""
    shares = ("f_weak", *(("f_weak_code", "copy") if code else ()))
    numbers = [Column(c, wrap=False) for c in (*shares, "recovery", *([utility] if utility else []), "n", "when")]
    columns = [*(["#"] if ranked else []), "policy", *numbers, "finding / note", Column("evaluation", wrap=False)]
    rows = []

    def num_over_span(v, iv) -> str:  # the point, and its 95% interval below it
        return num(v, missing="—") + (f"\n[dim]{span(iv)}[/]" if v is not None and iv else "")

    for e in entries:
        notes = "\n".join(x for x in (e.finding_title, e.note and f"[dim]{e.note}[/]") if x)
        row = [str(e.rank or "")] if ranked else []
        row += [e.policy, num_over_span(e.f_weak, e.f_weak_ci)]
        row += [num_over_span(e.f_weak_code, e.f_weak_code_ci), num_over_span(e.copy_share, e.copy_share_ci)] if code \
            else []  # fmt: skip
        row += [num_over_span(e.recovery, e.recovery_ci)]
        row += [num(e.utility, missing="—") if e.evaluation else ""] if utility else []
        row += [f"{e.judged}/{e.n}" if e.evaluation else ""]
        row += [(e.created or "")[:10], notes, e.evaluation or ""]
        rows.append(row)
    show(console, title, columns, rows, key=1 if ranked else 0)


@click.command("leaderboard")
@click.option("--json", "as_json", is_flag=True, help="print the leaderboard as JSON")
@click.option("--benchmark", "benchmark", default=None, type=click.Choice(list(names())),
              help="only this benchmark (default: every benchmark on record, one table each)")  # fmt: skip
def leaderboard_cmd(as_json: bool, benchmark: str | None) -> None:
    """Certified policies ranked by f_weak (ties by recovery) within each benchmark, from the evaluation records;
    the rest below. Benchmarks are scored differently and never ranked together."""
    from ..leaderboard import get_leaderboard, utility_meaning

    board = _with_finding_warnings(get_leaderboard)
    if benchmark is not None:
        board = board.for_benchmark(benchmark)
    if as_json:
        click.echo(json.dumps(board.to_json(), ensure_ascii=False, indent=2))
        return
    for name in board.benchmarks:
        b = board.for_benchmark(name)
        u = None if name not in names() or get_benchmark(name).needs_judge else get_benchmark(name).utility
        code = name in names() and get_benchmark(name).has_f_weak_code
        console.print(f"\n[bold]{name}[/] [dim]({utility_meaning(name)})[/]", soft_wrap=False)
        if code:
            say(
                console,
                [
                    "f_weak_code: the weak share of the characters scored (the extracted program)",
                    "copy: the share of those weak characters on lines copied from the prompt",
                ],
                style="dim",
            )
        _show_board(f"{name}: certified (canonical, recovery ≥ {b.bar})", b.certified + b.baselines, ranked=True,
                    utility=u, code=code)  # fmt: skip
        if b.below_bar:
            _show_board(f"{name}: canonical, below the bar", b.below_bar, utility=u, code=code)
        if b.non_canonical:
            _show_board(f"{name}: not canonical", b.non_canonical, utility=u, code=code)
        if b.unverified:
            _show_board(f"{name}: unverified (not certified whatever their numbers)", b.unverified, utility=u,
                        code=code)  # fmt: skip
        if b.stopped:
            _show_board(f"{name}: stopped early (cannot reach the target; numbers on the prompts run)", b.stopped,
                        utility=u, code=code)  # fmt: skip
    for rid, why in board.skipped:
        console.print(f"[yellow]warning: evaluation {rid} cannot be read: {why}[/]", soft_wrap=False)


@click.command("site")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="folder for index.html (default .cdw/site)")
def site_cmd(out: str | None) -> None:
    """Write the results page (one self-contained HTML file that works offline) from records and findings."""
    from ..site import build_site

    path = _with_finding_warnings(build_site, out)
    console.print(
        f"[green]✓[/] wrote {path} ({path.stat().st_size / 1e6:.1f} MB); open it in a browser: file://{path.resolve()}"
    )
