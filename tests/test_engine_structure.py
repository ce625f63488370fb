"""The engine tracks the answer's structure for policies and cuts structural spans where their rule says
(workspace/policies/structure.py), on toys that write code (tests/fakeserver.py `ScriptToy`): never and always
stay exact with each new rule, spans longer than one strong request stay one span, every signal's `where` is the
batch tracking of its text, and a policy in the sandboxed worker sees what an in-process one sees."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import textwrap

import pytest

from tests.bytetoy import ByteToy
from tests.fakeserver import STRONG_SCRIPT, WEAK_SCRIPT, FakeServer
from workspace.client import ClientSettings, ModelClient
from workspace.endpoints import Endpoint
from workspace.engine import EngineSettings, Models, decode, decode_many
from workspace.policies import Action, Policy, SpanRule, TokenSignal, Where, load_policy
from workspace.policies.structure import Tracker, structural_cut, track

FAST = ClientSettings(attempts=2, backoff_initial=0.01, backoff_max=0.02, request_timeout=20)
# Strong requests of at most 24 tokens: a structural span longer than that takes several.
SETTINGS = EngineSettings(chunk_tokens=16, top_k=5, max_tokens=600, max_span_tokens=24, max_deferrals=600)
INSTRUCTION = "Write is_prime(n) in Python."
RULES = ["line", "block", "block:2", "body"]


@pytest.fixture
def models(coder_models):
    return coder_models


@pytest.mark.parametrize("rule", RULES)
async def test_never_and_always_stay_exact_with_each_structural_rule(models, rule):
    d = await decode(INSTRUCTION, f"always(span={rule}, max_span=400)", models, SETTINGS)
    assert d.error is None and d.finish_reason == "strong_eos"
    assert d.text == STRONG_SCRIPT and d.f_weak == 0.0
    # One span per handoff though each took several requests: far fewer spans than lines.
    spans = sum(c.kind == "span" for c in d.calls)
    assert d.num_deferrals < STRONG_SCRIPT.count("\n") and spans > d.num_deferrals
    assert max(s.tokens for s in d.segments) > SETTINGS.max_span_tokens


async def test_never_is_the_weak_models_own_answer(models):
    assert (await decode(INSTRUCTION, "never", models, SETTINGS)).text == WEAK_SCRIPT


def strong_boundaries(start: int) -> list[int]:
    """Where the strong toy's tokens end when it continues its script from `start` (its 4-space token)."""
    out, q = [], start
    while q < len(STRONG_SCRIPT):
        q += 4 if STRONG_SCRIPT.startswith("    ", q) else 1
        out.append(q)
    return out


@pytest.mark.parametrize("rule", RULES)
async def test_structural_spans_end_where_their_rule_cuts_healed_to_a_strong_token(models, rule):
    d = await decode(INSTRUCTION, f"margin(tau=0.8, span={rule}, max_span=400)", models, SETTINGS)
    assert d.error is None and d.num_deferrals >= 2
    kind, _, n = rule.partition(":")
    pos, checked = 0, 0
    for seg in d.segments:
        if seg.author == "strong":  # the strong toy continues its script at the answer's length
            c = structural_cut(kind, int(n or 1), Tracker().feed(d.text[:pos]), STRONG_SCRIPT[pos:])
            if c is not None:
                ends = [b - pos for b in strong_boundaries(pos)]
                keep = max((b for b in ends if b <= c), default=ends[0])
                assert seg.text == STRONG_SCRIPT[pos : pos + keep], (pos, seg.text)
                checked += 1
        pos += len(seg.text)
    assert checked >= 2


class Recorder(Policy):
    """Defers inside code at every `every`-th position (0: never); keeps every signal it was shown."""

    top_k = 1

    def __init__(self, every: int = 23):
        self.every = every
        self.span = SpanRule("newline")
        self.seen: list[TokenSignal] = []

    def fresh(self):
        return self  # the test reads what the decode showed it

    def decide(self, s: TokenSignal) -> bool:
        self.seen.append(s)
        return self.every > 0 and s.where.code and s.position % self.every == 0


