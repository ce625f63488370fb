"""Benchmarks are shown apart everywhere results are shown: frames, the leaderboard, `cdw leaderboard`, charts, the
page, the notebook widgets and the MCP server's helpers.

Evaluations here are built in memory from typed examples (`Example`, `Decode`, the records' test lines) and their
numbers come from the real statistics (`summarize`, `summarize_pass`); only what needs records on disk is set by
hand: the offline check (verified, signed by a trusted key) and, as in tests/test_forum.py, `canonical_problems`.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from workspace import benchmarks, mcp_server
from workspace.benchmarks import DataError, ScoredShare, resolve_prompts
from workspace.charts import frontier_chart, sota_chart, sota_rows
from workspace.cli import main
from workspace.engine import Decode, Segment
from workspace.evaluate import EvalSettings, Evaluation
from workspace.evaluate.results import Baselines, Example
from workspace.frames import evaluations_frame, examples_frame
from workspace.judge import Preference
from workspace.leaderboard import BASELINE, NOT_CANONICAL, build_leaderboard
from workspace.notebook import frontier, html
from workspace.records.schema import Header, PromptsRef, ReferenceTest, WeakTest
from workspace.records.schema import Test as CandidateTest  # a name pytest does not collect
from workspace.records.verify import Check
from workspace.stats import summarize, summarize_pass

N = 12


def _decode(weak: str, strong: str = "") -> Decode:
    segs = [Segment("weak", weak, max(1, len(weak) // 4), (0, 1))]
    if strong:
        segs.append(Segment("strong", strong, max(1, len(strong) // 4), (1, 2)))
    return Decode("instruction", "p", weak + strong, tuple(segs), "weak_eos")


def _header(kind: str, benchmark: str, ids: list[str], policy: str | None = None, created: str | None = None):
    return Header(kind=kind, models={"weak": "w", "strong": "s"}, judge="j", prompts=PromptsRef("set", "h", ids),
                  settings={}, policy=policy, baselines="b" if policy else None, created=created,
                  benchmark=benchmark)  # fmt: skip


def _finish(eid, benchmark, policy, examples, created, how) -> Evaluation:
    ids = [e.prompt_id for e in examples]
    base = Baselines(f"base-{benchmark}", _header("baselines", benchmark, ids), tuple(examples), {})
    summary = how([e.sample() for e in examples if e.error is None], n_boot=300, seed=0)
    ev = Evaluation(eid, _header("evaluation", benchmark, ids, policy, created), base, tuple(examples), summary, {})
    ev.__dict__["check"] = Check("evaluation", eid, (), "key", "the test suite")  # verified (records not on disk)
    return ev


def humaneval_eval(eid, policy, passed, weak_passed, strong_passed, weak_chars, created, sandbox_error=None):
    """A humaneval evaluation: per problem, whether the candidate, weak-only and reference answers passed."""
    examples = []
    for i, (p, w, s) in enumerate(zip(passed, weak_passed, strong_passed, strict=True)):
        pid = f"HumanEval/{i}"
        st = lambda ok: "passed" if ok else "failed"  # noqa: E731
        test = CandidateTest(prompt_id=pid, status="error" if i == sandbox_error else st(p), output="boom")
        examples.append(Example(
            pid, "write f", "def f(): pass", _decode("w" * 40), None, _decode("x" * weak_chars, "y" * 20), None,
            reference_test=ReferenceTest(prompt_id=pid, status=st(s)), weak_test=WeakTest(prompt_id=pid, status=st(w)),
            test=test, judged=False, scored=ScoredShare(weak_chars // 2, 20, weak_chars // 4),  # half of it is code
        ))  # fmt: skip
    return _finish(eid, "humaneval", policy, examples, created, summarize_pass)


def alpaca_eval(eid, policy, prefs, weak_chars, created):
    """An alpaca_eval evaluation: judged preferences of the candidate (`prefs`) and of the weak-only answer."""
    examples = []
    for i, p in enumerate(prefs):
        examples.append(Example(
            f"a{i}", "say hi", "r" * (60 + (i * 29) % 50), _decode("w" * (50 + (i * 53) % 45)),
            Preference(0.25 + 0.03 * (i % 5)), _decode("x" * weak_chars, "y" * (30 + 3 * i)), Preference(p),
        ))  # fmt: skip
    return _finish(eid, "alpaca_eval", policy, examples, created, summarize)


@pytest.fixture(scope="module")
def evaluations() -> dict[str, Evaluation]:
    strong = [True] * 10 + [False] * 2
    weak = [True] * 3 + [False] * 9
    return {
        # humaneval: he_top keeps every strong pass at a high weak share; he_low loses most of them
        "he_top": humaneval_eval("he_top", "margin(tau=0.1)", strong, weak, strong, 60, "2026-01-03T00:00:00+00:00"),
        "he_mid": humaneval_eval("he_mid", "margin(tau=0.05)", strong, weak, strong, 30, "2026-01-02T00:00:00+00:00"),
        "he_low": humaneval_eval("he_low", "top1(tau=0.9)", weak, weak, strong, 90, "2026-01-04T00:00:00+00:00"),
        "he_err": humaneval_eval(
            "he_err", "never", weak, weak, strong, 80, "2026-01-05T00:00:00+00:00", sandbox_error=4
        ),  # fmt: skip
        # alpaca_eval: a judged candidate far better than the weak one (certified), and one as bad as it
        "ae_top": alpaca_eval(
            "ae_top", "margin(tau=0.2)", [0.55 + 0.02 * (i % 6) for i in range(N)], 20, "2026-01-01T00:00:00+00:00"
        ),  # fmt: skip
        "ae_low": alpaca_eval(
            "ae_low", "never", [0.25 + 0.03 * (i % 5) for i in range(N)], 95, "2026-01-06T00:00:00+00:00"
        ),  # fmt: skip
    }


@pytest.fixture
def canonical(monkeypatch, evaluations):
    chosen = {"he_top", "he_mid", "he_low", "ae_top", "ae_low"}  # he_err is not canonical
    monkeypatch.setattr(Evaluation, "canonical_problems",
                        lambda self: [] if self.id in chosen else ["not canonical (test)"])  # fmt: skip
    return evaluations


@pytest.fixture
def board(canonical):
    return build_leaderboard(canonical.values())


# ---------------------------------------------------------------- frames


def test_frames_name_the_benchmark_and_the_test_results(canonical):
    ev = canonical
    frame = evaluations_frame(ev.values())
    rows = {r["evaluation"]: r for r in frame.to_dicts()}
    assert {k: r["benchmark"] for k, r in rows.items()} == {
        k: ("humaneval" if k.startswith("he") else "alpaca_eval") for k in ev
    }
    assert rows["he_top"]["u_strong"] == pytest.approx(10 / 12) and rows["he_top"]["u_weak"] == pytest.approx(3 / 12)
    assert rows["he_top"]["utility"] == pytest.approx(10 / 12) and rows["he_top"]["recovery"] == pytest.approx(1.0)
    assert rows["ae_top"]["u_strong"] == 0.5
    assert rows["he_err"]["judged"] == N - 1  # the sandbox failed on one problem: no numbers for it

    ex = examples_frame([ev["he_low"], ev["he_err"], ev["ae_top"]])
    assert set(ex["benchmark"]) == {"humaneval", "alpaca_eval"}
    low = ex.filter(ex["evaluation"] == "he_low")
    assert low["passed"].to_list() == [True] * 3 + [False] * 9
    assert low["weak_passed"].to_list() == [True] * 3 + [False] * 9
    assert low["reference_passed"].to_list() == [True] * 10 + [False] * 2
    assert low["test_status"].to_list()[:4] == ["passed", "passed", "passed", "failed"]
    err = ex.filter(ex["evaluation"] == "he_err")
    assert err["passed"].to_list()[4] is None and err["test_status"].to_list()[4] == "error"  # no result, not a fail
    ae = ex.filter(ex["evaluation"] == "ae_top")
    assert ae["passed"].null_count() == ae["weak_passed"].null_count() == ae["reference_passed"].null_count() == N
    assert ae["preference"].null_count() == 0 and low["preference"].null_count() == N


# ---------------------------------------------------------------- the leaderboard


def test_certified_entries_are_ranked_within_their_benchmark(board):
    ranks = {e.evaluation: (e.benchmark, e.rank) for e in board.certified}
    assert ranks == {"ae_top": ("alpaca_eval", 1), "he_top": ("humaneval", 1), "he_mid": ("humaneval", 2)}
    assert board.best.evaluation == "ae_top"  # the alpaca_eval best, although he_top has a higher f_weak
    assert board.best_for("humaneval").evaluation == "he_top"
    assert board.benchmarks == ("alpaca_eval", "humaneval")
    assert [(b.benchmark, b.status) for b in board.baselines] == [("alpaca_eval", BASELINE)] * 2 + [
        ("humaneval", BASELINE)
    ] * 2
    assert {e.evaluation for e in board.below_bar} == {"he_low", "ae_low"}
    assert [e.evaluation for e in board.non_canonical] == ["he_err"] and board.non_canonical[0].status == NOT_CANONICAL
    he = board.for_benchmark("humaneval")
    assert {e.benchmark for e in he.evaluations + he.baselines} == {"humaneval"}
    assert [e.evaluation for e in he.certified] == ["he_top", "he_mid"] and he.best is None
    assert he.certified[0].u_strong == pytest.approx(10 / 12)
    doc = board.to_json()
    assert doc["benchmarks"] == ["alpaca_eval", "humaneval"]
    for key in ("certified", "below_bar", "non_canonical", "unverified", "baselines"):
        assert all(e["benchmark"] in ("alpaca_eval", "humaneval") for e in doc[key]), key
    assert json.loads(json.dumps(doc))["certified"][1]["rank"] == 1  # he_top, after ae_top


def test_a_board_with_only_alpaca_eval_has_its_baselines_only(canonical):
    board = build_leaderboard([canonical["ae_top"], canonical["ae_low"]])
    assert board.benchmarks == ("alpaca_eval",) and len(board.baselines) == 2
    assert board.best_for("humaneval") is None
    assert {b.benchmark for b in board.for_benchmark("humaneval").baselines} == {"humaneval"}  # shown on demand


def test_cli_leaderboard_shows_one_table_per_benchmark_and_filters(board, monkeypatch):
    monkeypatch.setattr("workspace.leaderboard.get_leaderboard", lambda findings=None: board)
    run = CliRunner().invoke
    r = run(main, ["leaderboard"], terminal_width=200)
    assert r.exit_code == 0, r.output
    out = r.output
    assert out.index("alpaca_eval: certified") < out.index("humaneval: certified")
    assert "length-controlled judge winrate" in out and "pass@1" in out
    he_part = out[out.index("humaneval: certified") :]
    assert "he_top" in he_part and "ae_top" not in he_part and "0.833" in he_part  # pass@1 of he_top
    r = run(main, ["leaderboard", "--json", "--benchmark", "humaneval"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    entries = [e for k in ("certified", "below_bar", "non_canonical", "unverified", "baselines") for e in doc[k]]
    assert entries and {e["benchmark"] for e in entries} == {"humaneval"}
    assert [e["rank"] for e in doc["certified"]] == [1, 2]
    r = run(main, ["leaderboard", "--json"])
    doc = json.loads(r.output)
    assert all("benchmark" in e for k in ("certified", "below_bar", "non_canonical", "baselines") for e in doc[k])
    assert run(main, ["leaderboard", "--benchmark", "nope"]).exit_code == 2


# ---------------------------------------------------------------- charts, page, widgets


def _points(chart) -> list[dict]:
    (dots,) = [layer for layer in chart.to_dict()["layer"] if layer["mark"]["type"] == "point"]
    return dots["data"]["values"]


@pytest.mark.slow  # builds the Vega-Lite charts of two benchmarks (seconds)
def test_charts_show_one_benchmark_each(board):
    default = _points(frontier_chart(board))
    he = _points(frontier_chart(board, benchmark="humaneval"))
    assert {p["evaluation"] for p in default} == {"ae_top", "ae_low", "—"}
    assert {p["evaluation"] for p in he} == {"he_top", "he_mid", "he_low", "he_err", "—"}
    assert {p["benchmark"] for p in he} == {"humaneval"} and sum(p["status"] == BASELINE for p in he) == 2
    # humaneval's frontier is drawn on f_weak_code, the judged one on f_weak
    x = lambda chart: next(x for x in chart.to_dict()["layer"] if x["mark"]["type"] == "point")["encoding"]["x"]  # noqa: E731
    assert x(frontier_chart(board, benchmark="humaneval"))["field"] == "f_weak_code"
    assert x(frontier_chart(board))["field"] == "f_weak"
    top = next(p for p in he if p["evaluation"] == "he_top")
    assert top["f_weak_code"] == pytest.approx(30 / 50) and top["f_weak"] == pytest.approx(60 / 80)
    layers = frontier_chart(board, benchmark="humaneval").to_dict()["layer"]
    (dots,) = [x for x in layers if x["mark"]["type"] == "point"]
    assert "benchmark" in {t["field"] for t in dots["encoding"]["tooltip"]}
    steps = [r["evaluation"] for r in sota_rows(board, benchmark="humaneval") if r["improvement"]]
    assert steps == ["he_mid", "he_top"]
    assert [r["evaluation"] for r in sota_rows(board) if r["improvement"]] == ["ae_top"]
    assert "humaneval" in json.dumps(sota_chart(board, benchmark="humaneval").to_dict()["title"])


@pytest.mark.slow  # renders the page (Vega inlined)
def test_the_page_has_a_section_per_benchmark(board, monkeypatch):
    from workspace import site

    # The inlined Vega bundle (seconds of vl-convert per process) is test_site's subject; this test reads the body.
    monkeypatch.setattr(site, "vega_bundle", lambda: "/* the Vega bundle */")
    html = site.render_site(board, findings=[], skipped_findings=[])
    body = html.rpartition("</head>")[2]
    ae, he = body.index('id="benchmark-alpaca_eval"'), body.index('id="benchmark-humaneval"')
    feed = body.index('id="feed"')
    assert ae < he < feed
    assert "judged pairwise" in body[ae:he] and "judged pairwise" not in body[he:feed]
    assert "pass@1" in body[he:feed] and "unit tests" in body[he:feed] and "pass@1" not in body[ae:he]
    for chart in ("frontier", "sota", "frontier-humaneval", "sota-humaneval"):
        assert f'id="{chart}"' in body and f'id="spec-{chart}"' in body
    spec = body[body.index('id="spec-frontier-humaneval"') :]
    spec = json.loads(spec[spec.index(">") + 1 : spec.index("</script>")])
    (dots,) = [x for x in spec["layer"] if x["mark"]["type"] == "point"]
    assert {v["evaluation"] for v in dots["data"]["values"]} == {"he_top", "he_mid", "he_low", "he_err", "—"}
    tables = body[body.index('id="board-certified-humaneval"') : feed]
    assert "he_top" in tables and "ae_top" not in tables
    assert 'id="tile-best-humaneval"' in body and f"{board.best_for('humaneval').f_weak:.3f}" in body


def test_widgets_group_the_leaderboard_by_benchmark(board):
    markup = html.leaderboard_html(board)
    he = markup.index("<h3>humaneval</h3>")
    # ae_top under alpaca_eval's heading, he_top under humaneval's
    assert markup.index("<h3>alpaca_eval</h3>") < markup.index("margin(tau=0.2)") < he < markup.index("margin(tau=0.1)")
    assert "pass@1" in markup[he:]
    only = html.leaderboard_html(board, benchmark="humaneval")
    assert "margin(tau=0.2)" not in only and "margin(tau=0.1)" in only and "<h3>alpaca_eval</h3>" not in only
    ringed = frontier.frontier_with(["he_mid"], board).to_dict()
    title = json.dumps(ringed.get("title", ""))
    assert "humaneval" in title
    pts = [v for x in ringed["layer"] if x["mark"]["type"] == "point" for v in x["data"]["values"]]
    assert "ae_top" not in {p.get("evaluation") for p in pts} and "he_mid" in {p.get("evaluation") for p in pts}


def test_show_evaluation_reports_pass_rates_for_a_tests_benchmark(canonical):
    markup = html.show_evaluation(canonical["he_top"])._repr_html_()
    assert "pass@1 0.833" in markup and "U_strong (strong only) 0.833" in markup and "raw winrate" not in markup
    assert "<td>humaneval</td>" in markup
    assert "raw winrate" in html.show_evaluation(canonical["ae_top"])._repr_html_()


# ---------------------------------------------------------------- the MCP server's argument checks


def test_mcp_resolves_prompts_and_settings_per_benchmark():
    assert benchmarks.get(None).name == "alpaca_eval"
    with pytest.raises(DataError, match="unknown benchmark 'mbpp'; known: alpaca_eval, humaneval"):
        benchmarks.get("mbpp")
    assert mcp_server.eval_settings() == EvalSettings() == mcp_server.eval_settings("alpaca_eval")
    s = mcp_server.eval_settings("humaneval")
    assert s.benchmark == "humaneval" and s.engine.max_tokens == 512 and "tests" in s.identity()
    three = resolve_prompts("humaneval", 3, files=False)
    assert [p.id for p in three] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    full = resolve_prompts("humaneval", "canonical", files=False)
    assert len(full) == 164 and resolve_prompts("humaneval", "humaneval", files=False).hash == full.hash
    assert [p.id for p in resolve_prompts("humaneval", "humaneval:2", files=False)] == ["HumanEval/0", "HumanEval/1"]
    with pytest.raises(DataError):
        resolve_prompts("humaneval", "/etc/passwd", files=False)
    assert mcp_server.progress_phases("humaneval") == ("reference", "weak", "reference_test", "weak_test",
                                                       "generation", "test")  # fmt: skip
    assert mcp_server.progress_phases(None, evaluation=False) == mcp_server.BASELINE_PHASES
