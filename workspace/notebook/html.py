"""Pure renderers for the notebooks: decodes, evaluations, the feed, the leaderboard and server status in, an HTML
(or markdown) string out, wrapped by `show_*` so Jupyter displays it. No ipywidgets and no server calls here.

Every piece of text that came from a model, a user or a file is HTML-escaped (`escape`).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ..engine import Decode, pooled_f_weak
from ..format import interval, num, with_interval
from ..forum import Finding
from ..leaderboard import Leaderboard, LeaderboardEntry, get_leaderboard, scoring_sentence

if TYPE_CHECKING:
    from ..evaluate import Evaluation
    from ..health import RoleStatus

# Weak text is the default and stays plain; strong spans carry the colour, so the eye finds the handoffs.
STRONG_BACKGROUND = "#ffd8a8"
STRONG_UNDERLINE = "#e8590c"
ERROR_COLOR = "#c92a2a"
HIGHLIGHT = "#d6336c"  # new points on the frontier
# JupyterLab typesets $…$ in HTML outputs as LaTeX; model text with two dollar signs must stay text.
NO_MATH = "mathjax_ignore tex2jax_ignore"


class Html:
    """An HTML fragment that Jupyter displays as HTML (no IPython import needed to build one)."""

    def __init__(self, markup: str):
        self.html = markup

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.html


class Md:
    """Markdown that Jupyter renders as markdown (JupyterLab sanitises any HTML inside it)."""

    def __init__(self, text: str):
        self.markdown = text

    def _repr_markdown_(self) -> str:
        return self.markdown

    def __str__(self) -> str:
        return self.markdown


def escape(text: object) -> str:
    """`text` as HTML text or an attribute value: nothing in it can become markup."""
    return html.escape(str(text), quote=True)


def error_box(message: str) -> str:
    """An error message in red."""
    return f'<div class="cdw-error" style="color:{ERROR_COLOR};font-weight:600">error: {escape(message)}</div>'


# ---------------------------------------------------------------- decodes


def author_style(author: str) -> str:
    """Inline CSS for a segment: weak text plain, strong text on a coloured background with an underline."""
    if author == "strong":
        return f"background:{STRONG_BACKGROUND};border-bottom:2px solid {STRONG_UNDERLINE};border-radius:2px"
    return ""


def segment_title(seg) -> str:
    """The hover text of a segment: who wrote it and, for a strong span, the policy's score at the handoff."""
    tokens = f"{seg.tokens} token{'' if seg.tokens == 1 else 's'}"
    if seg.author != "strong":
        return f"weak model · {tokens}"
    score = "n/a" if seg.score is None else f"{seg.score:.4g}"
    return f"strong model · handoff score {score} · {tokens}"


def decode_html(d: Decode, meta: bool = True) -> str:
    """One decode as HTML: weak spans plain, strong spans coloured, each with a hover title; then f_weak and
    how the decode ended, and its error in red if it failed."""
    spans = []
    for seg in d.segments:
        style = author_style(seg.author)
        attr = f' style="{style}"' if style else ""
        title = escape(segment_title(seg))
        spans.append(f'<span class="cdw-{seg.author}"{attr} title="{title}">{escape(seg.text)}</span>')
    body = "".join(spans) or '<span style="color:#868e96">(no text)</span>'
    out = (
        f'<div class="cdw-decode {NO_MATH}" style="white-space:pre-wrap;line-height:1.55;padding:8px 10px;'
        f'border:1px solid #d0d7de;border-radius:6px;max-width:60em">{body}</div>'
    )
    if meta:
        f = num(d.f_weak, 2)
        out += (
            f'<div class="cdw-decode-meta {NO_MATH}" style="color:#57606a;font-size:90%;margin-top:4px">'
            f"f_weak <b>{f}</b> · {d.num_deferrals} deferral(s) · {escape(d.finish_reason)} · {d.seconds:.1f} s · "
            f'<code>{escape(d.policy)}</code> · <span style="{author_style("strong")}">strong</span> / weak '
            "(hover a span for its handoff score)</div>"
        )
    if d.error:
        out += error_box(d.error)
    return out


