"""The async client against in-test servers: API calls, retries, timeouts, typed errors, replica routing."""

from __future__ import annotations

import asyncio
import socket

import pytest

from servers.presets import load_catalog
from tests.fakeserver import FakeServer, ToyModel
from workspace.client import (
    ClientSettings,
    MalformedResponse,
    ModelClient,
    RequestRejected,
    RequestTimeout,
    ServerError,
    ServerUnavailable,
)
from workspace.endpoints import Endpoint

FAST = ClientSettings(attempts=3, backoff_initial=0.01, backoff_max=0.02, request_timeout=5, unhealthy_cooldown=30)


@pytest.fixture
async def fake():
    s = await FakeServer(ToyModel(name="toy")).start()
    yield s
    await s.stop()


def dead_url() -> str:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def client(*urls: str, settings: ClientSettings = FAST, model: str | None = None) -> ModelClient:
    return ModelClient(Endpoint("weak", tuple(urls), model), settings)


async def test_complete_returns_ids_text_and_sorted_topk(fake):
    m = fake.model
    prompt = m.encode("Hello")
    async with client(fake.url) as c:
        out = await c.complete(prompt, max_tokens=12, logprobs=5)
    ids, rows, text, finish, _ = m.generate(prompt, 12, None)
    assert out.token_ids == tuple(ids)
    assert out.text == text
    assert out.finish_reason == finish
    assert [t.token_id for t in out.tokens] == ids
    for tok, row in zip(out.tokens, rows, strict=True):
        assert len(tok.top) == 5
        assert [a.logprob for a in tok.top] == sorted((a.logprob for a in tok.top), reverse=True)
        assert tok.top[0].text == tok.text == m.vocab[tok.token_id]  # greedy: the chosen token is the most likely
        assert tok.logprob == pytest.approx(row[tok.token_id])
    # the client asked by token ids, not text, and named the served model it discovered
    req = fake.requests[-1]
    assert req["prompt"] == prompt and req["model"] == "toy" and req["return_token_ids"]


async def test_chat_continuation_tokenize_detokenize_models(fake):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Well"}]
    async with client(fake.url) as c:
        assert await c.models() == ["toy"]
        out = await c.chat(msgs, max_tokens=8, continue_final=True, logprobs=3)
        ids = await c.tokenize(messages=msgs, continue_final_message=True)
        assert await c.detokenize(await c.tokenize("abc d")) == "abc d"
    m = fake.model
    assert ids == m.encode(m.render(msgs, False, True))
    expected = m.generate(ids, 8, None)[2]
    assert out.text == expected
    assert "".join(t.text for t in out.tokens) == expected
    assert all(len(t.top) == 3 for t in out.tokens)
    req = [r for r in fake.requests if r["path"] == "/v1/chat/completions"][-1]
    assert req["continue_final_message"] is True and req["add_generation_prompt"] is False


async def test_5xx_is_retried_then_succeeds(fake):
    fake.faults.statuses = [500, 503]
    async with client(fake.url, model="toy") as c:
        assert await c.detokenize([5]) == fake.model.decode([5])
    assert fake.hits["/detokenize"] == 3


async def test_persistent_5xx_becomes_server_error_after_all_attempts(fake):
    fake.faults.statuses = [502] * 10
    async with client(fake.url, model="toy") as c:
        with pytest.raises(ServerError) as e:
            await c.detokenize([5])
    assert e.value.status == 502 and "injected 502" in str(e.value)
    assert fake.hits["/detokenize"] == FAST.attempts


async def test_4xx_is_not_retried(fake):
    async with client(fake.url, model="no-such-model") as c:
        with pytest.raises(RequestRejected) as e:
            await c.detokenize([5])
    assert e.value.status == 404 and "does not exist" in str(e.value)
    assert fake.hits["/detokenize"] == 1


