"""Each baseline family defers where it should on scripted logprobs; specs parse, sweep and fail clearly."""

from __future__ import annotations

import math
import shutil

import pytest

from workspace.policies import Action, PolicyError, SpanRule, TokenSignal, as_decision, expand_spec, load_policy


def sig(*probs: float, position: int = 10, chosen: float | None = None) -> TokenSignal:
    """A weak token whose top-k probabilities are `probs` (the chosen token is the first unless given)."""
    top = tuple(math.log(p) for p in probs)
    lp = math.log(chosen) if chosen is not None else top[0]
    return TokenSignal(1, "x", lp, top, position, "", position)


def fires(policy, *signals: TokenSignal) -> list[bool]:
    p = load_policy(policy).fresh() if isinstance(policy, str) else policy
    return [as_decision(p.decide(s)).action is not Action.CONTINUE for s in signals]


CONFIDENT, TORN, FLAT = sig(0.9, 0.05), sig(0.45, 0.44), sig(0.2, 0.2, 0.2, 0.2)


def test_never_and_always():
    assert fires("never", CONFIDENT, TORN, FLAT) == [False] * 3
    assert fires("always", CONFIDENT, TORN, FLAT) == [True] * 3


def test_random_rate_and_reproducibility():
    p = load_policy("random(rate=0.3, seed=7)")
    a, b = fires(p.fresh(), *[CONFIDENT] * 2000), fires(p.fresh(), *[CONFIDENT] * 2000)
    assert a == b and 0.26 < sum(a) / 2000 < 0.34


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("top1(tau=0.5)", [False, True, True]),
        ("margin(tau=0.1)", [False, True, True]),
        ("entropy(tau=1.0)", [False, False, True]),  # TORN: ~0.9 nats; FLAT: ~1.6 nats with the 0.2 leftover
        ("surprisal(tau=1.0)", [False, False, True]),  # -log 0.45 = 0.80, -log 0.2 = 1.61
    ],
)
def test_threshold_gates(spec, expected):
    assert fires(spec, CONFIDENT, TORN, FLAT) == expected


def test_entropy_counts_the_leftover_mass_as_one_bucket():
    p = load_policy("entropy(tau=0)")
    v = as_decision(p.decide(sig(0.5, 0.25))).score
    assert v == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))


def test_surprisal_uses_the_chosen_token_not_the_top():
    assert fires("surprisal(tau=1.0)", sig(0.9, 0.05, chosen=0.05)) == [True]


def test_hysteresis_needs_k_in_a_row_and_resets_at_handoff():
    p = load_policy("hysteresis(margin(tau=0.1), k=2)").fresh()
    assert fires(p, TORN, CONFIDENT, TORN, TORN) == [False, False, False, True]
    p.on_handoff("strong text")
    assert fires(p, TORN) == [False]


def test_window_fires_on_m_of_last_n():
    p = load_policy("window(margin(tau=0.1), n=4, m=2)").fresh()
    seq = [TORN, CONFIDENT, TORN, CONFIDENT, CONFIDENT, CONFIDENT]
    # two torn tokens within the last four fire; once the first slides out of the window it stops
    assert fires(p, *seq) == [False, False, True, True, False, False]


def test_warmup_hands_over_the_opening_then_stays_quiet():
    p = load_policy("warmup(margin(tau=0.1), k=5, quiet=20)").fresh()
    opening = as_decision(p.decide(sig(0.9, 0.05, position=0)))
    assert opening.fires and opening.span == SpanRule("tokens", 5, 5)  # this handoff's span: the opening
    assert fires(p, sig(0.45, 0.44, position=6), sig(0.45, 0.44, position=25)) == [False, True]
    assert p.span == SpanRule()  # the inner policy's span for every other handoff


@pytest.mark.parametrize("outer", ["hysteresis({}, k=1)", "window({}, n=2, m=1)"])
def test_wrappers_pass_on_the_inner_decisions_span_and_peek(outer):
    # Wrappers read the inner policy's span when used: warmup's opening span survives a wrapper around it.
    p = load_policy(outer.format("warmup(never(), k=5)")).fresh()
    d = as_decision(p.decide(sig(0.9, 0.05, position=0)))
    assert d.fires and d.span == SpanRule("tokens", 5, 5)
    # A lookahead inside a wrapper still peeks (it used to be read as "did not fire").
    p = load_policy(outer.format("lookahead(margin(tau=0.1, span=words:2))")).fresh()
    d = as_decision(p.decide(TORN))
    assert d.action is Action.PEEK and p.span == SpanRule("words", 2)


