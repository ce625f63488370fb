"""The policy protocol: what a deferral policy sees, what it answers, and how long a strong span lasts.

A policy is a small object. The engine calls `fresh()` once per decode (a deep copy, so anything a policy
keeps in `self` is per-decode state), then `decide(signal)` for every weak token in order. `decide` answers
continue or defer (a bool, or a `Decision` carrying the policy's score, which is recorded at each handoff).
`span` says how long the strong model writes once the policy defers; a `Decision` may name another span rule
for this one handoff (wrappers pass their inner policy's decision on, span included). Policies see only the
weak model's signals, never the strong model's logprobs, plus where the token stands in the answer (`where`,
`after`: prose or code and the code line's structure, `structure.py`) and the instruction being answered.
"""

from __future__ import annotations

import copy
import enum
import functools
import hashlib
import inspect
import math
from dataclasses import dataclass

from . import registry
from .identity import code_identity
from .structure import Tracker, Where, structural_cut


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
    prompt_tokens: int = 0  # the instruction's length in weak tokens, chat template included
    where: Where = Where()  # where the answer before this token stands: prose or code, the code line's structure
    after: Where = Where()  # the same after this token (at a line's start, its first word says the line's part)
    instruction: str = ""  # the instruction being answered (one string shared by a decode's signals)

    @property
    def line(self) -> str:
        """The current line of the answer before this token (after its last newline)."""
        return self.text_so_far[self.text_so_far.rfind("\n") + 1 :]

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
    span. Structural kinds follow the code (`structure.structural_cut`; outside code each ends with its line):
    `line` (the logical line, and the block it opens when it ends with ':'), `block` (until a line indented at or
    left of the line the span started on; `block:2`, the enclosing block's), `body` (the rest of the function).
    They run over several strong requests when they need to (each at most the engine's `max_span_tokens`), up to
    `max_tokens` in all.
    """

    kind: str = "sentence"
    n: int = 1
    max_tokens: int = 64

    KINDS = ("tokens", "words", "punct", "sentence", "newline", "agree", "line", "block", "body")
    STRUCTURAL = ("line", "block", "body")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"unknown span rule {self.kind!r}; one of {', '.join(self.KINDS)}")
        if self.n < 1 or self.max_tokens < 1:
            raise ValueError("span n and max_tokens must be >= 1")

    @property
    def structural(self) -> bool:
        return self.kind in self.STRUCTURAL

    def stop_strings(self, start: Where | None = None) -> list[str]:
        """Up to 4 stop strings (the OpenAI API's limit) that let the server end the span early. They are only
        a saving: `cut()` decides where the span ends, also for ends not in this list. `start`: where the span
        starts (structural kinds stop at the closing fence in code, at the line's end elsewhere)."""
        if self.structural:
            return ["\n```"] if start is not None and start.code else ["\n"]
        return {"punct": [".", ",", ";", "\n"], "sentence": [". ", ".\n", "? ", "! "], "newline": ["\n"]}.get(
            self.kind, []
        )

    def max_span_tokens(self) -> int:
        return min(self.n, self.max_tokens) if self.kind == "tokens" else self.max_tokens

    def cut(self, text: str, start: Tracker | None = None) -> int | None:
        """Where in `text` the span ends (a character offset), or None if it runs to the end of `text`.
        `start`: the answer's structure where the span starts (structural kinds; default the answer's start)."""
        if self.structural:
            return structural_cut(self.kind, self.n, start if start is not None else Tracker(), text)
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
        if self.kind in ("punct", "sentence", "newline", "line", "body") or (self.kind == "block" and self.n == 1):
            return self.kind
        return f"{self.kind}:{self.n}"


def parse_span(value: str | SpanRule, max_tokens: int = 64) -> SpanRule:
    """`sentence`, `punct`, `newline`, `words:3`, `tokens:8`, `agree:2`, `line`, `block`, `block:2`, `body`."""
    if isinstance(value, SpanRule):
        return value
    kind, _, n = str(value).partition(":")
    return SpanRule(kind.strip(), int(n) if n else 1, max_tokens)


# ---------------------------------------------------------------- the policy base class


class Policy:
    """Base class for deferral policies. Subclasses implement `decide`; parameters are constructor arguments.

    A policy's name in records is its spec: the string it was loaded from (`load_policy`), or, for one built in
    code, a spec made from its constructor's arguments (`Margin(tau=0.05)` is `margin(tau=0.05)`), so two
    parameter settings never share an evaluation id.
    """

    span: SpanRule = SpanRule()
    prompt_level: bool = False  # True: see the whole weak answer first, then `keep_weak()` decides
    # How many top alternatives per token the policy reads (None: as many as the engine drafts with). Asking
    # the server for fewer makes drafts cheaper to send and to parse; it never changes the greedy text.
    top_k: int | None = None

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def recording_init(self, *args, **kwargs):
            if "_init_args" not in self.__dict__:  # the outermost constructor: the arguments that name it
                self._init_args = (type(self), args, kwargs)
            init(self, *args, **kwargs)

        cls.__init__ = recording_init

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
        """The policy's spec: how it was loaded, or made from its constructor's arguments."""
        spec = getattr(self, "_spec", None)
        if spec:
            return spec
        try:
            return constructor_spec(self)
        except ValueError:
            return type(self).__name__

    def source_hash(self) -> str:
        """The policy's identity (`identity.py`): a hash of the code that decides its behaviour, with its inner
        policies' identities: editing another class, a comment or a file's place changes nothing."""
        parts = [code_identity(type(self)), *(inner.source_hash() for inner in self.inner_policies())]
        return parts[0] if len(parts) == 1 else hashlib.sha256(":".join(parts).encode()).hexdigest()[:16]

    def inner_policies(self) -> list[Policy]:
        return []


def _literal(value, where: str) -> str:
    if isinstance(value, Policy):
        return value.describe()
    if isinstance(value, SpanRule):
        return value.describe()
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v, where) for v in value) + "]"
    raise ValueError(f"{where}: {value!r} is not a number, string, list, span rule or policy, so it cannot be named")


def constructor_spec(policy: Policy) -> str:
    """A spec for a policy built in code, from the arguments its constructor was given (keyword form).

    Raises ValueError when it cannot be named: an argument that is not a literal, or a class that cannot be
    found again by name (defined in a notebook cell or inside a function)."""
    cls, args, kwargs = getattr(policy, "_init_args", (type(policy), (), {}))
    name = registry.name_of(cls)
    if name is None and (cls.__module__ == "__main__" or "<locals>" in cls.__qualname__):
        raise ValueError(
            f"{cls.__qualname__} is defined in {cls.__module__} and cannot be loaded again by name: put it in a "
            "file (e.g. policies/mine.py) and load it with load_policy('policies/mine.py:Class(...)')"
        )
    if name is None:
        name = f"{cls.__module__}:{cls.__qualname__}"
    try:
        bound = inspect.signature(cls).bind(*args, **kwargs)
    except TypeError as e:
        raise ValueError(f"{cls.__qualname__}: {e}") from None
    parts = [f"{k}={_literal(v, f'{cls.__qualname__}({k}=...)')}" for k, v in bound.arguments.items()]
    return f"{name}({', '.join(parts)})" if parts else name
