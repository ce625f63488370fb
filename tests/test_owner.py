"""Policies over the answer's structure (workspace/policies/families.py `owner`, `copyguard`): who writes which
part of a code answer, and no handoff while the weak model copies the prompt. On hand-made signals (each
token's `where` tracked as the engine tracks it), then end to end on toys that write code."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest

from tests.fakeserver import WEAK_SCRIPT
from workspace.engine import EngineSettings, decode
from workspace.policies import Action, Decision, Policy, PolicyError, TokenSignal, load_policy
from workspace.policies.structure import Tracker, track

PROMPT = 'def is_prime(n: int) -> bool:\n    """Return True if n is prime: "7" -> True."""\n'
INSTRUCTION = f"Complete the function.\n\n```python\n{PROMPT}```"
# A weak answer that copies the prompt's header, then writes a body and demo code.
ANSWER = (
    "```python\n"
    + PROMPT
    + "    for k in range(2, n):\n        if n % k == 0:\n            return False\n"
    + ("    return n > 1\n\n\nprint(is_prime(7))\n```\nIt checks divisors.\n")
)
_TOKENS = re.compile(r"\n|[ \t]+(?=\S)|[ \t]+$| ?\w+| ?[^\w\s]+|\s", re.M)


def signals(text: str, margin: float = 0.5) -> list[TokenSignal]:
    """The signals a policy would see for `text` drafted token by token (words with their leading space, runs of
    indentation, newlines alone), every token with the same margin p1 - p2."""
    out, pos, t = [], 0, Tracker()
    p1, p2 = (1 + margin) / 2, (1 - margin) / 2
    for i, m in enumerate(_TOKENS.finditer(text)):
        assert m.start() == pos
        where = t.where()
        after = t.feed(m.group()).where()
        out.append(TokenSignal(i, m.group(), math.log(p1), (math.log(p1), math.log(p2)), i, text[:pos], i, 0, where,
                               after, INSTRUCTION))  # fmt: skip
        pos = m.end()
    assert pos == len(text)
    return out


def handoffs(policy: Policy, sigs: list[TokenSignal], strong: dict[int, str] | None = None) -> list[tuple]:
    """(the text before each token the policy defers at, the decision's span) — each handoff's span skipping the
    tokens it would cover (`strong`: handoff index → how many tokens the strong span takes; default 1)."""
    pol, out, i = policy.fresh(), [], 0
    while i < len(sigs):
        d = pol.decide(sigs[i])
        d = d if isinstance(d, Decision) else Decision(Action.DEFER if d else Action.CONTINUE)
        if d.fires:
            out.append((sigs[i].text_so_far, d.span.describe() if d.span else None))
            skip = (strong or {}).get(len(out) - 1, 1)
            pol.on_handoff("".join(s.text for s in sigs[i : i + skip]))
            i += skip
            continue
        i += 1
    return out


class Every(Policy):
    """Fires at every token (a gate that always wants the strong model), its span `newline`."""

    def __init__(self):
        from workspace.policies import parse_span

        self.span = parse_span("newline")

    def decide(self, s: TokenSignal) -> Decision:
        return Decision(Action.DEFER, 0.25)


def test_owner_body_strong_hands_over_each_body_at_its_first_statement():
    sigs = signals(ANSWER)
    found = handoffs(load_policy("owner(body=strong)"), sigs, strong={0: 999})
    assert found == [(ANSWER[: ANSWER.index("for k")], "body")]  # after the indentation, before `for`


def test_owner_reads_a_docstrings_closing_quotes_on_their_own_line_as_the_header():
    text = '```python\ndef f(n):\n    """Doc.\n\n    More.\n    """\n    return n\n```\n'
    found = handoffs(load_policy("owner(body=strong)"), signals(text), strong={0: 999})
    assert found == [(text[: text.index("return")], "body")]


def test_owner_keeps_a_body_whose_span_ran_out_and_lets_go_when_the_function_ends():
    sigs = signals(ANSWER)
    # The first body span covers 3 tokens only (" for", " k", " in"): the weak model finishes the line, and at the
    # next line in that body the strong model takes it back; after the function, nothing more.
    found = handoffs(load_policy("owner(body=strong)"), sigs, strong={0: 3, 1: 12, 2: 999})
    before = [t for t, _ in found]
    assert len(before) == 3 and before[1] == ANSWER[: ANSWER.index("if n %")]
    gate = handoffs(load_policy("owner(margin(tau=0.9), code=weak)"), sigs, strong={0: 3})
    assert len(gate) > 1 and all(track(t).code and track(t).part in ("body", "header") for t, _ in gate)


def test_owner_never_hands_off_outside_the_code_or_in_the_header_by_default():
    sigs = signals(ANSWER)
    found = handoffs(load_policy("owner(margin(tau=0.9))"), sigs)  # the gate fires at every token
    parts = {track(t).part if not track(t).line_start else "line start" for t, _ in found}
    assert found and all(track(t).code for t, _ in found) and "header" not in parts and "prose" not in parts
    assert {span for _, span in found} == {"body", "sentence"}  # the gate's own span outside a body
    prose = handoffs(load_policy("owner(margin(tau=0.9), prose=gate, header=gate)"), sigs)
    assert any(not track(t).code for t, _ in prose) and any(track(t).part == "header" for t, _ in prose)


def test_owner_a_gate_firing_on_indentation_waits_for_the_lines_first_word():
    sigs = signals(ANSWER)
    at = next(i for i, s in enumerate(sigs) if s.text == "    " and sigs[i + 1].text == "for")
    pol = load_policy("owner(margin(tau=0.1))").fresh()
    for s in sigs[:at]:
        pol.decide(s)
    fires = dataclasses.replace(sigs[at], logprob=math.log(0.5), top=(math.log(0.5), math.log(0.5)))
    assert not pol.decide(fires).fires  # the indentation: which part comes is not known yet
    d = pol.decide(sigs[at + 1])  # `for`: a body line, the gate fired on its indentation
    assert d.fires and d.span.kind == "body"
    pol = load_policy("owner(margin(tau=0.1))").fresh()  # before the docstring, the same gate is dropped: header
    at = next(i for i, s in enumerate(sigs) if s.text == "    " and sigs[i + 1].text == '"""')
    for s in sigs[:at]:
        pol.decide(s)
    assert not pol.decide(dataclasses.replace(sigs[at], logprob=math.log(0.5), top=fires.top)).fires
    assert not pol.decide(sigs[at + 1]).fires


def test_owner_arguments_are_checked():
    with pytest.raises(PolicyError, match="one of weak, gate, strong"):
        load_policy("owner(body=mine)")
    with pytest.raises(PolicyError, match="first argument is a gate policy"):
        load_policy("owner(0.5)")
    with pytest.raises(PolicyError, match="per answer"):
        load_policy("owner(cascade(tau=0.5))")
    assert load_policy("owner(margin(tau=0.1), body=strong)").top_k == 2
    assert load_policy("owner(body=strong, code=weak)").top_k == 1


def test_copyguard_lets_the_weak_model_copy_the_prompts_lines():
    sigs = signals(ANSWER)
    guard = load_policy("copyguard(margin(tau=0.9, span=newline))")
    found = [t for t, _ in handoffs(guard, sigs)]
    copied = {ANSWER.index(line) + k for line in PROMPT.splitlines() for k in range(1, len(line))}
    assert found and not any(len(t) in copied for t in found)  # never inside a line that copies the prompt
    assert ANSWER[: ANSWER.index(" in range")] in found  # `for k` is not in the prompt: the gate may fire
    assert guard.fresh().copying(sigs[[s.text for s in sigs].index("def")])
    assert (
        not load_policy("copyguard(margin(tau=0.9), min_chars=6)")
        .fresh()
        .copying(sigs[[s.text for s in sigs].index("def")])
    )


# ---------------------------------------------------------------- end to end


@pytest.fixture
def models(coder_models):
    return coder_models


SETTINGS = EngineSettings(chunk_tokens=16, top_k=5, max_tokens=600, max_span_tokens=24, max_deferrals=600)


async def test_owner_body_strong_end_to_end_the_weak_header_and_the_strong_body(models):
    d = await decode(INSTRUCTION, "owner(body=strong)", models, SETTINGS)
    assert d.error is None and d.num_deferrals >= 1
    pos = 0
    for seg in d.segments:
        w = track(d.text[:pos])
        if seg.author == "strong":  # each strong span starts inside a function body, after its indentation
            assert w.part == "body" and w.line_start and w.indent > 0 and d.text[:pos].endswith(" ")
        pos += len(seg.text)
    first = next(s for s in d.segments if s.author == "strong")
    assert first.tokens > SETTINGS.max_span_tokens  # one span across several requests
    assert d.text.startswith(WEAK_SCRIPT[: WEAK_SCRIPT.index("    for")])  # the header is the weak model's