def show_decode(d: Decode) -> Html:
    """Display one decode in a notebook (see `decode_html`)."""
    return Html(decode_html(d))


def decodes_table(decodes: Sequence[Decode]) -> str:
    """A table of decodes, one row per instruction, with f_weak per instruction and pooled over the batch."""
    rows = []
    for i, d in enumerate(decodes, 1):
        f = num(d.f_weak, 2)
        answer = decode_html(d, meta=False)
        rows.append(
            f"<tr><td>{i}</td><td style='text-align:left;max-width:16em'>{escape(d.instruction)}</td>"
            f"<td class='cdw-fweak'><b>{f}</b></td><td>{d.num_deferrals}</td><td>{escape(d.finish_reason)}</td>"
            f"<td style='text-align:left'>{answer}</td></tr>"
        )
    pooled = pooled_f_weak(decodes)
    return (
        f'<table class="cdw-decodes {NO_MATH}"><thead><tr><th>#</th><th>instruction</th><th>f_weak</th>'
        "<th>deferrals</th><th>finish</th><th style='text-align:left'>answer (strong spans coloured)</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        f"<div>pooled f_weak over {len(decodes)} instruction(s): <b>{num(pooled)}</b></div>"
    )


# ---------------------------------------------------------------- evaluations


def evaluation_row(ev: Evaluation) -> str:
    s, c = ev.summary, ev.certification
    f, r = (s.f_weak if s else None), (c.recovery if c else None)
    fci, rci = (s.ci.get("f_weak") if s else None), (c.ci.get("recovery") if c else None)
    judged = s.n if s else 0
    if ev.errors:  # the first reason (in full on hover); the evaluation's own display lists them all
        more = f" (+{len(ev.errors) - 1} more)" if len(ev.errors) > 1 else ""
        why = ev.errors[0][1]
        short = why if len(why) <= 200 else why[:200] + " …"
        errors = (
            f"<span style='color:{ERROR_COLOR}' title='{escape(why)}'>{len(ev.errors)}: {escape(short)}{more}</span>"
        )
    elif ev.note:  # judged, but no numbers (e.g. too few prompts for length control)
        errors = f"<span style='color:{ERROR_COLOR}'>{escape(ev.note)}</span>"
    else:
        errors = ""
    return (
        f"<tr><td style='text-align:left'><code>{escape(ev.policy)}</code></td><td>{escape(ev.header.benchmark)}</td>"
        f"<td>{judged}/{ev.n}</td>"
        f"<td>{with_interval(f, fci)}</td><td>{with_interval(r, rci)}</td><td>{'yes' if ev.certified else 'no'}</td>"
        f"<td style='text-align:left'>{errors}</td><td><code>{escape(ev.id)}</code></td></tr>"
    )


_EVAL_HEAD = (
    "<tr><th style='text-align:left'>policy</th><th>benchmark</th><th>scored</th><th>f_weak [95% CI]</th>"
    "<th>recovery [95% CI]</th>"
    "<th>certified</th><th style='text-align:left'>errors</th><th>evaluation</th></tr>"
)


def evaluations_html(evaluations: Iterable[Evaluation], failed: Iterable[tuple[str, str]] = ()) -> str:
    """A table of evaluations (numbers recomputed from their records) and of points that could not run."""
    rows = [evaluation_row(ev) for ev in evaluations]
    rows += [
        f"<tr><td style='text-align:left'><code>{escape(spec)}</code></td><td colspan='7' style='text-align:left'>"
        f"{error_box(why)}</td></tr>"
        for spec, why in failed
    ]
    return f'<table class="cdw-evaluations {NO_MATH}"><thead>{_EVAL_HEAD}</thead><tbody>{"".join(rows)}</tbody></table>'


