"""The statistics of an evaluation: winrate, length-controlled winrate, recovery, paired bootstrap (DESIGN.md §1).

Numbers in, numbers out: no I/O, no servers. Winrates are in [0, 1].

Length control reproduces `alpaca_eval` 0.6.6's ``length_controlled_minimal`` GLM as that package fits it
(``alpaca_eval/metrics/glm_winrate.py``, ``get_length_controlled_winrate`` and ``fit_LogisticRegressionCV``):

- one feature ``tanh(d / std(d))`` with d = reference length - candidate length in characters (their
  ``len(output_1) - len(output_2)``, output_1 being the baseline); pandas' std (ddof=1); d itself is not centred;
  a second all-ones column whose weight is theta; no other intercept (``fit_intercept=False``);
- soft labels as duplicated rows: (x, y=1) with sample weight p and (x, y=0) with sample weight 1 - p;
- ``LogisticRegressionCV(Cs=10, penalty="l1", solver="liblinear", fit_intercept=False, cv=GroupKFold(5))``, i.e.
  minimise ``|phi| + |theta| + C * sum(weighted log loss)``: the L1 penalty covers theta too, and C is chosen from
  ``logspace(-4, 4, 10)`` by the held-out soft log loss (predictions clipped to [1e-15, 1 - 1e-15]) summed over
  folds, the smallest C on ties, then refit on all rows;
- the winrate is the prediction at d = 0, ``sigmoid(theta)``.

So this is *not* a plain maximum-likelihood fit: when the preferences carry little signal the cross-validation picks
a strong penalty and theta shrinks towards 0, often to exactly 0 (a winrate of exactly 0.5).

GroupKFold (scikit-learn >= 1.6 sorts stably) puts row i of n into fold ``(n - 1 - i) % 5``. The penalised
two-parameter problems are solved to machine precision here (proximal Newton with a closed-form 2-D lasso step),
vectorised over folds, Cs and bootstrap resamples: one ``LogisticRegressionCV`` call costs ~0.1 s, too slow for
2 x 1000 resamples. Against liblinear run to tol 1e-12 the result agrees to ~1e-11; against alpaca_eval's default
tol (1e-4) to a few 1e-4 on ordinary data (tests/test_stats.py calls alpaca_eval's own function). Where the two
cannot agree, we keep to the stated objective:

- every length difference equal (std 0; alpaca_eval divides 0 by 0 and fails): the plain mean of the preferences;
- tanh saturating to one value for every prompt (all |d| many stds away from 0 on the same side): the length column
  is a constant, the L1 optimum is not unique and liblinear's pick depends on its coordinate order; we put it all
  on theta (the length column is zeroed);
- all preferences of a training set exactly 0: liblinear drops zero-weight rows, is left with one class and fits
  garbage (alpaca_eval reports 0.5 for an all-0 input); we fit the objective (a winrate near 0);
- ill-conditioned data (t nearly constant) where liblinear's own tolerance moves the answer by more than 1e-3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Interval",
    "PairedSample",
    "StatsError",
    "Summary",
    "length_controlled_winrate",
    "recovery",
    "summarize",
    "winrate",
]


class StatsError(ValueError):
    """Inputs for which a statistic is undefined or malformed."""


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    level: float = 0.95


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


@dataclass(frozen=True)
class Summary:
    n: int
    f_weak: float | None  # pooled: sum weak chars / sum all chars; None when no characters were written
    utility: float  # LC winrate of candidate vs reference
    u_weak: float  # LC winrate of weak-only vs reference
    recovery: float | None  # None when the gap (0.5 - u_weak) is not positive
    raw_winrate: float
    ci: dict[str, Interval]  # keys "f_weak", "utility", "u_weak", "recovery"; a key is absent if never defined
    n_boot: int = 0  # resamples drawn
    recovery_dropped: int = 0  # resamples with gap <= 0, left out of the recovery interval
    f_weak_dropped: int = 0  # resamples with no characters at all, left out of the f_weak interval


# ---------------------------------------------------------------- point statistics


def _check_preferences(preferences: Sequence[float], what: str = "preferences") -> np.ndarray:
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


def _check_lengths(lengths: Sequence[int], n: int, what: str) -> np.ndarray:
    x = np.asarray(lengths, dtype=float)
    if x.ndim != 1 or x.size != n:
        raise StatsError(f"{what} has {x.size} items but there are {n} preferences; they must pair up one to one")
    bad = ~(np.isfinite(x) & (x >= 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise StatsError(f"{what} must be non-negative character counts; item {i} is {x[i]!r}")
    return x


def winrate(preferences: Sequence[float]) -> float:
    """Mean of soft preferences P(candidate beats reference): the raw (not length-controlled) winrate."""
    return float(np.mean(_check_preferences(preferences)))


def length_controlled_winrate(
    preferences: Sequence[float], candidate_lengths: Sequence[int], reference_lengths: Sequence[int]
) -> float:
    """AlpacaEval's ``length_controlled_minimal`` winrate, in [0, 1]; see the module docstring for the exact fit.

    ``preferences[i]`` is P(candidate i beats reference i); lengths are in characters. When every length
    difference is the same (std 0, e.g. candidate == reference everywhere) the length term is constant and cannot
    be told apart from theta, so the plain mean of the preferences is returned (exactly 0.5 if all are 0.5).
    Otherwise at least 5 prompts are needed, as alpaca_eval cross-validates over 5 folds.
    Raises StatsError on empty, mismatched or out-of-range input.
    """
    p = _check_preferences(preferences)
    cand = _check_lengths(candidate_lengths, p.size, "candidate_lengths")
    ref = _check_lengths(reference_lengths, p.size, "reference_lengths")
    return float(_lc_winrates(p[None, :], (ref - cand)[None, :])[0])


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


# ---------------------------------------------------------------- bootstrap summary


def summarize(samples: Sequence[PairedSample], *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> Summary:
    """Point estimates on all samples, with paired percentile-bootstrap intervals.

    Each of ``n_boot`` resamples draws prompt indices with replacement (``numpy.random.default_rng(seed)``) and
    recomputes, on the same indices, pooled f_weak, the LC utility, the LC weak baseline u_weak (the baseline moves
    with the prompts) and recovery from those two. Intervals are the plain percentile intervals (numpy's linear
    quantiles at (1 - level) / 2 and (1 + level) / 2). Resamples where recovery is undefined (gap <= 0) are left out
    of its interval and counted in ``recovery_dropped``; if that count is more than a few percent of ``n_boot`` the
    recovery interval describes only the resamples with a real gap and should be read with care. Same inputs and
    seed give identical outputs.
    """
    if not samples:
        raise StatsError("summarize needs at least one sample")
    if not 0 < level < 1:
        raise StatsError(f"level must be in (0, 1), got {level!r}")
    if n_boot < 1:
        raise StatsError(f"n_boot must be at least 1, got {n_boot!r}")
    n = len(samples)
    pref = _check_preferences([s.preference for s in samples], "preference")
    wpref = _check_preferences([s.weak_preference for s in samples], "weak_preference")
    cand = _check_lengths([s.candidate_length for s in samples], n, "candidate_length")
    wlen = _check_lengths([s.weak_length for s in samples], n, "weak_length")
    ref = _check_lengths([s.reference_length for s in samples], n, "reference_length")
    wchars = _check_lengths([s.weak_chars for s in samples], n, "weak_chars")
    schars = _check_lengths([s.strong_chars for s in samples], n, "strong_chars")
    d_cand, d_weak = ref - cand, ref - wlen

    # Candidate and weak-only go through the same function on identically built arrays, so identical inputs give
    # bit-identical outputs (never-defer => recovery exactly 0.0).
    utility = float(_lc_winrates(pref[None, :], d_cand[None, :])[0])
    u_weak = float(_lc_winrates(wpref[None, :], d_weak[None, :])[0])
    total = wchars.sum() + schars.sum()
    f_weak = float(wchars.sum() / total) if total > 0 else None
    rec = recovery(utility, u_weak) if 0.5 - u_weak > 0 else None

    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    b_utility = _lc_winrates(pref[idx], d_cand[idx])
    b_u_weak = _lc_winrates(wpref[idx], d_weak[idx])
    b_w, b_all = wchars[idx].sum(axis=1), (wchars[idx] + schars[idx]).sum(axis=1)
    has_chars = b_all > 0
    b_f_weak = b_w[has_chars] / b_all[has_chars]
    b_gap = 0.5 - b_u_weak
    has_gap = b_gap > 0
    b_recovery = (b_utility[has_gap] - b_u_weak[has_gap]) / b_gap[has_gap]

    q = ((1 - level) / 2, (1 + level) / 2)

    def interval(values: np.ndarray) -> Interval:
        low, high = np.quantile(values, q)
        return Interval(float(low), float(high), level)

    ci = {"utility": interval(b_utility), "u_weak": interval(b_u_weak)}
    if b_f_weak.size:
        ci["f_weak"] = interval(b_f_weak)
    if b_recovery.size:
        ci["recovery"] = interval(b_recovery)
    return Summary(
        n=n,
        f_weak=f_weak,
        utility=utility,
        u_weak=u_weak,
        recovery=rec,
        raw_winrate=float(np.mean(pref)),
        ci={k: ci[k] for k in ("f_weak", "utility", "u_weak", "recovery") if k in ci},
        n_boot=n_boot,
        recovery_dropped=int(n_boot - has_gap.sum()),
        f_weak_dropped=int(n_boot - has_chars.sum()),
    )


# ---------------------------------------------------------------- the GLM (alpaca_eval's length_controlled_minimal)

_CS = np.logspace(-4, 4, 10)  # LogisticRegressionCV(Cs=10)
_N_SPLITS = 5  # GroupKFold(n_splits=5)
_CLIP = 1e-15  # alpaca_eval's logloss clips predictions
_BLOCK = 6400  # datasets x prompts per vectorised block: bounds the (problems x n) arrays to a few MB


def _lc_winrates(p: np.ndarray, d: np.ndarray) -> np.ndarray:
    """LC winrate for each row of ``p`` / ``d`` (shape (R, n)): alpaca_eval's fit applied to each row separately."""
    r, n = p.shape
    out = np.empty(r)
    std = np.std(d, axis=1, ddof=1) if n > 1 else np.zeros(r)
    flat = ~(std > 0)
    # A constant length difference makes tanh(d / std) a constant column, indistinguishable from theta.
    out[flat] = p[flat].mean(axis=1)
    fit = np.flatnonzero(~flat)
    if fit.size == 0:
        return out
    if n < _N_SPLITS:
        raise StatsError(
            f"length control needs at least {_N_SPLITS} prompts (alpaca_eval's GLM cross-validates over "
            f"{_N_SPLITS} folds); got {n}"
        )
    t = np.tanh(d[fit] / std[fit, None])
    # When tanh saturates to one value for every prompt, the length column is again a constant: the L1 optimum
    # is then not unique (any split of one logit between theta and phi) and liblinear's pick depends on its
    # coordinate order (it leaves most on theta). Zeroing the column picks the all-theta optimum, deterministically.
    t[np.ptp(t, axis=1) == 0] = 0.0
    chunk = max(1, _BLOCK // n)
    for start in range(0, fit.size, chunk):
        rows = fit[start : start + chunk]
        out[rows] = _cv_l1_fit(t[start : start + chunk], p[rows])
    return out


def _folds(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GroupKFold(5) on n one-row groups: training weights (5, n), test row indices (5, L) and their 0/1 weights.

    With equal group sizes and scikit-learn's stable sort, row i goes to fold (n - 1 - i) % 5.
    """
    fold = (n - 1 - np.arange(n)) % _N_SPLITS
    train = (fold[None, :] != np.arange(_N_SPLITS)[:, None]).astype(float)
    rows = [np.flatnonzero(fold == k) for k in range(_N_SPLITS)]
    width = max(r.size for r in rows)
    test_idx = np.zeros((_N_SPLITS, width), dtype=int)
    test_w = np.zeros((_N_SPLITS, width))
    for k, r in enumerate(rows):
        test_idx[k, : r.size], test_w[k, : r.size] = r, 1.0
    return train, test_idx, test_w


def _cv_l1_fit(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """sigmoid(theta) after LogisticRegressionCV's choice of C, for each row of t, p (shape (R, n))."""
    r, n = t.shape
    train, test_idx, test_w = _folds(n)
    # Problems whose optimum is exactly 0 (gradient at 0 within the L1 subgradient) need no solve; for small C
    # that is most of them.
    g_a = (((0.5 - p) * t)[:, None, :] * train).sum(-1)
    g_b = ((0.5 - p)[:, None, :] * train).sum(-1)
    g0 = np.maximum(np.abs(g_a), np.abs(g_b))  # (R, 5)
    live = np.nonzero(_CS[None, None, :] * g0[:, :, None] > 1.0)  # (R, 5, 10) index tuple
    a = np.zeros((r, _N_SPLITS, _CS.size))
    b = np.zeros((r, _N_SPLITS, _CS.size))
    ri, fi, ci = live
    a[live], b[live] = _solve_l1_logistic(t[ri], p[ri], train[fi], _CS[ci], np.zeros(ri.size), np.zeros(ri.size))

    # Held-out score of every fold fit: the mean soft log likelihood over the fold's rows, i.e. minus
    # alpaca_eval's clipped logloss (each row is in its duplicated frame twice with the same target, which leaves
    # the mean unchanged). A zero fit scores the same for every C.
    def score(rr, ff, aa, bb):
        cols = test_idx[ff]
        tt, pt, w = t[rr[:, None], cols], p[rr[:, None], cols], test_w[ff]
        q = np.clip(_sigmoid(aa[:, None] * tt + bb[:, None]), _CLIP, 1 - _CLIP)
        return (_rowdot(w * pt, np.log(q)) + _rowdot(w * (1 - pt), np.log(1 - q))) / w.sum(1)

    rr, ff = (x.ravel() for x in np.meshgrid(np.arange(r), np.arange(_N_SPLITS), indexing="ij"))
    zero = score(rr, ff, np.zeros(rr.size), np.zeros(rr.size)).reshape(r, _N_SPLITS)
    scores = np.repeat(zero[:, :, None], _CS.size, axis=2)
    if ri.size:
        scores[live] = score(ri, fi, a[live], b[live])
    # scikit-learn sums the scores over folds and takes the first best C.
    best = np.argmax(scores.sum(axis=1), axis=1)

    # Refit on all rows at the chosen C, from the mean of the fold fits (scikit-learn's coef_init).
    c = _CS[best]
    full_g0 = np.maximum(np.abs(((0.5 - p) * t).sum(-1)), np.abs((0.5 - p).sum(-1)))
    theta = np.zeros(r)
    fit = np.flatnonzero(c * full_g0 > 1.0)
    if fit.size:
        a0 = a[fit, :, best[fit]].mean(axis=1)
        b0 = b[fit, :, best[fit]].mean(axis=1)
        _, theta[fit] = _solve_l1_logistic(t[fit], p[fit], np.ones((fit.size, n)), c[fit], a0, b0)
    return _sigmoid(theta)


def _sigmoid(z):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))  # exp overflow for z < -709 gives exactly 0, as it should


