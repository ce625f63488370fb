"""Per-token features a learned router reads: computed from a `TokenSignal` alone, so traces (training) and the
`probe` policy (serving) compute them with the same code.

Every feature is a float. Probabilities are read from the top-k logprobs the server returned (`k` is fixed by the
traces a probe was trained on and stored in its weights file). Names are part of a weights file's contract: a
probe trained on one list refuses to run on another.
"""

from __future__ import annotations

import math
import unicodedata

from .protocol import TokenSignal

FEATURES: tuple[str, ...] = (
    # the weak model's distribution at this token
    "logprob",  # log p of the chosen (greedy) token
    "p1",
    "p2",
    "margin",  # p1 - p2
    "entropy",  # nats over the top-k, the mass outside them as one bucket (as the `entropy` gate)
    "top_mass",  # sum of the top-k probabilities
    "log_gap12",  # logprob gap between the first and second choice
    "log_gap15",  # ... and between the first and fifth
    # the token's text
    "tok_chars",
    "tok_space_start",  # starts with whitespace
    "tok_newline",  # contains a newline
    "tok_alpha",  # letters only (after leading whitespace)
    "tok_digit",
    "tok_punct",  # punctuation or symbols only
    "tok_other",  # anything else (mixed, empty, non-ASCII letters)
    # where it is
    "line_start",  # the token opens a line (only whitespace before it on its line)
    "line_col",  # characters since the last newline (log1p)
    "indent",  # leading spaces of the current line / 4
    "in_code",  # inside a ``` fence
    "position",  # answer tokens so far (log1p)
    "since_handoff",  # weak tokens since the last strong span (log1p)
    "prompt_tokens",  # the instruction's length in weak tokens (log1p)
)


def entropy(top: tuple[float, ...]) -> float:
    ps = [math.exp(lp) for lp in top]
    rest = max(0.0, 1.0 - sum(ps))
    return -sum(p * math.log(p) for p in [*ps, rest] if p > 0)


def _token_class(text: str) -> str:
    core = text.lstrip()
    if not core:
        return "other"
    if core.isascii() and core.isalpha():
        return "alpha"
    if core.isdigit():
        return "digit"
    if all(unicodedata.category(c)[0] in "PS" for c in core):
        return "punct"
    return "other"


def vector(s: TokenSignal) -> list[float]:
    """The features of one weak token, in the order of FEATURES."""
    top = s.top or (s.logprob,)
    p1, p2 = s.p1, s.p2
    floor = top[-1]  # a missing alternative is at most as likely as the last one shown
    lp2 = top[1] if len(top) > 1 else floor
    lp5 = top[4] if len(top) > 4 else floor
    before = s.text_so_far
    line = before[before.rfind("\n") + 1 :]
    cls = _token_class(s.text)
    return [
        s.logprob,
        p1,
        p2,
        p1 - p2,
        entropy(top),
        sum(math.exp(lp) for lp in top),
        top[0] - lp2,
        top[0] - lp5,
        float(len(s.text)),
        float(s.text[:1].isspace()),
        float("\n" in s.text),
        float(cls == "alpha"),
        float(cls == "digit"),
        float(cls == "punct"),
        float(cls == "other"),
        float(line.strip() == ""),
        math.log1p(len(line)),
        (len(line) - len(line.lstrip(" "))) / 4,
        float(before.count("```") % 2 == 1),
        math.log1p(s.position),
        math.log1p(s.since_handoff),
        math.log1p(s.prompt_tokens),
    ]


# Single signals a probe is compared with: each oriented so that larger means "more likely harmful".
BASELINE_SIGNALS: dict[str, str] = {"margin": "-margin", "entropy": "entropy", "top1": "-p1"}


def baseline_score(name: str, row: list[float]) -> float:
    """A single-signal baseline's score on one feature row (larger: defer first)."""
    expr = BASELINE_SIGNALS[name]
    sign, feat = (-1.0, expr[1:]) if expr.startswith("-") else (1.0, expr)
    return sign * row[FEATURES.index(feat)]
