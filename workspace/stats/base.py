"""What every statistic shares: the error, input checks, percentile intervals and the result types."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np


class StatsError(ValueError):
    """Inputs for which a statistic is undefined or malformed."""


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    level: float = 0.95


@dataclass(frozen=True)
class Certification:
    """The outcome of the certification rule (``certify``): the statistical half of "certified".

    ``certified`` is point ``recovery`` >= ``bar`` and ``recovery_lower`` >= ``floor``; ``reasons`` says in plain
    words why not (empty exactly when certified). Utility, u_weak and recovery are the unpenalised (MLE) LC fits; the
    ``*_penalised`` fields are alpaca_eval's penalised LC point values, for comparison with published numbers only
    (None where undefined: fewer than 5 prompts with varying lengths, or no gap).
    """

    certified: bool
    reasons: tuple[str, ...]
    recovery: float | None  # MLE point recovery; None when the gap 0.5 - u_weak is not positive
    recovery_lower: float  # one-sided `level` bootstrap lower bound; -inf when too many resamples have no gap
    utility: float  # MLE LC winrate of the candidate vs the reference
    u_weak: float  # MLE LC winrate of the weak-only answers vs the reference
    utility_penalised: float | None
    u_weak_penalised: float | None
    recovery_penalised: float | None
    n: int  # prompts
    n_boot: int  # bootstrap resamples drawn
    dropped: int  # resamples whose gap was not positive: counted as failures (-inf) in the lower bound
    bar: float
    floor: float
    level: float
    seed: int
    u_strong: float = (
        0.5  # the strong side of the gap: 0.5 (the reference vs itself) for a judge, a pass rate for tests
    )
    # Two-sided `level` percentile intervals of the same bootstrap: "utility", "u_weak", and "recovery" (over the
    # resamples that have a gap; `dropped` says how many do not).
    ci: dict[str, Interval] = field(default_factory=dict)

    def to_json(self) -> dict:
        """A JSON-ready dict of every field; ``reasons`` a list, a non-finite ``recovery_lower`` null."""
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        out["recovery_lower"] = self.recovery_lower if math.isfinite(self.recovery_lower) else None
        return out


@dataclass(frozen=True)
class Summary:
    n: int
    f_weak: float | None  # pooled: sum weak chars / sum all chars; None when no characters were written
    utility: float  # LC winrate of candidate vs reference (alpaca_eval's penalised fit)
    u_weak: float  # LC winrate of weak-only vs reference (alpaca_eval's penalised fit)
    recovery: float | None  # None when the gap (0.5 - u_weak) is not positive
    raw_winrate: float
    ci: dict[str, Interval]  # keys "f_weak", "utility", "u_weak", "recovery" (and "f_weak_code", "copy_share");
    # a key is absent if never defined
    n_boot: int = 0  # resamples drawn
    recovery_dropped: int = 0  # resamples with gap <= 0, left out of the recovery interval
    f_weak_dropped: int = 0  # resamples with no characters at all, left out of the f_weak interval
    certification: Certification | None = None  # `certify` on the same samples; None for fewer than 2 prompts
    # Benchmarks that score part of an answer (the code): the weak share of the scored characters, and the share of
    # the weak scored characters that copy the instruction (ARCHITECTURE.md “What is measured”); None otherwise.
    f_weak_code: float | None = None
    copy_share: float | None = None


def check_preferences(preferences: Sequence[float], what: str = "preferences") -> np.ndarray:
    p = np.asarray(preferences, dtype=float)
    if p.ndim != 1:
        raise StatsError(f"{what} must be a flat sequence of numbers, got shape {p.shape}")
    if p.size == 0:
        raise StatsError(f"{what} is empty: a winrate needs at least one preference")
    bad = ~((p >= 0.0) & (p <= 1.0))  # also catches NaN
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise StatsError(f"{what} must be probabilities in [0, 1]; item {i} is {p[i]!r}")
    return p


def check_lengths(lengths: Sequence[int], n: int, what: str) -> np.ndarray:
    x = np.asarray(lengths, dtype=float)
    if x.ndim != 1 or x.size != n:
        raise StatsError(f"{what} has {x.size} items but there are {n} preferences; they must pair up one to one")
    bad = ~(np.isfinite(x) & (x >= 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise StatsError(f"{what} must be non-negative character counts; item {i} is {x[i]!r}")
    return x


def pooled_f_weak(wchars: np.ndarray, schars: np.ndarray, idx: np.ndarray) -> tuple[float | None, np.ndarray, int]:
    """f_weak pooled over prompts (sum of weak characters / sum of all; None when nothing was written), its value on
    each bootstrap resample (the rows of prompt indices ``idx``) that has characters, and how many resamples have none.
    """
    total = wchars.sum() + schars.sum()
    point = float(wchars.sum() / total) if total > 0 else None
    b_w, b_all = wchars[idx].sum(axis=1), (wchars[idx] + schars[idx]).sum(axis=1)
    has_chars = b_all > 0
    return point, b_w[has_chars] / b_all[has_chars], int(idx.shape[0] - has_chars.sum())
