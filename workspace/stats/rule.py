"""The certification rule shared by judged and pass-rate evaluations: bar and floor, recovery, its one-sided
bootstrap lower bound, percentile intervals, and the reasons a result is not certified, in words."""

from __future__ import annotations

import math

import numpy as np

from ..format import threshold
from .base import Interval, StatsError

BAR = 0.98  # point recovery a certified result must reach (ARCHITECTURE.md “What is measured”)
FLOOR = 0.80  # and the one-sided 95% lower bound of its recovery (ARCHITECTURE.md “Benchmarks and certification”)


def recovery(utility: float, u_weak: float, u_strong: float = 0.5) -> float:
    """(U - U_weak) / (U_strong - U_weak): 1.0 is strong parity, 0.0 no better than the weak model alone.

    Raises StatsError when the gap U_strong - U_weak is not positive: the weak model already matches or beats the
    reference, so there is nothing to recover and the ratio is meaningless.
    """
    for name, v in (("utility", utility), ("u_weak", u_weak), ("u_strong", u_strong)):
        if not math.isfinite(v):
            raise StatsError(f"recovery: {name} must be a finite number, got {v!r}")
    gap = u_strong - u_weak
    if not gap > 0:
        raise StatsError(
            f"recovery is undefined: the gap U_strong - U_weak = {u_strong:.4g} - {u_weak:.4g} = {gap:.4g} is not "
            "positive (the weak model alone already scores at least as well as the reference)"
        )
    return (utility - u_weak) / gap


def check_rule_args(n: int, what: str, n_boot: int, level: float, bar: float, floor: float) -> None:
    if n < 2:
        raise StatsError(f"certification needs at least 2 {what}; got {n}")
    if not (isinstance(n_boot, int | np.integer) and n_boot >= 1):
        raise StatsError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    if not 0 < level < 1:
        raise StatsError(f"level must be in (0, 1), got {level!r}")
    if not (math.isfinite(bar) and math.isfinite(floor)):
        raise StatsError(f"bar and floor must be finite numbers, got {bar!r} and {floor!r}")


def boot_recovery(
    b_utility: np.ndarray, b_u_weak: np.ndarray, b_gap: np.ndarray, level: float
) -> tuple[np.ndarray, float, int]:
    """Per-resample recoveries where there is a gap, the rule's one-sided lower bound (a resample without a gap
    counts as a failure, -inf) and how many resamples had none."""
    has_gap = b_gap > 0
    b_rec = np.full(b_gap.size, -np.inf)
    b_rec[has_gap] = (b_utility[has_gap] - b_u_weak[has_gap]) / b_gap[has_gap]
    return b_rec[has_gap], lower_quantile(b_rec, 1 - level), int(b_gap.size - has_gap.sum())


def intervals(boots, level: float) -> dict[str, Interval]:
    """Two-sided percentile intervals of bootstrap values (a name with no values gets none)."""
    q = ((1 - level) / 2, (1 + level) / 2)
    return {k: Interval(*(float(x) for x in np.quantile(v, q)), level) for k, v in boots if v.size}


def rule_reasons(
    rec: float | None, lower: float, dropped: int, n_boot: int, bar: float, floor: float, level: float,
    no_gap: str, why_no_gap: str,
) -> list[str]:  # fmt: skip
    """Why the certification rule fails, in plain words (empty: it passes); shared by `certify` and `certify_pass`,
    which differ only in what "no gap" means (`no_gap`, and `why_no_gap` for a resample)."""
    pct = f"{100 * level:g}%"
    reasons = []
    if rec is None:
        reasons.append(no_gap)
    elif not rec >= bar:
        reasons.append(f"recovery {rec:.3f} is below the bar {threshold(bar)}")
    if lower == -np.inf:
        reasons.append(
            f"the one-sided {pct} lower bound of recovery is undefined: {dropped} of {n_boot} bootstrap resamples had "
            f"no gap{why_no_gap}, more than the {100 * (1 - level):g}% the bound can absorb"
        )
    elif not lower >= floor:
        floor_text = threshold(floor)
        reasons.append(f"the one-sided {pct} lower bound of recovery, {lower:.3f}, is below the floor {floor_text}")
    return reasons


def lower_quantile(values: np.ndarray, alpha: float) -> float:
    """numpy's linear ``quantile(values, alpha)``, where -inf entries are allowed and pull the quantile to -inf."""
    v = np.sort(values)
    h = (v.size - 1) * alpha
    lo = math.floor(h)
    hi = min(lo + 1, v.size - 1)
    if v[lo] == -np.inf:
        return -math.inf
    return float(v[lo] + (h - lo) * (v[hi] - v[lo]))
