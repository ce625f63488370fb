"""Early stopping in evaluations and the successive-halving search (`workspace/evaluate/runs.py`'s `stop`,
`workspace/evaluate/search.py`), end to end against in-test servers on a benchmark defined here: forty sums, scored
by the last number of the answer. The strong model gets every sum right; the weak one only half of them, and it is
unsure of its wrong answers, some more than others, so a prompt-level cascade's threshold trades f_weak for recovery
along a known line: `cascade(tau=0.7)` hands over exactly the wrong answers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field

import pytest
from click.testing import CliRunner

from tests.fakeserver import FakeServer
from tests.test_evaluate_humaneval import FAST, ScriptedModel
from workspace.benchmarks import Outcome, Prompt, PromptSet, TestedBenchmark, base, get, register
from workspace.cli import main
from workspace.client import ModelClient
from workspace.endpoints import Endpoint
from workspace.evaluate import EvalSettings, SearchError, SearchPlan, Setup, evaluate, load_evaluation, rederive, search
from workspace.evaluate.search import CRITERION, Standing, rank
from workspace.frames import evaluations_frame
from workspace.leaderboard import STOPPED, build_leaderboard
from workspace.records.log import read_record
from workspace.records.schema import Stopped
from workspace.stats import StopRule, look_order

N = 24
SUMS = {f"sums/{i}": (f"What is {i} + {i + 7}? Reply with the number.", 2 * i + 7) for i in range(N)}
_NUMBER = re.compile(r"-?\d+")
# The weak model's confidence (the logit of its greedy token, the others at 0) in each of its answers: sure of the
# right ones (half, in both halves of the set: mean top-1 probability 0.99), unsure of the wrong ones (0.16, 0.35 or
# 0.59).
RIGHT = {pid for i, pid in enumerate(SUMS) if i % 4 in (0, 3)}
CONFIDENCE = {pid: 9.0 if pid in RIGHT else 3.0 + (i % 3) for i, pid in enumerate(SUMS)}


class Sums(TestedBenchmark):
    """Twenty-four sums; an answer passes when the last number in it is the sum."""

    name = "sums"
    description = "Twenty-four sums, scored by the last number in the answer"
    max_tokens = 48
    canonical_set = "sums"
    canonical_models = {"test": {"weak": "weak", "strong": "strong"}}
    how_scored = "An answer passes when its last number is the sum; there is no judge."

    def sets(self):
        whole = PromptSet("sums", tuple(Prompt(pid, q, "sums") for pid, (q, _) in SUMS.items()))
        halves = {f"sums:{h}": (lambda log=None, h=h: PromptSet(f"sums:{h}", whole.prompts[h == "test" :: 2]))
                  for h in ("train", "test")}  # fmt: skip
        return {"sums": lambda log=None: whole, **halves}

    def scorer_identity(self) -> dict:
        return {**super().scorer_identity(), "rule": "last integer == the sum"}

    async def score(self, answer: str, prompt_id: str, pool) -> Outcome:
        found = _NUMBER.findall(answer)
        if not found:
            return Outcome("no_code", "", 0.0, "no number in the answer")
        ok = int(found[-1]) == SUMS[prompt_id][1]
        return Outcome("passed" if ok else "failed", self.scored_hash(answer, prompt_id), 0.0, found[-1])

    def scored_hash(self, answer: str, prompt_id: str) -> str:
        SUMS[prompt_id]  # a KeyError for a prompt that is not one of these sums
        found = _NUMBER.findall(answer)
        return hashlib.sha256(f"{prompt_id}={found[-1]}".encode()).hexdigest() if found else ""


@dataclass
class UnsureModel(ScriptedModel):
    """A scripted model whose confidence in an answer is its own (`confidence`: logit of the greedy token)."""

    confidence: dict[str, float] = field(default_factory=dict)

    def logprobs(self, context: list[int]) -> list[float]:
        lp = ScriptedModel.logprobs(self, context)
        text = self.decode(context, skip_special=False)
        logit = next((c for q, c in self.confidence.items() if q in text), 9.0)
        best = max(range(len(lp)), key=lp.__getitem__)
        logits = [0.0] * len(lp)
        logits[best] = logit
        z = math.log(sum(math.exp(x) for x in logits))
        return [x - z for x in logits]


@pytest.fixture
def sums(monkeypatch):
    """Sums registered for one test (the registry is restored after it)."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    register(Sums)
    return get("sums")


