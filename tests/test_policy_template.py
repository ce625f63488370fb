"""The template policy in policies/template.py: it loads by path, decides as documented, and keeps its promise in
real decodes against in-test servers (at least `min_gap` weak tokens after every strong span)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from workspace.client import ClientSettings, ModelClient
from workspace.endpoints import Endpoint
from workspace.engine import EngineSettings, Models, decode
from workspace.policies import Action, PolicyError, TokenSignal, load_policy

TEMPLATE = Path(__file__).resolve().parent.parent / "policies" / "template.py"
FAST = ClientSettings(attempts=2, backoff_initial=0.01, backoff_max=0.02, request_timeout=10)
SETTINGS = EngineSettings(chunk_tokens=7, top_k=5, max_tokens=120, max_span_tokens=24, max_deferrals=120)
INSTRUCTIONS = [f"Instruction number {i}: write something." for i in range(4)]


# A policy from a file runs in a policy worker, which bubblewrap contains (`make sandbox`).
pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="policy workers need bubblewrap (`bwrap`)")


def spec(args: str = "") -> str:
    return f"{TEMPLATE}:MarginCooldown({args})"


def signal(p1: float, p2: float, position: int, since_handoff: int) -> TokenSignal:
    return TokenSignal(7, "x", math.log(p1), (math.log(p1), math.log(p2)), position, "", since_handoff)


def test_it_loads_by_path_with_its_arguments_in_the_spec(monkeypatch, tmp_path):
    pol = load_policy(spec("tau=0.1, min_gap=3, span=punct"))
    # Records name the file relative to the project however it was typed: one policy, one name.
    assert pol.describe() == "policies/template.py:MarginCooldown(tau=0.1, min_gap=3, span=punct)"
    monkeypatch.chdir(TEMPLATE.parent)
    assert load_policy("template.py:MarginCooldown(tau=0.1, min_gap=3, span=punct)").describe() == pol.describe()
    assert (pol.tau, pol.min_gap, pol.span.kind, pol.top_k) == (0.1, 3, "punct", 2)
    assert len(pol.source_hash()) == 16


@pytest.mark.parametrize("args", ["tau=1.5", "tau=-0.1", "min_gap=-1", "span=paragraph", "nonsense=1"])
def test_bad_arguments_are_policy_errors(args):
    with pytest.raises(PolicyError):
        load_policy(spec(args))


def test_it_defers_on_a_small_margin_except_just_after_a_handoff():
    pol = load_policy(spec("tau=0.1, min_gap=3"))
    decide = lambda *a: pol.decide(signal(*a)).action  # noqa: E731
    assert decide(0.9, 0.05, 0, 0) is Action.CONTINUE  # confident
    assert decide(0.45, 0.40, 0, 0) is Action.DEFER  # hesitant, at the very start (no handoff yet)
    assert decide(0.45, 0.40, 2, 2) is Action.DEFER  # still no handoff: position == since_handoff
    assert decide(0.45, 0.40, 12, 2) is Action.CONTINUE  # 2 weak tokens after a strong span: cooling down
    assert decide(0.45, 0.40, 12, 3) is Action.DEFER  # the gap is over
    d = pol.decide(signal(0.45, 0.40, 12, 3))
    assert d.score == pytest.approx(0.05)  # the margin is recorded at the handoff


@pytest.fixture
async def models(toys):
    m = Models(ModelClient(Endpoint("weak", (toys.weak.url,), "weak"), FAST),
               ModelClient(Endpoint("strong", (toys.strong.url,), "strong"), FAST))  # fmt: skip
    yield m
    await m.close()


async def test_with_no_gap_it_decodes_exactly_like_the_builtin_margin_gate(models):
    for instr in INSTRUCTIONS:
        mine = await decode(instr, load_policy(spec("tau=0.3, min_gap=0, span=words:2")), models, SETTINGS)
        builtin = await decode(instr, "margin(tau=0.3, span=words:2)", models, SETTINGS)
        assert mine.error is None and builtin.error is None
        assert [(s.author, s.text) for s in mine.segments] == [(s.author, s.text) for s in builtin.segments]


@pytest.mark.slow  # decodes through a policy worker; the equality above is the template's fast check
async def test_every_strong_span_is_followed_by_at_least_min_gap_weak_tokens(models):
    checked = 0
    for instr in INSTRUCTIONS:
        d = await decode(instr, load_policy(spec("tau=0.5, min_gap=4, span=words:1")), models, SETTINGS)
        assert d.error is None and d.num_deferrals > 0
        segs = d.segments
        for before, weak, after in zip(segs, segs[1:], segs[2:], strict=False):
            if before.author == "strong" and weak.author == "weak" and after.author == "strong":
                assert weak.weak_tokens[1] - weak.weak_tokens[0] >= 4, (instr, weak)
                checked += 1
    assert checked > 0  # the gate did hand over repeatedly, so the gap was really exercised
