"""The policy protocol: what a deferral policy sees, what it answers, and how long a strong span lasts.

A policy is a small object. The engine calls `fresh()` once per decode (a deep copy, so anything a policy
keeps in `self` is per-decode state), then `decide(signal)` for every weak token in order. `decide` answers
continue or defer (a bool, or a `Decision` carrying the policy's score, which is recorded at each handoff).
`span` says how long the strong model writes once the policy defers; a `Decision` may name another span rule
for this one handoff (wrappers pass their inner policy's decision on, span included). Policies see only the
weak model's signals, never the strong model's logprobs.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import inspect
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenSignal:
    """Everything a policy may look at for one weak token, before it is accepted into the answer."""

    token_id: int
    text: str  # this token's text (as the server decodes it alone)
    logprob: float  # log-probability of the chosen (greedy) token
    top: tuple[float, ...]  # top-k logprobs, most likely first
    position: int  # index of this token among the answer's tokens (weak tokenisation)
    text_so_far: str  # the answer before this token
    since_handoff: int  # weak tokens accepted since the last strong span (or since the start)

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)

    @property
    def p1(self) -> float:
        return math.exp(self.top[0]) if self.top else self.prob

    @property
    def p2(self) -> float:
        return math.exp(self.top[1]) if len(self.top) > 1 else 0.0


class Action(enum.Enum):
    CONTINUE = "continue"
    DEFER = "defer"
    PEEK = "peek"  # ask the strong model for its next word; defer only if it disagrees with the weak draft


@dataclass(frozen=True)
class Decision:
    action: Action
    score: float | None = None  # the policy's signal (recorded at handoffs)
    span: SpanRule | None = None  # this handoff's span rule (None: the policy's `span`)

    @property
    def fires(self) -> bool:
        """Defer, or peek and defer if the strong model disagrees."""
        return self.action is not Action.CONTINUE


def as_decision(value: bool | Decision) -> Decision:
    if isinstance(value, Decision):
        return value
    if isinstance(value, bool):
        return Decision(Action.DEFER if value else Action.CONTINUE)
    raise TypeError(f"decide() must return a bool or a Decision, not {type(value).__name__}")


# ---------------------------------------------------------------- span rules

SENTENCE_END = (". ", ".\n", "! ", "!\n", "? ", "?\n")
PUNCTUATION = (".", ",", ";", ":", "!", "?", "\n")


@dataclass(frozen=True)
class SpanRule:
    """How long one strong span lasts.

    kind: `tokens` (n strong tokens), `words` (n words), `punct` (through the next punctuation mark),
    `sentence` (through the end of the sentence), `newline` (through the next newline), `agree` (until the
    weak model's greedy choice agrees with the strong text for n tokens in a row). `max_tokens` bounds every
    span.
    """

    kind: str = "sentence"
    n: int = 1
    max_tokens: int = 64

    KINDS = ("tokens", "words", "punct", "sentence", "newline", "agree")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"unknown span rule {self.kind!r}; one of {', '.join(self.KINDS)}")
        if self.n < 1 or self.max_tokens < 1:
            raise ValueError("span n and max_tokens must be >= 1")

    def stop_strings(self) -> list[str]:
        """Up to 4 stop strings (the OpenAI API's limit) that let the server end the span early. They are only
        a saving: `cut()` decides where the span ends, also for ends not in this list."""
        return {"punct": [".", ",", ";", "\n"], "sentence": [". ", ".\n", "? ", "! "], "newline": ["\n"]}.get(
            self.kind, []
        )

    def max_span_tokens(self) -> int:
        return min(self.n, self.max_tokens) if self.kind == "tokens" else self.max_tokens

    def cut(self, text: str) -> int | None:
        """Where in `text` the span ends (a character offset), or None if it runs to the end of `text`."""
        if self.kind == "words":
            count, i, in_word = 0, 0, False
            for i, ch in enumerate(text):
                if not ch.isspace() and not in_word:
                    count += 1
                    if count > self.n:
                        return i
                in_word = not ch.isspace()
            return None
        if self.kind == "punct":
            hits = [text.find(p) for p in PUNCTUATION if text.find(p) >= 0]
            return min(hits) + 1 if hits else None
        if self.kind == "sentence":
            hits = [text.find(p) for p in SENTENCE_END if text.find(p) >= 0]
            return min(hits) + 2 if hits else None
        if self.kind == "newline":
            i = text.find("\n")
            return i + 1 if i >= 0 else None
        return None

    def describe(self) -> str:
        return self.kind if self.kind in ("punct", "sentence", "newline") else f"{self.kind}:{self.n}"


def parse_span(value: str | SpanRule, max_tokens: int = 64) -> SpanRule:
    """`sentence`, `punct`, `newline`, `words:3`, `tokens:8`, `agree:2`."""
    if isinstance(value, SpanRule):
        return value
    kind, _, n = str(value).partition(":")
    return SpanRule(kind.strip(), int(n) if n else 1, max_tokens)


# ---------------------------------------------------------------- the policy base class


class Policy:
    """Base class for deferral policies. Subclasses implement `decide`; parameters are constructor arguments."""

    span: SpanRule = SpanRule()
    prompt_level: bool = False  # True: see the whole weak answer first, then `keep_weak()` decides
    # How many top alternatives per token the policy reads (None: as many as the engine drafts with). Asking
    # the server for fewer makes drafts cheaper to send and to parse; it never changes the greedy text.
    top_k: int | None = None

    def fresh(self) -> Policy:
        """A copy with clean per-decode state (the engine calls this once per instruction)."""
        return copy.deepcopy(self)

    def decide(self, s: TokenSignal) -> bool | Decision:
        raise NotImplementedError

    def keep_weak(self, signals: list[TokenSignal]) -> bool:  # only for prompt_level policies
        raise NotImplementedError

    def on_handoff(self, strong_text: str) -> None:
        """Called after each strong span (wrappers such as hysteresis reset here)."""

    # Records need a stable name for what ran: the spec string and a hash of the code behind it.
    def describe(self) -> str:
        spec = getattr(self, "_spec", None)
        return spec or type(self).__name__

    def source_hash(self) -> str:
        h = hashlib.sha256()
        for cls in type(self).__mro__:
            if cls is object:
                continue
            try:
                h.update(inspect.getsource(cls).encode())
            except (OSError, TypeError):
                h.update(cls.__qualname__.encode())
        for inner in getattr(self, "inner_policies", lambda: [])():
            h.update(inner.source_hash().encode())
        return h.hexdigest()[:16]

    def inner_policies(self) -> list[Policy]:
        return []
