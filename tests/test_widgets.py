"""workspace/notebook/: the displays the notebooks call (HTML escaping, colours, controls, live runs, forms)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from html.parser import HTMLParser
from importlib.util import find_spec

import pytest

from tests.test_evaluate import FAST, make_setup
from workspace.benchmarks import Prompt, PromptSet
from workspace.client import ModelClient
from workspace.endpoints import Endpoint
from workspace.engine import Decode, EngineSettings, Models, Segment, decode_many
from workspace.evaluate import EvalSettings, evaluate, list_evaluations
from workspace.forum import Finding, get_findings
from workspace.health import status
from workspace.leaderboard import BASELINES, CERTIFIED, NOT_CANONICAL, Leaderboard, LeaderboardEntry
from workspace.notebook import frontier, html, signals, widgets
from workspace.policies import Action, load_policy, registry
from workspace.policies.params import param_specs, spec_string
from workspace.stats import Interval

SCRIPT = "<script>alert(1)</script>"
PROMPTS = PromptSet("w", tuple(Prompt(f"w/{i}", f"Question {i}: explain something.") for i in range(6)))
SETTINGS = EvalSettings(EngineSettings(chunk_tokens=7, top_k=5, max_tokens=80, max_span_tokens=24), n_boot=100)

# The notebooks extra: the widget classes need ipywidgets (the HTML views do not).
NEEDS_IPYWIDGETS = pytest.mark.skipif(find_spec("ipywidgets") is None, reason="needs ipywidgets (notebooks extra)")


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text, of an HTML fragment (as a browser would parse it)."""

    def __init__(self, markup: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text = ""
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text += data

    def spans(self, cls: str) -> list[dict]:
        return [a for t, a in self.tags if t == "span" and a.get("class") == cls]


def a_decode(error: str | None = None) -> Decode:
    segs = (
        Segment("weak", f"Hello {SCRIPT} ", 5, (0, 5)),
        Segment("strong", 'world" onmouseover="alert(2)', 4, (5, 9), score=0.03125),
        Segment("weak", " & bye", 1, (9, 10)),
    )
    return Decode("Say <b>hi</b>", "margin(tau=0.1)", "".join(s.text for s in segs), segs, "weak_eos", error=error)


# ---------------------------------------------------------------- decodes


def test_decode_html_escapes_every_text_and_colours_strong_spans_only():
    markup = html.decode_html(a_decode())
    parsed = Tags(markup)
    assert "<script>" not in markup and "&lt;script&gt;" in markup
    assert not any("onmouseover" in attrs for _, attrs in parsed.tags)  # the quote did not break out
    assert "script" not in [t for t, _ in parsed.tags]
    (strong,) = parsed.spans("cdw-strong")
    weak = parsed.spans("cdw-weak")
    assert len(weak) == 2 and all("style" not in a for a in weak)  # weak text stays plain
    assert html.STRONG_BACKGROUND in strong["style"]
    assert strong["title"] == "strong model · handoff score 0.03125 · 4 tokens"
    assert weak[1]["title"] == "weak model · 1 token"
    assert f'Hello {SCRIPT} world" onmouseover="alert(2) & bye' in parsed.text  # shown exactly, as text
    assert "f_weak" in parsed.text and "cdw-error" not in markup
    (root,) = [a for t, a in parsed.tags if "cdw-decode" in a.get("class", "").split()]
    assert "mathjax_ignore" in root["class"].split()  # "$5 or $10" stays text in JupyterLab


def test_author_colours():
    assert html.author_style("weak") == ""
    assert html.STRONG_BACKGROUND in html.author_style("strong")
    assert html.author_style("strong") != html.author_style("weak")


def test_a_failed_decode_shows_its_error():
    markup = html.decode_html(a_decode(error=f"ServerUnavailable: {SCRIPT}"))
    assert 'class="cdw-error"' in markup and "ServerUnavailable: &lt;script&gt;" in markup
    assert html.show_decode(a_decode())._repr_html_() == html.decode_html(a_decode())
    empty = Decode("q", "never", "", (), "error", error="boom")
    assert "(no text)" in html.decode_html(empty) and "boom" in html.decode_html(empty)


def test_decodes_table_has_f_weak_per_instruction_and_pooled():
    d = a_decode()
    markup = html.decodes_table([d, Decode("q2", "never", "abc", (Segment("weak", "abc", 3, (0, 3)),), "weak_eos")])
    cells = Tags(markup)
    assert "Say &lt;b&gt;hi&lt;/b&gt;" in markup
    assert f"{d.f_weak:.2f}" in cells.text and "1.00" in cells.text
    weak, strong = d.weak_chars + 3, d.strong_chars
    assert f"pooled f_weak over 2 instruction(s): {weak / (weak + strong):.3f}" in cells.text


# ---------------------------------------------------------------- controls from constructors


def test_slider_specs_come_from_each_family_constructor():
    margin = {p.name: p for p in param_specs("margin")}
    assert list(margin) == ["tau", "span", "max_span"]
    assert (margin["tau"].kind, margin["tau"].min, margin["tau"].max, margin["tau"].default) == ("float", 0, 1, 0.1)
    assert margin["tau"].required and "sentence" in margin["span"].options and margin["max_span"].kind == "int"
    assert param_specs("entropy")[0].max > 1  # nats, not a probability
    hyst = {p.name: p for p in param_specs("hysteresis")}
    assert hyst["inner"].kind == "policy" and (hyst["k"].kind, hyst["k"].default) == ("int", 2)
    assert param_specs("never") == [] and param_specs("cascade")[0].default == 0.7

    class Mine(registry.family("margin")):
        def __init__(self, alpha: float = 0.25, runs: int = 3, mode: str = "fast"):
            super().__init__(alpha)

    mine = {p.name: (p.kind, p.default) for p in param_specs(Mine)}
    assert mine == {"alpha": ("float", 0.25), "runs": ("int", 3), "mode": ("choice", "fast")}


@pytest.mark.parametrize("family", list(registry.families()))
def test_every_family_gives_loadable_specs_at_its_defaults_and_extremes(family):
    params = param_specs(family)
    for values in ({}, {p.name: p.max for p in params if p.kind in ("int", "float")}):
        spec = spec_string(family, values, params)
        assert load_policy(spec).describe() == spec


def test_spec_strings_round_slider_floats_and_name_only_what_differs():
    assert spec_string("margin", {"tau": 0.1 + 0.2}) == "margin(tau=0.3)"
    assert spec_string("margin", {"tau": 0.1, "span": "punct"}) == "margin(tau=0.1, span=punct)"
    assert spec_string("margin", {"tau": 0.1, "span": "words:3"}) == "margin(tau=0.1, span=words:3)"
    assert spec_string("hysteresis", {"inner": "entropy(tau=2)", "k": 3}) == "hysteresis(entropy(tau=2), k=3)"
    assert spec_string("never", {}) == "never"


# ---------------------------------------------------------------- the explorer


@pytest.fixture
async def models(toys):
    m = Models(ModelClient(Endpoint("weak", (toys.weak.url,), "weak"), FAST),
               ModelClient(Endpoint("strong", (toys.strong.url,), "strong"), FAST))  # fmt: skip
    yield m, toys.weak, toys.strong
    await m.close()


INSTR = ["Task 0: do it.", "Task 1: do it."]


@NEEDS_IPYWIDGETS
async def test_explorer_cancels_the_stale_run_in_flight(models):
    m, weak, _ = models
    ex = widgets.PolicyExplorer(INSTR, m, EngineSettings(max_tokens=60), debounce=0)
    assert ex.spec == "margin(tau=0.1)" and set(ex.controls) == {"tau", "span", "max_span"}
    first = await ex.refresh()
    assert [d.policy for d in first] == ["margin(tau=0.1)"] * 2 and ex.runs == [("margin(tau=0.1)", "done")]
    assert all(d.f_weak is not None and f"{d.f_weak:.2f}" in ex.table.value for d in first)
    weak.faults.delay = 0.05  # slow enough that the next run is caught mid-flight
    ex.set(tau=0.5)
    stale = ex._task
    await asyncio.sleep(0.08)
    assert weak.active > 0  # its requests are in flight
    ex.set(tau=0.9)
    latest = await ex.wait()
    assert stale.cancelled()
    assert ex.runs[1:] == [("margin(tau=0.5)", "cancelled"), ("margin(tau=0.9)", "done")]
    assert [d.policy for d in latest] == ["margin(tau=0.9)"] * 2 and ex.decodes == latest
    assert "margin(tau=0.9)" in ex.status.value


@pytest.mark.slow  # waits out debounce intervals
@NEEDS_IPYWIDGETS
async def test_explorer_drops_a_setting_moved_within_the_debounce_without_sending_it(models):
    m, weak, strong = models
    ex = widgets.PolicyExplorer(INSTR, m, EngineSettings(max_tokens=60), debounce=0.2)
    ex.set(tau=0.3)
    ex.set(tau=0.4)
    ex.controls["span"].value = "punct"
    await ex.wait()
    assert ex.runs == [("margin(tau=0.3)", "cancelled"), ("margin(tau=0.4)", "cancelled"),
                       ("margin(tau=0.4, span=punct)", "done")]  # fmt: skip
    sent = len(weak.requests) + len(strong.requests)
    weak.requests.clear()
    strong.requests.clear()
    await decode_many(INSTR, "margin(tau=0.4, span=punct)", m, EngineSettings(max_tokens=60), progress=False)
    assert sent == len(weak.requests) + len(strong.requests)  # exactly one run's requests went out


@NEEDS_IPYWIDGETS
async def test_explorer_family_switch_rebuilds_controls_and_a_bad_spec_is_shown_not_raised(models):
    m, _, _ = models
    ex = widgets.PolicyExplorer(INSTR, m, EngineSettings(max_tokens=40), debounce=0)
    ex.family.value = "hysteresis"
    assert set(ex.controls) == {"inner", "k"} and ex.spec == "hysteresis(margin(tau=0.1))"
    await ex.wait()
    ex.set(inner="nosuch(tau=1)")
    await ex.wait()
    assert ex.runs[-1] == ("hysteresis(nosuch(tau=1))", "error")
    assert "cdw-error" in ex.status.value and "unknown policy" in ex.status.value
    with pytest.raises(KeyError, match="has no parameter 'tau'"):
        ex.set(tau=0.2)


# ---------------------------------------------------------------- signals, evaluations, sweeps


def test_make_signal_builds_what_a_policy_reads():
    s = signals.make_signal([0.6, 0.3], since_handoff=7)
    assert s.p1 == pytest.approx(0.6) and s.p2 == pytest.approx(0.3) and s.since_handoff == 7
    assert load_policy("margin(tau=0.5)").decide(s).action is Action.DEFER
    assert load_policy("margin(tau=0.2)").decide(s).action is Action.CONTINUE
    for bad in ([], [0.0], [0.7, 0.6], [1.5]):
        with pytest.raises(ValueError):
            signals.make_signal(bad)


@pytest.fixture
def servers(toys):
    """The toy trio; the scripted judge knows the strong model's answers to PROMPTS."""
    toys.learn_references([p.instruction for p in PROMPTS], max_tokens=SETTINGS.engine.max_tokens)
    return toys


@pytest.mark.slow
@NEEDS_IPYWIDGETS
async def test_sweep_progress_moves_live_and_a_failing_point_is_shown(servers):
    async with make_setup(servers) as setup:
        sweep = widgets.Sweep(["margin(tau=[0.05, 0.2])", "nosuch(tau=1)", "margin(tau=[0.1"], PROMPTS, setup, SETTINGS,
                              poll=0.01)  # fmt: skip
        assert [p.spec for p in sweep.points] == ["margin(tau=0.05)", "margin(tau=0.2)", "nosuch(tau=1)",
                                                  "margin(tau=[0.1"]  # fmt: skip
        seen = []
        sweep.bar.observe(lambda c: seen.append(c["new"]), names="value")
        evs = await sweep.run()
        assert [e.policy for e in evs] == ["margin(tau=0.05)", "margin(tau=0.2)"]
        assert sorted(sweep.new_ids) == sorted(e.id for e in list_evaluations())
        assert any(0 < v < sweep.bar.max for v in seen) and sweep.bar.value == sweep.bar.max
        assert sweep.bar.bar_style == "warning" and "2 with errors" in sweep.label.value
        table = sweep.table.value
        assert "unknown policy" in table and "cannot parse" in table and table.count("cdw-error") == 2
        assert all(e.id in table for e in evs)
        again = widgets.Sweep("margin(tau=[0.05, 0.2])", PROMPTS, setup, SETTINGS)
        assert [e.id for e in await again.run()] == [e.id for e in evs]  # read back from the records
        assert again.bar.bar_style == "success"


@pytest.mark.slow  # a sweep end to end with a failing judge
@NEEDS_IPYWIDGETS
async def test_judge_failures_are_listed_not_hidden(servers):
    servers["judge"].judge = lambda prompt: None  # the judge answers neither label
    async with make_setup(servers) as setup:
        ev = await evaluate("margin(tau=0.1)", PROMPTS, setup, SETTINGS, progress=False)
        # Incomplete baselines: every point retries them, so the points must not run at once (one writer per record).
        sweep = widgets.Sweep("margin(tau=[0.1, 0.2])", PROMPTS, setup, SETTINGS)
        await sweep.run()
    markup = html.show_evaluation(ev)._repr_html_()
    assert len(ev.errors) == 6 and "examples without numbers" in markup and markup.count("<li>") == 6
    assert "judge failed" in markup and "0/6" in markup
    assert [p.error for p in sweep.points] == [None, None] and len(sweep.evaluations) == 2
    assert sweep.table.value.count("6: judge failed") == 2 and sweep.bar.bar_style == "warning"


# ---------------------------------------------------------------- frontier, forum, servers


def _entry(eid, policy, f, r, status=NOT_CANONICAL, **kw):
    return LeaderboardEntry(status, policy, eid, f, r, Interval(f - 0.05, f + 0.05), Interval(r - 0.1, r + 0.1),
                            n=10, judged=10, created="2026-11-01T00:00:00+00:00", **kw)  # fmt: skip


BOARD = Leaderboard(
    0.98,
    (_entry("c1", "margin(tau=0.1)", 0.45, 0.99, CERTIFIED, rank=1, finding="f1", finding_title="Margin certifies"),),
    (),
    (_entry("n1", "top1(<b>tau</b>=0.3)", 0.6, 0.5), _entry("n2", "entropy(tau=2)", 0.7, 0.4)),
    BASELINES,
)


def _layers(chart) -> list[dict]:
    return chart.to_dict()["layer"]


def test_frontier_rings_only_the_new_points():
    layers = _layers(frontier.frontier_with(["n2", "missing"], BOARD))
    rings = [x for x in layers if x["mark"].get("color") == html.HIGHLIGHT]
    assert len(rings) == 2  # the ring and its label
    assert all([v["evaluation"] for v in x["data"]["values"]] == ["n2"] for x in rings)
    plain = _layers(frontier.frontier_with([], BOARD))
    assert not any(x["mark"].get("color") == html.HIGHLIGHT for x in plain)


def test_feed_markdown_escapes_titles_and_reads_numbers_from_the_record():
    now = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
    findings = [
        Finding("a", f"Why {SCRIPT}", "negative", "ann <x>", now, "Entropy gates *fail*.", tags=("gates",)),
        Finding("b", "Margin certifies", "result", "bob", now, "We got f_weak 0.99!", "margin(tau=0.1)", "c1"),
        Finding("c", "Gone", "result", "cy", now, "…", evaluation="zzz"),
    ]
    md = html.feed_markdown(findings, BOARD)
    assert SCRIPT not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md and "ann &lt;x&gt;" in md
    assert "f_weak **0.450** [0.400, 0.500]" in md and "recovery **0.990**" in md
    assert "Entropy gates *fail*." in md and "evaluation `zzz`: not on record here" in md
    assert md.index("Why") < md.index("Margin certifies") < md.index("Gone")  # the order given: newest first
    assert "No findings yet" in html.feed_markdown([], BOARD)
    assert html.show_feed(findings, BOARD)._repr_markdown_() == md


def test_leaderboard_html_ranks_certified_and_escapes():
    markup = html.show_leaderboard(BOARD)._repr_html_()
    assert "<b>tau" not in markup and "top1(&lt;b&gt;tau&lt;/b&gt;=0.3)" in markup
    assert markup.index("Certified") < markup.index("margin(tau=0.1)") < markup.index("Not canonical")
    assert "Margin certifies" in markup and "0.450 [0.400, 0.500]" in markup and "<td>1</td>" in markup


@NEEDS_IPYWIDGETS
def test_finding_form_posts_through_share_finding_and_shows_refusals():
    form = widgets.finding_form(author="tester")
    form.title.value = "Short spans help"
    assert form.post() is None and "needs a body" in form.message.value and form.title.value == "Short spans help"
    form.kind.value, form.body.value, form.tags.value = "result", "See the record.", "spans, margin"
    assert form.post() is None and "must name the evaluation" in form.message.value
    form.kind.value = "insight"
    form.button.click()  # what a person does
    (f,) = get_findings()
    assert form.posted == [f.id] and f.title == "Short spans help" and f.author == "tester"
    assert f.kind == "insight" and f.tags == ("spans", "margin") and f.body.strip() == "See the record."
    assert "posted" in form.message.value and form.title.value == "" and form.body.value == ""


async def test_server_status_says_how_to_start_missing_servers(monkeypatch, models):
    _, weak, strong = models
    markup = html.show_status(await status())._repr_html_()
    assert markup.count("no server") == 3 and "cdw serve" in markup
    monkeypatch.setenv("CDW_WEAK_URL", weak.url)
    monkeypatch.setenv("CDW_STRONG_URL", strong.url)
    markup = html.show_status(await status())._repr_html_()
    assert markup.count(">healthy<") == 2 and "No healthy server for judge." in markup
