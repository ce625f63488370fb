"""The published results page: one self-contained HTML file (`cdw site`).

Headline tiles, then one section per benchmark (how it is scored, its interactive frontier and state-of-the-art
charts, its leaderboard), and the research feed, all from the evaluation records and `findings/`. Benchmarks are
never mixed: each has its own charts and its own ranking. The page works opened from disk with no server and no
network: the Vega, Vega-Lite and Vega-Embed JavaScript (from vl-convert's bundle) is inlined, and a content
security policy lets only the page's own scripts run and blocks every fetch. Text from findings is escaped (Jinja
autoescape) and their markdown is rendered with raw HTML and images disabled, so no script or request can come from
a post.
"""

from __future__ import annotations

import json
import os
import secrets
from collections import Counter
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import altair as alt
import jinja2
import vl_convert as vlc
from markdown_it import MarkdownIt
from markupsafe import Markup

from servers.settings import paths

from . import benchmarks
from .benchmarks import DEFAULT
from .charts import frontier_chart, sota_chart
from .format import interval, num
from .forum import KINDS, Finding, scan_findings
from .leaderboard import Leaderboard, LeaderboardEntry, get_leaderboard, scoring_sentence

TEMPLATE = Path(__file__).parent / "templates" / "site.html"


def _vl_version() -> str | None:
    """The Vega-Lite minor version Altair writes (e.g. "6.4"), if vl-convert can bundle it."""
    want = alt.SCHEMA_VERSION.lstrip("v").rsplit(".", 1)[0]
    return want if want in vlc.get_vegalite_versions() else None


@lru_cache(maxsize=1)
def vega_bundle() -> str:
    """Vega + Vega-Lite + Vega-Embed as one script (about 0.9 MB), cached on disk: bundling takes seconds."""
    vl = _vl_version()
    path = paths().cache / f"vega-bundle-vlc{vlc.__version__}-vl{vl or 'latest'}.js"
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        pass
    js = vlc.javascript_bundle(vl_version=vl)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(js, encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # no cache, just slower next time
    return js


def _inline_js(js: str) -> Markup:
    """Script text safe inside <script>…</script>: the only way out of a script element is `</script`."""
    if "</script" in js.lower() or "<!--" in js:
        js = js.replace("</", "<\\/").replace("<!--", "<\\!--")
    return Markup(js)


def _inline_json(obj: object) -> Markup:
    """JSON for a <script type="application/json"> block; `<`, `>` and `&` escaped so no text can close it."""
    text = json.dumps(obj, ensure_ascii=False)
    return Markup(text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e"))


def _markdown() -> MarkdownIt:
    # Raw HTML off (escaped instead), images off (they would be fetched); markdown-it also refuses javascript: links.
    return MarkdownIt("commonmark", {"html": False}).enable("table").disable("image")


def render_markdown(text: str) -> Markup:
    """A finding's body as safe HTML."""
    return Markup(_markdown().render(text))


def render_site(
    board: Leaderboard | None = None,
    findings: list[Finding] | None = None,
    skipped_findings: list[tuple[str, str]] | None = None,
    now: datetime | None = None,
) -> str:
    """The page as an HTML string (reads the records and findings on disk for whatever is not given)."""
    if findings is None:
        findings, scanned_skips = scan_findings()
        skipped_findings = scanned_skips if skipped_findings is None else skipped_findings
    board = board or get_leaderboard(findings)
    now = now or datetime.now(UTC)
    numbers: dict[str, LeaderboardEntry] = {e.evaluation: e for e in board.evaluations if e.evaluation}
    kinds = Counter(f.kind for f in findings)
    sections, charts = [], {}
    for name in board.benchmarks:
        suffix = "" if name == DEFAULT else f"-{name}"  # alpaca_eval keeps the page's original element ids
        bench = benchmarks.get(name) if name in benchmarks.names() else None  # None: a benchmark this code lacks
        sections.append({
            "name": name, "suffix": suffix, "board": board.for_benchmark(name), "best": board.best_for(name),
            "sentence": scoring_sentence(name), "judged": bench is None or bench.needs_judge,
            "utility": bench.utility if bench is not None else benchmarks.get(DEFAULT).utility,
        })  # fmt: skip
        charts[f"frontier{suffix}"] = frontier_chart(board, benchmark=name)
        charts[f"sota{suffix}"] = sota_chart(board, now, benchmark=name)
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(TEMPLATE.read_text(encoding="utf-8"))
    return template.render(
        nonce=secrets.token_urlsafe(16),
        bundle=_inline_js(vega_bundle()),
        specs=[(name, _inline_json(c.to_dict())) for name, c in charts.items()],
        chart_names=_inline_json(list(charts)),
        board=board,
        sections=sections,
        bar=board.bar,
        canonical_n=benchmarks.get(DEFAULT).canonical().n,
        findings=findings,
        skipped_findings=skipped_findings or [],
        kind_counts=[(k, kinds[k]) for k in KINDS if kinds[k]],
        families=sorted({e.family for e in board.evaluations}),
        numbers=numbers,
        num=lambda v: num(v, missing="—"),
        ci=interval,
        render=render_markdown,
        generated=now.strftime("%Y-%m-%d %H:%M UTC"),
        versions={
            "vega": vlc.get_vega_version(),
            "vegalite": _vl_version() or "latest",
            "embed": vlc.get_vega_embed_version(),
        },  # fmt: skip
    )


def build_site(out: str | Path | None = None) -> Path:
    """Write the page to `<out>/index.html` (default `.cdw/site/`) and return its path."""
    folder = Path(out) if out else paths().home / "site"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "index.html"
    tmp = folder / f".index.{os.getpid()}.tmp"
    tmp.write_text(render_site(), encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a page
    return path
