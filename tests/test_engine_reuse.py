"""Exact continuation reuse in the engine (workspace/reuse.py through the client): decodes are identical with and
without it, on the byte-level toys (split characters, both ways vLLM reports them, an integer stop_reason) and on
the character-level pair whose strong tokenizer re-tokenises its own text differently; a second run, or a run
after the models' own answers, asks the servers less; evaluations say how many requests were answered from it."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from tests.bytetoy import ByteToy
from tests.fakeserver import FakeServer, ToyModel, strong_toy, weak_toy
from workspace.cache import CallCache
from workspace.cli import main
from workspace.client import ClientSettings, ModelClient
from workspace.endpoints import Endpoint
from workspace.engine import Call, Decode, EngineSettings, Models, decode_many
from workspace.reuse import ContinuationStore

FAST = ClientSettings(attempts=2, backoff_initial=0.01, backoff_max=0.02, request_timeout=20)
INSTRUCTIONS = [f"Explain item {i} in a few words, café style." for i in range(4)]
SETTINGS = EngineSettings(max_tokens=90, max_deferrals=400)
CHUNKED = EngineSettings(max_tokens=90, max_deferrals=400, stream_drafts=False)  # drafts as plain requests
POLICIES = ["never", "always(span=newline)", "margin(tau=0.4, span=sentence)"]


class Scripted(ToyModel):
    """A strong model that writes SCRIPT one character per token although its tokenizer has a token for "the ": its
    own text re-tokenises to other ids once it holds "the " (as a real model's non-canonical tokens do)."""

    SCRIPT = "One cat sat on the mat.\nThen the dog ran far away. It is the end of it.\nThat is all."

    def __init__(self):
        super().__init__(name="strong", seed=2, reverse=True, extra=("the ",))

    def logprobs(self, context: list[int]) -> list[float]:
        answer = self.decode(context).rsplit("assistant\n", 1)[-1]
        nxt = self.ids[self.SCRIPT[len(answer)]] if len(answer) < len(self.SCRIPT) else self.eos_id
        logits = [5.0 if i == nxt else 0.0 for i in range(len(self.vocab))]
        z = math.log(sum(math.exp(x) for x in logits))
        return [x - z for x in logits]


PAIRS = {
    "bpe-empty": lambda: (ByteToy("weak", seed=11), ByteToy("strong", seed=12, alt_eos=True)),
    "bpe-replace": lambda: (ByteToy("weak", seed=11, split_text="replace"),
                            ByteToy("strong", seed=12, split_text="replace", chat_bytes="true", alt_eos=True)),
    "chars": lambda: (weak_toy(), strong_toy()),  # a cross-tokenizer pair
    "scripted": lambda: (weak_toy(), Scripted()),  # strong text that re-tokenises differently
}  # fmt: skip


# The fast tier: vLLM 0.32's byte-level reporting and re-tokenising strong text; the slow tier adds the other pairs.
FAST_PAIRS = ("bpe-empty", "scripted")


@pytest.fixture(params=[p if p in FAST_PAIRS else pytest.param(p, marks=pytest.mark.slow) for p in PAIRS])
async def pair(request):
    weak, strong = PAIRS[request.param]()
    ws, ss = await FakeServer(weak).start(), await FakeServer(strong).start()
    yield ws, ss
    await ws.stop()
    await ss.stop()


def models(ws, ss, reuse=None, cache=None) -> Models:
    return Models(ModelClient(Endpoint("weak", (ws.url,), ws.model.name), FAST, cache, reuse),
                  ModelClient(Endpoint("strong", (ss.url,), ss.model.name), FAST, cache, reuse))  # fmt: skip


def generated(*servers) -> int:
    return sum(s.generated for s in servers)


def same(a: list[Decode], b: list[Decode]) -> bool:
    return [(d.text, d.segments, d.finish_reason, d.error) for d in a] == [
        (d.text, d.segments, d.finish_reason, d.error) for d in b
    ]


async def own_answers(m: Models, n: int) -> None:
    """The strong and weak models' own answers (as the baselines make them)."""
    for instr in INSTRUCTIONS:
        msgs = [{"role": "user", "content": instr}]
        await m.strong.chat(msgs, max_tokens=n)
        await m.weak.complete(await m.weak.tokenize(messages=msgs, add_generation_prompt=True), max_tokens=n)


@pytest.mark.parametrize("policy", POLICIES)
async def test_decodes_are_identical_with_and_without_reuse_and_a_second_run_asks_less(pair, policy, tmp_path):
    ws, ss = pair
    plain_models = models(ws, ss)
    plain = await decode_many(INSTRUCTIONS, policy, plain_models, SETTINGS, progress=False)
    await plain_models.close()
    assert all(d.error is None for d in plain)
    m = models(ws, ss, ContinuationStore(tmp_path / "k.sqlite"))
    before = generated(ws, ss)
    first = await decode_many(INSTRUCTIONS, policy, m, SETTINGS, progress=False)
    asked_first = generated(ws, ss) - before
    second = await decode_many(INSTRUCTIONS, policy, m, SETTINGS, progress=False)
    asked_second = generated(ws, ss) - before - asked_first
    await m.close()
    assert same(first, plain) and same(second, plain)
    assert asked_second < asked_first
    if getattr(ws.model, "split_text", "") == "empty":  # canonical tokens, pieces that say where characters end
        assert asked_second == 0
    reused = [c for d in second for c in d.calls if c.origin == "reuse"]
    assert reused and all(c.kind in ("draft", "span") for c in reused)


@pytest.mark.parametrize("policy, role", [("never", "weak"), ("always(span=newline)", "strong"),
                                          ("always(span=sentence)", "strong")])  # fmt: skip
async def test_after_the_models_own_answers_the_endpoints_need_no_request_of_that_model(pair, policy, role, tmp_path):
    ws, ss = pair
    plain_models = models(ws, ss)
    plain = await decode_many(INSTRUCTIONS, policy, plain_models, SETTINGS, progress=False)
    await plain_models.close()
    m = models(ws, ss, ContinuationStore(tmp_path / "k.sqlite"))
    await own_answers(m, SETTINGS.max_tokens)
    server = {"weak": ws, "strong": ss}[role]
    before = server.generated
    got = await decode_many(INSTRUCTIONS, policy, m, SETTINGS, progress=False)
    await m.close()
    assert same(got, plain)
    asks = sum(1 for d in got for c in d.calls if c.role == role and c.kind in ("draft", "span"))
    asked = server.generated - before
    assert asks > 0
    if isinstance(server.model, Scripted):  # once the text holds "the ", /tokenize proves it is another context
        assert 0 < asked < asks and m.strong.reused.checks > m.strong.reused.hits
    elif getattr(server.model, "split_text", "") == "replace":  # no answer may end inside a run of U+FFFD pieces
        assert asked <= asks / 4  # (streamed: one draft a decode, so the known answers of 3 in 4 decodes)
    else:
        assert asked == 0


async def test_the_call_cache_and_the_store_are_separate(tmp_path):
    """Drafts as plain requests (a streamed draft is cut where the policy defers, so it answers no request the call
    cache could key: the store alone replays it, below)."""
    ws = await FakeServer(ByteToy("weak", seed=11)).start()
    ss = await FakeServer(ByteToy("strong", seed=12, alt_eos=True)).start()
    try:
        cache = CallCache(tmp_path / "calls.sqlite")
        with_both = models(ws, ss, ContinuationStore(tmp_path / "k.sqlite"), cache)
        a = await decode_many(INSTRUCTIONS, "margin(tau=0.4, span=sentence)", with_both, CHUNKED, progress=False)
        # Without reuse, the same call cache answers every request (reuse asks the server for more than its caller
        # did, but the cache keys on what the caller asked).
        before = generated(ws, ss)
        cache_only = models(ws, ss, None, cache)
        b = await decode_many(INSTRUCTIONS, "margin(tau=0.4, span=sentence)", cache_only, CHUNKED, progress=False)
        assert same(a, b) and generated(ws, ss) == before
        assert {c.origin for d in b for c in d.calls if c.kind in ("draft", "span")} == {"cache"}
        # Without the call cache, the store answers what continues what it knows.
        store_only = models(ws, ss, ContinuationStore(tmp_path / "k.sqlite"))
        c = await decode_many(INSTRUCTIONS, "margin(tau=0.4, span=sentence)", store_only, CHUNKED, progress=False)
        assert same(a, c) and generated(ws, ss) == before
        # Streamed, no request reaches a server either (the store answers the drafts).
        d = await decode_many(INSTRUCTIONS, "margin(tau=0.4, span=sentence)", with_both, SETTINGS, progress=False)
        assert same(a, d) and generated(ws, ss) == before
        assert {c.origin for x in d for c in x.calls if c.kind == "draft"} == {"reuse"}
        for m in (with_both, cache_only, store_only):
            await m.close()
    finally:
        await ws.stop()
        await ss.stop()


async def test_a_caller_gets_what_it_asked_for_whatever_the_store_asked(tmp_path):
    """The store asks for a logprob (weak) or logprobs and ids (strong) the caller did not want: they are not shown."""
    ws = await FakeServer(ByteToy("weak", seed=11)).start()
    ss = await FakeServer(ByteToy("strong", seed=12, alt_eos=True)).start()
    try:
        plain, reuse = models(ws, ss), models(ws, ss, ContinuationStore(tmp_path / "k.sqlite"))
        msgs = [{"role": "user", "content": INSTRUCTIONS[0]}]
        ids = await plain.weak.tokenize(messages=msgs, add_generation_prompt=True)
        for m in (reuse, reuse, plain):  # asked, then answered from the store, then without it
            out = await m.weak.complete(ids, max_tokens=20)
            assert out.tokens == () and out.text and len(out.token_ids) == 20
            chat = await m.strong.chat(msgs, max_tokens=20)
            assert chat.tokens == () and chat.text
        assert reuse.weak.reused.hits == 1 and reuse.strong.reused.hits == 1
        assert ss.requests[0].get("return_token_ids") and "return_token_ids" not in ss.requests[-1]
        await plain.close()
        await reuse.close()
    finally:
        await ws.stop()
        await ss.stop()


def test_an_evaluation_reports_the_requests_answered_from_known_continuations(start_toys, tmp_path):
    toys = start_toys()
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": f"Task {i}: do it."}) + "\n" for i in range(3)))
    flags = [f"--{role}-url={url}" for role, url in toys.urls.items()]

    def run(policy, *more):
        r = CliRunner().invoke(main, ["eval", "--policy", policy, "--prompts", str(prompts), "--max-tokens", "60",
                                      "--no-cache", "--json", *flags, *more], catch_exceptions=False)  # fmt: skip
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    # never-defer makes the weak baseline's requests again: with reuse, every one is a known continuation.
    never = run("never")
    assert never["requests"]["weak"]["reuse"] > 0 and never["requests"]["weak"]["server"] == 0
    assert never["requests"]["reused"] == 1.0
    # always-defer continues the reference: its strong spans are known where the text re-tokenises the same.
    always = run("always(span=newline)")
    assert always["requests"]["strong"]["reuse"] > 0
    off = run("always(span=sentence)", "--no-reuse")
    assert off["requests"]["strong"]["reuse"] == 0 and off["requests"]["weak"]["reuse"] == 0
    assert off["requests"]["strong"]["server"] > 0


def test_records_keep_where_each_request_was_answered():
    d = Decode("i", "never", "x", (), "length", calls=(Call("weak", "draft", 0.1, 3), Call("weak", "draft", 0, 3,
                                                                                         "reuse")))  # fmt: skip
    rec = d.to_record()
    assert rec["calls"] == [["weak", "draft", 0.1, 3], ["weak", "draft", 0, 3, "reuse"]]
    assert Decode.from_record(rec).calls == d.calls


async def test_a_request_near_the_context_length_gets_what_the_server_clips_it_to(tmp_path):
    ws = await FakeServer(ByteToy("weak", seed=11)).start()
    try:
        store = ContinuationStore(tmp_path / "k.sqlite")
        plain = ModelClient(Endpoint("weak", (ws.url,), "weak"), FAST)
        reuse = ModelClient(Endpoint("weak", (ws.url,), "weak"), FAST, reuse=store)
        ids = await plain.tokenize(messages=[{"role": "user", "content": INSTRUCTIONS[1]}], add_generation_prompt=True)
        own = await reuse.complete(ids, max_tokens=60, logprobs=1)
        ws.max_model_len = len(ids) + 40
        for c in (plain, reuse):
            c._limit.clear()  # as a new client would ask
        prefix = ids + list(own.token_ids[:10])
        want = await plain.complete(prefix, max_tokens=60, logprobs=1)
        got = await reuse.complete(prefix, max_tokens=60, logprobs=1)
        assert got.origin == "reuse" and got == want and len(got.token_ids) == 30 and got.finish_reason == "length"
        await plain.close()
        await reuse.close()
    finally:
        await ws.stop()
