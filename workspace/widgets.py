"""Rich displays for the notebooks (`notebooks/`): coloured decodes, the policy explorer, sweeps, the forum.

The notebooks call these and hold no logic of their own, so everything a notebook shows is reachable from tests.
Pure functions build HTML or markdown strings (`decode_html`, `decodes_table`, `evaluations_html`, `feed_markdown`,
`leaderboard_html`, `param_specs`, `spec_string`); the interactive parts (`PolicyExplorer`, `Sweep`, `FindingForm`)
are thin ipywidgets shells around them. ipywidgets is imported only where a widget is built, so this module imports
without the `notebooks` extra. Every piece of text that came from a model, a user or a file is HTML-escaped.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .benchmarks import DEFAULT
from .engine import Decode, EngineSettings, Models, decode_many, pooled_f_weak
from .evaluate import EvalSettings, Evaluation, Setup, ensure_baselines, evaluate, evaluation_id
from .format import interval, num, with_interval
from .forum import KINDS, Finding, FindingError, default_author, share_finding
from .leaderboard import Leaderboard, LeaderboardEntry, get_leaderboard, scoring_sentence
from .policies import PolicyError, TokenSignal, expand_spec, load_policy, registry
from .policies.params import DEFAULT_INNER, KNOWN, SPANS, TAU, Param, param_specs, spec_string  # noqa: F401
from .records.log import StoreError, read_record

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


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _error_box(message: str) -> str:
    return f'<div class="cdw-error" style="color:{ERROR_COLOR};font-weight:600">error: {_e(message)}</div>'


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
        spans.append(f'<span class="cdw-{seg.author}"{attr} title="{_e(segment_title(seg))}">{_e(seg.text)}</span>')
    body = "".join(spans) or '<span style="color:#868e96">(no text)</span>'
    out = (
        f'<div class="cdw-decode {NO_MATH}" style="white-space:pre-wrap;line-height:1.55;padding:8px 10px;'
        f'border:1px solid #d0d7de;border-radius:6px;max-width:60em">{body}</div>'
    )
    if meta:
        f = num(d.f_weak, 2)
        out += (
            f'<div class="cdw-decode-meta {NO_MATH}" style="color:#57606a;font-size:90%;margin-top:4px">'
            f"f_weak <b>{f}</b> · {d.num_deferrals} deferral(s) · {_e(d.finish_reason)} · {d.seconds:.1f} s · "
            f'<code>{_e(d.policy)}</code> · <span style="{author_style("strong")}">strong</span> / weak '
            "(hover a span for its handoff score)</div>"
        )
    if d.error:
        out += _error_box(d.error)
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
            f"<tr><td>{i}</td><td style='text-align:left;max-width:16em'>{_e(d.instruction)}</td>"
            f"<td class='cdw-fweak'><b>{f}</b></td><td>{d.num_deferrals}</td><td>{_e(d.finish_reason)}</td>"
            f"<td style='text-align:left'>{answer}</td></tr>"
        )
    pooled = pooled_f_weak(decodes)
    return (
        f'<table class="cdw-decodes {NO_MATH}"><thead><tr><th>#</th><th>instruction</th><th>f_weak</th>'
        "<th>deferrals</th><th>finish</th><th style='text-align:left'>answer (strong spans coloured)</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        f"<div>pooled f_weak over {len(decodes)} instruction(s): <b>{num(pooled)}</b></div>"
    )


# ---------------------------------------------------------------- policy parameters → sliders


# ---------------------------------------------------------------- the policy explorer


class PolicyExplorer:
    """Pick a policy family, move its parameters, and see a few instructions re-decoded live.

    Each change schedules a decode of every instruction as an asyncio task on the kernel's loop and cancels the
    run still in flight, so only the latest setting reaches the table. `await explorer.refresh()` runs it now
    (top-level await in a notebook); `explorer.set(tau=0.2)` moves controls from code.
    """

    def __init__(
        self,
        instructions: Sequence[str],
        models: Models,
        settings: EngineSettings | None = None,
        family: str = "margin",
        debounce: float = 0.3,
    ):
        import ipywidgets as w

        self.instructions = list(instructions)
        self.models = models
        self.settings = settings or EngineSettings(max_tokens=96)
        self.debounce = debounce  # a slider being dragged moves again within this: the run is dropped unsent
        self.runs: list[tuple[str, str]] = []  # (spec, "done" | "cancelled" | "error"), oldest first
        self.decodes: list[Decode] = []
        self._task: asyncio.Task | None = None
        self._w = w
        self.family = w.Dropdown(options=list(registry.families()), value=family, description="policy")
        self.controls: dict[str, w.ValueWidget] = {}
        self.box = w.VBox()
        self.spec_label = w.HTML()
        self.status = w.HTML()
        self.table = w.HTML()
        self.widget = w.VBox([self.family, self.box, self.spec_label, self.status, self.table])
        self.family.observe(self._family_changed, names="value")
        self._build_controls()

    def _repr_mimebundle_(self, **kw):
        return self.widget._repr_mimebundle_(**kw)

    def _build_controls(self) -> None:
        w = self._w
        self.params = param_specs(self.family.value)
        self.controls = {}
        for p in self.params:
            style = {"description_width": "initial"}
            if p.kind == "float":
                c = w.FloatSlider(value=p.default, min=p.min, max=p.max, step=p.step, description=p.name, style=style)
            elif p.kind == "int":
                c = w.IntSlider(value=p.default, min=p.min, max=p.max, step=p.step, description=p.name, style=style)
            elif p.kind == "choice":
                options = list(dict.fromkeys([str(p.default), *p.options]))
                c = w.Dropdown(options=options, value=str(p.default), description=p.name, style=style)
            else:
                c = w.Text(value=str(p.default), description=f"{p.name} policy", continuous_update=False, style=style)
            c.observe(self._control_changed, names="value")
            self.controls[p.name] = c
        self.box.children = tuple(self.controls.values())
        self._show_spec()

    def _show_spec(self) -> None:
        self.spec_label.value = f"spec: <code>{_e(self.spec)}</code>"

    @property
    def spec(self) -> str:
        """The policy spec the controls describe now."""
        return spec_string(self.family.value, {k: c.value for k, c in self.controls.items()}, self.params)

    def set(self, **values) -> asyncio.Task | None:
        """Move controls from code (as a person would with the mouse); returns the run it scheduled."""
        for k, v in values.items():
            if k not in self.controls:
                raise KeyError(f"{self.family.value} has no parameter {k!r}; it has {', '.join(self.controls)}")
            self.controls[k].value = v
        return self._task

    def _family_changed(self, change) -> None:
        self._build_controls()
        self.schedule()

    def _control_changed(self, change) -> None:
        self._show_spec()
        self.schedule()

    def schedule(self) -> asyncio.Task:
        """Start decoding with the current spec, cancelling the run still in flight."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        spec = self.spec
        task = asyncio.get_running_loop().create_task(self._run(spec))
        # A run cancelled before it started never enters `_run`, so its fate is recorded here.
        task.add_done_callback(lambda t: self.runs.append((spec, "cancelled")) if t.cancelled() else None)
        self._task = task
        return task

    async def refresh(self) -> list[Decode]:
        """Decode with the current controls and wait for it (the notebook's first view)."""
        self.schedule()
        return await self.wait()

    async def wait(self) -> list[Decode]:
        """Wait until the newest run has finished (a run replaced while waiting is followed to its successor)."""
        while True:
            task = self._task
            if task is None:
                return self.decodes
            await asyncio.wait({task})
            if task is self._task:
                return [] if task.cancelled() else task.result()

    async def _run(self, spec: str) -> list[Decode]:
        try:
            await asyncio.sleep(self.debounce)
            try:
                policy = load_policy(spec)
            except PolicyError as e:
                self.status.value = _error_box(str(e))
                self.runs.append((spec, "error"))
                return []
            self.status.value = f"decoding {len(self.instructions)} instruction(s) with <code>{_e(spec)}</code> …"
            t0 = time.monotonic()
            decodes = await decode_many(self.instructions, policy, self.models, self.settings, progress=False)
        except asyncio.CancelledError:
            self.status.value = f"<code>{_e(spec)}</code>: replaced by a newer setting"
            raise
        self.decodes = decodes
        self.table.value = decodes_table(decodes)
        failed = sum(1 for d in decodes if d.error)
        tail = f" · <span style='color:{ERROR_COLOR}'>{failed} failed (see the table)</span>" if failed else ""
        self.status.value = f"<code>{_e(spec)}</code>: done in {time.monotonic() - t0:.1f} s{tail}"
        self.runs.append((spec, "done"))
        return decodes


