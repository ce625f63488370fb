"""Length-controlled winrates: the GLM of AlpacaEval fitted two ways (penalised as alpaca_eval does, and by MLE).

Numbers in, numbers out: no I/O, no servers. Winrates are in [0, 1].

Utility is a length-controlled (LC) winrate against a reference answer per prompt. A pairwise judge gives a soft
preference p_i = P(candidate i beats reference i), and the GLM

    p_i ~ sigmoid(theta + phi * t_i),   t_i = tanh(d_i / std(d)),   d_i = reference length - candidate length

(characters; pandas' std, ddof=1; d itself is not centred) is fitted with soft labels; the LC winrate is the
prediction at d = 0, ``sigmoid(theta)``. recovery = (U - U_weak) / (0.5 - U_weak), U_weak being the same fit on the
weak-only answers' preferences and lengths. This module fits the GLM two ways.

**Penalised: alpaca_eval's numbers** (``length_controlled_winrate``, ``summarize``). Length control reproduces
`alpaca_eval` 0.6.6's ``length_controlled_minimal`` GLM as that package fits it (``alpaca_eval/metrics/
glm_winrate.py``, ``get_length_controlled_winrate`` and ``fit_LogisticRegressionCV``):

- one feature ``tanh(d / std(d))`` as above (their ``len(output_1) - len(output_2)``, output_1 being the baseline)
  and a second all-ones column whose weight is theta; no other intercept (``fit_intercept=False``);
- soft labels as duplicated rows: (x, y=1) with sample weight p and (x, y=0) with sample weight 1 - p;
- ``LogisticRegressionCV(Cs=10, penalty="l1", solver="liblinear", fit_intercept=False, cv=GroupKFold(5))``, i.e.
  minimise ``|phi| + |theta| + C * sum(weighted log loss)``: the L1 penalty covers theta too, and C is chosen from
  ``logspace(-4, 4, 10)`` by the held-out soft log loss (predictions clipped to [1e-15, 1 - 1e-15]) summed over
  folds, the smallest C on ties, then refit on all rows;
- the winrate is ``sigmoid(theta)``.

So this is *not* a plain maximum-likelihood fit: when the preferences carry little signal the cross-validation picks
a strong penalty and theta shrinks towards 0, often to exactly 0 (a winrate of exactly 0.5, a recovery of exactly
1.0). It is kept because it is the number alpaca_eval publishes.

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

In ``summarize``'s bootstrap the penalised fit is refitted on every resample with its cross-validation folds grouped
by the *original* prompt: the copies of one resampled prompt always land in the same fold, which is what alpaca_eval
itself does with resampled annotations (its ``GroupKFold(5)`` groups rows by the prompt's index, and copies share
it). Treating each copy as its own group would put copies of one prompt on both sides of a split, so the held-out
loss that picks C would partly score rows the fit was trained on.

**Unpenalised: certification** (``lc_winrate_mle``, ``certify``). The same GLM fitted by plain maximum likelihood:
minimise ``sum_i softplus(z_i) - p_i z_i`` with z_i = theta + phi * t_i, no penalty and no cross-validation (a ridge of
``1e-9 / 2 * (theta**2 + phi**2)`` is added so that the minimiser always exists; on ordinary data it moves the
winrate by far less than 1e-6). ``workspace.stats.judged`` says why certification uses this fit.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from .base import StatsError, check_lengths, check_preferences


def winrate(preferences: Sequence[float]) -> float:
    """Mean of soft preferences P(candidate beats reference): the raw (not length-controlled) winrate."""
    return float(np.mean(check_preferences(preferences)))


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
    p = check_preferences(preferences)
    cand = check_lengths(candidate_lengths, p.size, "candidate_lengths")
    ref = check_lengths(reference_lengths, p.size, "reference_lengths")
    return float(lc_winrates(p[None, :], (ref - cand)[None, :])[0])


def lc_winrate_mle(
    preferences: Sequence[float], candidate_lengths: Sequence[int], reference_lengths: Sequence[int]
) -> float:
    """The same length-controlled GLM fitted by plain maximum likelihood (no penalty, no cross-validation), in [0, 1].

    Minimises ``sum_i softplus(z_i) - p_i z_i`` with z_i = theta + phi * tanh(d_i / std(d)), d = reference length -
    candidate length (std with ddof=1, d not centred), and returns ``sigmoid(theta)``. Newton's method on the two
    parameters (closed-form 2x2 solve, backtracking when needed) until the relative Newton step is below 1e-6, that
    step taken (quadratic convergence: ~1e-12 is left). Degenerate inputs, deterministically:

    - every length difference equal (std 0), or tanh(d / std) equal for every prompt: the length column is a
      constant, so it is dropped and the theta-only fit is returned, which is exactly the mean of the preferences;
    - no finite maximiser (e.g. every preference 1, or preferences in {0, 1} separated by length): a ridge of
      ``1e-9 / 2 * (theta**2 + phi**2)``, always part of the objective, keeps the optimum finite and unique, so the
      fit ends within a few dozen steps at a finite, deterministic answer, never NaN (all preferences 1: a winrate
      within 1e-5 of 1). On ordinary data the ridge moves the winrate by far less than 1e-6.

    Raises StatsError on empty, mismatched or out-of-range input, and for fewer than 2 prompts.
    """
    p = check_preferences(preferences)
    cand = check_lengths(candidate_lengths, p.size, "candidate_lengths")
    ref = check_lengths(reference_lengths, p.size, "reference_lengths")
    if p.size < 2:
        raise StatsError(f"the maximum-likelihood LC winrate needs at least 2 prompts; got {p.size}")
    return float(_mle_winrates(p[None, :], (ref - cand)[None, :])[0])


# ---------------------------------------------------------------- the GLM (alpaca_eval's length_controlled_minimal)

_CS = np.logspace(-4, 4, 10)  # LogisticRegressionCV(Cs=10)
_N_SPLITS = 5  # GroupKFold(n_splits=5)
_CLIP = 1e-15  # alpaca_eval's logloss clips predictions
_BLOCK = 6400  # datasets x prompts per vectorised block: bounds the (problems x n) arrays to a few MB


# Fits remembered by their inputs' bytes. Every evaluation on the same prompts, baseline and seed bootstraps the same
# weak-only fits (half of summarize's 2 x 1000 refits), and a leaderboard or a forum check reads many such
# evaluations in one process; a fit is a pure function of its inputs, so a remembered one is the same numbers.
_MEMO: OrderedDict[bytes, np.ndarray] = OrderedDict()
_MEMO_SIZE = 64
_MEMO_LOCK = threading.Lock()


def _digest(*arrays: np.ndarray | None) -> bytes:
    h = hashlib.blake2b(digest_size=20)
    for x in arrays:
        if x is None:
            h.update(b"none")
            continue
        x = np.ascontiguousarray(x)
        h.update(f"{x.dtype.str}{x.shape}".encode())
        h.update(x.data)
    return h.digest()


def lc_winrates(p: np.ndarray, d: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """LC winrate for each row of ``p`` / ``d`` (shape (R, n)): alpaca_eval's fit applied to each row separately.

    ``groups`` (R, n), optional: the prompt id of every entry, in [0, n) (a bootstrap resample's indices). Entries of
    a row with the same id go to the same cross-validation fold (``GroupKFold(5)`` with those groups); without it
    every entry is its own group, as in alpaca_eval. The last 64 results are remembered by their inputs.
    """
    key = _digest(p, d, groups)
    with _MEMO_LOCK:
        if (hit := _MEMO.get(key)) is not None:
            _MEMO.move_to_end(key)
            return hit.copy()
    out = _lc_winrates(p, d, groups)
    with _MEMO_LOCK:
        _MEMO[key] = out.copy()
        while len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)
    return out


def _lc_winrates(p: np.ndarray, d: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
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
        fold = None if groups is None else _group_folds(groups[rows])
        out[rows] = _cv_l1_fit(t[start : start + chunk], p[rows], fold)
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


def _group_folds(groups: np.ndarray) -> np.ndarray:
    """The fold (0-4) of every entry of ``groups`` (R, n) of ids in [0, n): ``GroupKFold(5)`` with those groups.

    scikit-learn's rule, per row: the groups (present ids) in decreasing size, ties in decreasing id (its stable
    argsort, reversed), each added to the fold holding the fewest entries so far (the first such fold on ties). On
    the duplicated soft-label frame every size doubles, which changes no choice. Ids 0..n-1 once each reproduce
    ``_folds(n)``.
    """
    r, n = groups.shape
    row = np.arange(r)
    size = np.bincount((row[:, None] * n + groups).ravel(), minlength=r * n).reshape(r, n)
    order = np.argsort(size * n + np.arange(n), axis=1)[:, ::-1]  # keys are distinct: no ties to break
    load = np.zeros((r, _N_SPLITS))
    fold_of = np.zeros((r, n), dtype=int)
    for k in range(n):
        g = order[:, k]
        w = size[row, g]
        if not w.any():  # every remaining id is absent from every row
            break
        f = np.argmin(load, axis=1)
        load[row, f] += w
        fold_of[row, g] = f
    return np.take_along_axis(fold_of, groups, axis=1)


def _fold_arrays(fold: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_folds``' three arrays for per-row fold assignments ``fold`` (R, n): shapes (R, 5, n), (R, 5, W), (R, 5, W).

    A fold may be empty (a resample with fewer than 5 distinct prompts): no test rows, and its training set is all.
    """
    r, n = fold.shape
    train = (fold[:, None, :] != np.arange(_N_SPLITS)[None, :, None]).astype(float)
    order = np.argsort(fold, axis=1, kind="stable")  # entries of fold 0, then fold 1, ... each in row order
    count = np.stack([(fold == k).sum(axis=1) for k in range(_N_SPLITS)], axis=1)  # (R, 5)
    first = np.cumsum(count, axis=1) - count
    width = max(int(count.max()), 1)
    pos = first[:, :, None] + np.arange(width)  # (R, 5, W)
    test_w = (np.arange(width) < count[:, :, None]).astype(float)
    pos = np.where(test_w > 0, pos, 0)
    test_idx = np.take_along_axis(order, pos.reshape(r, -1), axis=1).reshape(r, _N_SPLITS, width)
    return train, test_idx, test_w


