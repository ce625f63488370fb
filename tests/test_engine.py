"""Engine invariants (ARCHITECTURE.md “The engine's invariants”) against in-test servers: a weak and a strong toy
model whose tokenizers
differ (and the strong one has multi-character tokens, so stop strings cut inside tokens)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from workspace import engine
from workspace.client import ClientSettings, ModelClient
from workspace.endpoints import Endpoint
from workspace.engine import EngineSettings, Models, decode, decode_many, pooled_f_weak
from workspace.policies import Policy, TokenSignal

FAST = ClientSettings(attempts=2, backoff_initial=0.01, backoff_max=0.02, request_timeout=10)
SETTINGS = EngineSettings(chunk_tokens=7, top_k=5, max_tokens=80, max_span_tokens=24)
INSTRUCTIONS = [f"Instruction number {i}: write something." for i in range(6)]


@pytest.fixture
def servers(toys):
    """The toy weak and strong servers (a cross-tokenizer pair)."""
    return toys.weak, toys.strong


@pytest.fixture
async def models(servers):
    weak, strong = servers
    m = Models(ModelClient(Endpoint("weak", (weak.url,), "weak"), FAST),
               ModelClient(Endpoint("strong", (strong.url,), "strong"), FAST))  # fmt: skip
    yield m
    await m.close()


async def weak_greedy(model: ModelClient, instruction: str, max_tokens: int) -> str:
    ids = await model.tokenize(messages=[{"role": "user", "content": instruction}], add_generation_prompt=True)
    return (await model.complete(ids, max_tokens=max_tokens)).text


async def strong_greedy(model: ModelClient, instruction: str, max_tokens: int) -> str:
    return (await model.chat([{"role": "user", "content": instruction}], max_tokens=max_tokens)).text


async def test_never_defer_is_the_weak_models_own_greedy_text(models):
    for instr in INSTRUCTIONS:
        d = await decode(instr, "never", models, SETTINGS)
        assert d.error is None
        assert d.text == await weak_greedy(models.weak, instr, SETTINGS.max_tokens)
        assert d.f_weak == 1.0 and d.num_deferrals == 0
        assert len(d.segments) == 1 and d.segments[0].tokens >= SETTINGS.chunk_tokens  # several chunks, one segment


@pytest.mark.parametrize(
    "span",
    ["punct", "tokens:3", *(pytest.param(s, marks=pytest.mark.slow) for s in ("sentence", "newline", "words:2"))],
)
async def test_always_defer_is_the_strong_models_own_greedy_text(models, servers, span):
    s = EngineSettings(chunk_tokens=7, top_k=5, max_tokens=400, max_span_tokens=24, max_deferrals=400)
    healed = 0
    for instr in INSTRUCTIONS:
        d = await decode(instr, f"always(span={span})", models, s)
        assert d.error is None, d.error
        assert d.finish_reason == "strong_eos"
        assert d.text == await strong_greedy(models.strong, instr, 400)
        assert d.f_weak == 0.0 and all(seg.author == "strong" for seg in d.segments)
        healed += sum(seg.text.endswith(("\n\n", ", ", "the ")) for seg in d.segments)
    if span in ("sentence", "newline"):  # ".\n\n" holds the stop string ".\n": spans were healed to the token end
        assert healed > 0


async def test_without_healing_a_stop_string_inside_a_token_drifts(models, servers, monkeypatch):
    """The trap the healing avoids: continuing from text cut inside a token changes the strong text."""
    import workspace.engine as engine
    from workspace.alignment import Alignment

    # Pretend every character is a token boundary: spans then end exactly where the rule cuts, inside tokens.
    monkeypatch.setattr(engine, "align", lambda text, pieces: Alignment(text, tuple(range(len(text) + 1))))
    s = EngineSettings(chunk_tokens=7, top_k=5, max_tokens=400, max_span_tokens=24, max_deferrals=400)
    drifted = 0
    for instr in INSTRUCTIONS:
        d = await decode(instr, "always(span=newline)", models, s)
        drifted += not (await strong_greedy(models.strong, instr, 400)).startswith(d.text)
    assert drifted > 0


async def test_segments_concatenate_and_f_weak_is_a_character_count(models):
    ds = await decode_many(INSTRUCTIONS, "margin(tau=0.15, span=words:3)", models, SETTINGS, progress=False)
    for d in ds:
        assert d.error is None
        assert "".join(s.text for s in d.segments) == d.text
        weak = sum(len(s.text) for s in d.segments if s.author == "weak")
        strong = sum(len(s.text) for s in d.segments if s.author == "strong")
        assert d.f_weak == weak / (weak + strong)
        assert d.num_deferrals == sum(s.author == "strong" for s in d.segments)
        for a, b in zip(d.segments, d.segments[1:], strict=False):
            assert a.weak_tokens[1] == b.weak_tokens[0]  # token ranges tile the weak context
    assert any(d.num_deferrals for d in ds) and any(d.weak_chars for d in ds)  # a real mix
    weak = sum(d.weak_chars for d in ds)
    assert pooled_f_weak(ds) == weak / (weak + sum(d.strong_chars for d in ds))


async def test_the_weak_model_resumes_from_its_own_ids_and_only_strong_text_is_retokenized(models, servers):
    weak, _ = servers
    d = await decode(INSTRUCTIONS[0], "margin(tau=0.15, span=words:2)", models, SETTINGS)
    assert d.num_deferrals > 0
    tokenized = [r["prompt"] for r in weak.requests if r["path"] == "/tokenize" and "prompt" in r]
    strong_texts = [s.text for s in d.segments if s.author == "strong"]
    assert tokenized == strong_texts  # nothing the weak model wrote was ever re-tokenised


@pytest.mark.slow
async def test_hundred_concurrent_decodes_do_not_cross_talk(models):
    instrs = [f"Tell me about item {i}." for i in range(100)]
    policy = "margin(tau=0.15, span=punct)"
    together = await decode_many(instrs, policy, models, SETTINGS, progress=False)
    for i in (0, 37, 99):  # the same instruction alone gives the same result
        alone = await decode(instrs[i], policy, models, SETTINGS)
        assert together[i].text == alone.text and together[i].segments == alone.segments
    assert [d.instruction for d in together] == instrs
    assert len({d.text for d in together}) > 90


class Explodes(Policy):
    def decide(self, s: TokenSignal) -> bool:
        if s.position == 5:
            raise ZeroDivisionError("policy bug")
        return False


async def test_a_policy_that_raises_fails_only_its_instruction(models):
    class Picky(Policy):
        def decide(self, s: TokenSignal) -> bool:
            if s.position == 5 and self.boom:
                raise ZeroDivisionError("policy bug")
            return False

    engine_mod = __import__("workspace.engine", fromlist=["_Engine"])
    eng = engine_mod._Engine(models, SETTINGS)
    ok, bad = Picky(), Picky()
    ok.boom, bad.boom = False, True
    results = await asyncio.gather(eng.run("fine", ok), eng.run("explodes", bad), eng.run("fine too", ok))
    assert results[1].finish_reason == "error" and "ZeroDivisionError: policy bug" in results[1].error
    assert results[0].error is None and results[2].error is None
    ds = await decode_many(INSTRUCTIONS[:2], Explodes(), models, SETTINGS, progress=False)
    assert all("ZeroDivisionError" in d.error for d in ds)


async def test_server_dying_mid_batch_is_a_per_instruction_error(models, toys):
    toys.strong.faults.delay = 0.05
    task = asyncio.create_task(decode_many(INSTRUCTIONS * 3, "always(span=words:1)", models, SETTINGS, progress=False))
    await asyncio.sleep(0.6)
    await toys.stop("strong")
    ds = await task
    failed = [d for d in ds if d.error]
    assert failed, "the strong server's death must show up as errors"
    assert all(d.finish_reason == "error" and "strong" in d.error for d in failed)
    assert all(d.text == "".join(s.text for s in d.segments) for d in ds)  # partial results stay consistent


async def test_empty_strong_span_is_a_clear_error(servers, models):
    weak, strong = servers
    strong.model.empty_spans = True
    ds = await decode_many(INSTRUCTIONS[:3], "always", models, SETTINGS, progress=False)
    assert all(d.finish_reason == "error" and "empty span" in d.error for d in ds)
    strong.model.empty_spans = False
    assert (await decode(INSTRUCTIONS[0], "never", models, SETTINGS)).error is None  # the engine is fine after


async def test_dead_weak_server_is_a_clear_error():
    from tests.test_client import dead_url

    m = Models(ModelClient(Endpoint("weak", (dead_url(),), "w"), FAST),
               ModelClient(Endpoint("strong", (dead_url(),), "s"), FAST))  # fmt: skip
    d = await decode("hi", "never", m, SETTINGS)
    await m.close()
    assert d.finish_reason == "error" and "ServerUnavailable" in d.error and "weak" in d.error


async def test_lookahead_and_cascade_and_agree_run_end_to_end(models):
    specs = ("lookahead(margin(tau=0.15))", "cascade(tau=0.99)", "cascade(tau=0.0)", "margin(tau=0.15, span=agree:2)")
    for spec in specs:
        d = await decode(INSTRUCTIONS[1], spec, models, SETTINGS)
        assert d.error is None, (spec, d.error)
        assert "".join(s.text for s in d.segments) == d.text
    assert (await decode(INSTRUCTIONS[1], "cascade(tau=0.0)", models, SETTINGS)).f_weak == 1.0
    strong_only = await decode(INSTRUCTIONS[1], "cascade(tau=0.99)", models, SETTINGS)
    assert strong_only.f_weak == 0.0 and strong_only.text == await strong_greedy(models.strong, INSTRUCTIONS[1], 80)


async def test_drafts_ask_only_for_the_logprobs_the_policy_reads(models, servers):
    weak, _ = servers
    wanted = {"margin(tau=0.1)": 2, "hysteresis(top1(tau=0.2), k=2)": 1, "entropy(tau=2.0)": SETTINGS.top_k}
    for spec, k in wanted.items():
        weak.requests.clear()
        d = await decode(INSTRUCTIONS[0], spec, models, SETTINGS)
        assert d.error is None
        drafts = [r for r in weak.requests if r["path"] == "/v1/completions"]
        assert drafts and {r["logprobs"] for r in drafts} == {k}, spec


async def test_pieces_that_do_not_add_up_fall_back_to_the_servers_detokenizer(models, monkeypatch):
    """A server whose per-token strings cannot be placed in the text (say a tokenizer that strips leading spaces
    from pieces): the engine asks /detokenize where each token ends, and the endpoints stay exact."""
    import workspace.engine as engine

    monkeypatch.setattr(engine, "align", lambda text, pieces: None)
    for instr in INSTRUCTIONS[:2]:
        d = await decode(instr, "never", models, SETTINGS)
        assert d.error is None and d.text == await weak_greedy(models.weak, instr, SETTINGS.max_tokens)
        assert any(c.kind == "detokenize" for c in d.calls)
        d = await decode(instr, "margin(tau=0.15, span=words:2)", models, SETTINGS)
        assert d.error is None and "".join(s.text for s in d.segments) == d.text and d.num_deferrals


async def test_decode_many_runs_at_most_the_servers_capacity_at_once(models, monkeypatch):
    # A CPU server holds only so many contexts in its KV cache: running more decodes than it takes evicts their
    # prefixes between requests. decode_many runs at most min(max_in_flight) of the two clients at once.
    running, peak = 0, 0
    real = engine._Engine.run

    async def counted(self, instr, pol, on_signal=None):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            return await real(self, instr, pol, on_signal)
        finally:
            running -= 1

    monkeypatch.setattr(engine._Engine, "run", counted)
    monkeypatch.setattr(models.weak, "settings", dataclasses.replace(models.weak.settings, max_in_flight=2))
    ds = await decode_many(INSTRUCTIONS * 2, "margin(tau=0.15, span=words:3)", models, SETTINGS, progress=False)
    assert all(d.error is None for d in ds) and peak == 2
    peak = 0
    await decode_many(INSTRUCTIONS * 2, "never", models, SETTINGS, progress=False, concurrency=3)
    assert peak == 3