# ---------------------------------------------------------------- evaluations and sweeps


def evaluation_row(ev: Evaluation) -> str:
    s, c = ev.summary, ev.certification
    f, r = (s.f_weak if s else None), (c.recovery if c else None)
    fci, rci = (s.ci.get("f_weak") if s else None), (c.ci.get("recovery") if c else None)
    judged = s.n if s else 0
    if ev.errors:  # the first reason (in full on hover); the evaluation's own display lists them all
        more = f" (+{len(ev.errors) - 1} more)" if len(ev.errors) > 1 else ""
        why = ev.errors[0][1]
        short = why if len(why) <= 200 else why[:200] + " …"
        errors = f"<span style='color:{ERROR_COLOR}' title='{_e(why)}'>{len(ev.errors)}: {_e(short)}{more}</span>"
    elif ev.note:  # judged, but no numbers (e.g. too few prompts for length control)
        errors = f"<span style='color:{ERROR_COLOR}'>{_e(ev.note)}</span>"
    else:
        errors = ""
    return (
        f"<tr><td style='text-align:left'><code>{_e(ev.policy)}</code></td><td>{_e(ev.header.benchmark)}</td>"
        f"<td>{judged}/{ev.n}</td>"
        f"<td>{with_interval(f, fci)}</td><td>{with_interval(r, rci)}</td><td>{'yes' if ev.certified else 'no'}</td>"
        f"<td style='text-align:left'>{errors}</td><td><code>{_e(ev.id)}</code></td></tr>"
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
        f"<tr><td style='text-align:left'><code>{_e(spec)}</code></td><td colspan='7' style='text-align:left'>"
        f"{_error_box(why)}</td></tr>"
        for spec, why in failed
    ]
    return f'<table class="cdw-evaluations {NO_MATH}"><thead>{_EVAL_HEAD}</thead><tbody>{"".join(rows)}</tbody></table>'


