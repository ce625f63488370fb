"""A tests-scored benchmark end to end against in-test servers whose models write scripted code answers:
baselines with the reference and weak answers tested, candidates tested as they are decoded, pass-rate recovery,
and the offline checks that bind each test line to the answer on record."""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field

import msgspec
import pytest

from tests.fakeserver import FakeServer, ToyModel
from workspace import sandbox
from workspace.benchmarks import humaneval
from workspace.client import ClientSettings, ModelClient
from workspace.endpoints import Endpoint
from workspace.engine import EngineSettings
from workspace.evaluate import EvalSettings, Setup, evaluate, load_evaluation
from workspace.records import schema, verify
from workspace.records.log import read_record

pytestmark = pytest.mark.skipif(sandbox.shutil.which("bwrap") is None, reason="needs bubblewrap (make sandbox)")

FAST = ClientSettings(attempts=2, backoff_initial=0.01, backoff_max=0.02, request_timeout=20)
SETTINGS = EvalSettings(EngineSettings(chunk_tokens=16, top_k=5, max_tokens=1600, max_span_tokens=64),
                        n_boot=200, benchmark="humaneval")  # fmt: skip
N = 4


def wrong_answer(p: humaneval.Problem) -> str:
    return f"Here you go:\n```python\n{p.prompt}    return None\n```\nThis works."


@dataclass
class ScriptedModel(ToyModel):
    """Writes a fixed answer per instruction, one character per token, then ends: greedy and confident."""

    script: dict[str, str] = field(default_factory=dict)

    def logprobs(self, context: list[int]) -> list[float]:
        text = self.decode(context, skip_special=False)
        logits = [0.0] * len(self.vocab)
        answer = next((a for q, a in self.script.items() if q in text), "")
        so_far = text.rsplit("<s>assistant\n", 1)[-1]
        if answer.startswith(so_far) and len(so_far) < len(answer):
            logits[self.ids[answer[len(so_far)]]] = 9.0
        else:
            logits[self.eos_id] = 9.0
        z = math.log(sum(math.exp(x) for x in logits))
        return [x - z for x in logits]


@pytest.fixture
async def servers():
    probs = humaneval.problems()[:N]
    # The strong model writes HumanEval's own solutions; the weak one gets the first two problems wrong.
    strong_script = {humaneval.instruction(p): humaneval.canonical_answer(p) + "\nDone." for p in probs}
    weak_script = {
        humaneval.instruction(p): wrong_answer(p) if i < 2 else humaneval.canonical_answer(p)
        for i, p in enumerate(probs)
    }
    weak = await FakeServer(ScriptedModel(name="weak", seed=1, script=weak_script)).start()
    strong = await FakeServer(ScriptedModel(name="strong", seed=2, reverse=True, script=strong_script)).start()
    yield {"weak": weak, "strong": strong, "judge": strong}
    for s in (weak, strong):
        await s.stop()


def make_setup(servers) -> Setup:
    def client(role):
        return ModelClient(Endpoint(role, (servers[role].url,), role), FAST)

    return Setup(client("weak"), client("strong"), client("judge"))


async def run(servers, policy):
    prompts = humaneval.prompt_set().head(N)
    async with make_setup(servers) as setup:
        return await evaluate(policy, prompts, setup, SETTINGS, progress=False)


@pytest.mark.slow  # two evaluations, sandboxed tests; test_humaneval and test_harness score answers in fast
async def test_pass_rates_recovery_and_checks(servers, records_dir):
    never = await run(servers, "never")
    assert never.errors == []
    b = never.baselines
    assert b.u_weak == 0.5 and b.u_strong == 1.0  # the weak model fails problems 0 and 1
    assert [e.weak_test.status for e in b.examples] == ["failed", "failed", "passed", "passed"]
    assert all(e.reference_test.passed for e in b.examples)
    assert never.certification.recovery == 0.0 and never.summary.f_weak == 1.0 and never.summary.f_weak_code == 1.0
    # The weak answers' programs are mostly the prompt, copied: problems 0 and 1 add only `return None`.
    assert 0.5 < never.summary.copy_share < 1.0
    # never-defer is the weak baseline itself: its tests are reused, not run again
    rec = read_record("evaluations", never.id)
    assert [e for e in rec.events if e.get("type") == "test"] and never.timings.get("tests", 0) == 0

    always = await run(servers, "always")
    assert always.errors == []
    c = always.certification
    assert c.utility == c.u_strong == 1.0 and c.recovery == 1.0 and always.summary.f_weak == 0.0
    assert always.summary.f_weak_code == 0.0 and always.summary.copy_share is None  # no weak code to copy
    counts = [(e.scored.weak, e.scored.strong) for e in always.examples]
    programs = [humaneval.extract(e.candidate.text, humaneval.problem(e.prompt_id)) for e in always.examples]
    # every character of each program is the strong model's, except the blank line put between its statements
    joins = [2 * (len(ast.parse(p).body) - 1) for p in programs]
    assert counts == [(0, len(p) - j) for p, j in zip(programs, joins, strict=True)]
    assert always.check.valid, always.check.problems
    assert always.header.judge.startswith("none") and "judge" not in always.header.models
    assert always.to_json()["benchmark"] == "humaneval"
    assert any("not all 164 humaneval problems" in r for r in always.reasons())

    # Read back from disk: the same numbers, recomputed
    again = load_evaluation(always.id)
    assert again.certification.recovery == 1.0 and again.baselines.u_weak == 0.5


@pytest.mark.slow  # a whole evaluation with sandboxed tests, for one test line to forge
async def test_a_test_line_must_be_about_the_answer_on_record(servers, records_dir):
    ev = await run(servers, "never")
    test = next(e for e in read_record("evaluations", ev.id).events if e.get("type") == "test")
    line = msgspec.convert(test, schema.Test)
    pid = line.prompt_id
    p = humaneval.problem(pid)
    text = next(e.candidate.text for e in ev.examples if e.prompt_id == pid)
    assert verify._test_problems("t", line, pid, text, "humaneval") == []
    # The same result, claimed for another answer: refused.
    other = wrong_answer(p) if text != wrong_answer(p) else humaneval.canonical_answer(p)
    assert any("not about the answer" in m for m in verify._test_problems("t", line, pid, other, "humaneval"))
    # "no code" claimed for an answer with code: refused.
    fake = msgspec.structs.replace(line, status="no_code", program="")
    assert verify._test_problems("t", fake, pid, humaneval.canonical_answer(p), "humaneval")