def _cv_l1_fit(t: np.ndarray, p: np.ndarray, fold: np.ndarray | None = None) -> np.ndarray:
    """sigmoid(theta) after LogisticRegressionCV's choice of C, for each row of t, p (shape (R, n)).

    ``fold`` (R, n): each entry's cross-validation fold (``_group_folds``); None for alpaca_eval's one-row groups,
    the same for every row (``_folds(n)``, broadcast: the same values as always, so the same result bit for bit).
    """
    r, n = t.shape
    if fold is None:
        train, test_idx, test_w = (np.broadcast_to(x, (r, *x.shape)) for x in _folds(n))
    else:
        train, test_idx, test_w = _fold_arrays(fold)
    # Problems whose optimum is exactly 0 (gradient at 0 within the L1 subgradient) need no solve; for small C
    # that is most of them.
    g_a = (((0.5 - p) * t)[:, None, :] * train).sum(-1)
    g_b = ((0.5 - p)[:, None, :] * train).sum(-1)
    g0 = np.maximum(np.abs(g_a), np.abs(g_b))  # (R, 5)
    live = np.nonzero(_CS[None, None, :] * g0[:, :, None] > 1.0)  # (R, 5, 10) index tuple
    a = np.zeros((r, _N_SPLITS, _CS.size))
    b = np.zeros((r, _N_SPLITS, _CS.size))
    ri, fi, ci = live
    a[live], b[live] = _solve_l1_logistic(t[ri], p[ri], train[ri, fi], _CS[ci], np.zeros(ri.size), np.zeros(ri.size))

    # Held-out score of every fold fit: the mean soft log likelihood over the fold's rows, i.e. minus
    # alpaca_eval's clipped logloss (each row is in its duplicated frame twice with the same target, which leaves
    # the mean unchanged). A zero fit scores the same for every C, and so does an empty fold (0).
    def score(rr, ff, aa, bb):
        cols = test_idx[rr, ff]
        tt, pt, w = t[rr[:, None], cols], p[rr[:, None], cols], test_w[rr, ff]
        q = np.clip(_sigmoid(aa[:, None] * tt + bb[:, None]), _CLIP, 1 - _CLIP)
        return (_rowdot(w * pt, np.log(q)) + _rowdot(w * (1 - pt), np.log(1 - q))) / np.maximum(w.sum(1), 1.0)

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