def show_evaluation(ev: Evaluation) -> Html:
    """One evaluation's numbers with their intervals, how many prompts were judged, and every error."""
    out = evaluations_html([ev])
    s, c = ev.summary, ev.certification
    if s is not None and c is not None and not ev.baselines.needs_judge:  # scored alone: pass rates
        out += (
            f"<div>{_e(ev.header.benchmark)}: pass@1 {with_interval(c.utility, c.ci.get('utility'))} · U_weak (weak "
            f"only) {with_interval(c.u_weak, c.ci.get('u_weak'))} · U_strong (strong only) "
            f"{with_interval(c.u_strong, c.ci.get('u_strong'))} · recovery one-sided 95% lower bound "
            f"{num(c.recovery_lower)} · n={s.n}</div>"
        )
    elif s is not None and c is not None:
        out += (
            f"<div>{_e(ev.header.benchmark)}: utility {with_interval(c.utility, c.ci.get('utility'))} · U_weak "
            f"{with_interval(c.u_weak, c.ci.get('u_weak'))} · recovery one-sided 95% lower bound "
            f"{num(c.recovery_lower)} · raw winrate {num(s.raw_winrate)} · n={s.n}</div>"
        )
    reasons = ev.reasons()
    out += f"<div>certified: {'yes' if not reasons else 'no — ' + _e('; '.join(reasons))}</div>"
    if ev.errors:
        items = "".join(f"<li><code>{_e(p)}</code>: {_e(e)}</li>" for p, e in ev.errors[:20])
        extra = f"<li>… and {len(ev.errors) - 20} more</li>" if len(ev.errors) > 20 else ""
        out += f"<div style='color:{ERROR_COLOR}'>examples without numbers:<ul>{items}{extra}</ul></div>"
    return Html(out)


@dataclass
class SweepPoint:
    spec: str
    evaluation: Evaluation | None = None
    error: str | None = None
    id: str | None = None  # the evaluation's record id, known before it runs


