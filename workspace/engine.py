"""Collaborative decoding: the weak model drafts, a policy scans, the strong model writes single spans.

Per instruction (DESIGN.md §4):
1. The weak model drafts a chunk of tokens from its own token ids, with top-k logprobs.
2. The policy scans the draft token by token; at the first deferral the rest of the draft is discarded.
3. The strong model continues the assistant text (chat continuation) for one span, bounded by the policy's
   span rule and a maximum. The span is healed to a strong-token boundary: it ends at the end of the token
   in which the rule's cut (or a stop string) falls, so the text is exactly what the model generated and
   the next continuation re-tokenises to the same ids.
4. Only the strong text is re-tokenised by the weak server; the weak model resumes from its own ids.
The decode stops at end of sequence (either model) or at a length limit and records why.

f_weak comes only from segment provenance: `Decode.f_weak` and `pooled_f_weak` count characters of segments.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from .client import ChatCompletion, ClientError, ClientSettings, ModelClient, TokenLogprob
from .endpoints import resolve_endpoint
from .policies import Action, Decision, Policy, SpanRule, TokenSignal, as_decision, load_policy


@dataclass(frozen=True)
class EngineSettings:
    chunk_tokens: int = 16  # weak tokens drafted per request
    top_k: int = 20  # logprobs per weak token (vLLM's --max-logprobs must allow it)
    max_tokens: int = 256  # answer length limit, in weak tokens
    max_span_tokens: int = 64  # hard cap on one strong span
    max_deferrals: int = 64  # after this many spans the policy is no longer asked to defer
    peek_tokens: int = 8  # strong tokens asked for by a lookahead peek
    agree_tokens: int = 2  # `agree` span rule default: weak agrees this many tokens in a row


@dataclass(frozen=True)
class Segment:
    author: str  # "weak" | "strong"
    text: str
    tokens: int  # in the author's own tokenisation
    weak_tokens: tuple[int, int]  # [start, end) of this segment's ids in the weak answer context
    score: float | None = None  # strong segments: the policy's score at the handoff


@dataclass(frozen=True)
class Call:
    role: str
    kind: str  # draft | span | peek | tokenize | detokenize | reference
    seconds: float
    tokens: int = 0


@dataclass(frozen=True)
class Decode:
    instruction: str
    policy: str
    text: str
    segments: tuple[Segment, ...]
    finish_reason: str  # weak_eos | strong_eos | length | error
    calls: tuple[Call, ...] = ()
    seconds: float = 0.0
    error: str | None = None

    @property
    def num_deferrals(self) -> int:
        return sum(1 for s in self.segments if s.author == "strong")

    @property
    def weak_chars(self) -> int:
        return sum(len(s.text) for s in self.segments if s.author == "weak")

    @property
    def strong_chars(self) -> int:
        return sum(len(s.text) for s in self.segments if s.author == "strong")

    @property
    def f_weak(self) -> float | None:
        total = self.weak_chars + self.strong_chars
        return self.weak_chars / total if total else None

    @property
    def finished(self) -> bool:
        return self.error is None and self.finish_reason in ("weak_eos", "strong_eos")

    def to_json(self) -> dict:
        return {
            "instruction": self.instruction,
            "text": self.text,
            "f_weak": self.f_weak,
            "finished": self.finished,
            "finish_reason": self.finish_reason,
            "num_deferrals": self.num_deferrals,
            "segments": [{"author": s.author, "text": s.text} for s in self.segments],
            "error": self.error,
        }

    def to_record(self) -> dict:
        """Everything about the decode, for evaluation records (read back by `from_record`)."""
        return {
            "instruction": self.instruction,
            "policy": self.policy,
            "text": self.text,
            "segments": [[s.author, s.text, s.tokens, list(s.weak_tokens), s.score] for s in self.segments],
            "finish_reason": self.finish_reason,
            "calls": [[c.role, c.kind, round(c.seconds, 4), c.tokens] for c in self.calls],
            "seconds": round(self.seconds, 4),
            "error": self.error,
        }

    @classmethod
    def from_record(cls, d: dict) -> Decode:
        segments = tuple(Segment(a, t, n, (w[0], w[1]), sc) for a, t, n, w, sc in d["segments"])
        calls = tuple(Call(*c) for c in d.get("calls", ()))
        return cls(d["instruction"], d["policy"], d["text"], segments, d["finish_reason"], calls,
                   d.get("seconds", 0.0), d.get("error"))  # fmt: skip


def pooled_f_weak(decodes: Sequence[Decode]) -> float | None:
    """sum(weak chars) / sum(all chars) over a batch (DESIGN.md §1)."""
    weak = sum(d.weak_chars for d in decodes)
    total = weak + sum(d.strong_chars for d in decodes)
    return weak / total if total else None


class EngineError(RuntimeError):
    """A per-instruction failure the engine detected itself (e.g. an empty strong span)."""


@dataclass
class Models:
    """The clients a decode needs."""

    weak: ModelClient
    strong: ModelClient

    @classmethod
    def from_endpoints(cls, urls: dict[str, str | None] | None = None, settings: ClientSettings | None = None):
        """Clients for the weak and strong roles, found as `resolve_endpoint` finds them."""
        urls = urls or {}
        return cls(*(ModelClient(resolve_endpoint(r, urls.get(r)), settings) for r in ("weak", "strong")))

    async def close(self) -> None:
        await asyncio.gather(self.weak.close(), self.strong.close())


@dataclass
class _State:
    """One decode in progress."""

    instruction: str
    policy: Policy
    settings: EngineSettings
    ids: list[int]  # weak context: prompt ids + answer ids
    prompt_len: int
    text: str = ""
    segments: list[Segment] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    since_handoff: int = 0

    @property
    def answer_tokens(self) -> int:
        return len(self.ids) - self.prompt_len

    def num_deferrals(self) -> int:
        return sum(1 for seg in self.segments if seg.author == "strong")

    def append(self, author: str, text: str, ids: list[int], tokens: int, score: float | None = None) -> None:
        start = self.answer_tokens
        self.ids += ids
        self.text += text
        if not text:  # e.g. a draft that is only the end-of-sequence token: context, but no segment
            return
        last = self.segments[-1] if self.segments else None
        if last and last.author == author == "weak":  # consecutive weak chunks form one segment
            self.segments[-1] = Segment("weak", last.text + text, last.tokens + tokens,
                                        (last.weak_tokens[0], self.answer_tokens))  # fmt: skip
        else:
            self.segments.append(Segment(author, text, tokens, (start, self.answer_tokens), score))


async def _timed(st: _State, role: str, kind: str, coro):
    t0 = time.monotonic()
    out = await coro
    tokens = len(getattr(out, "token_ids", ()) or getattr(out, "tokens", ()) or ())
    st.calls.append(Call(role, kind, time.monotonic() - t0, tokens))
    return out


def _heal(out: ChatCompletion, cut: int | None) -> str:
    """The span's text ending on a strong-token boundary at or after `cut` (None: all of it).

    The server cuts at a stop string, possibly inside a token (Qwen's ":\n\n" contains ":\n"); taking the
    whole token gives exactly what the model generated, which re-tokenises to the same ids. Tokens are
    aligned to the content by their bytes: special tokens appear in logprobs but not in the content.
    """
    content = out.text.encode()
    if not out.tokens:
        return out.text if cut is None else out.text[:cut]
    target = len(out.text[:cut].encode()) if cut is not None else len(content)
    pos = 0
    for tok in out.tokens:
        tb = tok.bytes if tok.bytes is not None else tok.text.encode()
        rest = content[pos:]
        if not tb or not rest:
            if not rest:
                break
            continue
        if rest.startswith(tb):
            pos += len(tb)
        elif tb.startswith(rest):  # the content ends inside this token: a stop string cut it
            return (content + tb[len(rest) :]).decode("utf-8", errors="replace")
        else:
            continue  # a special token: generated, but not part of the text
        if pos >= target:
            break
    return content[:pos].decode("utf-8", errors="replace")


def _top_k(s: EngineSettings, pol: Policy) -> int:
    """Alternatives to ask for per drafted token: what the policy reads, at least 1 (the chosen token's)."""
    return s.top_k if pol.top_k is None else max(1, min(s.top_k, pol.top_k))


def _signal(tok: TokenLogprob, position: int, text_so_far: str, since_handoff: int) -> TokenSignal:
    """What a policy sees of one drafted weak token."""
    top = tuple(a.logprob for a in tok.top)
    return TokenSignal(tok.token_id, tok.text, tok.logprob, top, position, text_so_far, since_handoff)


class _Engine:
    def __init__(self, models: Models, settings: EngineSettings):
        self.m, self.s = models, settings

    async def _strong(
        self, st: _State, max_tokens: int, stop: list[str], kind: str, text: str | None = None
    ) -> ChatCompletion:
        """Ask the strong model to continue the answer `text` (default: the answer so far)."""
        text = st.text if text is None else text
        msgs = [{"role": "user", "content": st.instruction}]
        if text:
            msgs.append({"role": "assistant", "content": text})
        return await _timed(st, "strong", kind, self.m.strong.chat(
            msgs, max_tokens=max_tokens, continue_final=bool(text), stop=stop or None,
            include_stop=True, logprobs=0,
        ))  # fmt: skip

    async def _weak_agrees_until(self, st: _State, span_text: str, n: int) -> str:
        """`agree` rule: end the span once the weak model's greedy choice (teacher-forced on the strong text)
        has matched the strong tokens n times in a row. One concurrent 1-token draft per prefix."""
        ids = await _timed(st, "weak", "tokenize", self.m.weak.tokenize(span_text))
        nexts = await asyncio.gather(*(self.m.weak.complete(st.ids + ids[:i], max_tokens=1) for i in range(len(ids))))
        st.calls.append(Call("weak", "agree", 0.0, len(ids)))
        run = 0
        for i, nxt in enumerate(nexts):
            run = run + 1 if nxt.token_ids[:1] == (ids[i],) else 0
            if run >= n:
                return await _timed(st, "weak", "detokenize", self.m.weak.detokenize(ids[: i + 1]))
        return span_text

    async def _span(self, st: _State, rule: SpanRule, score: float | None) -> bool:
        """Let the strong model write one span; returns False when the strong model ended the answer."""
        budget = min(rule.max_span_tokens(), self.s.max_span_tokens)
        out = await self._strong(st, budget, rule.stop_strings(), "span")
        eos = out.finish_reason == "stop" and out.stop_reason is None
        if not out.text:
            if eos:
                return False  # end of sequence right away: the strong model considers the answer complete
            raise EngineError(f"the strong model returned an empty span (finish_reason={out.finish_reason!r})")
        text = _heal(out, rule.cut(out.text))
        if rule.kind == "agree":
            text = await self._weak_agrees_until(st, text, rule.n)
        if not text:
            raise EngineError("the strong span is empty after healing")
        cut_early = len(text) < len(out.text)
        ids = await _timed(st, "weak", "tokenize", self.m.weak.tokenize(text))
        n_strong = len(out.tokens) or len(text)
        st.append("strong", text, ids, n_strong, score)
        st.since_handoff = 0
        st.policy.on_handoff(text)
        return not (eos and not cut_early)

    async def _peek_disagrees(self, st: _State, text: str, weak_rest: str) -> bool:
        """Lookahead: after `text`, does the strong model's next word differ from the weak draft's next word?"""
        out = await self._strong(st, self.s.peek_tokens, [], "peek", text=text)
        strong_word = out.text.split()[:1]
        weak_word = weak_rest.split()[:1]
        return strong_word != weak_word

    async def run(self, instruction: str, policy: Policy) -> Decode:
        t0 = time.monotonic()
        s = self.s
        pol = policy.fresh()
        st = _State(instruction, pol, s, [], 0)
        finish = "length"
        try:
            st.ids = await _timed(st, "weak", "tokenize", self.m.weak.tokenize(
                messages=[{"role": "user", "content": instruction}], add_generation_prompt=True))  # fmt: skip
            st.prompt_len = len(st.ids)
            if pol.prompt_level:
                finish = await self._cascade(st, pol)
            else:
                finish = await self._loop(st, pol)
            error = None
        except (ClientError, EngineError) as e:
            finish, error = "error", f"{type(e).__name__}: {e}"
        except Exception as e:  # a policy's own bug must not stop the batch
            finish, error = "error", f"policy or engine raised {type(e).__name__}: {e}"
        return Decode(instruction, policy.describe(), st.text, tuple(st.segments), finish, tuple(st.calls),
                      time.monotonic() - t0, error)  # fmt: skip

    async def _loop(self, st: _State, pol: Policy) -> str:
        s = self.s
        while True:
            if st.answer_tokens >= s.max_tokens:
                return "length"
            want = min(s.chunk_tokens, s.max_tokens - st.answer_tokens)
            k = _top_k(s, pol)
            draft = await _timed(st, "weak", "draft", self.m.weak.complete(st.ids, max_tokens=want, logprobs=k))
            texts = [t.text for t in draft.tokens]
            exact_pieces = "".join(texts) == draft.text
            defer_at, decision = None, Decision(Action.CONTINUE)
            for i, tok in enumerate(draft.tokens):
                sig = _signal(tok, st.answer_tokens + i, st.text + "".join(texts[:i]), st.since_handoff + i)
                decision = as_decision(pol.decide(sig))
                if decision.action is Action.PEEK:
                    if st.num_deferrals() >= s.max_deferrals:
                        continue
                    prefix = st.text + ("".join(texts[:i]) if exact_pieces else "")
                    if not await self._peek_disagrees(st, prefix, "".join(texts[i:])):
                        continue
                    decision = Decision(Action.DEFER, decision.score)
                if decision.action is Action.DEFER and st.num_deferrals() < s.max_deferrals:
                    defer_at = i
                    break
            if defer_at is None:
                st.append("weak", draft.text, list(draft.token_ids), len(draft.token_ids))
                st.since_handoff += len(draft.token_ids)
                if draft.finish_reason == "stop":
                    return "weak_eos"
                continue
            kept_ids = list(draft.token_ids[:defer_at])
            if kept_ids:
                if exact_pieces:
                    kept_text = "".join(texts[:defer_at])
                else:  # a piece does not decode alone (split UTF-8, special token): detokenize in context
                    ctx = st.ids[-8:]
                    full = await _timed(st, "weak", "detokenize", self.m.weak.detokenize(ctx + kept_ids))
                    head = await _timed(st, "weak", "detokenize", self.m.weak.detokenize(ctx))
                    kept_text = full[len(head) :]
                st.append("weak", kept_text, kept_ids, len(kept_ids))
            if not await self._span(st, pol.span, decision.score):
                return "strong_eos"

    async def _cascade(self, st: _State, pol: Policy) -> str:
        s = self.s
        signals, finish = [], "length"
        ids, text = [], ""
        while len(ids) < s.max_tokens:
            want = min(s.chunk_tokens, s.max_tokens - len(ids))
            req = self.m.weak.complete(st.ids + ids, max_tokens=want, logprobs=_top_k(s, pol))
            d = await _timed(st, "weak", "draft", req)
            for tok in d.tokens:
                signals.append(_signal(tok, len(signals), text, len(signals)))
            ids += d.token_ids
            text += d.text
            if d.finish_reason == "stop":
                finish = "weak_eos"
                break
        if pol.keep_weak(signals):
            st.append("weak", text, ids, len(ids))
            return finish
        out = await self._strong(st, s.max_tokens, [], "span")
        st.append("strong", out.text, [], len(out.tokens) or len(out.text))
        return "strong_eos" if out.finish_reason == "stop" else "length"


async def decode(
    instruction: str, policy: Policy | str, models: Models, settings: EngineSettings | None = None
) -> Decode:
    """Collaboratively decode one instruction. Failures are recorded on the result, never raised."""
    return await _Engine(models, settings or EngineSettings()).run(instruction, load_policy(policy))


async def decode_many(
    instructions: Sequence[str],
    policy: Policy | str,
    models: Models,
    settings: EngineSettings | None = None,
    progress: bool = True,
    on_done: Callable[[int, Decode], None] | None = None,
) -> list[Decode]:
    """Decode a batch concurrently (one coroutine each; the client's throttles bound what is in flight).

    Results come back in input order; one instruction's failure is recorded on its result only.
    `on_done(index, decode)` is called as each one finishes (evaluations append it to their record).
    """
    engine = _Engine(models, settings or EngineSettings())
    pol = load_policy(policy)
    bar = tqdm(total=len(instructions), desc=f"decode {pol.describe()}", unit="prompt", disable=not progress)

    async def one(i: int, instr: str) -> Decode:
        d = await engine.run(instr, pol)
        if on_done is not None:
            on_done(i, d)
        bar.update(1)
        return d

    try:
        return list(await asyncio.gather(*(one(i, instr) for i, instr in enumerate(instructions))))
    finally:
        bar.close()
