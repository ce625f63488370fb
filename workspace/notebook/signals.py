"""Hand-made weak-token signals, to check what a policy decides without a server."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..policies import TokenSignal


def make_signal(probs: Sequence[float], text: str = "x", position: int = 0, since_handoff: int = 0) -> TokenSignal:
    """A hand-made weak-token signal for unit-checking a policy: `probs` are the top-k probabilities, most likely
    first, and the first is the chosen (greedy) token's."""
    if not probs or any(not 0 < p <= 1 for p in probs) or sum(probs) > 1 + 1e-9:
        raise ValueError("probs must be probabilities in (0, 1], most likely first, summing to at most 1")
    top = tuple(math.log(p) for p in sorted(probs, reverse=True))
    return TokenSignal(0, text, top[0], top, position, "", since_handoff)
