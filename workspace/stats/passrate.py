"""Pass-rate evaluations (benchmarks scored by unit tests): pass rates, recovery, intervals and certification."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .base import Certification, StatsError, Summary, pooled_f_weak
from .rule import BAR, FLOOR, boot_recovery, check_rule_args, intervals, rule_reasons


@dataclass(frozen=True)
class PassSample:
    """One problem of a tests-scored evaluation: who wrote the candidate, and whether each answer passed."""

    weak_chars: int
    strong_chars: int
    passed: bool  # the candidate
    weak_passed: bool  # the weak model's own answer (never-defer)
    strong_passed: bool  # the strong model's own answer (the reference; always-defer gives the same text)
    # Of what the benchmark scores (the extracted program): who wrote it, and the weak characters that copy the
    # instruction (None: the benchmark does not say; then there is no f_weak_code).
    weak_code_chars: int | None = None
    strong_code_chars: int | None = None
    weak_copy_chars: int | None = None


def certify_pass(
    passed: Sequence[bool],
    weak_passed: Sequence[bool],
    strong_passed: Sequence[bool],
    *,
    seed: int = 0,
    n_boot: int = 1000,
    bar: float = BAR,
    floor: float = FLOOR,
    level: float = 0.95,
) -> Certification:
    """The certification rule on pass rates: recovery = (U - U_weak) / (U_strong - U_weak) >= ``bar`` AND its
    one-sided ``level`` paired-bootstrap lower bound >= ``floor``.

    U, U_weak and U_strong are the pass@1 rates of the candidate, the weak-only and the strong-only answers on the
    same problems. Recovery is a share of the gap, so the bar and floor mean what they mean for a judge: the policy
    keeps 98% of what the strong model adds, and with 95% confidence at least 80% of it. On a gap of G problems
    (gap x n), the bar forgives a net loss of 0.02 G problems. Each resample draws problem indices with replacement
    (``numpy.random.default_rng(seed)``), the same indices for all three answers; a resample with no gap counts as
    a failure (-inf) for the bound, as in ``certify``.
    """
    arrays = []
    for what, v in (("passed", passed), ("weak_passed", weak_passed), ("strong_passed", strong_passed)):
        a = np.asarray(v)
        if a.ndim != 1 or (a.size and not np.isin(a, (0, 1, True, False)).all()):
            raise StatsError(f"{what} must be a flat sequence of booleans")
        arrays.append(a.astype(float))
    pc, pw, ps = arrays
    n = pc.size
    if not pw.size == ps.size == n:
        raise StatsError(f"passed, weak_passed and strong_passed must pair up: {n}, {pw.size}, {ps.size} items")
    check_rule_args(n, "problems", n_boot, level, bar, floor)
    utility, u_weak, u_strong = float(pc.mean()), float(pw.mean()), float(ps.mean())
    gap = u_strong - u_weak
    rec = (utility - u_weak) / gap if gap > 0 else None
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    b_u, b_w, b_s = pc[idx].mean(axis=1), pw[idx].mean(axis=1), ps[idx].mean(axis=1)
    b_rec, lower, dropped = boot_recovery(b_u, b_w, b_s - b_w, level)
    ci = intervals((("utility", b_u), ("u_weak", b_w), ("u_strong", b_s), ("recovery", b_rec)), level)
    no_gap = (f"the weak model passes as often as the strong one (U_weak {u_weak:.3f} >= U_strong {u_strong:.3f}): "
              "nothing to recover")  # fmt: skip
    reasons = rule_reasons(rec, lower, dropped, n_boot, bar, floor, level, no_gap, "")
    return Certification(
        certified=not reasons, reasons=tuple(reasons), recovery=rec, recovery_lower=lower, utility=utility,
        u_weak=u_weak, utility_penalised=None, u_weak_penalised=None, recovery_penalised=None, n=n, n_boot=n_boot,
        dropped=dropped, bar=float(bar), floor=float(floor), level=float(level), seed=seed, ci=ci, u_strong=u_strong,
    )  # fmt: skip


def summarize_pass(samples: Sequence[PassSample], *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> Summary:
    """Pass rates with paired bootstrap intervals (problems resampled), f_weak pooled, and ``certify_pass``.

    ``utility`` is the candidate's pass rate and ``raw_winrate`` the same number (there is no judge); intervals come
    from ``certify_pass``'s resamples, except f_weak's, drawn on the same indices (same seed). When every sample
    says who wrote its scored code, f_weak_code (weak / all scored characters) and the copy share (weak scored
    characters that copy the instruction / weak scored characters) are pooled the same way, on the same indices."""
    if not samples:
        raise StatsError("summarize_pass needs at least one sample")
    n = len(samples)
    wchars = np.array([s.weak_chars for s in samples], dtype=float)
    schars = np.array([s.strong_chars for s in samples], dtype=float)
    cert = None
    if n >= 2:
        cert = certify_pass([s.passed for s in samples], [s.weak_passed for s in samples],
                            [s.strong_passed for s in samples], seed=seed, n_boot=n_boot, level=level)  # fmt: skip
    utility = float(np.mean([s.passed for s in samples]))
    u_weak = float(np.mean([s.weak_passed for s in samples]))
    u_strong = float(np.mean([s.strong_passed for s in samples]))
    rec = (utility - u_weak) / (u_strong - u_weak) if u_strong > u_weak else None
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    f_weak, b_f_weak, f_weak_dropped = pooled_f_weak(wchars, schars, idx)
    boots = [("f_weak", b_f_weak)]
    f_code = copy = None
    if all(s.weak_code_chars is not None and s.strong_code_chars is not None and s.weak_copy_chars is not None
           for s in samples):  # fmt: skip
        wcode = np.array([s.weak_code_chars for s in samples], dtype=float)
        scode = np.array([s.strong_code_chars for s in samples], dtype=float)
        wcopy = np.array([s.weak_copy_chars for s in samples], dtype=float)
        if (wcopy > wcode).any() or (wcode < 0).any() or (scode < 0).any():
            raise StatsError("weak_copy_chars must be within weak_code_chars, and character counts non-negative")
        f_code, b_code, _ = pooled_f_weak(wcode, scode, idx)
        copy, b_copy, _ = pooled_f_weak(wcopy, wcode - wcopy, idx)
        boots += [("f_weak_code", b_code), ("copy_share", b_copy)]
    ci = {**(cert.ci if cert else {}), **intervals(tuple(boots), level)}
    order = ("f_weak", "f_weak_code", "copy_share", "utility", "u_weak", "u_strong", "recovery")
    return Summary(
        n=n, f_weak=f_weak, utility=utility, u_weak=u_weak, recovery=rec, raw_winrate=utility,
        ci={k: ci[k] for k in order if k in ci}, n_boot=n_boot, recovery_dropped=cert.dropped if cert else 0,
        f_weak_dropped=f_weak_dropped, certification=cert, f_weak_code=f_code, copy_share=copy,
    )  # fmt: skip
