"""Streamed weak drafts (EngineSettings.stream_drafts): the engine reads the weak answer as it is generated and cuts
the stream at the token where the policy defers. Greedy text does not depend on where drafts are cut, so decodes
are the same as with drafts asked in chunks; what changes is how many weak tokens are generated for nothing."""

from __future__ import annotations

import dataclasses

import pytest

from tests.bytetoy import ByteToy
from tests.fakeserver import FakeServer
from workspace.client import ClientSettings, ModelClient, RequestRejected
from workspace.endpoints import Endpoint
from workspace.engine import EngineSettings, Models, decode_many
from workspace.policies import Policy, SpanRule, TokenSignal

FAST = ClientSettings(attempts=2, backoff_initial=0.01, backoff_max=0.02, request_timeout=20)
STREAMED = EngineSettings(max_tokens=90, max_deferrals=400)
CHUNKED = dataclasses.replace(STREAMED, stream_drafts=False)
INSTRUCTIONS = [f"Explain item {i} in a few words, café style." for i in range(4)]
POLICIES = ["never", "margin(tau=0.4, span=sentence)", "margin(tau=1.0, span=newline)",
            pytest.param("random(rate=0.3, seed=3, span=tokens:1)", marks=pytest.mark.slow),
            pytest.param("lookahead(margin(tau=0.4, span=words:2))", marks=pytest.mark.slow)]  # fmt: skip


@pytest.fixture(params=["empty", "replace"])
async def bpe(request):
    """Byte-level toys with split characters, reported both ways vLLM has reported them."""
    ws = await FakeServer(ByteToy("weak", seed=11, split_text=request.param)).start()
    ss = await FakeServer(ByteToy("strong", seed=12, split_text=request.param, alt_eos=True)).start()
    m = Models(ModelClient(Endpoint("weak", (ws.url,), "weak"), FAST),
               ModelClient(Endpoint("strong", (ss.url,), "strong"), FAST))  # fmt: skip
    yield ws, m
    await m.close()
    await ws.stop()
    await ss.stop()


def drafted(d) -> int:
    return sum(c.tokens for c in d.calls if c.role == "weak" and c.kind == "draft")


def kept(d) -> int:
    return sum(s.tokens for s in d.segments if s.author == "weak")


@pytest.mark.parametrize("policy", POLICIES)
async def test_streamed_drafts_write_what_chunked_drafts_write(bpe, policy):
    _, m = bpe
    streamed = await decode_many(INSTRUCTIONS, policy, m, STREAMED, progress=False)
    chunked = await decode_many(INSTRUCTIONS, policy, m, CHUNKED, progress=False)
    for a, b in zip(streamed, chunked, strict=True):
        assert a.error is None and b.error is None, (a.error, b.error)
        assert [(s.author, s.text, s.tokens) for s in a.segments] == [(s.author, s.text, s.tokens) for s in b.segments]
    assert sum(map(drafted, streamed)) <= sum(map(drafted, chunked))


async def test_a_stream_is_read_up_to_the_deferral_and_no_further(bpe):
    """Each stream is cut at the token the policy defers at: the weak tokens read are those kept, one per handoff
    (the token it deferred at) and the pieces of a character the handoff moved back over; the server stops
    sending once the client has gone."""
    ws, m = bpe
    s = dataclasses.replace(STREAMED, max_tokens=40)
    ds = await decode_many(INSTRUCTIONS[:1], "margin(tau=1.0, span=words:1)", m, s, progress=False)
    assert all(d.error is None for d in ds) and sum(d.num_deferrals for d in ds) >= 10
    for d in ds:
        assert kept(d) + d.num_deferrals <= drafted(d) <= kept(d) + 3 * d.num_deferrals  # (" 中" is 3 tokens)
        streams = sum(1 for c in d.calls if c.kind == "draft")  # one a weak run (the last may be a span's)
        assert streams in (d.num_deferrals, d.num_deferrals + 1)
    read = sum(map(drafted, ds))
    assert ws.streamed <= read + 4 * sum(d.num_deferrals for d in ds)  # (what was in flight when a stream closed)
    chunked = await decode_many(INSTRUCTIONS[:1], "margin(tau=1.0, span=words:1)", m,
                                dataclasses.replace(s, stream_drafts=False), progress=False)  # fmt: skip
    assert read * 2 < sum(map(drafted, chunked))  # chunked drafts: 8 tokens after each handoff


class Positions(Policy):
    """Defers every fifth token it is shown, and keeps each token it was shown (its position and the text before)."""

    top_k = 1

    def __init__(self):
        self.span = SpanRule("words", 2)
        self.seen: list[tuple[int, str]] = []

    def fresh(self) -> Positions:
        p = Positions()
        SEEN.append(p.seen)
        return p

    def decide(self, s: TokenSignal) -> bool:
        self.seen.append((s.position, s.text_so_far))
        return len(self.seen) % 5 == 0


SEEN: list[list[tuple[int, str]]] = []


@pytest.mark.parametrize("settings", [STREAMED, CHUNKED], ids=["streamed", "chunked"])
async def test_the_policy_sees_each_weak_token_once(bpe, settings):
    """Also when a chunked draft ends inside a character and is drawn again from the character's start."""
    _, m = bpe
    SEEN.clear()
    ds = await decode_many(INSTRUCTIONS[:2], Positions(), m,
                           dataclasses.replace(settings, first_chunk=3, chunk_tokens=5), progress=False)  # fmt: skip
    assert all(d.error is None for d in ds) and all(d.num_deferrals for d in ds)
    assert len(SEEN) == 2
    for seen in SEEN:
        assert len(seen) == len(set(seen)), seen


async def test_a_stream_the_server_refuses_is_asked_again_or_is_a_clear_error(bpe):
    """A 5xx (or a dropped connection) before any token: the draft is asked again as a plain request, with its
    retries; a 4xx is the request's own fault: RequestRejected."""
    ws, m = bpe
    ids = await m.weak.tokenize(messages=[{"role": "user", "content": INSTRUCTIONS[0]}], add_generation_prompt=True)

    async def never_stop(out) -> bool:
        return False

    want = await m.weak.complete_until(ids, max_tokens=20, logprobs=2, until=never_stop)
    for fault in ("statuses", "drop"):
        setattr(ws.faults, fault, [503] if fault == "statuses" else 1)
        before = len(ws.requests)
        got = await m.weak.complete_until(ids, max_tokens=20, logprobs=2, until=never_stop)
        assert got == want
        asked = [r.get("stream", False) for r in ws.requests[before:] if r["path"] == "/v1/completions"]
        assert asked[-1] is False  # (the refused stream is not in `requests` when its connection was dropped)
    ws.faults.statuses = [400]
    with pytest.raises(RequestRejected, match="400"):
        await m.weak.complete_until(ids, max_tokens=20, logprobs=2, until=never_stop)
