"""A template deferral policy: copy this file, rename the class, change `decide`, evaluate it.

Load it by path (from the project root):

    cdw eval --policy "policies/template.py:MarginCooldown(tau=0.05, min_gap=4)" --n 10
    evaluate_policy(policy="template.py:MarginCooldown(tau=0.05, min_gap=4)", prompts=10)   # MCP, from an agent

The idea it encodes: hand a span to the strong model when the weak model hesitates between its two best tokens
(p1 - p2 < tau), but give the weak model at least `min_gap` tokens of its own after each strong span, so one
hard passage does not become a chain of back-to-back handoffs.

Rules every policy follows (AGENTS.md): read only the `TokenSignal` the engine passes (the weak model's own
logprobs; never the strong model's), keep per-answer state in `self` only (the engine deep-copies the policy
for every answer), and take every parameter as a constructor argument, so the spec string says exactly what
ran. Raise ValueError for a bad argument: the loader turns it into a clear error.
"""

from __future__ import annotations

from workspace.policies import Action, Decision, Policy, TokenSignal, parse_span


class MarginCooldown(Policy):
    """Defer when p1 - p2 < `tau`, except within `min_gap` weak tokens after a strong span.

    tau: margin threshold in [0, 1]; higher defers more often.
    min_gap: weak tokens the weak model keeps after each strong span before it may defer again (>= 0).
    span: how long each strong span lasts: sentence, punct, newline, words:N, tokens:N or agree:N.
    max_span: a hard cap on one strong span, in strong tokens.
    """

    top_k = 2  # it reads p1 and p2 only, so the weak server is asked for two alternatives per token

    def __init__(self, tau: float = 0.05, min_gap: int = 4, span: str = "sentence", max_span: int = 64):
        if not 0.0 <= float(tau) <= 1.0:
            raise ValueError(f"tau is a probability margin in [0, 1], got {tau}")
        if int(min_gap) < 0:
            raise ValueError(f"min_gap must be >= 0, got {min_gap}")
        self.tau = float(tau)
        self.min_gap = int(min_gap)
        self.span = parse_span(span, int(max_span))

    def decide(self, s: TokenSignal) -> Decision:
        margin = s.p1 - s.p2
        # Before the first handoff every answer token is the weak model's, so position == since_handoff; after
        # one, the strong text counts in `position` but not in `since_handoff`.
        after_handoff = s.position != s.since_handoff
        cooling = after_handoff and s.since_handoff < self.min_gap
        fire = margin < self.tau and not cooling
        # The score is recorded with each handoff in the evaluation record: useful when reading traces later.
        return Decision(Action.DEFER if fire else Action.CONTINUE, margin)