def show_evaluation(ev: Evaluation) -> Html:
    """One evaluation's numbers with their intervals, how many prompts were judged, and every error."""
    out = evaluations_html([ev])
    s, c = ev.summary, ev.certification
    if s is not None and c is not None and not ev.baselines.needs_judge:  # scored alone: pass rates
        out += (
            f"<div>{escape(ev.header.benchmark)}: pass@1 {with_interval(c.utility, c.ci.get('utility'))} · U_weak "
            f"(weak only) {with_interval(c.u_weak, c.ci.get('u_weak'))} · U_strong (strong only) "
            f"{with_interval(c.u_strong, c.ci.get('u_strong'))} · recovery one-sided 95% lower bound "
            f"{num(c.recovery_lower)} · n={s.n}</div>"
        )
    elif s is not None and c is not None:
        out += (
            f"<div>{escape(ev.header.benchmark)}: utility {with_interval(c.utility, c.ci.get('utility'))} · U_weak "
            f"{with_interval(c.u_weak, c.ci.get('u_weak'))} · recovery one-sided 95% lower bound "
            f"{num(c.recovery_lower)} · raw winrate {num(s.raw_winrate)} · n={s.n}</div>"
        )
    reasons = ev.reasons()
    out += f"<div>certified: {'yes' if not reasons else 'no — ' + escape('; '.join(reasons))}</div>"
    if ev.errors:
        items = "".join(f"<li><code>{escape(p)}</code>: {escape(e)}</li>" for p, e in ev.errors[:20])
        extra = f"<li>… and {len(ev.errors) - 20} more</li>" if len(ev.errors) > 20 else ""
        out += f"<div style='color:{ERROR_COLOR}'>examples without numbers:<ul>{items}{extra}</ul></div>"
    return Html(out)


# ---------------------------------------------------------------- the forum and the leaderboard


def _entries(board: Leaderboard | None) -> dict[str, LeaderboardEntry]:
    board = board if board is not None else get_leaderboard(findings=())
    return {e.evaluation: e for e in board.evaluations if e.evaluation}


def feed_markdown(findings: Sequence[Finding], board: Leaderboard | None = None, limit: int = 20) -> str:
    """The research feed as markdown, newest first. A result's numbers come from its evaluation record (via the
    leaderboard), never from the finding's text; titles and names are escaped, bodies are the authors' markdown."""
    if not findings:
        return "*No findings yet: post the first one with the form below (or `cdw findings add`).*"
    entries = _entries(board) if any(f.evaluation for f in findings) else {}
    parts = []
    for f in list(findings)[:limit]:
        meta = [f"**{escape(f.kind)}**", escape(f.author), f.created.strftime("%Y-%m-%d %H:%M UTC")]
        if f.agent_run:
            meta.append(f"agent run `{f.agent_run}`")
        if f.policy:
            meta.append(f"policy `{f.policy.replace('`', '')}`")
        if f.tags:
            meta.append("tags: " + ", ".join(escape(t) for t in f.tags))
        block = [f"### {escape(f.title)}", " · ".join(meta)]
        if f.evaluation:
            e = entries.get(f.evaluation)
            if e is None:
                block.append(f"> evaluation `{f.evaluation}`: not on record here")
            else:
                block.append(
                    f"> from record `{f.evaluation}` ({escape(e.benchmark)}, {escape(e.status)}): f_weak "
                    f"**{num(e.f_weak)}**{interval(e.f_weak_ci, lead=' ')} · recovery **{num(e.recovery)}**"
                    f"{interval(e.recovery_ci, lead=' ')} · scored {e.judged}/{e.n}"
                )
        block.append(f.body.strip())
        parts.append("\n\n".join(block))
    more = f"\n\n*… and {len(findings) - limit} older finding(s).*" if len(findings) > limit else ""
    return "\n\n---\n\n".join(parts) + more


def show_feed(findings: Sequence[Finding], board: Leaderboard | None = None, limit: int = 20) -> Md:
    """Display the research feed (see `feed_markdown`)."""
    return Md(feed_markdown(findings, board, limit))