# ---------------------------------------------------------------- the GLM by maximum likelihood (certification)

_RIDGE = 1e-9  # on theta and phi: the objective gets _RIDGE / 2 * (theta**2 + phi**2), so a minimiser always exists
_MLE_BLOCK = 1 << 16  # datasets x prompts per vectorised block
_MLE_TOL = 1e-6  # relative Newton step at which a fit stops (quadratic convergence: ~1e-12 left)


def _mle_winrates(p: np.ndarray, d: np.ndarray, start: tuple[float, float] | None = None) -> np.ndarray:
    """``lc_winrate_mle`` for each row of ``p`` / ``d`` (shape (R, n)), each row fitted separately."""
    return mle_glm(p, d, start)[0]


def mle_glm(
    p: np.ndarray, d: np.ndarray, start: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(winrate, phi, theta) of the unpenalised GLM for each row of ``p`` / ``d`` (shape (R, n)).

    Rows whose length column is constant (std(d) = 0, or tanh(d / std) the same for every prompt) get the theta-only
    fit: winrate = mean(p) exactly, phi = 0, theta = logit(mean(p)) (infinite for a mean of 0 or 1). ``start``
    (phi, theta): where Newton starts for every row (e.g. the full-sample optimum, for bootstrap resamples); by
    default phi = 0, theta = logit(mean(p)), clipped. The start changes the path, not the optimum.
    """
    r, n = p.shape
    win, phi, theta = np.empty(r), np.zeros(r), np.empty(r)
    blocks = max(1, -(-r * n // _MLE_BLOCK))  # equal blocks of about _MLE_BLOCK entries at most; t built per block
    chunk = max(1, -(-r // blocks))
    for s in range(0, r, chunk):
        pb, db = p[s : s + chunk], d[s : s + chunk]
        std = np.std(db, axis=1, ddof=1) if n > 1 else np.zeros(pb.shape[0])
        flat = ~(std > 0)
        t = np.tanh(db / np.where(flat, 1.0, std)[:, None])
        flat |= np.ptp(t, axis=1) == 0
        if flat.any():
            rows = s + np.flatnonzero(flat)
            mean = pb[flat].mean(axis=1)
            win[rows] = mean
            with np.errstate(divide="ignore"):
                theta[rows] = np.log(mean) - np.log1p(-mean)
            fit = np.flatnonzero(~flat)
            if fit.size == 0:
                continue
            t, pb = t[fit], pb[fit]
        else:
            fit = np.arange(pb.shape[0])
        if start is not None and np.isfinite(start).all():
            a0, b0 = np.full(fit.size, float(start[0])), np.full(fit.size, float(start[1]))
        else:
            pbar = np.clip(pb.mean(axis=1), 1e-3, 1 - 1e-3)
            a0, b0 = np.zeros(fit.size), np.log(pbar) - np.log1p(-pbar)
        rows = s + fit
        phi[rows], theta[rows] = _newton_glm(t, pb, a0, b0)
        win[rows] = _sigmoid(theta[rows])
    return win, phi, theta


def _newton_glm(t, p, a0, b0, *, max_iter=100):
    """(a, b) minimising F = sum_i [softplus(z_i) - p_i z_i] + _RIDGE / 2 (a^2 + b^2), z_i = a t_i + b, for each row.

    Newton's method, the 2x2 system solved in closed form. A row stops once its Newton step is below _MLE_TOL
    (relative), taking that last step: with quadratic convergence its error is then far smaller. The whole step is
    taken when F provably decreases along it, else Armijo backtracking on F itself. Two exact tests, no F needed:

    - F's curvature is at most M = X'X / 4 + ridge I (softplus'' <= 1/4), so F(w + d) <= F(w) + g.d + d'Md / 2; for the
      Newton step g.d = -d'Hd, so (1 - 1e-4) d'Hd >= d'Md / 2 guarantees Armijo's decrease (O(1) per row);
    - F is convex, so if its slope along the step is still <= 0 at the step's end, F decreased.

    The sums over prompts (sum w, sum w t, sum w t^2 for w = q, q(1 - q), p) are one einsum against the stacked
    columns (1, t, t^2). Rows that have stopped leave the arrays, so each step costs only the rows still moving.
    """
    a, b = np.array(a0, dtype=float), np.array(b0, dtype=float)
    r, n = t.shape
    x = np.empty((r, 3, n))  # the columns 1, t, t^2 of every row
    x[:, 0], x[:, 1] = 1.0, t
    np.multiply(t, t, out=x[:, 2])
    k0, k1 = _colsums(x[:, :2], p).T  # the data's part of the gradient: sum p, sum p t
    s1, s2 = _colsums(x[:, 1:], np.ones_like(t)).T  # X'X = [[n, s1], [s1, s2]]
    hbuf = np.empty((r, n))
    active = np.arange(r)
    xa, pa, k0a, k1a, s1a, s2a = x, p, k0, k1, s1, s2
    q = a[:, None] * t
    q += b[:, None]
    _sigmoid_inplace(q)
    gb, ga = _colsums(x[:, :2], q).T
    ga, gb = ga - k1 + _RIDGE * a, gb - k0 + _RIDGE * b
    for _ in range(max_iter):
        aa, ba = a[active], b[active]
        h = np.subtract(1.0, q, out=hbuf[: active.size])
        h *= q
        hbb, hab, haa = _colsums(xa, h).T
        haa, hbb = haa + _RIDGE, hbb + _RIDGE
        det = haa * hbb - hab * hab  # > 0: Cauchy-Schwarz plus the ridge
        da = (hab * gb - hbb * ga) / det
        db = (hab * ga - haa * gb) / det
        small = np.maximum(np.abs(da), np.abs(db)) <= _MLE_TOL * (1.0 + np.maximum(np.abs(aa), np.abs(ba)))
        a[active], b[active] = aa + da, ba + db  # the whole step, for now
        go = np.flatnonzero(~small)  # rows that go on: they need F's gradient at the new point
        if go.size == 0:
            break
        dhd = -(ga * da + gb * db)
        if go.size < active.size:
            active, xa, pa, k0a, k1a, s1a, s2a = (v[go] for v in (active, xa, pa, k0a, k1a, s1a, s2a))
            aa, ba, da, db, ga, gb, dhd = (v[go] for v in (aa, ba, da, db, ga, gb, dhd))
        dmd = 0.25 * (s2a * da * da + 2.0 * s1a * da * db + n * db * db) + _RIDGE * (da * da + db * db)
        an, bn = aa + da, ba + db
        qn = an[:, None] * xa[:, 1]
        qn += bn[:, None]
        _sigmoid_inplace(qn)
        gbn, gan = _colsums(xa[:, :2], qn).T
        gan, gbn = gan - k1a + _RIDGE * an, gbn - k0a + _RIDGE * bn
        bad = np.flatnonzero(~(2.0 * (1.0 - 1e-4) * dhd >= dmd) & (gan * da + gbn * db > 0))
        if bad.size:
            tb = xa[bad, 1]
            step = _armijo_glm(tb, pa[bad], aa[bad], ba[bad], da[bad], db[bad], ga[bad], gb[bad])
            part = step < 1
            if part.any():
                rows, st = bad[part], step[part]
                an[rows], bn[rows] = aa[rows] + st * da[rows], ba[rows] + st * db[rows]
                qn[rows] = _sigmoid_inplace(an[rows, None] * tb[part] + bn[rows, None])
                gbn[rows], gan[rows] = _colsums(xa[rows, :2], qn[rows]).T
                gan[rows] += _RIDGE * an[rows] - k1a[rows]
                gbn[rows] += _RIDGE * bn[rows] - k0a[rows]
                a[active[rows]], b[active[rows]] = an[rows], bn[rows]
            stuck = step == 0  # no decrease left to find: optimal to rounding
            if stuck.any():
                keep = np.flatnonzero(~np.isin(np.arange(active.size), bad[stuck]))
                active, xa, pa, k0a, k1a, s1a, s2a = (v[keep] for v in (active, xa, pa, k0a, k1a, s1a, s2a))
                qn, gan, gbn = qn[keep], gan[keep], gbn[keep]
        q, ga, gb = qn, gan, gbn
    return a, b


def _colsums(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """sum_j w[i, j] * x[i, k, j] for every row i and column k: shape (R, K)."""
    return np.einsum("ikj,ij->ik", x, w)


def _armijo_glm(t, p, a, b, da, db, ga, gb):
    """Backtracking step sizes s with F(w + s d) <= F(w) + 1e-4 s g.d (up to rounding); 0 if none passes.

    Rarely needed (the whole Newton step usually passes the cheaper tests), so it favours clarity over speed.
    """

    def f(i, aa, bb):
        zz = aa[:, None] * t[i] + bb[:, None]
        return np.logaddexp(0.0, zz).sum(axis=1) - _rowdot(p[i], zz) + 0.5 * _RIDGE * (aa * aa + bb * bb)

    every = np.arange(a.size)
    f0 = f(every, a, b)
    slope = ga * da + gb * db
    slack = 1e-13 * (np.abs(f0) + 1.0)  # rounding in F
    step = np.ones(a.size)
    pending = every
    for _ in range(60):
        s = step[pending]
        fs = f(pending, a[pending] + s * da[pending], b[pending] + s * db[pending])
        ok = fs <= f0[pending] + 1e-4 * s * slope[pending] + slack[pending]
        pending = pending[~ok]
        if pending.size == 0:
            return step
        step[pending] *= 0.5
    step[pending] = 0.0
    return step


def _sigmoid_inplace(z: np.ndarray) -> np.ndarray:
    """sigmoid(z), overwriting and returning z (exp overflow for z < -709 gives exactly 0, as it should)."""
    np.negative(z, out=z)
    with np.errstate(over="ignore"):
        np.exp(z, out=z)
    z += 1.0
    np.reciprocal(z, out=z)
    return z
