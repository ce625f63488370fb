"""The frontier chart of a benchmark with a sweep's new points ringed and labelled (Altair)."""

from __future__ import annotations

from collections.abc import Iterable

from ..benchmarks import DEFAULT
from ..leaderboard import Leaderboard, get_leaderboard
from .html import HIGHLIGHT


def frontier_with(new_ids: Iterable[str], board: Leaderboard | None = None, benchmark: str | None = None):
    """The leaderboard's frontier chart of one benchmark with the given evaluations ringed and labelled (new points
    of a sweep). The benchmark defaults to the first new point's (alpaca_eval without one); points of another
    benchmark are not drawn."""
    import altair as alt

    from ..charts import frontier_chart, frontier_x

    board = board or get_leaderboard()
    ids = set(new_ids)
    new = [e for e in board.evaluations if e.evaluation in ids]
    benchmark = benchmark or (new[0].benchmark if new else DEFAULT)
    x_of = frontier_x(benchmark)  # the chart's x: f_weak_code on a code benchmark
    rows = [
        {x_of: getattr(e, x_of), "recovery": e.recovery, "policy": e.policy, "evaluation": e.evaluation}
        for e in new
        if e.benchmark == benchmark and getattr(e, x_of) is not None and e.recovery is not None
    ]
    if not rows:
        return frontier_chart(board, benchmark=benchmark)
    base = alt.Chart(alt.Data(values=rows))
    x, y = alt.X(f"{x_of}:Q"), alt.Y("recovery:Q")
    ring = base.mark_point(shape="circle", size=420, filled=False, strokeWidth=2.5, color=HIGHLIGHT).encode(
        x=x, y=y, tooltip=["policy:N", "evaluation:N"]
    )
    label = base.mark_text(align="left", dx=14, dy=-8, fontSize=11, color=HIGHLIGHT).encode(x=x, y=y, text="policy:N")
    chart = frontier_chart(board, benchmark=benchmark) + ring + label
    return chart.properties(title=f"Frontier ({benchmark}): the new points ringed")
