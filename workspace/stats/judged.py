"""Judged evaluations: LC utility, recovery and bootstrap intervals (``summarize``) and certification (``certify``).

recovery = (U - U_weak) / (0.5 - U_weak), U and U_weak being the length-controlled winrates (``workspace.stats.glm``)
of the candidate's and of the weak-only answers against the same reference answers.

Certification uses the unpenalised (MLE) fit because the penalised one is biased exactly where certification looks:
near parity the cross-validation sets theta to exactly 0, so U = 0.5 and recovery = 1.0 whatever the policy's true
recovery. In simulation (tests/test_stats.py: n = 100 prompts, U_weak = 0.2, a length-biased judge) a policy whose
true recovery is 0.8 reaches a penalised point recovery >= 0.98 in ~12% of evaluations, and in ~33% when the judge's
preferences are mostly near 0 or 1. The MLE has no such pull: its recovery is centred on the truth, and its bootstrap
describes its spread. The rule below certifies that policy in ~3% of evaluations (either judge) and a policy at
parity in ~56% (~41% with the sharp judge); at n = 400 in 0% and ~68% (1% and ~60%).

The certification rule (``certify``): certified iff the MLE point recovery >= ``bar`` (0.98) AND the one-sided
``level`` (95%) lower bound of recovery >= ``floor`` (0.80). The lower bound is the (1 - level) quantile of
``n_boot`` (1000) paired percentile-bootstrap recoveries: each resample draws prompt indices with replacement
(``numpy.random.default_rng(seed)``), the same indices for the candidate and the weak-only answers, and refits both
MLE GLMs on them. A resample whose weak baseline is not below the reference (gap 0.5 - U_weak <= 0) has no recovery;
it counts as a failure (-inf) for the lower bound and is counted in ``Certification.dropped``. The non-statistical
conditions (canonical prompt set, models, judge and settings; every example judged) are the caller's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .base import Certification, StatsError, Summary, check_lengths, check_preferences, pooled_f_weak
from .glm import lc_winrates, mle_glm
from .rule import BAR, FLOOR, boot_recovery, check_rule_args, intervals, recovery, rule_reasons


@dataclass(frozen=True)
class PairedSample:
    """One prompt: everything the bootstrap must resample together."""

    weak_chars: int  # characters the weak model wrote in the candidate answer
    strong_chars: int  # characters the strong model wrote in the candidate answer
    preference: float  # P(candidate beats the reference), in [0, 1]
    candidate_length: int  # characters
    weak_preference: float  # P(weak-only answer beats the reference)
    weak_length: int
    reference_length: int


# ---------------------------------------------------------------- bootstrap summary


def summarize(samples: Sequence[PairedSample], *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> Summary:
    """Point estimates on all samples, with paired percentile-bootstrap intervals, and the certification.

    utility, u_weak and recovery are alpaca_eval's penalised LC values (``length_controlled_winrate``), the numbers
    comparable with published ones. Each of ``n_boot`` resamples draws prompt indices with replacement
    (``numpy.random.default_rng(seed)``) and recomputes, on the same indices, pooled f_weak, the LC utility, the LC
    weak baseline u_weak (the baseline moves with the prompts) and recovery from those two. The penalised fit is
    refitted on each resample with its cross-validation folds grouped by original prompt (``GroupKFold`` with
    groups = prompt ids: every copy of a resampled prompt in the same fold, as alpaca_eval would fit the resampled
    annotations); the point values themselves are unchanged, bit for bit. Intervals are the plain percentile
    intervals (numpy's linear quantiles at (1 - level) / 2 and (1 + level) / 2). Resamples where recovery is undefined
    (gap <= 0) are left out of its interval and counted in ``recovery_dropped``; if that count is more than a few
    percent of ``n_boot`` the recovery interval describes only the resamples with a real gap and should be read with
    care.

    These intervals describe the penalised estimator, which is pulled to exactly 0.5 near parity; they are for
    reading, not for certifying. ``certification`` is ``certify`` on the same samples with the same ``seed`` and
    ``n_boot`` (and certify's own bar, floor and level), on the unpenalised fit; None for fewer than 2 prompts.
    Same inputs and seed give identical outputs.
    """
    if not samples:
        raise StatsError("summarize needs at least one sample")
    if not 0 < level < 1:
        raise StatsError(f"level must be in (0, 1), got {level!r}")
    if n_boot < 1:
        raise StatsError(f"n_boot must be at least 1, got {n_boot!r}")
    n = len(samples)
    pref = check_preferences([s.preference for s in samples], "preference")
    wpref = check_preferences([s.weak_preference for s in samples], "weak_preference")
    cand = check_lengths([s.candidate_length for s in samples], n, "candidate_length")
    wlen = check_lengths([s.weak_length for s in samples], n, "weak_length")
    ref = check_lengths([s.reference_length for s in samples], n, "reference_length")
    wchars = check_lengths([s.weak_chars for s in samples], n, "weak_chars")
    schars = check_lengths([s.strong_chars for s in samples], n, "strong_chars")
    d_cand, d_weak = ref - cand, ref - wlen

    # Candidate and weak-only go through the same function on identically built arrays, so identical inputs give
    # bit-identical outputs (never-defer => recovery exactly 0.0).
    utility = float(lc_winrates(pref[None, :], d_cand[None, :])[0])
    u_weak = float(lc_winrates(wpref[None, :], d_weak[None, :])[0])
    rec = recovery(utility, u_weak) if 0.5 - u_weak > 0 else None

    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    b_utility = lc_winrates(pref[idx], d_cand[idx], groups=idx)
    b_u_weak = lc_winrates(wpref[idx], d_weak[idx], groups=idx)
    f_weak, b_f_weak, f_weak_dropped = pooled_f_weak(wchars, schars, idx)
    b_gap = 0.5 - b_u_weak
    has_gap = b_gap > 0
    b_recovery = (b_utility[has_gap] - b_u_weak[has_gap]) / b_gap[has_gap]

    boots = (("f_weak", b_f_weak), ("utility", b_utility), ("u_weak", b_u_weak), ("recovery", b_recovery))
    return Summary(
        n=n,
        f_weak=f_weak,
        utility=utility,
        u_weak=u_weak,
        recovery=rec,
        raw_winrate=float(np.mean(pref)),
        ci=intervals(boots, level),  # a value never defined (no resample with characters, or with a gap) gets none
        n_boot=n_boot,
        recovery_dropped=int(n_boot - has_gap.sum()),
        f_weak_dropped=f_weak_dropped,
        certification=certify(pref, wpref, cand, wlen, ref, seed=seed, n_boot=n_boot) if n >= 2 else None,
    )


# ---------------------------------------------------------------- certification


def paired_mle_fits(
    pc: np.ndarray, pw: np.ndarray, d_cand: np.ndarray, d_weak: np.ndarray, idx: np.ndarray
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(utility, u_weak, their values on each resample): the unpenalised LC fits of the candidate's and the weak-only
    answers' preferences (length differences ``d_*`` = reference - answer), on all prompts and on the resamples whose
    prompt indices are the rows of ``idx`` (the same rows for both: paired). Shared by ``certify`` and the early
    stopping rule (``workspace.stats.stopping``)."""
    # Candidate and weak-only go through the same function on identically built arrays: identical inputs give
    # bit-identical outputs (never-defer => recovery exactly 0.0), in the point fit and in every resample.
    utility, c_phi, c_theta = (x[0] for x in mle_glm(pc[None, :], d_cand[None, :]))
    u_weak, w_phi, w_theta = (x[0] for x in mle_glm(pw[None, :], d_weak[None, :]))
    # The full-sample optimum is a good start for every resample: fewer Newton steps, same optimum.
    b_utility = mle_glm(pc[idx], d_cand[idx], start=(c_phi, c_theta))[0]
    b_u_weak = mle_glm(pw[idx], d_weak[idx], start=(w_phi, w_theta))[0]
    return float(utility), float(u_weak), b_utility, b_u_weak


def certify(
    pref_candidate: Sequence[float],
    pref_weak: Sequence[float],
    len_candidate: Sequence[int],
    len_weak: Sequence[int],
    len_reference: Sequence[int],
    *,
    seed: int = 0,
    n_boot: int = 1000,
    bar: float = BAR,
    floor: float = FLOOR,
    level: float = 0.95,
) -> Certification:
    """The certification rule: MLE recovery >= ``bar`` AND its one-sided ``level`` lower bound >= ``floor``.

    Per prompt i: ``pref_candidate[i]`` = P(candidate beats reference), ``pref_weak[i]`` = P(weak-only answer beats
    the same reference), and the three answers' lengths in characters. utility and u_weak are ``lc_winrate_mle`` on
    the candidate and on the weak-only answers; recovery = (utility - u_weak) / (0.5 - u_weak), None when that gap is
    not positive (then nothing is certified). The lower bound is the (1 - level) quantile (numpy's linear
    interpolation) of ``n_boot`` paired bootstrap recoveries: each resample draws n prompt indices with replacement
    from ``numpy.random.default_rng(seed)``, the same indices for the candidate and the weak-only answers, and refits
    both MLE GLMs on them. A resample whose gap 0.5 - u_weak is not positive has no recovery: it counts as a failure
    (recovery -inf) for the bound, conservatively, and in ``dropped``; when more than a fraction 1 - level of the
    resamples are such, the bound is -inf.

    Only the statistical half of certification: the caller checks the rest (canonical prompt set, models, judge and
    settings, every example judged). Pure and deterministic: same inputs and seed, same result. Raises StatsError on
    malformed input, fewer than 2 prompts, ``n_boot`` < 1, ``level`` outside (0, 1) or a non-finite bar or floor.
    """
    pc = check_preferences(pref_candidate, "pref_candidate")
    pw = check_preferences(pref_weak, "pref_weak")
    n = pc.size
    if pw.size != n:
        raise StatsError(f"pref_weak has {pw.size} items but there are {n} candidate preferences")
    lc = check_lengths(len_candidate, n, "len_candidate")
    lw = check_lengths(len_weak, n, "len_weak")
    lr = check_lengths(len_reference, n, "len_reference")
    check_rule_args(n, "prompts", n_boot, level, bar, floor)
    d_cand, d_weak = lr - lc, lr - lw

    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    utility, u_weak, b_utility, b_u_weak = paired_mle_fits(pc, pw, d_cand, d_weak, idx)
    gap = 0.5 - u_weak
    rec = float((utility - u_weak) / gap) if gap > 0 else None
    b_rec, lower, dropped = boot_recovery(b_utility, b_u_weak, 0.5 - b_u_weak, level)
    ci = intervals((("utility", b_utility), ("u_weak", b_u_weak), ("recovery", b_rec)), level)

    try:  # both rows in one call (rows are fitted independently: the same numbers as length_controlled_winrate)
        u_pen, uw_pen = (float(x) for x in lc_winrates(np.stack([pc, pw]), np.stack([d_cand, d_weak])))
    except StatsError:  # fewer than 5 prompts with varying lengths: alpaca_eval's fit is undefined
        u_pen = uw_pen = None
    rec_pen = recovery(u_pen, uw_pen) if u_pen is not None and 0.5 - uw_pen > 0 else None

    no_gap = (f"the weak model is not worse than the reference (U_weak {u_weak:.3f} >= 0.5, so the gap 0.5 - U_weak "
              "<= 0): nothing to recover")  # fmt: skip
    reasons = rule_reasons(rec, lower, dropped, n_boot, bar, floor, level, no_gap, " (U_weak >= 0.5)")
    return Certification(
        certified=not reasons,
        reasons=tuple(reasons),
        recovery=rec,
        recovery_lower=lower,
        utility=float(utility),
        u_weak=float(u_weak),
        utility_penalised=u_pen,
        u_weak_penalised=uw_pen,
        recovery_penalised=rec_pen,
        n=n,
        n_boot=n_boot,
        dropped=dropped,
        bar=float(bar),
        floor=float(floor),
        level=float(level),
        seed=seed,
        ci=ci,
    )