async def test_timeout_is_typed_and_not_retried(fake):
    fake.faults.delay = 1.0
    slow = ClientSettings(attempts=3, backoff_initial=0.01, request_timeout=0.3)
    async with client(fake.url, settings=slow, model="toy") as c:
        with pytest.raises(RequestTimeout):
            await c.detokenize([5])
    await asyncio.sleep(0.8)  # let the server finish the slow handler before counting
    assert fake.hits["/detokenize"] == 1


async def test_malformed_json_is_typed(fake):
    fake.faults.garbage = 1
    async with client(fake.url, model="toy") as c:
        with pytest.raises(MalformedResponse) as e:
            await c.detokenize([5])
    assert "non-JSON" in str(e.value)
    assert fake.hits["/detokenize"] == 1


async def test_dropped_connection_is_retried(fake):
    fake.faults.drop = 1
    async with client(fake.url, model="toy", settings=ClientSettings(attempts=3, backoff_initial=0.01)) as c:
        assert await c.detokenize([7]) == fake.model.decode([7])
    assert fake.hits["/detokenize"] == 2


async def test_dead_server_is_server_unavailable():
    async with client(dead_url(), model="toy") as c:
        with pytest.raises(ServerUnavailable) as e:
            await c.detokenize([1])
    assert e.value.role == "weak"


async def test_dead_replica_is_skipped(fake):
    async with client(dead_url(), fake.url, model="toy") as c:
        results = await asyncio.gather(*(c.detokenize([i + 3]) for i in range(20)))
    assert results == [fake.model.decode([i + 3]) for i in range(20)]
    # after the first refusal the dead replica sits out its cooldown: (almost) everything went to the live one
    assert fake.hits["/detokenize"] == 20


async def test_least_busy_replica_spreads_load():
    a = await FakeServer(ToyModel(name="toy")).start()
    b = await FakeServer(ToyModel(name="toy")).start()
    a.faults.delay = b.faults.delay = 0.05
    try:
        async with client(a.url, b.url, model="toy") as c:
            await asyncio.gather(*(c.detokenize([5]) for _ in range(40)))
        assert a.hits["/detokenize"] + b.hits["/detokenize"] == 40
        assert 15 <= a.hits["/detokenize"] <= 25
    finally:
        await a.stop()
        await b.stop()


async def test_in_flight_is_bounded_per_replica(fake):
    fake.faults.delay = 0.05
    async with client(fake.url, model="toy", settings=ClientSettings(max_in_flight=4)) as c:
        await asyncio.gather(*(c.detokenize([5]) for _ in range(12)))
    assert fake.max_active == 4


async def test_status_reports_health_models_version(fake):
    async with client(fake.url, dead_url()) as c:
        up, down = await c.status()
    assert up.healthy and up.models == ("toy",) and up.version == "fake-0"
    assert not down.healthy and down.error


def test_a_presets_capacity_and_time_limit_reach_the_client():
    from servers.presets import load_catalog

    cpu = load_catalog().preset("cpu")
    assert cpu.roles["weak"].max_in_flight == 16 and cpu.roles["strong"].request_timeout == 3600
    small = ModelClient(Endpoint("weak", ("http://127.0.0.1:1",), "m", max_in_flight=4, request_timeout=3600))
    assert small.settings.max_in_flight == 4 and small.settings.request_timeout == 3600
    # the preset only lowers the cap and raises the limit: a caller's stricter settings stand
    mine = ModelClient(Endpoint("weak", ("http://127.0.0.1:1",), "m", max_in_flight=64, request_timeout=60),
                       ClientSettings(max_in_flight=8, request_timeout=120))  # fmt: skip
    assert mine.settings.max_in_flight == 8 and mine.settings.request_timeout == 120


