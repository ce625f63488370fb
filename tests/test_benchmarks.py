"""The Benchmark protocol (`workspace/benchmarks/base.py`): the registry, the one prompt-set resolver, identities that
records hash (pinned), and a third benchmark defined here, in one class, run end to end through
`workspace.evaluate` and shown by the leaderboard and the frames with no change anywhere else."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import msgspec
import pytest

from tests.fakeserver import FakeServer
from tests.test_evaluate_humaneval import ScriptedModel, make_setup
from workspace import benchmarks
from workspace.benchmarks import (
    DataError,
    Outcome,
    Prompt,
    PromptSet,
    TestedBenchmark,
    base,
    get,
    names,
    register,
    resolve_prompts,
)
from workspace.engine import EngineSettings
from workspace.evaluate import EvalSettings, evaluate, load_evaluation
from workspace.evaluate.results import confirmation_of
from workspace.frames import evaluations_frame, examples_frame
from workspace.leaderboard import build_leaderboard, scoring_sentence, utility_meaning
from workspace.notebook.html import leaderboard_html
from workspace.records.schema import UNNAMED_BENCHMARK, digest, header_of

LEGACY_HEADER = {"type": "header", "kind": "baselines", "models": {"weak": "w", "strong": "s"}, "judge": "j",
                 "prompts": {"name": "canonical", "hash": "h", "ids": []}, "settings": {}}  # fmt: skip

# ---------------------------------------------------------------- a third benchmark, in one class

SUMS = {f"arith/{i}": (f"What is {a} + {b}? Reply with the number.", a + b) for i, (a, b) in
        enumerate([(2, 3), (7, 5), (40, 2), (9, 9), (12, 30)])}  # fmt: skip
_NUMBER = re.compile(r"-?\d+")


def _last_number(answer: str) -> int | None:
    found = _NUMBER.findall(answer)
    return int(found[-1]) if found else None


class Arith(TestedBenchmark):
    """Five sums; an answer passes when the last number in it is the sum."""

    name = "arith"
    description = "Five sums, scored by the last number in the answer"
    max_tokens = 48
    canonical_set = "arith"
    canonical_models = {"test": {"weak": "weak", "strong": "strong"}}
    how_scored = "An answer passes when its last number is the sum; there is no judge."

    def sets(self):
        whole = PromptSet("arith", tuple(Prompt(pid, q, "arith") for pid, (q, _) in SUMS.items()))
        return {"arith": lambda log=None: whole}

    def scorer_identity(self) -> dict:
        return {**super().scorer_identity(), "rule": "last integer == a + b"}

    async def score(self, answer: str, prompt_id: str, pool) -> Outcome:
        got, want = _last_number(answer), SUMS[prompt_id][1]
        if got is None:
            return Outcome("no_code", "", 0.0, "no number in the answer")
        return Outcome("passed" if got == want else "failed", self.scored_hash(answer, prompt_id), 0.0, f"{got}")

    def scored_hash(self, answer: str, prompt_id: str) -> str:
        SUMS[prompt_id]  # a KeyError for a prompt that is not one of these sums
        got = _last_number(answer)
        return "" if got is None else hashlib.sha256(f"{prompt_id}={got}".encode()).hexdigest()


@pytest.fixture
def arith(monkeypatch):
    """Arith registered for one test (the registry is restored after it)."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    register(Arith)
    return get("arith")


@pytest.fixture
async def servers():
    """The strong model answers every sum right; the weak one gets the first two wrong."""
    right = {q: f"The sum is {s}." for q, s in SUMS.values()}
    weak_script = {q: f"It is {s + 1}." if i < 2 else right[q] for i, (q, s) in enumerate(SUMS.values())}
    weak = await FakeServer(ScriptedModel(name="weak", seed=1, script=weak_script)).start()
    strong = await FakeServer(ScriptedModel(name="strong", seed=2, reverse=True, script=right)).start()
    yield {"weak": weak, "strong": strong, "judge": strong}
    for s in (weak, strong):
        await s.stop()


