"""Altair charts of the leaderboard: the frontier and the certified state of the art over time (ARCHITECTURE.md
“Layers”).

Charts are built from a `Leaderboard` (itself built from evaluation records), so a chart never shows a number that
was typed in. A chart shows one benchmark (`benchmark=`, default alpaca_eval): recovery on a judge and recovery on
unit tests are different quantities, never drawn on one axis. A benchmark scored by running code draws its frontier
on f_weak_code (the weak share of the scored program), the others on f_weak. Charts display in JupyterLab as they
are (offline: `use_offline_renderer()`), and `save_chart` writes PNG or SVG through vl-convert.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import altair as alt

from . import benchmarks
from .benchmarks import DEFAULT
from .format import interval, num
from .leaderboard import (
    BASELINE,
    BELOW_BAR,
    CERTIFIED,
    NOT_CANONICAL,
    STOPPED,
    Leaderboard,
    LeaderboardEntry,
    get_leaderboard,
)

STATUSES = (CERTIFIED, BELOW_BAR, NOT_CANONICAL, BASELINE)
COLORS = ("#1a7f37", "#c26a00", "#8c959f", "#24292f")
SHAPES = ("diamond", "circle", "circle", "square")
WIDTH, HEIGHT = 680, 400


def frontier_x(benchmark: str) -> str:
    """The weak share a benchmark's frontier is drawn on: f_weak_code where the benchmark scores part of an answer
    (the code: characters no test reads do not count), else f_weak."""
    known = benchmark in benchmarks.names() and benchmarks.get(benchmark).has_f_weak_code
    return "f_weak_code" if known else "f_weak"


def _row(e: LeaderboardEntry, x: str = "f_weak") -> dict:
    """One point of the frontier (`x`: the weak share it is drawn on): the numbers, their intervals, and the tooltip
    text."""
    f, fi, ri = getattr(e, x), getattr(e, f"{x}_ci"), e.recovery_ci
    return {
        "policy": e.policy, "benchmark": e.benchmark, "status": e.status, "evaluation": e.evaluation or "—", "n": e.n,
        "f_weak": e.f_weak, "f_weak_code": e.f_weak_code, "recovery": e.recovery,
        "f_lo": fi.low if fi else f, "f_hi": fi.high if fi else f,
        "r_lo": ri.low if ri else e.recovery, "r_hi": ri.high if ri else e.recovery,
        "f_weak (95% CI)": f"{num(e.f_weak)} {interval(e.f_weak_ci, missing='n/a')}",
        "f_weak_code (95% CI)": f"{num(e.f_weak_code)} {interval(e.f_weak_code_ci, missing='n/a')}",
        "recovery (95% CI)": f"{num(e.recovery)} {interval(ri, missing='n/a')}",
        "date": (e.created or "")[:16].replace("T", " ") or "—", "finding": e.finding_title or "—",
    }  # fmt: skip


def frontier_chart(
    board: Leaderboard | None = None, error_bars: bool = False, benchmark: str = DEFAULT, prompts: str | None = None
) -> alt.LayerChart:
    """Every evaluation of one benchmark as a point (its weak share → x, recovery → y), the bar as a hairline,
    certified points set apart, the two endpoints (strong only at (0, 1), weak only at (1, 0)); a checkbox shows the
    95% intervals. The weak share is `frontier_x(benchmark)`: f_weak_code on a benchmark scored by running code,
    f_weak elsewhere (the tooltip shows both). `prompts` keeps one prompt set's evaluations (e.g.
    "humaneval:test", the held-out half)."""
    board = (board or get_leaderboard()).for_benchmark(benchmark)
    x_of = frontier_x(benchmark)
    # A stopped evaluation's numbers are on its first prompts only: not a point of the frontier.
    keep = [e for e in board.evaluations if e.status != STOPPED and (prompts is None or e.prompts == prompts)]
    rows = [_row(e, x_of) for e in keep if getattr(e, x_of) is not None and e.recovery is not None]
    ends = [_row(e, x_of) for e in board.baselines]
    recs = [r["recovery"] for r in rows] + [0.0, 1.0, board.bar]
    domain = [min(-0.05, min(recs) - 0.05), max(1.05, max(recs) + 0.05)]  # intervals are clipped, points never
    xt = "f_weak_code (share of the scored code the weak model wrote)" if x_of == "f_weak_code" else \
        "f_weak (share of characters the weak model wrote)"  # fmt: skip
    xs = alt.Scale(domain=[0, 1])
    ys, yt = alt.Scale(domain=domain, nice=False), "recovery"
    x, y = alt.X(f"{x_of}:Q", title=xt, scale=xs), alt.Y("recovery:Q", title=yt, scale=ys)
    show = alt.param(name="error_bars", value=error_bars, bind=alt.binding_checkbox(name="95% intervals "))
    err_opacity = alt.expr(f"{show.name} ? 0.55 : 0")
    palette = alt.Scale(domain=list(STATUSES), range=list(COLORS))
    status = alt.Color(
        "status:N", title=None, scale=palette,
        legend=alt.Legend(orient="bottom-left", direction="vertical"),
    )  # fmt: skip
    stroke = alt.Stroke("status:N", title=None, scale=palette)
    tooltip = ["policy:N", "benchmark:N", "status:N", "n:Q", "f_weak (95% CI):N",
               *(["f_weak_code (95% CI):N"] if x_of == "f_weak_code" else []), "recovery (95% CI):N", "date:N",
               "finding:N", "evaluation:N"]  # fmt: skip
    data = alt.Data(values=rows + ends)
    base = alt.Chart(data)
    bar = alt.Chart(alt.Data(values=[{"bar": board.bar, "label": f"bar {board.bar:g}"}]))
    bar_y = alt.Y("bar:Q", title=yt, scale=ys)
    layers = [
        bar.mark_rule(strokeWidth=0.75, strokeDash=[4, 3], color="#57606a").encode(y=bar_y),
        bar.mark_text(align="right", baseline="bottom", dx=-4, dy=-2, fontSize=10, color="#57606a").encode(
            y=bar_y, x=alt.value(WIDTH), text="label:N"
        ),
        base.mark_rule(strokeOpacity=err_opacity, clip=True).encode(
            x=alt.X("f_lo:Q", title=xt, scale=xs), x2="f_hi:Q", y=y, stroke=stroke
        ),
        base.mark_rule(strokeOpacity=err_opacity, clip=True).encode(
            x=x, y=alt.Y("r_lo:Q", title=yt, scale=ys), y2="r_hi:Q", stroke=stroke
        ),
        base.mark_point(filled=True, opacity=0.9).encode(
            x=x,
            y=y,
            color=status,
            shape=alt.Shape("status:N", title=None, scale=alt.Scale(domain=list(STATUSES), range=list(SHAPES))),
            size=alt.condition(f"datum.status == '{CERTIFIED}'", alt.value(140), alt.value(60)),
            tooltip=tooltip,
        ),  # fmt: skip
    ]
    for side, test in (("left", f"datum.{x_of} < 0.5"), ("right", f"datum.{x_of} >= 0.5")):  # labels stay inside
        layers.append(
            alt.Chart(alt.Data(values=ends)).transform_filter(test)
            .mark_text(fontSize=10, dy=-10, align=side, color=COLORS[3]).encode(x=x, y=y, text="policy:N")
        )  # fmt: skip
    return (
        alt.layer(*layers)
        .add_params(show)
        .properties(
            width=WIDTH,
            height=HEIGHT,
            title=f"Frontier ({benchmark}{f', {prompts}' if prompts else ''}): {x_of} vs recovery, "
            f"{'its' if prompts else 'every'} evaluations",
        )
    )


def sota_rows(board: Leaderboard, now: datetime | None = None, benchmark: str = DEFAULT) -> list[dict]:
    """The best certified f_weak of one benchmark as a step series: one row per improvement, and one at `now` to end
    the line."""
    out: list[dict] = []
    best = None
    for e in sorted((e for e in board.certified if e.benchmark == benchmark), key=lambda e: e.created or ""):
        if e.f_weak is not None and e.created and (best is None or e.f_weak > best):
            best = e.f_weak
            out.append({"created": e.created, "best": best, "policy": e.policy, "recovery": num(e.recovery),
                        "evaluation": e.evaluation, "benchmark": e.benchmark, "improvement": True})  # fmt: skip
    if out:
        stamp = (now or datetime.now(UTC)).isoformat(timespec="seconds")
        out.append({**out[-1], "created": max(stamp, out[-1]["created"]), "improvement": False})
    return out


def sota_chart(
    board: Leaderboard | None = None, now: datetime | None = None, benchmark: str = DEFAULT
) -> alt.LayerChart | alt.Chart:
    """A step line of the best certified f_weak of one benchmark over time, a point at each new best."""
    board = board or get_leaderboard()
    rows = sota_rows(board, now, benchmark)
    title = f"Certified state of the art ({benchmark}): best f_weak at recovery ≥ bar"
    if not rows:
        return (
            alt.Chart(alt.Data(values=[{"text": f"no certified {benchmark} evaluation yet"}]))
            .mark_text(fontSize=14, color="#57606a")
            .encode(text="text:N")
            .properties(width=WIDTH, height=HEIGHT / 2, title=title)
        )
    base = alt.Chart(alt.Data(values=rows))
    x = alt.X("created:T", title="date (UTC)", axis=alt.Axis(format="%Y-%m-%d", labelOverlap="greedy"))
    y = alt.Y("best:Q", title="best certified f_weak", scale=alt.Scale(domain=[0, 1]))
    tooltip = [alt.Tooltip("created:T", format="%Y-%m-%d %H:%M"), "policy:N",
               alt.Tooltip("best:Q", title="f_weak", format=".3f"), "recovery:N", "benchmark:N",
               "evaluation:N"]  # fmt: skip
    return alt.layer(
        base.mark_line(interpolate="step-after", color=COLORS[0], strokeWidth=2).encode(x=x, y=y),
        base.transform_filter("datum.improvement").mark_point(filled=True, size=80, color=COLORS[0])
        .encode(x=x, y=y, tooltip=tooltip),
    ).properties(width=WIDTH, height=HEIGHT / 2, title=title)  # fmt: skip


def probe_chart(report) -> alt.HConcatChart:
    """A trained probe at a glance (`router.train.Report`): held-out ROC-AUC and PR-AUC of the probe beside the single
    signals it competes with, and its most important features. Hover a bar for its number."""
    scored = [{"scorer": k, "metric": m, "value": getattr(v, m)} for k, v in report.held_out.items()
              for m in ("roc_auc", "pr_auc") if getattr(v, m) is not None]  # fmt: skip
    aucs = alt.Chart(alt.Data(values=scored)).mark_bar().encode(
        x=alt.X("value:Q", title="held-out score", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("scorer:N", title=None, sort=list(report.held_out)),
        color=alt.Color("metric:N", title=None, legend=alt.Legend(orient="bottom")),
        yOffset="metric:N",
        tooltip=["scorer:N", "metric:N", alt.Tooltip("value:Q", format=".3f")],
    ).properties(width=280, height=220, title=f"held out: {report.test_problems} problems")  # fmt: skip
    imp = [{"feature": f, "importance": v} for f, v in report.importances]
    feats = alt.Chart(alt.Data(values=imp)).mark_bar(color=COLORS[0]).encode(
        x=alt.X("importance:Q"), y=alt.Y("feature:N", sort="-x", title=None),
        tooltip=["feature:N", alt.Tooltip("importance:Q", format=".3f")],
    ).properties(width=280, height=220, title=f"{report.kind}: top features")  # fmt: skip
    return alt.hconcat(aucs, feats)


def use_offline_renderer() -> None:
    """Show charts in a JupyterLab with no internet: each output inlines the Vega libraries (about 0.9 MB).

    Altair's default renderer loads them from a CDN; JupyterLab's own Vega renderer may predate Vega-Lite 6.
    """
    alt.renderers.enable("html", template="inline")


def save_chart(chart: alt.TopLevelMixin, path: str | Path, scale: float = 2.0) -> Path:
    """Write a chart as PNG or SVG (by the file's suffix) with vl-convert; no browser or network needed."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg"):
        raise ValueError(f"save_chart writes .png or .svg, not {path.suffix!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    chart.save(str(path), scale_factor=scale) if path.suffix.lower() == ".png" else chart.save(str(path))
    return path