async def test_every_signal_carries_the_batch_tracking_of_its_text_and_the_instruction(models):
    rec = Recorder(every=0)  # the weak model's own answer (a function with a body), then a mix
    assert (await decode(INSTRUCTION, rec, models, SETTINGS)).text == WEAK_SCRIPT
    mixed = Recorder(every=23)  # with strong spans appended between drafts
    d = await decode(INSTRUCTION, mixed, models, SETTINGS)
    assert d.error is None and d.num_deferrals > 0
    assert {"prose", "fence", "header", "body", "code"} == {s.where.part for s in rec.seen}
    for s in rec.seen + mixed.seen:
        assert s.where == track(s.text_so_far) and s.instruction == INSTRUCTION
    for s in rec.seen:
        if WEAK_SCRIPT.startswith(s.text_so_far + s.text):  # (not the end-of-sequence token: not in the text)
            assert s.after == track(s.text_so_far + s.text)


async def test_signals_track_structure_through_characters_split_across_tokens():
    """Byte-level BPE toys split characters across tokens: each `where` is still the tracking of the text."""
    weak = ByteToy("weak", seed=11, split_text="empty")
    strong = ByteToy("strong", seed=12, split_text="empty", alt_eos=True)
    ws, ss = await FakeServer(weak).start(), await FakeServer(strong).start()
    models = Models(ModelClient(Endpoint("weak", (ws.url,), "weak"), FAST),
                    ModelClient(Endpoint("strong", (ss.url,), "strong"), FAST))  # fmt: skip
    rec = Recorder()
    try:
        await decode_many([f"```python\ndef café_{i}():" for i in range(3)], rec, models,
                          EngineSettings(chunk_tokens=7, top_k=5, max_tokens=120), progress=False)  # fmt: skip
    finally:
        await models.close()
        await ws.stop()
        await ss.stop()
    assert any(not s.text or "\ufffd" in s.text for s in rec.seen)  # some tokens held part of a character
    assert any(ord(c) > 127 for s in rec.seen for c in s.text_so_far)
    assert all(s.where == track(s.text_so_far) for s in rec.seen)


SHAPE = """
import zlib

from workspace.policies import Action, Decision, Policy, Where, parse_span


class Shape(Policy):
    '''Defers on a hash of the structure it is shown; its score is a running checksum of it.'''

    top_k = 1

    def __init__(self, rate=5):
        self.rate = int(rate)
        self.span = parse_span("block", 400)
        self._sum = 0

    def decide(self, s):
        assert isinstance(s.where, Where) and isinstance(s.after, Where)
        seen = (tuple(s.where), tuple(s.after), s.instruction, s.line)
        self._sum = zlib.crc32(repr(seen).encode(), self._sum)
        fire = s.where.code and self._sum % self.rate == 0
        return Decision(Action.DEFER if fire else Action.CONTINUE, self._sum % 1000 / 1000)
"""


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="policy workers need bubblewrap (`bwrap`)")
async def test_a_policy_in_the_sandbox_sees_the_structure_an_in_process_one_sees(models, tmp_path):
    path = tmp_path / "shape.py"
    path.write_text(textwrap.dedent(SHAPE))
    spec = importlib.util.spec_from_file_location("cdw_test_shape", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    instructions = [INSTRUCTION]
    here = await decode_many(instructions, module.Shape(rate=5), models, SETTINGS, progress=False)
    remote = load_policy(f"{path}:Shape(rate=5)")
    there = await decode_many(instructions, remote, models, SETTINGS, progress=False)
    assert all(d.error is None for d in here + there)
    assert sum(d.num_deferrals for d in here) >= 2, here[0].segments
    assert [[(s.author, s.text, s.score) for s in d.segments] for d in here] == [
        [(s.author, s.text, s.score) for s in d.segments] for d in there
    ]
    # Called directly, the worker reads the structure a signal was given (not one tracked from its text: "").
    made = [TokenSignal(1, "x", -0.1, (-0.1,), 3, "", 3, 0, Where(code=True, indent=i), Where(), "task")
            for i in range(40)]  # fmt: skip
    fires = next(s for s in made if module.Shape(rate=5).decide(s).action is Action.DEFER)
    assert remote.decide(fires).score == module.Shape(rate=5).decide(fires).score