def leaderboard_html(board: Leaderboard | None = None, benchmark: str | None = None) -> str:
    """The leaderboard as HTML tables, one group per benchmark (or only `benchmark`), each under how that benchmark
    is scored: certified policies ranked by f_weak, then the rest, with 95% intervals."""
    board = board or get_leaderboard()
    if benchmark is not None:
        board = board.for_benchmark(benchmark)

    def table(title: str, entries: Sequence[LeaderboardEntry], ranked: bool) -> str:
        if not entries:
            return f"<h4>{escape(title)}</h4><p style='color:#57606a'>none</p>"
        head = ("<th>#</th>" if ranked else "") + (
            "<th style='text-align:left'>policy</th><th>f_weak [95% CI]</th><th>recovery [95% CI]</th><th>n</th>"
            "<th style='text-align:left'>reported in</th><th style='text-align:left'>note</th>"
        )
        rows = "".join(
            "<tr>" + (f"<td>{e.rank}</td>" if ranked else "")
            + f"<td style='text-align:left'><code>{escape(e.policy)}</code></td>"
            f"<td>{with_interval(e.f_weak, e.f_weak_ci)}</td><td>{with_interval(e.recovery, e.recovery_ci)}</td>"
            f"<td>{e.judged}/{e.n}</td><td style='text-align:left'>{escape(e.finding_title or '—')}</td>"
            f"<td style='text-align:left'>{escape(e.note)}</td></tr>"
            for e in entries
        )  # fmt: skip
        body = f"<table class='cdw-leaderboard {NO_MATH}'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
        return f"<h4>{escape(title)}</h4>{body}"

    out = ""
    for name in board.benchmarks:
        b = board.for_benchmark(name)
        out += f"<h3>{escape(name)}</h3><p style='color:#57606a'>{escape(scoring_sentence(name))}</p>"
        out += table(f"Certified (recovery ≥ {b.bar:g} on the canonical set), by f_weak", b.certified, True)
        out += table("Canonical, below the bar", b.below_bar, False)
        out += table("Not canonical (other prompts, models or settings)", b.non_canonical, False)
        out += table("Unverified (edited, unsigned or signed by an untrusted key)", b.unverified, False)
        if b.stopped:
            stopped = "Stopped early (shown unable to reach the target; numbers on the prompts run)"
            out += table(stopped, b.stopped, False)
    if board.skipped:
        out += error_box("unreadable records: " + "; ".join(f"{i}: {why}" for i, why in board.skipped))
    return out


def show_leaderboard(board: Leaderboard | None = None, benchmark: str | None = None) -> Html:
    """Display the leaderboard (see `leaderboard_html`)."""
    return Html(leaderboard_html(board, benchmark))


# ---------------------------------------------------------------- servers


def status_html(statuses: Iterable[RoleStatus]) -> str:
    """Per role (`health.status()`): where its server is, whether it answers, the model it serves; how to start one
    if it is missing."""
    rows, missing = [], []
    for s in statuses:
        if s.endpoint is None:
            missing.append(s.role)
            rows.append(f"<tr><td>{s.role}</td><td colspan='4' style='color:{ERROR_COLOR}'>no server</td></tr>")
            continue
        for r in s.replicas:
            ok = "healthy" if r.healthy else f"down {r.error or ''}"
            color = "#1a7f37" if r.healthy else ERROR_COLOR
            if not r.healthy:
                missing.append(s.role)
            note = f" ({escape(s.endpoint.note)})" if s.endpoint.note else ""
            rows.append(
                f"<tr><td>{s.role}</td><td><code>{escape(r.url)}</code></td>"
                f"<td>{escape(', '.join(r.models) or '?')}</td>"
                f"<td style='color:{color}'>{escape(ok)}</td><td>{escape(s.endpoint.origin)}{note}</td></tr>"
            )
    out = (
        "<table class='cdw-status'><thead><tr><th>role</th><th>url</th><th>model</th><th>health</th><th>from</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    if missing:
        out += (
            f"<div style='color:{ERROR_COLOR}'>No healthy server for {', '.join(dict.fromkeys(missing))}. Start them "
            "in a terminal with <code>cdw serve</code> (the cpu preset; <code>cdw serve --preset paper</code> on a "
            "GPU), or set <code>CDW_WEAK_URL</code> / <code>CDW_STRONG_URL</code> / <code>CDW_JUDGE_URL</code>, "
            "then run this cell again.</div>"
        )
    return out


def show_status(statuses: Iterable[RoleStatus]) -> Html:
    """Display the servers' status (see `status_html`): `show_status(await workspace.health.status())`."""
    return Html(status_html(statuses))