def _rowdot(x, y):
    return np.einsum("ij,ij->i", x, y)  # row-wise dot product without a (k, n) temporary


def _solve_l1_logistic(t, p, m, c, a0, b0, *, tol=1e-7, max_iter=100):
    """Minimiser of F(a, b) = |a| + |b| + c * sum_i m_i [softplus(z_i) - p_i z_i], z_i = a t_i + b, for each row.

    This is liblinear's L1 logistic objective on alpaca_eval's duplicated soft-label rows (weights p and 1 - p)
    with C = c. Proximal Newton: the quadratic model plus the L1 term is a 2-D lasso, solved in closed form by
    trying every support and sign pattern. The whole step is taken when F still decreases at its end (F is convex
    along the step, so it is then no worse than any shorter step); otherwise Armijo backtracking. The last step
    taken is below ``tol`` (relative), so with Newton's quadratic convergence the error is far smaller.
    """
    a, b = a0.astype(float), b0.astype(float)
    # Per-problem constants: the smooth part's gradient is c * (sum q m t - sum m p t, sum q m - sum m p).
    mt, mp = m * t, m * p
    mtt = mt * t
    k1, k0 = _rowdot(mp, t), mp.sum(1)
    active = np.arange(c.size)
    z = a[:, None] * t + b[:, None]
    q = _sigmoid(z)
    ta, ma, mta, mtta, mpa, ca, k1a, k0a = t, m, mt, mtt, mp, c, k1, k0
    ga, gb = ca * (_rowdot(q, mta) - k1a), ca * (_rowdot(q, ma) - k0a)
    for _ in range(max_iter):
        aa, ba = a[active], b[active]
        h = q * (1 - q)
        haa, hab, hbb = ca * _rowdot(h, mtta), ca * _rowdot(h, mta), ca * _rowdot(h, ma)
        # A tiny ridge keeps the model strictly convex when t is nearly constant or q saturates; it changes only
        # the path, not the fixed point (a zero step still means the optimality conditions hold).
        eps = 1e-12 * (1.0 + haa + hbb)
        haa, hbb = haa + eps, hbb + eps
        va, vb = _lasso_2d(ga - (haa * aa + hab * ba), gb - (hab * aa + hbb * ba), haa, hab, hbb)
        da, db = va - aa, vb - ba
        done = np.maximum(np.abs(da), np.abs(db)) <= tol * (1.0 + np.maximum(np.abs(aa), np.abs(ba)))

        # Whole step: the new point's gradient is needed for the next iteration anyway, and gives the slope of F
        # at the end of the step (the L1 part's slope taken from the left). Rows that are done need neither.
        step = np.ones(active.size)
        go = np.flatnonzero(~done)
        if go.size == active.size:
            tg, mg, mtg, mpg, cg, k1g, k0g, zg = ta, ma, mta, mpa, ca, k1a, k0a, z
        else:
            tg, mg, mtg, mpg, cg, k1g, k0g, zg = ta[go], ma[go], mta[go], mpa[go], ca[go], k1a[go], k0a[go], z[go]
        dag, dbg = da[go], db[go]
        zn = zg + dag[:, None] * tg + dbg[:, None]
        qn = _sigmoid(zn)
        gan, gbn = cg * (_rowdot(qn, mtg) - k1g), cg * (_rowdot(qn, mg) - k0g)
        vag, vbg = va[go], vb[go]
        l1 = np.where(vag != 0, np.sign(vag) * dag, -np.abs(dag)) + np.where(vbg != 0, np.sign(vbg) * dbg, -np.abs(dbg))
        bad = np.flatnonzero(gan * dag + gbn * dbg + l1 > 0)
        if bad.size:
            sb = _armijo(tg[bad], mg[bad], mpg[bad], cg[bad], zg[bad], aa[go][bad], ba[go][bad], dag[bad], dbg[bad],
                         ga[go][bad], gb[go][bad])  # fmt: skip
            step[go[bad]] = sb
            zb = zg[bad] + (sb * dag[bad])[:, None] * tg[bad] + (sb * dbg[bad])[:, None]
            zn[bad], qn[bad] = zb, _sigmoid(zb)
            gan[bad] = cg[bad] * (_rowdot(qn[bad], mtg[bad]) - k1g[bad])
            gbn[bad] = cg[bad] * (_rowdot(qn[bad], mg[bad]) - k0g[bad])
        a[active] = aa + step * da
        b[active] = ba + step * db
        keep = step[go] > 0  # of the rows that went on, those that moved
        if not keep.any():
            break
        rows = go[keep]
        if rows.size == active.size:
            z, q, ga, gb = zn, qn, gan, gbn
        else:
            ta, ma, mta, mtta, mpa = ta[rows], ma[rows], mta[rows], mtta[rows], mpa[rows]
            ca, k1a, k0a = ca[rows], k1a[rows], k0a[rows]
            active, z, q, ga, gb = active[rows], zn[keep], qn[keep], gan[keep], gbn[keep]
    return a, b