@pytest.fixture
async def servers():
    right = {q: f"The sum is {s}." for q, s in SUMS.values()}
    weak_script = {q: right[q] if pid in RIGHT else f"It is {s + 1 + i % 3}."
                   for i, (pid, (q, s)) in enumerate(SUMS.items())}  # fmt: skip
    confidence = {SUMS[pid][0]: c for pid, c in CONFIDENCE.items()}
    weak = await FakeServer(UnsureModel(name="weak", seed=1, script=weak_script, confidence=confidence)).start()
    strong = await FakeServer(ScriptedModel(name="strong", seed=2, reverse=True, script=right)).start()
    yield {"weak": weak, "strong": strong, "judge": strong}
    for s in (weak, strong):
        await s.stop()


def make_setup(servers) -> Setup:
    return Setup(*(ModelClient(Endpoint(r, (servers[r].url,), r), FAST) for r in ("weak", "strong", "judge")))


def settings_for(bench) -> EvalSettings:
    return EvalSettings(bench.engine_settings(), n_boot=200, benchmark=bench.name)


def requests(servers) -> int:
    return sum(sum(s.hits.values()) for s in (servers["weak"], servers["strong"]))


# ---------------------------------------------------------------- early stopping in an evaluation


@pytest.mark.usefixtures("records_dir")
async def test_a_hopeless_candidate_is_stopped_recorded_and_never_certified(sums, servers):
    prompts, settings, rule = sums.sets()["sums"](), settings_for(sums), StopRule(0.98)
    assert rule.schedule(N) == (10, 12, 18)
    async with make_setup(servers) as setup:
        never = await evaluate("never", prompts, setup, settings, progress=False, stop=rule)
        always = await evaluate("always", prompts, setup, settings, progress=False, stop=rule)
    # never-defer is the weak model: recovery 0, stopped at the first look, on the first 10 prompts of the rule's order
    s = never.stopped
    assert isinstance(s, Stopped) and (s.look, s.n, s.of) == (1, 10, N) and s.recovery == 0.0 and s.upper < 0.98
    first = {prompts.ids[i] for i in look_order(prompts.ids)[:10]}
    gens = [e for e in read_record("evaluations", never.id).events if e["type"] == "generation"]
    assert {e["prompt_id"] for e in gens} == first and len(gens) == 10
    assert never.errors == [] and not never.complete and never.summary.n == 10
    assert never.canonical and never.verified  # all the sums, their models: only the stop keeps it off the board
    assert not never.certified and never.reasons()[0].startswith("stopped early (10 of 24 prompts run): look 1")
    assert never.stop_problem() is None and never.to_json()["stopped"]["n"] == 10
    # cdw verify: a stopped record holds only the prompts it ran, and says where and why it stopped
    r = CliRunner().invoke(main, ["verify", never.id, "--json"])
    out = json.loads(r.stdout)
    assert r.exit_code == 0 and out["stopped"]["n"] == 10 and out["stop_problem"] is None
    assert out["coverage"]["complete"] is False and out["verified"] is True
    text = CliRunner().invoke(main, ["verify", never.id]).stdout
    assert "stopped early after 10 of 24 prompts" in text and "the stop follows from its results" in text
    # always-defer is the strong model: never stopped, run in full, and certified
    assert always.stopped is None and always.complete and always.summary.n == N and always.certified
    # shown as stopped in the frames and on the leaderboard
    rows = {r["policy"]: r for r in evaluations_frame([never, always]).to_dicts()}
    assert (rows["never"]["stopped"], rows["never"]["stopped_at"]) == (True, 10)
    assert (rows["always"]["stopped"], rows["always"]["stopped_at"]) == (False, None)
    board = build_leaderboard([never, always]).for_benchmark("sums")
    assert [e.policy for e in board.stopped] == ["never"] and board.stopped[0].status == STOPPED
    assert [e.policy for e in board.certified] == ["always"]
    assert "stopped early" in board.stopped[0].note and board.to_json()["stopped"][0]["policy"] == "never"
    from workspace.notebook.html import leaderboard_html

    assert "Stopped early" in leaderboard_html(build_leaderboard([never, always]), "sums")

    # A stopped line is taken again on the record's results: the strong model's answers on the first 10 prompts and
    # a line claiming they cannot reach 0.98 is reported, and never certified.
    keep = {prompts.ids[i] for i in look_order(prompts.ids)[:10]}
    examples = tuple(e if e.prompt_id in keep else dataclasses.replace(e, candidate=None, test=None)
                     for e in always.examples)  # fmt: skip
    forged = Stopped(look=1, n=10, of=N, alpha=0.02, recovery=0.1, upper=0.5, target=0.98,
                     rule=StopRule(0.98).to_json(), reason="made up")  # fmt: skip
    ev = dataclasses.replace(always, examples=examples, stops=(forged,))
    assert ev.stopped == forged and not ev.certified
    assert "does not follow from its results" in ev.stop_problem()
    assert any("does not follow" in r for r in ev.reasons())