def test_a_prompt_level_policy_cannot_be_wrapped():
    with pytest.raises(PolicyError, match="cannot be wrapped"):
        load_policy("hysteresis(cascade(tau=0.5), k=2)")


def test_budget_tracks_the_target_rate():
    import random

    rng = random.Random(0)
    signals = [sig(p1, max(1e-6, 1 - p1 - 0.01)) for p1 in (rng.uniform(0.3, 0.99) for _ in range(2000))]
    rate = sum(fires("budget(margin(tau=0), rate=0.1, warm=50)", *signals)) / len(signals)
    assert 0.07 < rate < 0.13


def test_lookahead_peeks_instead_of_deferring():
    p = load_policy("lookahead(margin(tau=0.1))").fresh()
    assert as_decision(p.decide(TORN)).action is Action.PEEK
    assert as_decision(p.decide(CONFIDENT)).action is Action.CONTINUE


def test_cascade_keeps_the_weak_answer_only_when_confident_on_average():
    p = load_policy("cascade(tau=0.7)")
    assert p.prompt_level and p.keep_weak([CONFIDENT, CONFIDENT]) and not p.keep_weak([CONFIDENT, FLAT, FLAT])


@pytest.mark.parametrize(
    "rule, text, end",
    [
        ("sentence", "It works. Then more", 10),
        ("sentence", "No end yet", None),
        ("punct", "first, second", 6),
        ("newline", "line one\nline two", 9),
        ("words:2", "  alpha beta gamma", 13),
        ("words:3", "alpha beta", None),
    ],
)
def test_span_rules_cut_where_they_say(rule, text, end):
    from workspace.policies import parse_span

    assert parse_span(rule).cut(text) == end


def test_specs_describe_hash_and_sweep():
    p = load_policy("hysteresis(margin(tau=0.05, span=words:3), k=2)")
    assert p.describe() == "hysteresis(margin(tau=0.05, span=words:3), k=2)" and p.span.kind == "words"
    assert p.source_hash() == load_policy("hysteresis(margin(tau=0.9), k=1)").source_hash()
    assert p.source_hash() != load_policy("hysteresis(entropy(tau=1), k=1)").source_hash()
    assert expand_spec("margin(tau=[0.02,0.05,0.1])") == ["margin(tau=0.02)", "margin(tau=0.05)", "margin(tau=0.1)"]


@pytest.mark.parametrize(
    "bad, message",
    [
        ("margin(", "cannot parse"),
        ("nope(tau=1)", "unknown policy 'nope'"),
        ("margin(tau=0.1, foo=2)", "unexpected keyword argument 'foo'"),
        ("margin(tau=[1,2])", "a sweep"),
        ("missing/file.py:P", "not found"),
        ("margin(tau=0.1, span=paragraph)", "unknown span rule"),
        ("hysteresis(k=2)", "missing 1 required positional argument"),
    ],
)
def test_malformed_specs_are_clear_errors(bad, message):
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_policy(bad)


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="policy workers need bubblewrap (`bwrap`)")
def test_user_policy_from_a_file(tmp_path):
    f = tmp_path / "mine.py"
    f.write_text(
        "from workspace.policies import Policy\n"
        "class Late(Policy):\n"
        "    def __init__(self, after=3):\n"
        "        self.after = after\n"
        "    def decide(self, s):\n"
        "        return s.position >= self.after\n"
    )
    p = load_policy(f"{f}:Late(after=12)")
    assert p.describe() == f"{f}:Late(after=12)" and len(p.source_hash()) == 16
    assert fires(p, sig(0.9, position=11), sig(0.9, position=12)) == [False, True]
    (tmp_path / "notpolicy.py").write_text("class X:\n    pass\n")
    with pytest.raises(PolicyError, match="not a subclass"):
        load_policy(f"{tmp_path / 'notpolicy.py'}:X")