def _armijo(t, m, mp, c, z, a, b, da, db, ga, gb):
    """Backtracking step sizes s with F(w + s d) <= F(w) + 1e-4 s (g.d + |w + d|_1 - |w|_1); 0 if none passes.

    Rarely needed (the whole Newton step usually passes), so it favours clarity over speed.
    """

    def f(i, s):
        zz = z[i] + (s * da[i])[:, None] * t[i] + (s * db[i])[:, None]
        smooth = _rowdot(m[i], np.logaddexp(0.0, zz)) - _rowdot(mp[i], zz)
        return np.abs(a[i] + s * da[i]) + np.abs(b[i] + s * db[i]) + c[i] * smooth

    every = np.arange(c.size)
    f0 = f(every, np.zeros(c.size))
    decrease = ga * da + gb * db + np.abs(a + da) + np.abs(b + db) - np.abs(a) - np.abs(b)
    slack = 1e-13 * (np.abs(f0) + 1.0)  # rounding in F
    step = np.ones(c.size)
    pending = every
    for _ in range(60):
        s = step[pending]
        ok = f(pending, s) <= f0[pending] + 1e-4 * s * decrease[pending] + slack[pending]
        pending = pending[~ok]
        if pending.size == 0:
            return step
        step[pending] *= 0.5
    step[pending] = 0.0  # never passed: already optimal to rounding
    return step


