"""Charts and the published page (workspace/charts.py, workspace/site.py), the page checked in headless Chromium.

The browser is Debian's Chromium driven by playwright (`make browser` installs it; no playwright download).
Evaluation records are real (see tests/test_forum.py); `Evaluation.canonical` is patched for chosen records because
fake servers cannot be the canonical models and prompt set.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import time

import pytest
from click.testing import CliRunner

from tests.test_forum import POLICIES, canonical_for, made  # noqa: F401 (made: a fixture, shared)
from workspace.charts import frontier_chart, save_chart, sota_chart, sota_rows, use_offline_renderer
from workspace.cli import main
from workspace.evaluate import load_evaluation
from workspace.forum import share_finding
from workspace.leaderboard import BASELINES, Leaderboard, LeaderboardEntry, get_leaderboard
from workspace.site import render_site

SCRIPT_TITLE = "<script>window.__pwned = 1</script> Entropy gates <b>fail</b>"


@pytest.fixture
def evals(made, findings_dir, monkeypatch):  # noqa: F811 (the imported fixture)
    """Records on disk; margin, top1(0.5), always and never count as canonical (two are certified: margin's lower
    bound is below the floor on 8 prompts)."""
    folder, ids = made
    monkeypatch.setenv("CDW_RECORDS_DIR", str(folder))
    canonical_for(monkeypatch, [ids[k] for k in ("margin", "top1_high", "always", "never")])
    return ids


def post_findings(evals) -> list[str]:
    """Four findings, oldest first; returns their titles newest first (the order the feed must show)."""
    posts = [
        ("Margin gates should defer less", "hypothesis", "Gate on p1 − p2 instead of p1.", {}),
        ("Margin 0.1 certifies", "result", "f_weak **0.99** at recovery 1.00 (a typo: see the record).",
         {"evaluation": evals["margin"]}),
        (SCRIPT_TITLE, "negative", "<script>window.__pwned = 2</script><img src=x onerror='window.__pwned=3'>", {}),
        ("Deferrals cluster at sentence starts", "insight", "| a | b |\n|---|---|\n| 1 | 2 |", {"tags": ["spans"]}),
    ]  # fmt: skip
    for title, kind, body, extra in posts:
        share_finding(title, kind, body, "tester", **extra)
        time.sleep(0.005)  # distinct creation times (milliseconds)
    return [p[0] for p in reversed(posts)]


# ---------------------------------------------------------------- charts


def _nonblank(png: bytes) -> tuple[float, int]:
    """(share of pixels that are not white, number of distinct colours) of a PNG."""
    Image = pytest.importorskip("PIL.Image", reason="needs pillow (dev extra)")
    img = Image.open(io.BytesIO(png)).convert("RGB")
    px = list(img.get_flattened_data()) if hasattr(img, "get_flattened_data") else list(img.getdata())
    return sum(p != (255, 255, 255) for p in px) / len(px), len(set(px))


@pytest.mark.slow
def test_frontier_has_every_evaluation_the_endpoints_and_the_bar(evals, tmp_path):
    board = get_leaderboard()
    spec = frontier_chart(board).to_dict()
    (dots,) = [layer for layer in spec["layer"] if layer["mark"]["type"] == "point"]
    values = dots["data"]["values"]
    points = {v["evaluation"]: v for v in values}
    assert set(evals.values()) <= set(points)
    for key, eid in evals.items():
        ev = load_evaluation(eid)
        assert (points[eid]["f_weak"], points[eid]["recovery"]) == (ev.summary.f_weak, ev.certification.recovery)
        assert points[eid]["status"] == ("certified" if key in ("top1_high", "always") else
                                         "below bar" if key in ("never", "margin") else "not canonical")  # fmt: skip
        assert points[eid]["n"] == len(ev.examples) and points[eid]["policy"] == POLICIES[key]
    ends = sorted((v["f_weak"], v["recovery"]) for v in values if v.get("status") == "baseline")
    assert ends == [(0.0, 1.0), (1.0, 0.0)]
    (rule,) = [
        layer for layer in spec["layer"] if layer["mark"]["type"] == "rule" and layer["encoding"]["y"]["field"] == "bar"
    ]
    assert rule["data"]["values"][0]["bar"] == board.bar and rule["mark"]["strokeWidth"] < 1  # a hairline
    assert {e.status for e in board.evaluations} == {"certified", "below bar", "not canonical"}
    assert dots["encoding"]["shape"]["field"] == dots["encoding"]["color"]["field"] == "status"  # set apart
    tips = {t["field"] for t in dots["encoding"]["tooltip"]}
    assert {"policy", "n", "f_weak (95% CI)", "recovery (95% CI)", "date"} <= tips
    assert spec["params"][0]["value"] is False  # intervals on demand: a checkbox, off by default
    assert frontier_chart(board, error_bars=True).to_dict()["params"][0]["value"] is True


@pytest.mark.slow
def test_charts_export_to_png_and_svg(evals, tmp_path):
    board = get_leaderboard()
    for name, chart in (("frontier", frontier_chart(board, error_bars=True)), ("sota", sota_chart(board))):
        png = save_chart(chart, tmp_path / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG")
        share, colours = _nonblank(png)
        assert share > 0.02 and colours > 8, (name, share, colours)
        svg = save_chart(chart, tmp_path / f"{name}.svg").read_text()
        assert svg.lstrip().startswith("<svg") and "f_weak" in svg
    with pytest.raises(ValueError):
        save_chart(sota_chart(board), tmp_path / "x.pdf")


def test_sota_is_a_step_series_of_the_best_certified_f_weak():
    def e(f, day):
        return LeaderboardEntry("certified", f"p{f}", f"e{f}", f, 1.0, created=f"2025-01-{day:02d}T00:00:00+00:00")

    board = Leaderboard(0.98, (e(0.5, 3), e(0.3, 1), e(0.2, 2), e(0.4, 4)), (), (), BASELINES)
    rows = sota_rows(board)
    assert [(r["best"], r["improvement"]) for r in rows] == [(0.3, True), (0.5, True), (0.5, False)]
    assert rows[-1]["created"] > rows[-2]["created"]  # the line runs on to now
    assert sota_rows(Leaderboard(0.98, (), (), (), BASELINES)) == []


@pytest.mark.slow
def test_charts_display_in_a_notebook_without_network():
    import altair as alt

    chart = frontier_chart(Leaderboard(0.98, (), (), (), BASELINES))
    assert "vega-lite" in chart.to_json()
    try:
        use_offline_renderer()
        bundle = chart._repr_mimebundle_()
    finally:
        alt.renderers.enable("default")
    html = (bundle[0] if isinstance(bundle, tuple) else bundle)["text/html"]
    assert "vegaEmbed" in html and "://cdn" not in html and len(html) > 500_000  # the libraries are inlined


# ---------------------------------------------------------------- the page


@pytest.mark.slow  # the page inlines Vega: seconds to render (the browser tier checks escaping in Chromium too)
def test_the_page_is_self_contained_and_escapes_findings(evals, findings_dir):
    post_findings(evals)
    html = render_site()
    head, _, body = html.rpartition("</head>")  # the bundle itself mentions </head>
    assert head.count("<script") == 1 and "<script src" not in head and "<link" not in head  # the inlined bundle
    assert body.count("<script") == 3  # two chart specs and the loader: nothing from a finding
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in body and "&lt;img src=x" in body
    assert "<img" not in body and "<b>fail" not in body
    assert "://" not in re.sub(r'"\$schema": "https://vega\.github\.io/schema/[^"]+"', "", body)  # an id, not fetched


def _chromium() -> str:
    found = os.environ.get("CDW_CHROMIUM") or next(
        (p for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")) if p and
         os.path.exists(p)), None)  # fmt: skip
    if not found:
        pytest.fail("no Chromium: `make browser` (apt-get install chromium) or set CDW_CHROMIUM")
    return found


@pytest.mark.browser
def test_the_page_renders_offline_in_headless_chromium(evals, findings_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    titles = post_findings(evals)
    r = CliRunner().invoke(main, ["site", "--out", str(tmp_path / "site")])
    assert r.exit_code == 0, r.output
    page_path = tmp_path / "site" / "index.html"
    board = get_leaderboard()
    requests, failed, errors = [], [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("request", lambda q: requests.append(q.url))
            page.on("requestfailed", lambda q: failed.append((q.url, q.failure)))
            page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_path.as_uri())
            for chart in ("frontier", "sota"):
                page.wait_for_selector(f"#{chart}[data-rendered='1'] svg", timeout=30_000)
            shots = {c: page.locator(f"#{c}").screenshot(path=str(tmp_path / f"{c}.png")) for c in ("frontier", "sota")}
            page.locator("#frontier input[type=checkbox]").check()  # the 95% intervals, on demand
            page.wait_for_timeout(300)
            with_bars = page.locator("#frontier").screenshot(path=str(tmp_path / "frontier-intervals.png"))
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            marks = page.locator("#frontier svg .mark-symbol path").count()
            feed = page.locator("#feed ~ article .finding-title").all_inner_texts()
            pwned = page.evaluate("window.__pwned")
            best_tile = page.locator("#tile-best .value").inner_text()
            numbers = page.locator("article[data-kind=result] .numbers").inner_text()
        finally:
            browser.close()
    assert requests == [page_path.as_uri()] and not failed  # the page, and nothing else, was loaded
    assert not errors, errors
    for chart, png in shots.items():
        share, colours = _nonblank(png)
        assert share > 0.02 and colours > 8, (chart, share, colours)
    assert marks >= len(evals) + 2  # every evaluation and both endpoints
    assert with_bars != shots["frontier"]
    assert feed == titles  # newest first; the <script> title shown as text
    assert pwned is None
    assert best_tile == f"{board.best.f_weak:.3f}" and board.best.evaluation == evals["top1_high"]
    margin = load_evaluation(evals["margin"]).summary
    assert f"f_weak {margin.f_weak:.3f}" in numbers and "0.99" not in numbers  # the record's, not the text's