class Sweep:
    """Evaluate every point of a spec grid concurrently (`margin(tau=[0.05, 0.1])`), with a live progress widget.

    The baselines are computed once first; then all points run at once (one after another while some baseline
    examples failed: each evaluation retries them), and the bar counts each point's decoded and judged prompts as
    its record grows. A point that fails (a bad spec, a server error) shows its error and
    never stops the others. Display the object, then `await sweep.run()`.
    """

    def __init__(
        self,
        spec: str | Sequence[str],
        prompts,
        setup: Setup,
        settings: EvalSettings | None = None,
        poll: float = 0.5,
    ):
        import ipywidgets as w

        specs = [spec] if isinstance(spec, str) else list(spec)
        self.points: list[SweepPoint] = []
        for s in specs:
            try:
                self.points += [SweepPoint(x) for x in expand_spec(s)]
            except PolicyError as e:
                self.points.append(SweepPoint(s, error=str(e)))
        self.prompts, self.setup, self.settings, self.poll = prompts, setup, settings or EvalSettings(), poll
        n = len(prompts)
        self.bar = w.IntProgress(value=0, min=0, max=max(1, 2 * n * len(self.points)), description="sweep",
                                 bar_style="info")  # fmt: skip
        self.label = w.HTML(f"{len(self.points)} point(s) × {n} prompt(s): waiting for <code>await sweep.run()</code>")
        self.table = w.HTML()
        self.widget = w.VBox([w.HBox([self.bar, self.label]), self.table])
        self._progress: dict[str, str] = {}

    def _repr_mimebundle_(self, **kw):
        return self.widget._repr_mimebundle_(**kw)

    @property
    def evaluations(self) -> list[Evaluation]:
        return [p.evaluation for p in self.points if p.evaluation is not None]

    @property
    def new_ids(self) -> list[str]:
        return [p.evaluation.id for p in self.points if p.evaluation is not None]

    def _count(self) -> int:
        """Decoded + judged prompts over every point, read from the records as they grow."""
        done = 0
        for p in self.points:
            if p.id is None:
                continue
            if p.evaluation is not None:
                done += 2 * p.evaluation.n
                self._progress[p.spec] = "done"
                continue
            try:
                rec = read_record("evaluations", p.id)
            except StoreError:
                rec = None
            events = rec.events if rec else ()
            gens = {e["prompt_id"] for e in events if e.get("type") == "generation"}
            prefs = {e["prompt_id"] for e in events if e.get("type") == "preference"}
            done += len(gens) + len(prefs)
            self._progress[p.spec] = f"decoded {len(gens)}, judged {len(prefs)} of {len(self.prompts)}"
        return done

    def _show(self) -> None:
        self.bar.value = min(self.bar.max, self._count())
        running = [p for p in self.points if p.evaluation is None and p.error is None]
        rows = "".join(f"<li><code>{_e(p.spec)}</code>: {_e(self._progress.get(p.spec, 'waiting'))}</li>"
                       for p in running)  # fmt: skip
        done = [p.evaluation for p in self.points if p.evaluation is not None]
        failed = [(p.spec, p.error) for p in self.points if p.error is not None]
        self.table.value = (f"<ul>{rows}</ul>" if rows else "") + (
            evaluations_html(done, failed) if done or failed else ""
        )

    async def _one(self, p: SweepPoint) -> None:
        try:
            p.evaluation = await evaluate(p.spec, self.prompts, self.setup, self.settings, progress=False)
        except Exception as e:  # shown on the point's row: one failing point never stops the sweep
            p.error = f"{type(e).__name__}: {e}"
        self._show()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            self._show()

    async def run(self) -> list[Evaluation]:
        """Run the sweep (points already on record are read back, not recomputed); returns the evaluations."""
        t0 = time.monotonic()
        self.bar.bar_style = "info"
        self.label.value = "baselines (reference and weak-only answers, judged once for every point) …"
        try:
            base = await ensure_baselines(self.prompts, self.setup, self.settings, progress=False)
        except Exception as e:
            self.bar.bar_style = "danger"
            self.label.value = _error_box(f"baselines failed: {type(e).__name__}: {e}")
            return []
        note = ""
        if base.errors:  # the points still run: their own rows say which examples have no numbers
            first = _e(base.errors[0][1])
            note = f" · <span style='color:{ERROR_COLOR}'>{len(base.errors)} baseline error(s): {first}</span>"
        self.label.value = f"baselines ready (U_weak {num(base.u_weak)}){note} · {len(self.points)} point(s) running …"
        todo = [p for p in self.points if p.error is None]
        for p in todo:
            try:
                p.id = await evaluation_id(load_policy(p.spec), self.prompts, self.setup, self.settings)
            except Exception as e:
                p.error = f"{type(e).__name__}: {e}"
        poller = asyncio.get_running_loop().create_task(self._poll())
        try:
            if base.complete:
                await asyncio.gather(*(self._one(p) for p in todo if p.error is None))
            else:  # each evaluation retries the failed baseline examples, and one record has one writer at a time
                for p in todo:
                    if p.error is None:
                        await self._one(p)
        finally:
            poller.cancel()
        self._show()
        failed = sum(1 for p in self.points if p.error or (p.evaluation and p.evaluation.errors))
        self.bar.value = self.bar.max
        self.bar.bar_style = "warning" if failed else "success"
        self.label.value = (
            f"{len(self.evaluations)} of {len(self.points)} point(s) evaluated in {time.monotonic() - t0:.1f} s"
            + (f" · <span style='color:{ERROR_COLOR}'>{failed} with errors (see the table)</span>" if failed else "")
        )
        return self.evaluations