@pytest.mark.usefixtures("records_dir")  # the conftest's: records in a temporary folder
async def test_a_third_benchmark_runs_end_to_end_and_is_shown(arith, servers):
    settings = EvalSettings(arith.engine_settings(), n_boot=200, benchmark="arith")
    prompts = resolve_prompts("arith", None)
    async with make_setup(servers) as setup:
        never = await evaluate("never", prompts, setup, settings, progress=False)
        always = await evaluate("always", prompts, setup, settings, progress=False)
    b = never.baselines
    assert never.errors == [] and always.errors == []
    assert b.u_weak == 3 / 5 and b.u_strong == 1.0  # the weak model gets two sums wrong
    assert [e.weak_test.status for e in b.examples] == ["failed", "failed", "passed", "passed", "passed"]
    assert never.certification.recovery == 0.0 and always.certification.recovery == 1.0
    assert always.summary.f_weak == 0.0 and never.summary.f_weak == 1.0
    # It does not say which part of an answer it scores: all of it, so f_weak_code is f_weak (the default).
    assert (always.summary.f_weak_code, never.summary.f_weak_code) == (0.0, 1.0)
    assert b.header.benchmark == "arith" and b.header.judge.startswith("none")
    assert b.header.settings["tests"] == arith.scorer_identity()
    # The offline checks bind every test line to the answer on record, through the benchmark.
    assert always.check.valid and never.check.valid, (always.check.problems, never.check.problems)
    assert always.canonical  # for arith: all of it, its models, its settings
    assert load_evaluation(always.id).certification.recovery == 1.0  # read back, recomputed

    board = build_leaderboard([never, always])
    assert "arith" in board.benchmarks
    mine = board.for_benchmark("arith")
    assert {e.evaluation for e in mine.evaluations} == {never.id, always.id} and len(mine.baselines) == 2
    assert {e.evaluation: e.utility for e in mine.evaluations} == {never.id: 3 / 5, always.id: 1.0}
    assert utility_meaning("arith").startswith("utility = pass@1")
    assert scoring_sentence("arith").startswith(Arith.description) and Arith.how_scored in scoring_sentence("arith")
    assert "<h3>arith</h3>" in leaderboard_html(board)
    evs = evaluations_frame([never, always])
    assert evs["benchmark"].to_list() == ["arith", "arith"] and evs["recovery"].to_list() == [0.0, 1.0]
    ex = examples_frame([never])
    assert (
        ex["weak_passed"].to_list() == [False, False, True, True, True]
        and ex["passed"].to_list() == ex["weak_passed"].to_list()
    )


@pytest.mark.usefixtures("records_dir")
async def test_a_changed_scorer_is_a_new_baselines_record(arith, servers, monkeypatch):
    settings = EvalSettings(arith.engine_settings(), n_boot=200, benchmark="arith")
    prompts = resolve_prompts(arith, 2)
    async with make_setup(servers) as setup:
        first = await evaluate("never", prompts, setup, settings, progress=False)
        monkeypatch.setattr(Arith, "scorer_identity", lambda self: {"benchmark": "arith", "rule": "changed"})
        second = await evaluate("never", prompts, setup, settings, progress=False)
    assert first.baselines.id != second.baselines.id and first.id != second.id


# ---------------------------------------------------------------- the registry and the resolver


def test_registry_names_gets_and_refuses():
    assert names()[:2] == ("alpaca_eval", "humaneval")
    assert get(None) is get("alpaca_eval") and get(" humaneval ") is get("humaneval")
    with pytest.raises(DataError, match="unknown benchmark 'mbpp'; known: alpaca_eval, humaneval"):
        get("mbpp")
    with pytest.raises(ValueError, match="registered already"):

        class Impostor(Arith):
            name = "humaneval"

        register(Impostor)
    assert get("alpaca_eval").needs_judge and not get("humaneval").needs_judge


