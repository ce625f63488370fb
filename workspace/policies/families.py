"""The built-in policy families, each a few lines over the `Policy` protocol and registered by name.

Every gate defers when its signal crosses `tau`; `span` is a span rule (`sentence`, `punct`, `newline`,
`words:N`, `tokens:N`, `agree:N`). Wrappers (`hysteresis`, `window`, `warmup`, `budget`, `lookahead`) take
another policy as their first argument. The learned router, `probe(path=..., tau=...)`, lives in `probe.py`.
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