@pytest.mark.slow  # the page inlines Vega: seconds to render
@pytest.mark.usefixtures("records_dir")
async def test_the_results_page_lists_a_stopped_evaluation_apart(sums, servers):
    from workspace.site import render_site

    async with make_setup(servers) as setup:
        never = await evaluate("never", sums.sets()["sums"](), setup, settings_for(sums), progress=False,
                               stop=StopRule(0.98))  # fmt: skip
    page = render_site(board=build_leaderboard([never]), findings=[])
    assert 'id="board-stopped-sums"' in page and never.id in page and "Stopped early" in page


@pytest.mark.usefixtures("records_dir")
async def test_a_stopped_evaluation_reads_back_with_its_rule_and_goes_on_without_it(sums, servers):
    prompts, settings, rule = sums.sets()["sums"](), settings_for(sums), StopRule(0.98)
    async with make_setup(servers) as setup:
        first = await evaluate("never", prompts, setup, settings, progress=False, stop=rule)
        before = requests(servers)
        again = await evaluate("never", prompts, setup, settings, progress=False, stop=rule)
        assert requests(servers) == before  # read back: no server asked anything
        assert again.stopped == first.stopped
        # A rerun under the same rule after the record was reopened (a second session) adds no second line.
        rec = read_record("evaluations", first.id)
        assert sum(e["type"] == "stopped" for e in rec.events) == 1
        full = await evaluate("never", prompts, setup, settings, progress=False)
    assert full.stopped is None and full.complete and full.summary.n == N and full.errors == []
    assert sum(e["type"] == "stopped" for e in read_record("evaluations", full.id).events) == 1  # history kept
    assert full.certification.recovery == 0.0 and load_evaluation(full.id).complete


async def test_early_stopping_needs_scores():
    from workspace.evaluate import EvaluationError

    with pytest.raises(EvaluationError, match="needs the answers judged"):
        await evaluate("never", PromptSet("x", (Prompt("x/1", "hi"),)), None, None, judge=False, stop=StopRule(0.9))


# ---------------------------------------------------------------- the search


def test_the_criterion_f_weak_among_those_reaching_the_target_then_utility():
    def st(spec, f_weak, recovery, utility, errors=0):
        return Standing(spec, "e", f_weak, recovery, utility, recovery is not None and recovery >= 0.98 and not errors,
                        errors)  # fmt: skip

    got = rank([st("a", 0.9, 0.5, 0.6), st("b", 0.3, 1.0, 0.8), st("c", 0.5, 0.99, 0.79), st("d", 0.8, None, 0.2),
                st("e", 0.7, 1.0, 0.8, errors=1), st("f", 0.95, 0.5, 0.6)], keep=3)  # fmt: skip
    assert [s.rank for s in got] == [4, 2, 1, 5, 6, 3]  # ties in utility: the higher f_weak first
    assert [s.kept for s in got] == [False, True, True, False, False, True]


def test_a_rung_of_a_head_is_named_as_a_head_of_the_whole():
    from workspace.evaluate.search import head

    whole = PromptSet("s", tuple(Prompt(f"s/{i}", f"q{i}") for i in range(10)))
    assert head(whole, 4).name == "s[:4]" and head(whole.head(8), 4).name == "s[:4]"
    assert head(whole.head(8), 4).prompts == whole.prompts[:4] and head(whole.head(8), 8).name == "s[:8]"


def test_a_plan_halves_the_candidates_and_grows_the_subset():
    plan = SearchPlan("humaneval:train", "humaneval:test")
    assert plan.rungs(8, 82) == [(10, 8, 4), (20, 4, 2), (40, 2, 1)]
    assert plan.cost(8, 82, 82) == (8 + 4 + 2 + 1, 80 + 80 + 80 + 82)
    assert plan.rungs(8, 30) == [(10, 8, 4), (20, 4, 2), (30, 2, 1)]  # the rung that reaches the whole split decides
    assert SearchPlan("a", "b", n0=5, eta=3, finalists=2).rungs(9, 100) == [(5, 9, 3), (15, 3, 2)]
    assert plan.rungs(1, 82) == [] and plan.cost(1, 82, 82) == (1, 82)  # one candidate: straight to the final
    for bad in ({"n0": 1}, {"eta": 1}, {"finalists": 0}, {"target": math.nan}, {"eta": 2.5}):
        with pytest.raises(SearchError):
            SearchPlan("a", "b", **bad)


GRID = ["never", "always", "cascade(tau=[0.3, 0.7, 0.99])"]
PLAN = SearchPlan("sums:train", "sums:test", n0=4)


