"""The pairwise judge against an in-test judge server: both orders, renormalised labels, errors never 0.5."""

from __future__ import annotations

import pytest

from tests.fakeserver import FakeServer, ToyModel, judge_outputs
from workspace.client import ClientSettings, ModelClient
from workspace.endpoints import Endpoint
from workspace.judge import Judge, JudgeSettings

FAST = ClientSettings(attempts=2, backoff_initial=0.01, backoff_max=0.02, request_timeout=10)


def biased(prompt: str) -> float:
    """Likes the output containing 'good'; shown first, it gets a +0.1 position bonus."""
    a, b = judge_outputs(prompt)
    base = 0.7 if "good" in a else 0.3 if "good" in b else 0.5
    return base + 0.1


@pytest.fixture
async def judge_server():
    s = await FakeServer(ToyModel(name="judge"), judge=biased).start()
    yield s
    await s.stop()


@pytest.fixture
async def judge(judge_server):
    async with ModelClient(Endpoint("judge", (judge_server.url,), "judge"), FAST) as c:
        j = Judge(c)
        await j.folds_system()  # the one-time probe of the chat template, not counted below
        judge_server.hits.clear()
        judge_server.requests.clear()
        yield j


async def test_both_orders_are_judged_and_position_bias_cancels(judge, judge_server):
    pref = await judge.prefer("Say something.", "a good answer", "a plain answer")
    assert pref.error is None and pref.calls == 2
    # shown first: 0.8 (0.7 + bias); shown second: P(first=reference) = 0.3 + 0.1 = 0.4, so 1 - 0.4 = 0.6
    assert pref.candidate_first == pytest.approx(0.8, abs=1e-9)
    assert pref.reference_first == pytest.approx(0.4, abs=1e-9)
    assert pref.preference == pytest.approx(0.7, abs=1e-9)  # the bias is gone
    assert judge_server.hits["/v1/chat/completions"] == 2
    flipped = await judge.prefer("Say something.", "a plain answer", "a good answer")
    assert flipped.preference == pytest.approx(1 - pref.preference, abs=1e-9)


async def test_labels_are_renormalised_over_the_two_labels(judge):
    # the fake puts 10% of the mass on a third token; renormalising removes it exactly
    p, mass = await judge.p_first("Q", "same quality", "other quality")
    assert p == pytest.approx(0.6, abs=1e-9) and mass == pytest.approx(0.9)


async def test_identical_outputs_are_one_half_without_a_call(judge, judge_server):
    pref = await judge.prefer("Q", "exactly this", "exactly this")
    assert pref.preference == 0.5 and pref.calls == 0 and pref.error is None
    assert judge_server.hits.get("/v1/chat/completions", 0) == 0


async def test_labels_missing_from_the_top_logprobs_is_an_error_not_one_half(judge, judge_server):
    judge_server.judge = lambda prompt: None
    pref = await judge.prefer("Q", "an answer", "another answer")
    assert pref.preference is None
    assert "0.00 of its probability on the labels" in pref.error


async def test_labels_holding_little_probability_are_an_error_and_the_mass_is_recorded(judge, judge_server):
    judge_server.judge_mass = 0.3  # the judge mostly answered something else: its label split means little
    pref = await judge.prefer("Q", "a good answer", "another answer")
    assert pref.preference is None and "0.30 of its probability" in pref.error
    judge_server.judge_mass = 0.7
    pref = await judge.prefer("Q", "a good answer", "another answer")
    assert pref.error is None and pref.label_mass == pytest.approx((0.7, 0.7))


async def test_an_empty_answer_is_an_error_not_a_verdict(judge, judge_server):
    for cand, ref in (("", "a reference"), ("  \n", "a reference"), ("an answer", ""), ("", "")):
        pref = await judge.prefer("Q", cand, ref)
        assert pref.preference is None and "is empty" in pref.error
    assert judge_server.hits.get("/v1/chat/completions", 0) == 0


async def test_a_template_that_refuses_a_system_message_gets_it_in_the_user_turn(judge_server):
    judge_server.refuses_system = True  # as Gemma-2's chat template (the paper preset's judge) does
    async with ModelClient(Endpoint("judge", (judge_server.url,), "judge"), FAST) as c:
        j = Judge(c)
        assert (await j.id()).endswith("#fold")
        pref = await j.prefer("Say something.", "a good answer", "a plain answer")
    assert pref.error is None and pref.preference == pytest.approx(0.7, abs=1e-9)
    sent = [r["messages"] for r in judge_server.requests if r["path"] == "/v1/chat/completions"][-1]
    assert [m["role"] for m in sent] == ["user"] and sent[0]["content"].startswith(JudgeSettings().system)


async def test_preferences_are_bound_to_the_texts_judged(judge):
    from workspace.judge import pair_hash

    pref = await judge.prefer("Q", "a good answer", "another answer")
    assert pref.pair == pair_hash("Q", "a good answer", "another answer") != pair_hash("Q", "a good answer", "x")


async def test_a_failed_judge_call_is_an_error_not_one_half(judge, judge_server):
    judge_server.faults.statuses = [500] * 4  # both calls fail after their 2 attempts
    pref = await judge.prefer("Q", "a good answer", "another answer")
    assert pref.preference is None and "500" in pref.error
    judge_server.faults.garbage = 4
    pref = await judge.prefer("Q", "a good answer", "another answer")
    assert pref.preference is None and pref.error


async def test_the_judge_id_names_the_model_and_the_prompt_settings(judge):
    a = await judge.id()
    b = await Judge(judge.client, JudgeSettings(top_logprobs=5)).id()
    assert a.startswith("judge#") and b.startswith("judge#") and a != b


async def test_outputs_with_braces_and_quotes_reach_the_judge_verbatim(judge, judge_server):
    weird = 'code: {"a": {1}} and {output_2} and """quotes'
    await judge.p_first("Q {instruction}", weird, "plain")  # returns (p, mass)
    sent = judge_server.requests[-1]["messages"][-1]["content"]
    assert weird in sent and "Q {instruction}" in sent