async def test_every_generation_request_states_greedy_so_a_models_own_defaults_never_apply():
    """vLLM's default `--generation-config auto` fills what a request leaves out from the model's
    generation_config.json (Qwen2.5-7B-Instruct: repetition_penalty 1.05). A server that does so answers a silent
    greedy request differently; every request of ours states its decoding, so ours answers as a neutral server."""
    import aiohttp

    from workspace.client import GREEDY

    neutral = await FakeServer(ToyModel(name="toy")).start()
    biased = await FakeServer(ToyModel(name="toy")).start()
    biased.generation_defaults = {"repetition_penalty": 1.3, "top_p": 0.8, "top_k": 20}
    try:
        prompt = ToyModel().encode("Tell me a story about a cat.")
        silent = {"model": "toy", "prompt": prompt, "max_tokens": 60, "temperature": 0, "return_token_ids": True}
        async with aiohttp.ClientSession() as s, s.post(f"{biased.url}/v1/completions", json=silent) as r:
            silent_ids = (await r.json())["choices"][0]["token_ids"]
        assert biased.applied[-1]["repetition_penalty"] == 1.3
        msgs = [{"role": "user", "content": "Tell me a story about a cat."}]
        answers = []
        for server in (neutral, biased):
            async with client(server.url) as c:
                answers.append((await c.complete(prompt, max_tokens=60, logprobs=2),
                                await c.chat(msgs, max_tokens=60), await c.prompt_ranks(prompt)))  # fmt: skip
        assert list(answers[0][0].token_ids) != silent_ids  # the silent request was changed by the defaults
        assert answers[1] == answers[0]  # ours were not
        assert biased.applied[-3:] == [{}, {}, {}]
        for req in biased.requests[-3:]:
            assert {k: req[k] for k in GREEDY} == GREEDY
    finally:
        await neutral.stop()
        await biased.stop()


async def test_a_dated_chat_template_renders_the_same_prompt_on_any_day(monkeypatch, fake):
    """Llama-3.2's chat template writes today's date into the prompt unless given `date_string`. The presets
    catalog fixes it for that model and the client sends it on every path that renders the template (chat and
    /tokenize with messages), so the weak prompt's ids and the answer are the same on two different days."""
    import datetime as dt

    import aiohttp

    from tests import fakeserver

    name = load_catalog().model("llama-3.2-1b-instruct").hub
    server = await FakeServer(ToyModel(name=name, template=fakeserver.LLAMA32_DATED_TEMPLATE)).start()
    msgs = [{"role": "user", "content": "Hi"}]
    seen = []
    try:
        for day in (dt.datetime(2026, 12, 2), dt.datetime(2027, 3, 1)):
            monkeypatch.setattr(fakeserver, "datetime", type("Frozen", (), {"now": staticmethod(lambda d=day: d)}))
            silent = {"model": name, "messages": msgs, "add_generation_prompt": True}
            async with aiohttp.ClientSession() as s, s.post(f"{server.url}/tokenize", json=silent) as r:
                silent_ids = (await r.json())["tokens"]
            async with client(server.url) as c:  # no arguments on the endpoint: the catalog's for the served name
                ids = await c.tokenize(messages=msgs, add_generation_prompt=True)
                out = await c.chat(msgs, max_tokens=20)
            seen.append((silent_ids, ids, out.text))
    finally:
        await server.stop()
    assert seen[0][0] != seen[1][0]  # the template does write the day
    assert seen[0][1:] == seen[1][1:]
    assert "Today Date: 26 Jul 2024" in ToyModel().decode(seen[0][1])
    mine = [r for r in server.requests if r["path"] in ("/tokenize", "/v1/chat/completions")
            and r != {"path": "/tokenize", **silent}]  # fmt: skip
    assert len(mine) == 4 and all(r["chat_template_kwargs"] == {"date_string": "26 Jul 2024"} for r in mine)
    async with client(fake.url) as c:  # a model without fixed arguments: its payloads (cache keys) as before
        await c.chat(msgs, max_tokens=4)
        await c.tokenize(messages=msgs)
    assert not any("chat_template_kwargs" in r for r in fake.requests)