def test_a_registered_benchmark_is_known_everywhere_by_name(arith):
    assert names()[-1] == "arith" and benchmarks.get("arith") is arith
    assert [p.id for p in resolve_prompts("arith", 2)] == ["arith/0", "arith/1"]
    assert resolve_prompts("arith", "canonical") == resolve_prompts("arith", "arith") == resolve_prompts("arith", None)
    assert resolve_prompts("arith", "arith:3").name == "arith[:3]"
    for spec in ("confirmation", "nope", "x.jsonl", 0, 6, True):
        with pytest.raises(DataError):
            resolve_prompts("arith", spec)  # files are not arith's prompts; nor are alpaca_eval's sets


def test_resolver_forms(tmp_path):
    he = get("humaneval")
    assert resolve_prompts(he, "train").name == resolve_prompts(he, "humaneval:train").name == "humaneval:train"
    assert resolve_prompts(he, "humaneval:3").ids == ("HumanEval/0", "HumanEval/1", "HumanEval/2")
    f = tmp_path / "mine.jsonl"
    f.write_text(json.dumps({"instruction": "Hi."}) + "\n")
    assert resolve_prompts("alpaca_eval", f).name == resolve_prompts("alpaca_eval", str(f)).name == "mine"
    with pytest.raises(DataError, match="prompts"):
        resolve_prompts("alpaca_eval", str(f), files=False)  # an agent cannot make the server read a file
    with pytest.raises(DataError):
        resolve_prompts("humaneval", str(f))  # problems carry tests no file provides
    ps = PromptSet("given", (Prompt("1", "x"),))
    assert resolve_prompts("humaneval", ps) is ps


# ---------------------------------------------------------------- identities records hash: pinned

# Record ids hash these dicts; a change to any of them re-keys every record of that benchmark.
PINNED = {
    ("alpaca_eval", 256): "4873fd4bb0a4191d",
    ("humaneval", 512): "26da974da606dedd",
}


@pytest.mark.parametrize("name, max_tokens", list(PINNED))
def test_settings_identity_is_pinned(name, max_tokens):
    s = EvalSettings(EngineSettings(max_tokens=max_tokens), benchmark=name)
    assert get(name).engine_settings() == s.engine
    assert digest(s.identity()) == PINNED[name, max_tokens]
    again = EvalSettings.from_identity(s.identity(), name)
    assert again.identity() == s.identity() and again.benchmark == name


def test_a_record_made_before_benchmarks_reads_as_alpaca_eval():
    assert header_of(LEGACY_HEADER).benchmark == UNNAMED_BENCHMARK == "alpaca_eval" and UNNAMED_BENCHMARK in names()
    assert "benchmark" not in header_of(LEGACY_HEADER).identity()  # its id stays what it was
    s = EvalSettings()
    assert EvalSettings.from_identity(s.identity(), None) == s
    with pytest.raises(Exception, match="scoring on record"):
        EvalSettings.from_identity({**s.identity(), "tests": {"benchmark": "humaneval"}}, "humaneval")


def test_confirmation_pools_with_the_benchmarks_own_confirmation_set():
    from tests.test_leaderboard_benchmarks import N, alpaca_eval, humaneval_eval

    prefs = [0.55 + 0.02 * (i % 6) for i in range(N)]
    ev = alpaca_eval("ae", "margin(tau=0.2)", prefs, 20, "2026-01-01T00:00:00+00:00")
    other = alpaca_eval("ae_conf", "margin(tau=0.2)", prefs, 20, "2026-01-02T00:00:00+00:00")

    def on(name: str):
        prompts = msgspec.structs.replace(other.header.prompts, name=name)
        moved = dataclasses.replace(other, header=msgspec.structs.replace(other.header, prompts=prompts))
        moved.__dict__["check"] = other.check  # verified, as the builder made it
        return moved

    assert get("alpaca_eval").confirmation_set == "confirmation" and get("humaneval").confirmation_set is None
    pooled = confirmation_of(ev, [on("confirmation")])
    assert pooled is not None and pooled.n == 2 * N
    assert confirmation_of(ev, [on("canonical")]) is None  # not the confirmation set
    he = humaneval_eval("he", "never", [True] * N, [True] * N, [True] * N, 20, "2026-01-01T00:00:00+00:00")
    assert confirmation_of(he, [he]) is None  # humaneval has no confirmation set
