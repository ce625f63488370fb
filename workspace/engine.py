"""Collaborative decoding: the weak model drafts, a policy scans, the strong model writes single spans.

Per instruction (ARCHITECTURE.md “The engine's invariants”):
1. The weak model drafts a chunk of tokens from its own token ids, with top-k logprobs. Drafts are short
   right after a handoff (the policy often fires again soon) and double while the policy stays quiet.
2. The policy scans the draft token by token; at the first deferral the rest of the draft is discarded.
3. The strong model continues the assistant text (chat continuation) for one span, bounded by the policy's
   span rule, a maximum and the answer budget. The span is healed to a strong-token boundary (the last one at
   or before the rule's cut; the first one after it only when the first token straddles the cut), so its
   text is a prefix of what the model generated and the next continuation re-tokenises to the same ids.
4. Only the strong text is re-tokenised by the weak server; the weak model resumes from its own ids.

One length rule keeps both endpoints exact: the answer budget is `max_tokens`, and each segment spends it in
its author's own tokens (weak tokens for weak text, strong tokens for strong text); the last span is clipped
to what is left. Never-defer with N is then the weak model's own N-token answer, always-defer the strong
model's own N-token answer. Handoffs, span ends and draft ends fall only on character boundaries
(`workspace.alignment`), never inside a multi-byte character.

f_weak comes only from segment provenance: `Decode.f_weak` and `pooled_f_weak` count characters of segments.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from tqdm.auto import tqdm

from .alignment import Alignment, align
from .client import ChatCompletion, ClientError, ClientSettings, Completion, Continuations, ModelClient, TokenLogprob
from .endpoints import resolve_endpoint
from .policies import Action, Decision, Policy, SpanRule, TokenSignal, as_decision, load_policy
from .policies.remote import WorkerPolicy
from .policies.structure import Tracker, Where


@dataclass(frozen=True)
class EngineSettings:
    chunk_tokens: int = 32  # the most weak tokens drafted per request (drafts grow to this while quiet)
    first_chunk: int = 8  # the draft size at the start and right after each handoff
    top_k: int = 20  # logprobs per weak token (vLLM's --max-logprobs must allow it)
    max_tokens: int = 256  # the answer budget: weak text spends weak tokens, strong text strong tokens
    max_span_tokens: int = 64  # hard cap on one strong span (structural rules: on each of its requests)
    max_deferrals: int = 64  # after this many spans the policy is no longer asked to defer
    peek_tokens: int = 8  # tokens asked for by a lookahead peek (strong), or to finish the weak word
    agree_tokens: int = 2  # `agree` span rule default: weak agrees this many tokens in a row
    # Weak drafts are streamed and cut where the policy defers (in-process policies: a sandboxed one reads chunks,
    # one message each; and not with a call cache but no continuation store, which alone can replay a cut stream).
    # Greedy text does not depend on how drafts are cut, so this is not part of an evaluation's identity.
    stream_drafts: bool = True

    def identity(self) -> dict:
        """The settings that decide what a decode writes (records carry these): all but `stream_drafts`."""
        out = asdict(self)
        del out["stream_drafts"]
        return out


@dataclass(frozen=True)
class Segment:
    author: str  # "weak" | "strong"
    text: str
    tokens: int  # in the author's own tokenisation: what this segment spent of the answer budget
    weak_tokens: tuple[int, int]  # [start, end) of this segment's ids in the weak answer context
    score: float | None = None  # strong segments: the policy's score at the handoff


@dataclass(frozen=True)
class Call:
    role: str
    kind: str  # draft | span | peek | agree | tokenize | detokenize
    seconds: float
    tokens: int = 0
    origin: str = "server"  # server | cache (the call cache) | reuse (a known continuation: workspace/reuse.py)


@dataclass(frozen=True)
class Decode:
    instruction: str
    policy: str
    text: str
    segments: tuple[Segment, ...]
    finish_reason: str  # weak_eos | strong_eos | length (the budget is spent) | error
    calls: tuple[Call, ...] = ()
    seconds: float = 0.0
    error: str | None = None
    max_tokens: int | None = None  # the answer budget it ran under

    @property
    def num_deferrals(self) -> int:
        return sum(1 for s in self.segments if s.author == "strong")

    def _sum(self, author: str, what: str) -> int:
        return sum(len(s.text) if what == "chars" else s.tokens for s in self.segments if s.author == author)

    @property
    def weak_chars(self) -> int:
        return self._sum("weak", "chars")

    @property
    def strong_chars(self) -> int:
        return self._sum("strong", "chars")

    @property
    def tokens_spent(self) -> dict[str, int]:
        """The answer budget spent per author, each in its own tokens (sums to max_tokens at "length")."""
        return {"weak": self._sum("weak", "tokens"), "strong": self._sum("strong", "tokens")}

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
            "max_tokens": self.max_tokens,
            "tokens_spent": self.tokens_spent,
            "segments": [{"author": s.author, "text": s.text, "tokens": s.tokens} for s in self.segments],
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
            "max_tokens": self.max_tokens,
            "tokens_spent": self.tokens_spent,
            "calls": [
                [c.role, c.kind, round(c.seconds, 4), c.tokens, *([c.origin] if c.origin != "server" else [])]
                for c in self.calls
            ],  # fmt: skip
            "seconds": round(self.seconds, 4),
            "error": self.error,
        }

    @classmethod
    def from_record(cls, d: dict) -> Decode:
        segments = tuple(Segment(a, t, n, (w[0], w[1]), sc) for a, t, n, w, sc in d["segments"])
        calls = tuple(Call(*c) for c in d.get("calls", ()))
        return cls(d["instruction"], d["policy"], d["text"], segments, d["finish_reason"], calls,
                   d.get("seconds", 0.0), d.get("error"), d.get("max_tokens"))  # fmt: skip


def pooled_f_weak(decodes: Sequence[Decode]) -> float | None:
    """sum(weak chars) / sum(all chars) over a batch (ARCHITECTURE.md “What is measured”)."""
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
    def from_endpoints(cls, urls: dict[str, str | None] | None = None, settings: ClientSettings | None = None,
                       reuse: Continuations | None = None):  # fmt: skip
        """Clients for the weak and strong roles, found as `resolve_endpoint` finds them (with `reuse`, answering
        what continues a known answer without the server: `workspace.reuse`)."""
        urls = urls or {}
        return cls(*(ModelClient(resolve_endpoint(r, urls.get(r)), settings, reuse=reuse) for r in ("weak", "strong")))

    async def close(self) -> None:
        await asyncio.gather(self.weak.close(), self.strong.close())


@dataclass
class _State:
    """One decode in progress."""

    instruction: str
    policy: Policy
    settings: EngineSettings
    ids: list[int]  # weak context: prompt ids + answer ids (strong text re-tokenised by the weak tokenizer)
    prompt_len: int
    text: str = ""
    segments: list[Segment] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    since_handoff: int = 0
    spent: int = 0  # the answer budget spent: weak tokens of weak text + strong tokens of strong text
    tracker: Tracker = field(default_factory=Tracker)  # the structure of `text` (policies/structure.py)
    shown: int = 0  # answer positions before this were shown to the policy (a draft redrawn from a character start)

    @property
    def answer_tokens(self) -> int:
        return len(self.ids) - self.prompt_len

    @property
    def left(self) -> int:
        return self.settings.max_tokens - self.spent

    def num_deferrals(self) -> int:
        return sum(1 for seg in self.segments if seg.author == "strong")

    def append(self, author: str, text: str, ids: list[int], tokens: int, score: float | None = None) -> None:
        start = self.answer_tokens
        self.ids += ids
        self.text += text
        self.tracker.feed(text)
        self.spent += tokens
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
    st.calls.append(Call(role, kind, time.monotonic() - t0, tokens, getattr(out, "origin", "server")))
    return out


def _strong_ended(out: ChatCompletion) -> bool:
    """End of sequence: the EOS token (stop_reason None) or another stop token id (vLLM reports an int,
    e.g. Qwen's <|endoftext|>); a string stop_reason is one of our stop strings."""
    return out.finish_reason == "stop" and not isinstance(out.stop_reason, str)


def _top_k(s: EngineSettings, pol: Policy) -> int:
    """Alternatives to ask for per drafted token: what the policy reads, at least 1 (the chosen token's)."""
    return s.top_k if pol.top_k is None else max(1, min(s.top_k, pol.top_k))


def _signal(tok: TokenLogprob, position: int, text_so_far: str, since_handoff: int, st: _State,
            where: tuple[Where, Where]) -> TokenSignal:  # fmt: skip
    """What a policy sees of one drafted weak token."""
    top = tuple(a.logprob for a in tok.top)
    return TokenSignal(tok.token_id, tok.text, tok.logprob, top, position, text_so_far, since_handoff, st.prompt_len,
                       *where, st.instruction)  # fmt: skip


_MAX_CHAR_TOKENS = 8  # a draft this long holds a whole character (UTF-8: at most 4 bytes, so 4 byte tokens)
_WORD = re.compile(r"\w+|[^\w\s]")


def _first_word(text: str) -> str:
    m = _WORD.search(text)
    return m.group(0) if m else ""


@dataclass
class _Draft:
    """A weak draft and where its tokens start in its text."""

    out: Completion
    al: Alignment
    tracker: Tracker | None = None  # the answer's structure through `fed` characters of this draft
    fed: int = 0

    @property
    def n(self) -> int:
        return len(self.out.token_ids)

    def text_before(self, i: int) -> str:
        return self.al.text[: self.al.offset(i)]

    def where(self, base: Tracker, i: int) -> tuple[Where, Where]:
        """Where the answer stands before and after token i: `base` (the answer before the draft) fed the draft
        so far, a copy per draft, advanced as the policy reads on (O(new text) per token)."""
        return self._at(base, self.al.offset(i)), self._at(base, self.al.offset(min(i + 1, self.n)))

    def _at(self, base: Tracker, offset: int) -> Where:
        if self.tracker is None or offset < self.fed:
            self.tracker, self.fed = base.copy(), 0
        self.tracker.feed(self.al.text[self.fed : offset])
        self.fed = offset
        return self.tracker.where()


class _Engine:
    def __init__(self, models: Models, settings: EngineSettings):
        self.m, self.s = models, settings

    # ------------------------------------------------------------ requests

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

    async def _draft(self, st: _State, ids: list[int], want: int, k: int) -> _Draft:
        out = await _timed(st, "weak", "draft", self.m.weak.complete(ids, max_tokens=want, logprobs=k))
        return await self._draft_of(st, ids, out)

    async def _streamed_draft(
        self, st: _State, pol: Policy, k: int, on_signal: Callable[[TokenSignal], None] | None
    ) -> tuple[_Draft, tuple[int, Decision] | None] | None:
        """Stream the weak answer from here (the rest of the budget) and show the policy each token as it comes;
        the stream is cut at the first token where the policy defers (a peek is settled there and then). Returns
        the draft as read and that deferral (None: the stream ran to its end), or None when the server's pieces do
        not add up to its text (nothing was shown to the policy: this decode goes on in chunks)."""
        dr: _Draft | None = None
        found: tuple[int, Decision] | None = None
        odd = False

        async def until(out: Completion) -> bool:
            nonlocal dr, found, odd
            al = align(out.text, [t.text for t in out.tokens])
            if al is None:  # a server whose pieces do not add up: where tokens end costs a request each (chunks)
                odd = True
                return True
            seen = 0 if dr is None else dr.n
            if dr is None:
                dr = _Draft(out, al)
            else:  # the same draft, longer: its structure tracker goes on from where it was
                dr.out, dr.al = out, al
            found = await self._deferral(st, pol, dr, seen, on_signal)
            return found is not None

        out = await _timed(st, "weak", "draft", self.m.weak.complete_until(
            st.ids, max_tokens=st.left, logprobs=k, until=until))  # fmt: skip
        if odd:
            return None
        if dr is None or dr.n != len(out.token_ids):  # (nothing shown: an empty answer)
            dr = await self._draft_of(st, st.ids, out)
        return dr, found

    async def _draft_of(self, st: _State, ids: list[int], out: Completion) -> _Draft:
        al = align(out.text, [t.text for t in out.tokens])
        if al is None:  # pieces that do not add up to the text: ask the server where each token ends
            al = await self._align_by_detokenize(st, ids, out)
        return _Draft(out, al)

    async def _align_by_detokenize(self, st: _State, ctx: list[int], out: Completion) -> Alignment:
        """Token boundaries from /detokenize of every prefix (in context): slow, for odd servers only."""
        tail = ctx[-8:]
        head = await _timed(st, "weak", "detokenize", self.m.weak.detokenize(tail))
        texts = await asyncio.gather(
            *(self.m.weak.detokenize(tail + list(out.token_ids[:j])) for j in range(1, len(out.token_ids) + 1))
        )
        st.calls.append(Call("weak", "detokenize", 0.0, len(texts)))
        bounds: list[int | None] = [0]
        for t in texts:
            ok = t.startswith(head) and not t.endswith("\ufffd")
            bounds.append(len(t) - len(head) if ok else None)
        if bounds[-1] is not None and bounds[-1] > len(out.text):  # trailing special tokens: zero-width
            bounds = [b if b is None else min(b, len(out.text)) for b in bounds]
        return Alignment(out.text, tuple(bounds))

    # ------------------------------------------------------------ one decode

    async def run(
        self, instruction: str, policy: Policy, on_signal: Callable[[TokenSignal], None] | None = None
    ) -> Decode:
        t0 = time.monotonic()
        pol = policy.fresh()
        st = _State(instruction, pol, self.s, [], 0)
        finish = "length"
        try:
            st.ids = await _timed(st, "weak", "tokenize", self.m.weak.tokenize(
                messages=[{"role": "user", "content": instruction}], add_generation_prompt=True))  # fmt: skip
            st.prompt_len = len(st.ids)
            finish = await (self._cascade(st, pol) if pol.prompt_level else self._loop(st, pol, on_signal))
            error = None
        except (ClientError, EngineError) as e:
            finish, error = "error", f"{type(e).__name__}: {e}"
        except Exception as e:  # a policy's own bug must not stop the batch
            finish, error = "error", f"policy or engine raised {type(e).__name__}: {e}"
        finally:
            if isinstance(pol, WorkerPolicy):
                pol.release()
        return Decode(instruction, policy.describe(), st.text, tuple(st.segments), finish, tuple(st.calls),
                      time.monotonic() - t0, error, self.s.max_tokens)  # fmt: skip

    async def _loop(self, st: _State, pol: Policy, on_signal: Callable[[TokenSignal], None] | None = None) -> str:
        s = self.s
        chunk = min(s.first_chunk, s.chunk_tokens)
        # A cut stream answers no request a call cache could key: only the continuation store replays it, so with
        # a call cache and no store, drafts are plain requests (a repeated evaluation asks no server).
        weak = self.m.weak
        stream = (
            s.stream_drafts and not isinstance(pol, WorkerPolicy) and (weak.cache is None or weak.reuse is not None)
        )
        while True:
            if st.left <= 0:
                return "length"
            if stream:
                streamed = await self._streamed_draft(st, pol, _top_k(s, pol), on_signal)
                if streamed is None:  # the server's pieces do not add up: chunks from here on
                    stream = False
                    continue
                want, (dr, found) = st.left, streamed
            else:
                want = min(chunk, st.left)
                dr = await self._draft(st, st.ids, want, _top_k(s, pol))
                found = await self._deferral(st, pol, dr, 0, on_signal)
            defer_at, decision = found if found is not None else (None, Decision(Action.CONTINUE))
            if defer_at is None:
                ended = dr.out.finish_reason == "stop"
                keep = dr.n
                if not ended and dr.n < st.left and dr.al.bounds[dr.n] is None:
                    # The draft stopped inside a character: keep up to its first byte and draft it again
                    # (resuming mid-character makes vLLM's detokenizer restart and emit the whole prompt).
                    keep = dr.al.safe_at_or_before(dr.n)
                    st.shown = st.answer_tokens + dr.n  # the policy has seen these: the next draft repeats them
                    if keep == 0 and want < max(s.chunk_tokens, _MAX_CHAR_TOKENS):
                        chunk = 2 * want  # the whole draft is one character's bytes: ask for more
                        continue
                    keep = keep or dr.n  # a server that never completes the character: take what it gave
                text = dr.out.text if keep == dr.n else dr.text_before(keep)
                st.append("weak", text, list(dr.out.token_ids[:keep]), keep)
                st.since_handoff += keep
                if ended:
                    return "weak_eos"
                chunk = min(2 * chunk, s.chunk_tokens)
                continue
            # Hand off at the deferral, moved back to the start of a character the weak model split.
            h = dr.al.safe_at_or_before(defer_at)
            if h:
                st.append("weak", dr.text_before(h), list(dr.out.token_ids[:h]), h)
            if not await self._span(st, decision.span or pol.span, decision.score):
                return "strong_eos"
            chunk = min(s.first_chunk, s.chunk_tokens)

    async def _deferral(
        self, st: _State, pol: Policy, dr: _Draft, start: int, on_signal: Callable[[TokenSignal], None] | None
    ) -> tuple[int, Decision] | None:
        """The first draft token from `start` where the policy defers: where it fires, a peek the strong model
        agrees with reads on."""
        while (found := await self._scan(st, pol, dr, start, on_signal)) is not None:
            if found[1].action is not Action.PEEK or await self._peek_disagrees(st, dr, found[0]):
                return found
            start = found[0] + 1
        return None

    async def _scan(
        self, st: _State, pol: Policy, dr: _Draft, start: int, on_signal: Callable[[TokenSignal], None] | None
    ) -> tuple[int, Decision] | None:
        """The first draft token from `start` at which the policy fires and may defer (after `max_deferrals`
        spans it still sees every token, but may not), with its decision."""
        may_defer = st.num_deferrals() < self.s.max_deferrals
        start = max(start, st.shown - st.answer_tokens)  # each weak token is shown to the policy once
        if start >= dr.n:
            return None

        def signal(i: int) -> TokenSignal:
            return _signal(dr.out.tokens[i], st.answer_tokens + i, st.text + dr.text_before(i), st.since_handoff + i,
                           st, dr.where(st.tracker, i))  # fmt: skip

        if isinstance(pol, WorkerPolicy):  # the whole draft in one message (remote.py); the worker tracks `where`
            tokens = [[t.token_id, t.text, t.logprob, [a.logprob for a in t.top], dr.al.offset(i)]
                      for i, t in enumerate(dr.out.tokens[start:], start)]  # fmt: skip
            found = await pol.scan({"base": st.text, "draft": dr.al.text, "pos": st.answer_tokens + start,
                                    "since": st.since_handoff + start, "prompt": st.prompt_len,
                                    "defer": may_defer, "tok": tokens, "end": dr.al.offset(dr.n),
                                    "instr": st.instruction}, len(tokens))  # fmt: skip
            found = None if found is None else (start + found[0], found[1])
            for i in range(start, dr.n if found is None else found[0] + 1) if on_signal is not None else ():
                on_signal(signal(i))
            return found
        for i in range(start, dr.n):
            sig = signal(i)
            if on_signal is not None:
                on_signal(sig)
            decision = as_decision(pol.decide(sig))
            if decision.fires and may_defer:
                return i, decision
        return None

    async def _span(self, st: _State, rule: SpanRule, score: float | None) -> bool:
        """Let the strong model write one span; returns False when the strong model ended the answer. A
        structural rule (`line`, `block`, `body`) continues its span over more requests until it cuts, its
        `max_tokens` or the answer budget is spent, or the strong model ends."""
        text, kept, more, eos = "", 0, True, False
        while more:
            piece, keep, more, eos = await self._span_request(st, rule, text, kept)
            text, kept = text + piece, kept + keep
        if not text:
            if eos:
                return False  # end of sequence right away: the strong model considers the answer complete
            if kept and kept >= st.left:  # the budget ran out inside the span's first character: nothing to show
                st.spent += kept
                return True
            raise EngineError("the strong span is empty after healing")
        ids = await _timed(st, "weak", "tokenize", self.m.weak.tokenize(text))
        st.append("strong", text, ids, max(kept, 1), score)
        st.since_handoff, st.shown = 0, 0
        st.policy.on_handoff(text)
        return not eos

    async def _span_request(self, st: _State, rule: SpanRule, prefix: str, spent: int) -> tuple[str, int, bool, bool]:
        """One strong request of a span that has `prefix` (`spent` strong tokens) so far: the text it keeps (healed
        to a strong-token boundary), its tokens, whether the span goes on, and whether the strong model ended."""
        left = st.left - spent
        budget = min(rule.max_span_tokens() - spent, self.s.max_span_tokens, left)
        while True:
            out = await self._strong(st, budget, rule.stop_strings(st.tracker.where()), "span", text=st.text + prefix)
            ended = _strong_ended(out)
            al = align(out.text, [t.text for t in out.tokens])
            if ended or out.finish_reason != "length" or budget >= min(left, _MAX_CHAR_TOKENS):
                break
            if out.text and (al is None or al.bounds[al.n] is not None or al.safe_at_or_before(al.n)):
                break
            # Every token is a piece of the character the span starts (a one-token span of a CJK character
            # heals back to nothing): the span extends to the end of that character, so ask for more.
            budget = min(left, 2 * budget, _MAX_CHAR_TOKENS)
        if not out.text:
            if ended:
                return "", 0, False, True
            if budget >= left and out.finish_reason == "length":  # the answer's budget ends inside a character
                return "", len(out.tokens), False, False
            raise EngineError(f"the strong model returned an empty span (finish_reason={out.finish_reason!r})")
        if al is None:  # pieces that cannot be placed in the text: keep it whole, cut nowhere
            al = Alignment(out.text, (0,) + (None,) * (len(out.tokens) - 1) + (len(out.text),))
        if rule.structural:
            cut = rule.cut(prefix + out.text, st.tracker)
            cut = None if cut is None else cut - len(prefix)
            if prefix and cut is not None and cut <= 0:  # the span ended where the last request's text did
                return "", 0, False, False
        else:
            cut = rule.cut(out.text)
        if rule.kind == "agree":
            cut = await self._agree_cut(st, out.text, rule.n)
        last = budget == left and out.finish_reason == "length"  # the budget clips this span: keep it all
        if cut is not None and cut < len(al.text):  # (al.text: a stop string may end inside the last token)
            keep = al.heal(cut)
        elif ended or last or al.bounds[al.n] is not None:
            keep = al.n
        else:  # the span stopped inside a character: end it before; the next span writes that character
            keep = al.safe_at_or_before(al.n) or al.n
        text = al.text[: al.bounds[keep]] if al.bounds[keep] is not None else out.text
        more = (rule.structural and cut is None and out.finish_reason == "length" and not last and keep > 0
                and spent + keep < rule.max_span_tokens())  # fmt: skip
        return text, keep, more, ended and keep == al.n

    async def _agree_cut(self, st: _State, span_text: str, n: int) -> int | None:
        """`agree` rule: where the weak model, teacher-forced on the strong text, has predicted the strong
        text's next token n times in a row (one request: the weak server's prompt logprobs give each position's
        rank). The cut is a character offset in the span; the caller heals it to a strong-token boundary."""
        ids = await _timed(st, "weak", "tokenize", self.m.weak.tokenize(span_text))
        ranks = await _timed(st, "weak", "agree", self.m.weak.prompt_ranks(st.ids + ids, start=len(st.ids)))
        run = 0
        for i, rank in enumerate(ranks):
            run = run + 1 if rank == 1 else 0
            if run >= n:
                if i + 1 == len(ids):
                    return None
                prefix = await _timed(st, "weak", "detokenize", self.m.weak.detokenize(ids[: i + 1]))
                return len(prefix.rstrip("\ufffd")) if span_text.startswith(prefix.rstrip("\ufffd")) else None
        return None

    async def _peek_disagrees(self, st: _State, dr: _Draft, i: int) -> bool:
        """Lookahead: after the text before token i, is the strong model's next word not the weak draft's?"""
        h = dr.al.safe_at_or_before(i)
        weak_rest = dr.al.text[dr.al.offset(h) :]
        word_open = weak_rest.strip() == "" or re.fullmatch(r"\s*\w+", weak_rest) is not None
        if word_open and dr.out.finish_reason != "stop":
            # The draft ends inside the next word (or before it): finish the word from a character boundary.
            end = dr.al.safe_at_or_before(dr.n)
            more = await _timed(st, "weak", "peek", self.m.weak.complete(
                st.ids + list(dr.out.token_ids[:end]), max_tokens=self.s.peek_tokens))  # fmt: skip
            weak_rest = dr.al.text[dr.al.offset(h) : dr.al.offset(end)] + more.text
        out = await self._strong(st, self.s.peek_tokens, [], "peek", text=st.text + dr.text_before(h))
        return _first_word(out.text) != _first_word(weak_rest)

    async def _cascade(self, st: _State, pol: Policy) -> str:
        """Prompt-level: draft the whole weak answer, show the policy every token, then keep it or replace it
        with the strong model's own answer."""
        signals: list[TokenSignal] = []
        weak_only = _State(st.instruction, pol, st.settings, list(st.ids), st.prompt_len, calls=st.calls)
        finish = await self._loop(weak_only, _NeverDefers(pol), on_signal=signals.append)
        if await pol.keep(signals) if isinstance(pol, WorkerPolicy) else pol.keep_weak(signals):
            st.text, st.segments, st.ids, st.spent = weak_only.text, weak_only.segments, weak_only.ids, weak_only.spent
            return finish
        out = await self._strong(st, self.s.max_tokens, [], "span")
        st.append("strong", out.text, [], len(out.tokens) or len(out.text))
        return "strong_eos" if _strong_ended(out) else "length"


class _NeverDefers(Policy):
    """The weak-only pass of a prompt-level policy (drafts ask for the logprobs that policy reads)."""

    def __init__(self, inner: Policy):
        self.top_k = inner.top_k

    def decide(self, s: TokenSignal) -> bool:
        return False


async def decode(
    instruction: str,
    policy: Policy | str,
    models: Models,
    settings: EngineSettings | None = None,
    on_signal: Callable[[TokenSignal], None] | None = None,
) -> Decode:
    """Collaboratively decode one instruction. Failures are recorded on the result, never raised.

    `on_signal` sees every weak token the policy is shown, in order (traces are made from it). A token can be
    shown twice when a draft that ended inside a character is drafted again; the later one is the one used."""
    return await _Engine(models, settings or EngineSettings()).run(instruction, load_policy(policy), on_signal)


async def decode_many(
    instructions: Sequence[str],
    policy: Policy | str,
    models: Models,
    settings: EngineSettings | None = None,
    progress: bool = True,
    on_done: Callable[[int, Decode], None] | None = None,
    concurrency: int | None = None,
    on_signal: Callable[[int, TokenSignal], None] | None = None,
) -> list[Decode]:
    """Decode a batch concurrently (one coroutine each; the client's throttles bound what is in flight).

    At most `concurrency` decodes run at once (default: the smaller of the two servers' `max_in_flight`). A decode
    sends one request per draft or span, each re-reading its whole context: the servers' prefix caches answer
    those re-reads only while every running decode's context fits in them. On the `cpu` preset, 164 decodes at once
    evicted each other's prefixes (8% prefix-cache hits, every request prefilled from scratch).
    Results come back in input order; one instruction's failure is recorded on its result only.
    `on_done(index, decode)` is called as each one finishes (evaluations append it to their record); if it
    raises (say the disk is full), the other decodes are cancelled and the error is raised here.
    `on_signal(index, signal)` sees each weak token a policy is shown (as in `decode`).
    """
    engine = _Engine(models, settings or EngineSettings())
    pol = load_policy(policy)
    bar = tqdm(total=len(instructions), desc=f"decode {pol.describe()}", unit="prompt", disable=not progress)

    limit = concurrency or min(models.weak.settings.max_in_flight, models.strong.settings.max_in_flight)
    sem = asyncio.Semaphore(limit)

    async def one(i: int, instr: str) -> Decode:
        async with sem:
            d = await engine.run(instr, pol, None if on_signal is None else functools.partial(on_signal, i))
        if on_done is not None:
            on_done(i, d)
        bar.update(1)
        return d

    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(i, instr)) for i, instr in enumerate(instructions)]
    except BaseExceptionGroup as eg:
        raise eg.exceptions[0] from None
    finally:
        bar.close()
    return [t.result() for t in tasks]
