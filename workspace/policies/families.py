"""The built-in policy families, each a few lines over the `Policy` protocol and registered by name.

Every gate defers when its signal crosses `tau`; `span` is a span rule (`sentence`, `punct`, `newline`,
`words:N`, `tokens:N`, `agree:N`, and the structural `line`, `block`, `block:N`, `body`). Wrappers (`hysteresis`,
`window`, `warmup`, `budget`, `lookahead`, `copyguard`) take another policy as their first argument; `owner` says
who writes which part of a code answer, optionally over a gate. The learned router, `probe(path=..., tau=...)`,
lives in `probe.py`.
"""

from __future__ import annotations

import math
import random as _random
from collections import deque

from .protocol import Action, Decision, Policy, SpanRule, TokenSignal, as_decision, parse_span
from .registry import register


class _Gated(Policy):
    """A threshold on one per-token score; subclasses define `score` and the direction."""

    defer_below = True

    def __init__(self, tau: float, span: str | SpanRule = "sentence", max_span: int = 64):
        self.tau = float(tau)
        self.span = parse_span(span, max_span)

    def score(self, s: TokenSignal) -> float:
        raise NotImplementedError

    def decide(self, s: TokenSignal) -> Decision:
        v = self.score(s)
        fire = v < self.tau if self.defer_below else v > self.tau
        return Decision(Action.DEFER if fire else Action.CONTINUE, v)


@register("never")
class Never(Policy):
    """The weak model writes everything."""

    top_k = 1

    def decide(self, s: TokenSignal) -> bool:
        return False


@register("always")
class Always(Policy):
    """Defer at every weak token: the strong model writes everything (span by span)."""

    top_k = 1

    def __init__(self, span: str | SpanRule = "sentence", max_span: int = 64):
        self.span = parse_span(span, max_span)

    def decide(self, s: TokenSignal) -> bool:
        return True


@register("random")
class Random(Policy):
    """Defer at each token with probability `rate` (each decode restarts the same seeded stream: reproducible)."""

    top_k = 1

    def __init__(self, rate: float, seed: int = 0, span: str | SpanRule = "sentence", max_span: int = 64):
        self.rate, self.seed = float(rate), int(seed)
        self.span = parse_span(span, max_span)
        self._rng: _random.Random | None = None

    def decide(self, s: TokenSignal) -> bool:
        if self._rng is None:
            self._rng = _random.Random(f"{self.seed}")
        return self._rng.random() < self.rate


@register("top1")
class TopProb(_Gated):
    """Defer when the greedy token's probability p1 < tau."""

    top_k = 1

    def score(self, s: TokenSignal) -> float:
        return s.p1


@register("margin")
class Margin(_Gated):
    """Defer when p1 - p2 < tau (the weak model hesitates between two tokens)."""

    top_k = 2

    def score(self, s: TokenSignal) -> float:
        return s.p1 - s.p2


@register("entropy")
class Entropy(_Gated):
    """Defer when the top-k entropy (nats, the mass outside the top-k as one bucket) > tau."""

    defer_below = False

    def score(self, s: TokenSignal) -> float:
        ps = [math.exp(lp) for lp in s.top]
        rest = max(0.0, 1.0 - sum(ps))
        return -sum(p * math.log(p) for p in [*ps, rest] if p > 0)


@register("surprisal")
class Surprisal(_Gated):
    """Defer when the chosen token's surprisal -log p > tau."""

    defer_below = False
    top_k = 1

    def score(self, s: TokenSignal) -> float:
        return -s.logprob


# ---------------------------------------------------------------- wrappers


class _Wrapper(Policy):
    """A policy over another one. Its span rule, top_k and handoff hook are the inner policy's, read when used
    (not copied when built), and a firing decision keeps the inner decision's action (a lookahead's peek) and
    span rule."""

    def __init__(self, inner: Policy):
        if not isinstance(inner, Policy):
            raise TypeError("the first argument of a wrapper must be a policy, e.g. hysteresis(margin(tau=0.05))")
        if inner.prompt_level:
            raise TypeError(f"{type(inner).__name__} decides per answer, not per token: it cannot be wrapped")
        self.inner = inner

    def inner_policies(self) -> list[Policy]:
        return [self.inner]

    @property
    def span(self) -> SpanRule:  # type: ignore[override]
        return self.inner.span

    @property
    def top_k(self) -> int | None:  # type: ignore[override]
        return self.inner.top_k

    def on_handoff(self, strong_text: str) -> None:
        self.inner.on_handoff(strong_text)

    def _inner(self, s: TokenSignal) -> Decision:
        return as_decision(self.inner.decide(s))

    @staticmethod
    def _gate(fire: bool, d: Decision) -> Decision:
        """Fire with the inner decision's action and span (it fired at some point), or continue."""
        action = (d.action if d.fires else Action.DEFER) if fire else Action.CONTINUE
        return Decision(action, d.score, d.span if fire else None)