def frontier_with(new_ids: Iterable[str], board: Leaderboard | None = None, benchmark: str | None = None):
    """The leaderboard's frontier chart of one benchmark with the given evaluations ringed and labelled (new points
    of a sweep). The benchmark defaults to the first new point's (alpaca_eval without one); points of another
    benchmark are not drawn."""
    import altair as alt

    from .charts import frontier_chart

    board = board or get_leaderboard()
    ids = set(new_ids)
    new = [e for e in board.evaluations if e.evaluation in ids]
    benchmark = benchmark or (new[0].benchmark if new else DEFAULT)
    rows = [
        {"f_weak": e.f_weak, "recovery": e.recovery, "policy": e.policy, "evaluation": e.evaluation}
        for e in new
        if e.benchmark == benchmark and e.f_weak is not None and e.recovery is not None
    ]
    if not rows:
        return frontier_chart(board, benchmark=benchmark)
    base = alt.Chart(alt.Data(values=rows))
    x, y = alt.X("f_weak:Q"), alt.Y("recovery:Q")
    ring = base.mark_point(shape="circle", size=420, filled=False, strokeWidth=2.5, color=HIGHLIGHT).encode(
        x=x, y=y, tooltip=["policy:N", "evaluation:N"]
    )
    label = base.mark_text(align="left", dx=14, dy=-8, fontSize=11, color=HIGHLIGHT).encode(x=x, y=y, text="policy:N")
    chart = frontier_chart(board, benchmark=benchmark) + ring + label
    return chart.properties(title=f"Frontier ({benchmark}): the new points ringed")