def _lasso_2d(ca, cb, haa, hab, hbb):
    """argmin over v of c.v + v'Hv/2 + |v|_1 for 2x2 positive definite H, elementwise over arrays.

    The minimiser has some support and sign pattern; for each of the 7 possibilities the stationary point is in
    closed form, every candidate is a feasible point, so the candidate with the lowest objective is the minimiser.
    """
    zero = np.zeros_like(ca)
    cands = [
        (zero, zero),
        (-np.sign(ca) * np.maximum(np.abs(ca) - 1.0, 0.0) / haa, zero),
        (zero, -np.sign(cb) * np.maximum(np.abs(cb) - 1.0, 0.0) / hbb),
    ]
    det = haa * hbb - hab * hab
    with np.errstate(divide="ignore", invalid="ignore"):
        for sa in (-1.0, 1.0):
            for sb in (-1.0, 1.0):
                ua, ub = ca + sa, cb + sb
                cands.append(((-hbb * ua + hab * ub) / det, (-haa * ub + hab * ua) / det))
        va = np.stack([x for x, _ in cands])
        vb = np.stack([y for _, y in cands])
        obj = ca * va + cb * vb + 0.5 * (haa * va * va + 2 * hab * va * vb + hbb * vb * vb) + np.abs(va) + np.abs(vb)
    obj[~np.isfinite(obj)] = np.inf
    pick = np.argmin(obj, axis=0)
    cols = np.arange(ca.size)
    return va[pick, cols], vb[pick, cols]