@register("hysteresis")
class Hysteresis(_Wrapper):
    """Defer only after the inner policy fires on `k` consecutive tokens."""

    def __init__(self, inner: Policy, k: int = 2):
        super().__init__(inner)
        self.k, self._run = int(k), 0

    def decide(self, s: TokenSignal) -> Decision:
        d = self._inner(s)
        self._run = self._run + 1 if d.fires else 0
        return self._gate(self._run >= self.k, d)

    def on_handoff(self, strong_text: str) -> None:
        self._run = 0
        super().on_handoff(strong_text)


@register("window")
class Window(_Wrapper):
    """Defer when the inner policy fired on at least `m` of the last `n` tokens."""

    def __init__(self, inner: Policy, n: int = 8, m: int = 2):
        super().__init__(inner)
        self.n, self.m = int(n), int(m)
        self._recent: deque[bool] = deque(maxlen=self.n)

    def decide(self, s: TokenSignal) -> Decision:
        d = self._inner(s)
        self._recent.append(d.fires)
        return self._gate(sum(self._recent) >= self.m, d)

    def on_handoff(self, strong_text: str) -> None:
        self._recent.clear()
        super().on_handoff(strong_text)


@register("warmup")
class Warmup(_Wrapper):
    """Position schedule: the strong model writes the first `k` answer tokens' worth (defer at position 0
    with a `tokens:k` span), and the inner policy is silent until position `quiet`."""

    def __init__(self, inner: Policy, k: int = 0, quiet: int = 0):
        super().__init__(inner)
        self.k, self.quiet = int(k), int(quiet)
        self._opening_done = self.k == 0

    def decide(self, s: TokenSignal) -> Decision:
        if not self._opening_done:
            self._opening_done = True
            return Decision(Action.DEFER, None, SpanRule("tokens", self.k, max(self.k, 1)))
        if s.position < self.quiet:
            return Decision(Action.CONTINUE, None)
        return self._inner(s)


@register("budget")
class Budget(_Wrapper):
    """Budget-calibrated threshold: defer when the inner gate's score falls in the worst `rate` quantile of
    the scores seen so far in this decode (after `warm` tokens), so the deferral rate tracks `rate`."""

    def __init__(self, inner: Policy, rate: float = 0.05, warm: int = 16):
        super().__init__(inner)
        if not isinstance(inner, _Gated):
            raise TypeError("budget() wraps a threshold gate such as margin(...) or entropy(...)")
        self.rate, self.warm = float(rate), int(warm)
        self._scores: list[float] = []

    def decide(self, s: TokenSignal) -> Decision:
        g: _Gated = self.inner  # type: ignore[assignment]
        v = g.score(s)
        seen = sorted(self._scores)
        self._scores.append(v)
        if len(seen) < self.warm:
            return Decision(Action.CONTINUE, v)
        if g.defer_below:
            cut = seen[max(0, math.ceil(self.rate * len(seen)) - 1)]
            fire = v <= cut
        else:
            cut = seen[min(len(seen) - 1, len(seen) - math.ceil(self.rate * len(seen)))]
            fire = v >= cut
        return Decision(Action.DEFER if fire else Action.CONTINUE, v)


@register("lookahead")
class Lookahead(_Wrapper):
    """Lookahead agreement: where the inner policy fires, ask the strong model for its next word and defer
    only if it differs from the weak draft's next word."""

    def decide(self, s: TokenSignal) -> Decision:
        d = self._inner(s)
        return Decision(Action.PEEK, d.score, d.span) if d.fires else d


@register("cascade")
class Cascade(Policy):
    """Prompt-level cascade: the whole answer is the weak model's if its mean top-1 probability >= tau,
    otherwise the strong model's own answer."""

    prompt_level = True
    top_k = 1

    def __init__(self, tau: float = 0.7):
        self.tau = float(tau)

    def decide(self, s: TokenSignal) -> bool:
        return False

    def keep_weak(self, signals: list[TokenSignal]) -> bool:
        if not signals:
            return True
        return sum(s.p1 for s in signals) / len(signals) >= self.tau


# ---------------------------------------------------------------- the answer's structure (`TokenSignal.where`)

ROLES = ("weak", "gate", "strong")
_CONTINUE = Decision(Action.CONTINUE)