# ---------------------------------------------------------------- the forum


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
        meta = [f"**{_e(f.kind)}**", _e(f.author), f.created.strftime("%Y-%m-%d %H:%M UTC")]
        if f.agent_run:
            meta.append(f"agent run `{f.agent_run}`")
        if f.policy:
            meta.append(f"policy `{f.policy.replace('`', '')}`")
        if f.tags:
            meta.append("tags: " + ", ".join(_e(t) for t in f.tags))
        block = [f"### {_e(f.title)}", " · ".join(meta)]
        if f.evaluation:
            e = entries.get(f.evaluation)
            if e is None:
                block.append(f"> evaluation `{f.evaluation}`: not on record here")
            else:
                block.append(
                    f"> from record `{f.evaluation}` ({_e(e.benchmark)}, {_e(e.status)}): f_weak "
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
            return f"<h4>{_e(title)}</h4><p style='color:#57606a'>none</p>"
        head = ("<th>#</th>" if ranked else "") + (
            "<th style='text-align:left'>policy</th><th>f_weak [95% CI]</th><th>recovery [95% CI]</th><th>n</th>"
            "<th style='text-align:left'>reported in</th><th style='text-align:left'>note</th>"
        )
        rows = "".join(
            "<tr>" + (f"<td>{e.rank}</td>" if ranked else "")
            + f"<td style='text-align:left'><code>{_e(e.policy)}</code></td>"
            f"<td>{with_interval(e.f_weak, e.f_weak_ci)}</td><td>{with_interval(e.recovery, e.recovery_ci)}</td>"
            f"<td>{e.judged}/{e.n}</td><td style='text-align:left'>{_e(e.finding_title or '—')}</td>"
            f"<td style='text-align:left'>{_e(e.note)}</td></tr>"
            for e in entries
        )  # fmt: skip
        body = f"<table class='cdw-leaderboard {NO_MATH}'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
        return f"<h4>{_e(title)}</h4>{body}"

    out = ""
    for name in board.benchmarks:
        b = board.for_benchmark(name)
        out += f"<h3>{_e(name)}</h3><p style='color:#57606a'>{_e(scoring_sentence(name))}</p>"
        out += table(f"Certified (recovery ≥ {b.bar:g} on the canonical set), by f_weak", b.certified, True)
        out += table("Canonical, below the bar", b.below_bar, False)
        out += table("Not canonical (other prompts, models or settings)", b.non_canonical, False)
        out += table("Unverified (edited, unsigned or signed by an untrusted key)", b.unverified, False)
    if board.skipped:
        out += _error_box("unreadable records: " + "; ".join(f"{i}: {why}" for i, why in board.skipped))
    return out


def show_leaderboard(board: Leaderboard | None = None, benchmark: str | None = None) -> Html:
    """Display the leaderboard (see `leaderboard_html`)."""
    return Html(leaderboard_html(board, benchmark))


class FindingForm:
    """A small form that posts a finding to `findings/` through `share_finding` (the same rules as the CLI)."""

    def __init__(self, author: str | None = None):
        import ipywidgets as w

        wide = w.Layout(width="46em")
        self.title = w.Text(description="title", layout=wide)
        self.kind = w.Dropdown(options=list(KINDS), value="hypothesis", description="kind")
        self.author = w.Text(value=author or default_author(), description="author")
        self.policy = w.Text(description="policy", placeholder="margin(tau=0.1) (optional)", layout=wide)
        self.evaluation = w.Text(description="evaluation", placeholder="record id (a result needs one)", layout=wide)
        self.tags = w.Text(description="tags", placeholder="comma-separated (optional)", layout=wide)
        self.body = w.Textarea(description="body", placeholder="what was tried, how, and what it means (markdown)",
                               layout=w.Layout(width="46em", height="8em"))  # fmt: skip
        self.button = w.Button(description="Post finding", button_style="primary")
        self.message = w.HTML()
        self.posted: list[str] = []
        self.button.on_click(lambda _: self.post())
        self.widget = w.VBox([self.title, self.kind, self.author, self.policy, self.evaluation, self.tags, self.body,
                              self.button, self.message])  # fmt: skip

    def _repr_mimebundle_(self, **kw):
        return self.widget._repr_mimebundle_(**kw)

    def post(self) -> str | None:
        """Post what the form holds; returns the new finding's id, or None with the reason shown in the form."""
        try:
            fid = share_finding(
                self.title.value, self.kind.value, self.body.value, self.author.value,
                policy=self.policy.value.strip() or None, evaluation=self.evaluation.value.strip() or None,
                tags=[t.strip() for t in self.tags.value.split(",") if t.strip()],
            )  # fmt: skip
        except FindingError as e:
            self.message.value = _error_box(str(e))
            return None
        self.posted.append(fid)
        self.message.value = f"posted <code>{_e(fid)}</code> — re-run the feed cell to see it"
        self.title.value = self.body.value = ""
        return fid


def finding_form(author: str | None = None) -> FindingForm:
    """The form to post a finding (display it in a notebook)."""
    return FindingForm(author)


# ---------------------------------------------------------------- servers and hand-made signals


async def server_status(urls: dict[str, str | None] | None = None) -> Html:
    """Per role: where its server is, whether it answers, the model it serves; how to start one if it is missing."""
    from .health import status

    rows, missing = [], []
    for s in await status(urls):
        if s.endpoint is None:
            missing.append(s.role)
            rows.append(f"<tr><td>{s.role}</td><td colspan='4' style='color:{ERROR_COLOR}'>no server</td></tr>")
            continue
        for r in s.replicas:
            ok = "healthy" if r.healthy else f"down {r.error or ''}"
            color = "#1a7f37" if r.healthy else ERROR_COLOR
            if not r.healthy:
                missing.append(s.role)
            note = f" ({_e(s.endpoint.note)})" if s.endpoint.note else ""
            rows.append(
                f"<tr><td>{s.role}</td><td><code>{_e(r.url)}</code></td><td>{_e(', '.join(r.models) or '?')}</td>"
                f"<td style='color:{color}'>{_e(ok)}</td><td>{_e(s.endpoint.origin)}{note}</td></tr>"
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
    return Html(out)


def make_signal(probs: Sequence[float], text: str = "x", position: int = 0, since_handoff: int = 0) -> TokenSignal:
    """A hand-made weak-token signal for unit-checking a policy: `probs` are the top-k probabilities, most likely
    first, and the first is the chosen (greedy) token's."""
    import math

    if not probs or any(not 0 < p <= 1 for p in probs) or sum(probs) > 1 + 1e-9:
        raise ValueError("probs must be probabilities in (0, 1], most likely first, summing to at most 1")
    top = tuple(math.log(p) for p in sorted(probs, reverse=True))
    return TokenSignal(0, text, top[0], top, position, "", since_handoff)