@pytest.mark.slow  # three searches; the two tests below search in the fast tier
@pytest.mark.usefixtures("records_dir")
async def test_search_finds_the_policy_reproducibly_and_resumes(sums, servers):
    settings = settings_for(sums)
    events = []
    async with make_setup(servers) as setup:

        def interrupt(kind, line):  # the first run ends after its first decision
            events.append((kind, line))
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            await search(GRID, PLAN, setup, settings, progress=False, on_event=interrupt)
        rung0 = [c["evaluation"] for c in events[0][1]["candidates"]]
        gens = {i: len([e for e in read_record("evaluations", i).events if e["type"] == "generation"]) for i in rung0}
        result = await search(GRID, PLAN, setup, settings, progress=False)
        before = requests(servers)
        again = await search(GRID, PLAN, setup, settings, progress=False)
        assert requests(servers) == before  # the same search again: every record read back, no server asked
    # Rungs on 4, 8 and all 12 prompts of the search split; the cascade that hands over exactly the wrong answers wins.
    assert [(r.n, r.prompts) for r in result.rungs] == [
        (4, "sums:train[:4]"),
        (8, "sums:train[:8]"),
        (12, "sums:train"),
    ]
    assert result.rungs[0].kept == ["cascade(tau=0.7)", "always", "cascade(tau=0.99)"]
    assert result.rungs[1].kept == ["cascade(tau=0.7)", "always"] and result.rungs[2].kept == ["cascade(tau=0.7)"]
    assert result.choice == "cascade(tau=0.7)" and result.chosen.prompts == "sums:test"
    assert result.chosen.complete and result.chosen.certification.recovery == 1.0 and result.chosen.summary.f_weak > 0
    assert again.to_json() == {**result.to_json(), "final": again.to_json()["final"]}
    # The interrupted first rung was resumed, not redone: its evaluations hold the generations they held.
    assert {i: len([e for e in read_record("evaluations", i).events if e["type"] == "generation"])
            for i in rung0} == gens  # fmt: skip
    # Everything it ran is an ordinary evaluation record; its own record holds each decision once, re-derivable.
    for r in result.rungs:
        assert all(load_evaluation(s.evaluation).prompts == r.prompts for s in r.standings)
    rec = read_record("searches", result.id)
    assert [e["type"] for e in rec.events] == ["rung", "rung", "rung", "final"]
    assert rec.header["criterion"] == CRITERION and rec.header["plan"]["target"] == 0.98
    assert rederive(result.id) == []
    # A decision edited in the record no longer follows from the evaluations it names.
    lines = rec.path.read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if '"type": "rung"' in line)
    lines[i] = lines[i].replace('"rank": 1,', '"rank": 9,', 1)
    rec.path.write_text("\n".join(lines) + "\n")
    assert any("cascade(tau=0.7) was ranked 9" in p for p in rederive(result.id))


@pytest.mark.usefixtures("records_dir")
async def test_a_search_refuses_overlapping_splits_and_a_repeated_point(sums, servers):
    async with make_setup(servers) as setup:
        with pytest.raises(SearchError, match="held out"):
            await search(GRID, SearchPlan("sums:train", "sums"), setup, settings_for(sums), progress=False)
        with pytest.raises(SearchError, match="twice"):
            await search(["never", "never"], PLAN, setup, settings_for(sums), progress=False)


@pytest.mark.usefixtures("records_dir")
async def test_baselines_of_a_grown_subset_copy_what_a_verified_record_holds(sums, servers, tmp_path, monkeypatch):
    from workspace.evaluate import ensure_baselines
    from workspace.records.verify import check_baselines

    train, settings = sums.sets()["sums:train"](), settings_for(sums)

    def copied(b) -> int:
        return sum(e["n"] for e in read_record("baselines", b.id).events if e.get("phase") == "copied")

    async with make_setup(servers) as setup:
        small = await ensure_baselines(train.head(4), setup, settings, progress=False)
        chats = servers["strong"].hits.get("/v1/chat/completions", 0)
        grown = await ensure_baselines(train.head(8), setup, settings, progress=False)
        # 4 references asked for, 4 copied with their weak answers and tests
        assert servers["strong"].hits.get("/v1/chat/completions", 0) - chats == 4 and copied(grown) == 4
        assert grown.complete and check_baselines(grown.id).verified  # the copies verify like any event
        assert [e.reference for e in grown.examples[:4]] == [e.reference for e in small.examples]
        assert [e.weak_test.status for e in grown.examples[:4]] == [e.weak_test.status for e in small.examples]
        # A record signed by a key the group does not trust is never a source (a copy would launder it).
        monkeypatch.setenv("CDW_RECORDS_DIR", str(tmp_path / "records-untrusted"))
        await ensure_baselines(train.head(4), setup, settings, progress=False)
        (tmp_path / "none.txt").write_text("")
        monkeypatch.setenv("CDW_TRUSTED_KEYS", str(tmp_path / "none.txt"))
        again = await ensure_baselines(train.head(8), setup, settings, progress=False)
    assert copied(again) == 0 and again.complete