@register("owner")
class Owner(Policy):
    """Who writes which part of a code answer (`Where.part`): `prose` (outside the code block, fence lines
    included), `header` (imports, decorators, `def` and `class` lines, docstrings), `body` (a function's body) and
    `code` (other statements, such as demo code after the function). Each part's role is `weak` (no handoff there),
    `gate` (hand off where the inner policy fires; without one, never) or `strong` (hand off at each of its lines'
    first token).

    A handoff in a body keeps the pen for the rest of the function (`span=body`, up to `max_span` strong tokens);
    if that span ends before the function does, the weak model's next line in it hands it back at once. A `strong`
    part elsewhere gets `block` (code) or `line` spans (header, prose); a gate's handoff outside a body keeps the
    gate's own span. At a line's start the part is known only once the line's first non-blank token is drafted:
    a gate that fires on the indentation before it hands off there, if that part's role lets it.

    `owner(body=strong)`: the weak model writes the header, the strong one every function body.
    `owner(margin(tau=0.1))`: a margin gate inside the code only; once it fires in a body the strong model keeps it.
    """

    def __init__(self, inner: Policy | None = None, body: str = "gate", code: str = "gate", header: str = "weak",
                 prose: str = "weak", max_span: int = 512):  # fmt: skip
        if inner is not None and not isinstance(inner, Policy):
            raise TypeError("owner's first argument is a gate policy, e.g. owner(margin(tau=0.1), body=gate)")
        if inner is not None and inner.prompt_level:
            raise TypeError(f"{type(inner).__name__} decides per answer, not per token: it cannot be a gate")
        roles = {"body": body, "code": code, "header": header, "prose": prose}
        for part, role in roles.items():
            if role not in ROLES:
                raise ValueError(f"{part}={role!r}: a part's role is one of {', '.join(ROLES)}")
        self.inner = inner
        self.body, self.code, self.header, self.prose = body, code, header, prose
        self.max_span = int(max_span)
        self.span = SpanRule("body", 1, self.max_span)
        self._roles = roles
        self._spans = {
            "body": self.span,
            "code": SpanRule("block", 1, self.max_span),
            "header": SpanRule("line", 1, self.max_span),
            "prose": SpanRule("line", 1, self.max_span),
        }
        self._pending: Decision | None = None  # the gate fired on a line's indentation: the part is not known yet
        self._handing: int | None = None  # the def whose body this handoff gives the strong model
        self._owned: int | None = None  # the def whose body the strong model holds (its indentation)

    @property
    def top_k(self) -> int | None:  # type: ignore[override]
        return self.inner.top_k if self.inner is not None else 1

    def inner_policies(self) -> list[Policy]:
        return [self.inner] if self.inner is not None else []

    def on_handoff(self, strong_text: str) -> None:
        self._owned, self._handing = self._handing, None
        if self.inner is not None:
            self.inner.on_handoff(strong_text)

    def decide(self, s: TokenSignal) -> Decision:
        d = as_decision(self.inner.decide(s)) if self.inner is not None else _CONTINUE
        new_line = s.where.line_start  # this token writes the first characters of its line
        if new_line and not s.text.strip():  # indentation or a blank line: which part comes is not known yet
            self._pending = self._pending or (d if d.fires else None)
            return Decision(Action.CONTINUE, d.score)
        fired = d if d.fires else self._pending
        self._pending = None
        # At a line's start the line's first token says its part, unless the line continues a statement (a
        # docstring's closing quotes, the arguments of a call): then it is the statement's.
        w = s.after if new_line and not (s.where.string or s.where.continued) else s.where
        part = "prose" if w.part == "fence" else w.part
        held = self._owned is not None and w.body and w.def_indent == self._owned
        if new_line and not held:
            self._owned = None  # the weak model is out of the function the strong model held
        role = self._roles[part]
        if part == "body" and new_line and held:  # the strong model's span ran out inside the function it holds
            action, span = Action.DEFER, self.span
        elif role == "strong" and new_line:
            action, span = Action.DEFER, self._spans[part]
        elif role == "gate" and fired is not None:
            action, span = fired.action, self.span if part == "body" else (fired.span or self.inner.span)
        else:
            return Decision(Action.CONTINUE, d.score)
        self._handing = w.def_indent if part == "body" else None
        return Decision(action, (fired or d).score, span)


@register("copyguard")
class CopyGuard(_Wrapper):
    """No handoff while the weak model copies the instruction: the current line so far, with this token (up to its
    first newline), without its indentation, begins some line of the instruction (also without indentation) and
    holds at least `min_chars` characters. A line copied from the prompt — the signature, a docstring line, an
    import — is nothing the strong model would write better."""

    def __init__(self, inner: Policy, min_chars: int = 1):
        super().__init__(inner)
        self.min_chars = int(min_chars)
        self._lines: tuple[str, ...] | None = None  # the instruction's lines, without indentation (per decode)

    def copying(self, s: TokenSignal) -> bool:
        """Whether the weak line so far, with this token, copies the start of a line of the instruction."""
        piece = (s.line + s.text.split("\n", 1)[0]).lstrip()
        if len(piece) < max(1, self.min_chars):
            return False
        if self._lines is None:
            self._lines = tuple(line.strip() for line in s.instruction.splitlines() if line.strip())
        return any(line.startswith(piece.rstrip()) for line in self._lines)

    def decide(self, s: TokenSignal) -> Decision:
        d = self._inner(s)
        return self._gate(d.fires and not self.copying(s), d)
