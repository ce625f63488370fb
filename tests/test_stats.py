"""Statistics of an evaluation (ARCHITECTURE.md “What is measured”): LC winrate against alpaca_eval's own fit,
recovery, bootstrap."""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections.abc import Sequence

import numpy as np
import pytest

from workspace.stats import (
    Certification,
    Interval,
    PairedSample,
    StatsError,
    Summary,
    certify,
    lc_winrate_mle,
    length_controlled_winrate,
    recovery,
    summarize,
    winrate,
)

# ---------------------------------------------------------------- synthetic data


def dataset(kind: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(preferences, candidate lengths, reference lengths) with soft preferences and varied lengths."""
    rng = np.random.default_rng(seed)
    ref = rng.integers(150, 3000, n)
    if kind == "length_biased":  # the judge likes longer answers; lengths independent
        cand = rng.integers(150, 3000, n)
        logit = 0.2 + 1.5 * np.tanh((cand - ref) / 900)
        p = np.clip(1 / (1 + np.exp(-logit)) + rng.normal(0, 0.1, n), 0, 1)
    elif kind == "candidate_longer":  # every candidate is 10%-150% longer than its reference
        cand = (ref * rng.uniform(1.1, 2.5, n)).astype(int)
        p = np.clip(0.5 * rng.beta(2, 2, n) + 0.4 * np.tanh((cand - ref) / 1000), 0, 1)
    elif kind == "candidate_shorter":  # every candidate 10%-60% shorter, and the judge likes length
        cand = (ref * rng.uniform(0.4, 0.9, n)).astype(int)
        p = np.clip(0.5 * rng.beta(2, 2, n) + 0.25 + 0.4 * np.tanh((cand - ref) / 1000), 0, 1)
    elif kind == "weak":  # a clearly worse, mostly shorter candidate
        cand = (ref * rng.uniform(0.3, 1.2, n)).astype(int)
        p = rng.beta(1.5, 4, n)
    elif kind == "near_parity":  # noise around 0.5: the cross-validation shrinks theta, often to exactly 0
        cand = rng.integers(150, 3000, n)
        p = rng.uniform(0, 1, n)
    else:
        raise AssertionError(kind)
    return p, cand, ref


def samples(n: int, seed: int, *, cand_mean: float = 0.4, weak_mean: float = 0.2) -> list[PairedSample]:
    """Paired samples with a real gap: the weak model loses clearly, the candidate less so."""
    rng = np.random.default_rng(seed)
    ref = rng.integers(300, 2500, n)
    weak_len = (ref * rng.uniform(0.4, 1.3, n)).astype(int)
    cand_len = (ref * rng.uniform(0.6, 1.3, n)).astype(int)
    weak_chars = (cand_len * rng.uniform(0.1, 0.9, n)).astype(int)

    def prefs(mean):
        k = 6.0
        return rng.beta(k * mean, k * (1 - mean), n)

    cp, wp = prefs(cand_mean), prefs(weak_mean)
    return [
        PairedSample(int(weak_chars[i]), int(cand_len[i] - weak_chars[i]), float(cp[i]), int(cand_len[i]),
                     float(wp[i]), int(weak_len[i]), int(ref[i]))
        for i in range(n)
    ]  # fmt: skip


# ---------------------------------------------------------------- alpaca_eval's own fit


@pytest.fixture(scope="module")
def alpaca_eval_lc(tmp_path_factory):
    """alpaca_eval 0.6.6's `get_length_controlled_winrate(glm_name="length_controlled_minimal")`, called for real.

    Its featurisation downloads `df_gamed.csv` from the Hub only for `instruction_difficulty`, a column the minimal
    formula does not use; the download is replaced by a local file of zeros (no network in tests).
    """
    glm = pytest.importorskip("alpaca_eval.metrics.glm_winrate", reason="needs the alpaca-eval package (dev extra)")
    import pandas as pd
    import sklearn

    gamed = tmp_path_factory.mktemp("alpaca_eval") / "df_gamed.csv"
    pd.DataFrame({"index": np.arange(5000), "instruction_difficulty": 0.0, "model": "none"}).to_csv(gamed, index=False)
    mp = pytest.MonkeyPatch()
    mp.setattr(glm, "hf_hub_download", lambda *a, **k: str(gamed))

    def lc(preferences, candidate_lengths, reference_lengths) -> float:
        n = len(preferences)
        annotations = pd.DataFrame(
            {
                # alpaca_eval's encoding: 1 = output_1 (the baseline) wins, 2 = output_2 (the model) wins
                "preference": 1.0 + np.asarray(preferences, dtype=float),
                "output_1": ["r" * int(x) for x in reference_lengths],
                "output_2": ["c" * int(x) for x in candidate_lengths],
                "generator_1": "reference",
                "generator_2": "candidate",
                "index": np.arange(n),
                "annotator": "judge",
            }
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-learn deprecation notices about alpaca_eval's arguments
            metrics = glm.get_length_controlled_winrate(
                annotations, glm_name="length_controlled_minimal", save_weights_dir=None, is_warn_extreme_changes=False
            )
        return metrics["length_controlled_winrate"] / 100  # alpaca_eval reports percent

    yield lc
    mp.undo()
    sklearn.set_config(enable_metadata_routing=False)  # alpaca_eval switches it on globally


CASES = [
    (kind, n, seed)
    for kind in ("length_biased", "candidate_longer", "candidate_shorter", "weak")
    for n in (20, 100)
    for seed in (0, 1)
]
# (odd sizes among them: alpaca_eval's folds on n not a multiple of 5)
CASES += [("near_parity", 100, 0), ("near_parity", 40, 3), ("length_biased", 37, 2), ("candidate_longer", 103, 2)]


@pytest.mark.slow  # importing alpaca_eval (pandas, scikit-learn) takes seconds; the GLM's own tests stay fast
@pytest.mark.parametrize("kind, n, seed", CASES)
def test_lc_winrate_equals_alpaca_eval_length_controlled_minimal(alpaca_eval_lc, kind, n, seed):
    p, cand, ref = dataset(kind, n, seed)
    ours = length_controlled_winrate(p, cand, ref)
    theirs = alpaca_eval_lc(p, cand, ref)
    assert abs(ours - theirs) <= 1e-3, (ours, theirs)


def test_remembered_fits_are_the_fits_of_those_inputs_and_not_shared():
    from workspace.stats import glm

    p, cand, ref = dataset("length_biased", 40, 3)
    d = (ref - cand)[None, :].repeat(3, axis=0)
    pp = np.stack([p, p[::-1], np.clip(p + 0.1, 0, 1)])
    first = glm.lc_winrates(pp, d)
    np.testing.assert_array_equal(first, glm._lc_winrates(pp, d, None))
    first[:] = -1.0  # a caller writing into its result must not change what the next caller gets
    again = glm.lc_winrates(pp, d)
    np.testing.assert_array_equal(again, glm._lc_winrates(pp, d, None))
    # Other inputs (one preference moved, or groups given) are fitted, not answered from the memo.
    moved = pp.copy()
    moved[0, 0] = 1.0 - moved[0, 0]
    assert glm.lc_winrates(moved, d)[0] == glm._lc_winrates(moved, d, None)[0]
    groups = np.tile(np.arange(40), (3, 1))
    np.testing.assert_array_equal(glm.lc_winrates(pp, d, groups), glm._lc_winrates(pp, d, groups))


@pytest.mark.slow  # imports scikit-learn (seconds)
def test_folds_are_groupkfold_on_alpaca_evals_duplicated_rows():
    model_selection = pytest.importorskip("sklearn.model_selection", reason="needs scikit-learn (dev extra)")
    from workspace.stats.glm import _folds

    for n in (5, 7, 23, 100, 101):
        groups = np.tile(np.arange(n), 2)  # alpaca_eval's frame: every prompt twice (y=1, y=0), grouped by prompt
        splits = model_selection.GroupKFold(n_splits=5).split(groups, groups=groups)
        theirs = [sorted(set(groups[test].tolist())) for _, test in splits]
        train, test_idx, test_w = _folds(n)
        ours = [sorted(test_idx[k][test_w[k] > 0].tolist()) for k in range(5)]
        assert ours == theirs, n
        for k in range(5):
            assert np.flatnonzero(train[k] == 0).tolist() == ours[k]


def test_lc_winrate_corrects_for_length_unlike_the_raw_winrate():
    # The equality above means something only if length control moves the number: here it moves it a lot (on two
    # of its cases, candidate_longer-100-0 and candidate_shorter-100-0).
    p, cand, ref = dataset("candidate_longer", 100, 0)
    lc, raw = length_controlled_winrate(p, cand, ref), winrate(p)
    assert lc < raw - 0.05
    # and the other way: a systematically shorter candidate, penalised for it, is raised by length control
    p, cand, ref = dataset("candidate_shorter", 100, 0)
    lc, raw = length_controlled_winrate(p, cand, ref), winrate(p)
    assert lc > raw + 0.05


# ---------------------------------------------------------------- degenerate inputs


def test_equal_lengths_give_exactly_the_plain_mean():
    p = np.random.default_rng(7).uniform(0, 1, 30)
    lengths = np.random.default_rng(8).integers(10, 2000, 30)
    assert length_controlled_winrate(p, lengths, lengths) == float(np.mean(p))
    # a constant difference is just as uninformative as none
    assert length_controlled_winrate(p, lengths + 17, lengths) == float(np.mean(p))


def test_saturated_length_feature_is_a_constant_too():
    # every candidate ~1000 chars longer, +-1: tanh(d / std) is -1.0 for every prompt, a second intercept
    rng = np.random.default_rng(3)
    ref = rng.integers(500, 2000, 50)
    cand = ref + 1000 + rng.integers(0, 2, 50)
    p = rng.beta(6, 2, 50)
    shifted = ref + 3000 + rng.integers(0, 2, 50)  # a different saturated difference: same constant column
    assert length_controlled_winrate(p, cand, ref) == length_controlled_winrate(p, shifted, ref)
    assert abs(length_controlled_winrate(p, cand, ref) - np.mean(p)) < 0.01


def test_always_defer_recovers_exactly_one():
    # candidate == reference on every prompt: identical pairs score 0.5 without a judge
    base = samples(40, seed=1)
    always = [dataclasses.replace(s, weak_chars=0, strong_chars=s.reference_length, preference=0.5,
                                  candidate_length=s.reference_length) for s in base]  # fmt: skip
    assert (
        length_controlled_winrate([0.5] * 40, [s.reference_length for s in base], [s.reference_length for s in base])
        == 0.5
    )
    s = summarize(always, n_boot=200)
    assert s.utility == 0.5 and s.u_weak < 0.5
    assert s.recovery == 1.0
    assert s.f_weak == 0.0
    assert s.ci["recovery"] == Interval(1.0, 1.0, 0.95)  # every resample is at parity too


def test_never_defer_recovers_exactly_zero():
    # candidate == weak-only answer on every prompt: same preferences, same lengths
    base = samples(60, seed=2)
    never = [dataclasses.replace(s, weak_chars=s.weak_length, strong_chars=0, preference=s.weak_preference,
                                 candidate_length=s.weak_length) for s in base]  # fmt: skip
    s = summarize(never, n_boot=300)
    assert s.utility == s.u_weak  # bit-identical: one code path on equal arrays
    assert s.recovery == 0.0
    assert s.f_weak == 1.0
    assert s.ci["recovery"] == Interval(0.0, 0.0, 0.95)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("prefs", "cand", "ref", "match"),
    [
        ([], [], [], "empty"),
        ([0.2, 1.2, 0.5, 0.5, 0.5], [1, 2, 3, 4, 5], [5, 4, 3, 2, 1], r"\[0, 1\]; item 1"),
        ([0.2, -0.1, 0.5, 0.5, 0.5], [1, 2, 3, 4, 5], [5, 4, 3, 2, 1], r"\[0, 1\]; item 1"),
        ([0.2, math.nan, 0.5, 0.5, 0.5], [1, 2, 3, 4, 5], [5, 4, 3, 2, 1], r"\[0, 1\]; item 1"),
        ([0.2, 0.3, 0.5, 0.5, 0.5], [1, 2, 3, 4], [5, 4, 3, 2, 1], "candidate_lengths has 4 items"),
        ([0.2, 0.3, 0.5, 0.5, 0.5], [1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], "reference_lengths has 6 items"),
        ([0.2, 0.3, 0.5, 0.5, 0.5], [1, -2, 3, 4, 5], [5, 4, 3, 2, 1], "non-negative"),
        ([0.2, 0.3, 0.5], [1, 2, 3], [5, 4, 3], "at least 5 prompts"),
    ],
)
def test_bad_input_is_a_clear_stats_error(prefs, cand, ref, match):
    with pytest.raises(StatsError, match=match):
        length_controlled_winrate(prefs, cand, ref)


def test_winrate_is_the_mean_and_checks_its_input():
    assert winrate([0.25, 1.0, 0.0, 0.5]) == pytest.approx(1.75 / 4)
    with pytest.raises(StatsError, match="empty"):
        winrate([])
    with pytest.raises(StatsError, match=r"\[0, 1\]"):
        winrate([0.5, 2.0])


def test_recovery_formula_and_undefined_gap():
    assert recovery(0.45, 0.2) == pytest.approx(0.25 / 0.3)
    assert recovery(0.2, 0.2) == 0.0
    assert recovery(0.6, 0.3, u_strong=0.6) == 1.0
    for u_weak in (0.5, 0.55):
        with pytest.raises(StatsError, match="gap"):
            recovery(0.4, u_weak)
    with pytest.raises(StatsError, match="finite"):
        recovery(math.nan, 0.2)


def test_summarize_rejects_bad_samples_and_settings():
    good = samples(10, seed=0)
    with pytest.raises(StatsError, match="at least one sample"):
        summarize([])
    with pytest.raises(StatsError, match="preference"):
        summarize([dataclasses.replace(good[0], preference=1.5), *good[1:]])
    with pytest.raises(StatsError, match="level"):
        summarize(good, level=95)


# ---------------------------------------------------------------- summary and bootstrap


def test_point_estimates_are_the_public_functions_on_the_full_sample():
    data = samples(80, seed=4)
    s = summarize(data, n_boot=50)
    pref = [x.preference for x in data]
    assert s.n == 80
    assert s.utility == length_controlled_winrate(pref, [x.candidate_length for x in data],
                                                  [x.reference_length for x in data])  # fmt: skip
    assert s.u_weak == length_controlled_winrate([x.weak_preference for x in data], [x.weak_length for x in data],
                                                 [x.reference_length for x in data])  # fmt: skip
    assert s.raw_winrate == winrate(pref)
    assert s.recovery == recovery(s.utility, s.u_weak)
    assert 0.0 < s.recovery < 1.0


def test_f_weak_is_pooled_over_characters_not_a_mean_of_ratios():
    # hand count: weak chars 90 + 10 + 0 + 50 + 5 = 155 of 100 + 400 + 40 + 100 + 20 = 660 characters
    written = [(90, 10), (10, 390), (0, 40), (50, 50), (5, 15)]
    data = [PairedSample(w, s, 0.3 + 0.1 * i, w + s, 0.2, 80 + i, 100 + 7 * i) for i, (w, s) in enumerate(written)]
    s = summarize(data, n_boot=100)
    assert s.f_weak == 155 / 660
    mean_of_ratios = np.mean([w / (w + s) for w, s in written])
    assert abs(s.f_weak - mean_of_ratios) > 0.05


def test_intervals_contain_the_point_estimates_and_narrow_with_more_prompts():
    # 5x the prompts: intervals ~sqrt(5) = 2.2x narrower, well inside the 0.7 asked for below
    small, large = summarize(samples(40, seed=5), n_boot=200), summarize(samples(200, seed=6), n_boot=200)
    for s in (small, large):
        assert set(s.ci) == {"f_weak", "utility", "u_weak", "recovery"}
        assert s.recovery_dropped == 0
        for key in s.ci:
            assert s.ci[key].low <= getattr(s, key) <= s.ci[key].high, key
            assert s.ci[key].low < s.ci[key].high, key
    for key in ("f_weak", "utility", "u_weak", "recovery"):
        assert large.ci[key].high - large.ci[key].low < 0.7 * (small.ci[key].high - small.ci[key].low), key


def test_the_weak_baseline_moves_with_the_prompts():
    # u_weak gets its own interval from the same resamples, rather than being held at its point value
    s = summarize(samples(60, seed=8), n_boot=300)
    assert s.ci["u_weak"].high - s.ci["u_weak"].low > 0.02


def test_same_seed_same_summary_and_another_seed_other_intervals():
    data = samples(50, seed=9)
    a, b, c = (
        summarize(data, seed=3, n_boot=200),
        summarize(data, seed=3, n_boot=200),
        summarize(data, seed=4, n_boot=200),
    )
    assert isinstance(a, Summary)
    assert a == b
    assert (a.utility, a.u_weak, a.f_weak) == (c.utility, c.u_weak, c.f_weak)  # point estimates use no randomness
    assert a.ci != c.ci


def test_level_sets_the_interval_width():
    data = samples(50, seed=10)
    wide, narrow = summarize(data, n_boot=300, level=0.95), summarize(data, n_boot=300, level=0.5)
    assert narrow.ci["utility"].level == 0.5
    assert narrow.ci["utility"].high - narrow.ci["utility"].low < wide.ci["utility"].high - wide.ci["utility"].low


def test_resamples_without_a_gap_are_dropped_from_the_recovery_interval():
    # the weak model is about as good as the reference: the gap is often not positive
    data = samples(30, seed=11, cand_mean=0.55, weak_mean=0.5)
    s = summarize(data, n_boot=300)
    assert s.recovery_dropped > 0
    if s.recovery is None:
        assert s.u_weak >= 0.5
    else:
        assert s.u_weak < 0.5
    assert ("recovery" in s.ci) == (s.recovery_dropped < s.n_boot)


@pytest.mark.slow  # imports scikit-learn (seconds) for its GroupKFold
def test_bootstrap_folds_keep_the_copies_of_a_prompt_together():
    # summarize's bootstrap refits the penalised GLM on resamples; their CV folds are GroupKFold(5) with groups =
    # the original prompt ids, so the copies of one prompt never sit on both sides of a split
    model_selection = pytest.importorskip("sklearn.model_selection", reason="needs scikit-learn (dev extra)")
    from workspace.stats.glm import _group_folds

    rng = np.random.default_rng(12)
    for n in (5, 8, 23, 100):
        idx = rng.integers(0, n, size=(25, n))
        folds = _group_folds(idx)
        for r in range(25):
            for g in set(idx[r].tolist()):
                assert len(set(folds[r][idx[r] == g].tolist())) == 1
            groups = np.tile(idx[r], 2)  # alpaca_eval's duplicated frame
            if len(set(groups.tolist())) < 5:
                continue  # scikit-learn refuses; we leave a fold empty (it then scores 0 for every C)
            theirs = np.empty(2 * n, dtype=int)
            for k, (_, test) in enumerate(model_selection.GroupKFold(n_splits=5).split(groups, groups=groups)):
                theirs[test] = k
            assert theirs[:n].tolist() == folds[r].tolist() == theirs[n:].tolist(), (n, r)
        # one copy of every prompt: alpaca_eval's own folds
        assert _group_folds(np.arange(n)[None, :])[0].tolist() == ((n - 1 - np.arange(n)) % 5).tolist()


def test_one_copy_per_prompt_in_grouped_folds_gives_the_plain_fit():
    from workspace.stats.glm import _cv_l1_fit

    rng = np.random.default_rng(13)
    n = 60
    p, t = rng.uniform(0, 1, (20, n)), np.tanh(rng.normal(0, 1, (20, n)))
    fold = np.tile((n - 1 - np.arange(n)) % 5, (20, 1))
    assert np.array_equal(_cv_l1_fit(t, p), _cv_l1_fit(t, p, fold))


# ---------------------------------------------------------------- the unpenalised GLM (maximum likelihood)


def independent_mle(p, cand, ref) -> float:
    """The plain soft-label GLM fitted by scipy's BFGS, from the definition: sigmoid(theta)."""
    optimize = pytest.importorskip("scipy.optimize", reason="needs scipy (with the dev extra's scikit-learn)")
    p = np.asarray(p, dtype=float)
    d = np.asarray(ref, dtype=float) - np.asarray(cand, dtype=float)
    t = np.tanh(d / np.std(d, ddof=1))

    def loss(w):
        z = w[0] + w[1] * t
        return np.sum(np.logaddexp(0, z) - p * z)

    def grad(w):
        r = 1 / (1 + np.exp(-(w[0] + w[1] * t))) - p
        return np.array([r.sum(), r @ t])

    res = optimize.minimize(loss, np.zeros(2), jac=grad, method="BFGS", options={"gtol": 1e-10, "maxiter": 1000})
    return float(1 / (1 + np.exp(-res.x[0])))


@pytest.mark.parametrize(("kind", "n", "seed"), [(k, n, s) for k, n, s in CASES if k != "weak" or n == 100])
def test_mle_matches_an_independent_fit(kind, n, seed):
    p, cand, ref = dataset(kind, n, seed)
    assert abs(lc_winrate_mle(p, cand, ref) - independent_mle(p, cand, ref)) <= 1e-6


def test_mle_matches_an_independent_fit_on_random_data():
    rng = np.random.default_rng(14)
    for _ in range(10):
        n = int(rng.integers(10, 300))
        ref, cand = rng.integers(100, 3000, n), rng.integers(100, 3000, n)
        logit = rng.normal(0, 1.5) + rng.normal(0, 2) * np.tanh((cand - ref) / 900) + rng.normal(0, 1, n)
        p = 1 / (1 + np.exp(-logit))
        assert abs(lc_winrate_mle(p, cand, ref) - independent_mle(p, cand, ref)) <= 1e-6


def test_mle_is_not_pulled_to_one_half_like_the_penalised_fit():
    # near parity alpaca_eval's cross-validation sets theta to exactly 0; the MLE reports what the data say
    p, cand, ref = dataset("near_parity", 100, 0)
    assert length_controlled_winrate(p, cand, ref) == 0.5
    assert lc_winrate_mle(p, cand, ref) != 0.5
    # with a clear signal the two fits nearly agree
    p, cand, ref = dataset("weak", 100, 0)
    assert abs(lc_winrate_mle(p, cand, ref) - length_controlled_winrate(p, cand, ref)) < 0.01


def test_mle_degenerate_lengths_drop_the_length_column():
    rng = np.random.default_rng(15)
    p = rng.uniform(0, 1, 30)
    lengths = rng.integers(10, 2000, 30)
    assert lc_winrate_mle(p, lengths, lengths) == float(np.mean(p))  # std(d) == 0
    assert lc_winrate_mle(p, lengths + 17, lengths) == float(np.mean(p))  # a constant difference
    ref = rng.integers(500, 2000, 30)
    assert lc_winrate_mle(p, ref + 1000 + rng.integers(0, 2, 30), ref) == float(np.mean(p))  # tanh saturates
    assert lc_winrate_mle([0.5, 0.5], [3, 3], [3, 3]) == 0.5


def test_mle_without_a_finite_maximiser_stays_finite_and_deterministic():
    rng = np.random.default_rng(16)
    cand, ref = rng.integers(100, 3000, 50), rng.integers(100, 3000, 50)
    assert 1 - 1e-5 < lc_winrate_mle(np.ones(50), cand, ref) < 1
    assert 0 < lc_winrate_mle(np.zeros(50), cand, ref) < 1e-5
    separable = (cand > ref).astype(float)  # the longer answer always wins, with certainty: phi diverges
    first = lc_winrate_mle(separable, cand, ref)
    assert math.isfinite(first) and 0 <= first <= 1
    assert lc_winrate_mle(separable, cand, ref) == first
    t0 = time.perf_counter()
    out = lc_winrate_mle([1.0, 0.0], [1, 5], [5, 1])  # two prompts, separated
    assert math.isfinite(out) and time.perf_counter() - t0 < 1


@pytest.mark.parametrize(
    ("prefs", "cand", "ref", "match"),
    [
        ([], [], [], "empty"),
        ([0.2, 1.2, 0.5], [1, 2, 3], [3, 2, 1], r"\[0, 1\]; item 1"),
        ([0.2, math.nan, 0.5], [1, 2, 3], [3, 2, 1], r"\[0, 1\]; item 1"),
        ([0.2, 0.3, 0.5], [1, 2], [3, 2, 1], "candidate_lengths has 2 items"),
        ([0.2, 0.3, 0.5], [1, 2, 3], [3, 2], "reference_lengths has 2 items"),
        ([0.2, 0.3, 0.5], [1, -2, 3], [3, 2, 1], "non-negative"),
        ([0.2], [1], [3], "at least 2 prompts"),
    ],
)
def test_mle_bad_input_is_a_clear_stats_error(prefs, cand, ref, match):
    with pytest.raises(StatsError, match=match):
        lc_winrate_mle(prefs, cand, ref)


def test_mle_bootstrap_sized_batches_are_fast():
    from workspace.stats.glm import _mle_winrates

    p, cand, ref = dataset("length_biased", 100, 0)
    idx = np.random.default_rng(17).integers(0, 100, size=(1000, 100))
    pp, dd = p[idx], (ref - cand)[idx].astype(float)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        _mle_winrates(pp, dd)
        best = min(best, time.perf_counter() - t0)
    assert best < 0.5, best


# ---------------------------------------------------------------- certify


def certify_samples(data: Sequence[PairedSample], **kw) -> Certification:
    return certify([s.preference for s in data], [s.weak_preference for s in data],
                   [s.candidate_length for s in data], [s.weak_length for s in data],
                   [s.reference_length for s in data], **kw)  # fmt: skip


def test_certify_is_deterministic_for_a_seed():
    data = samples(60, seed=18, cand_mean=0.45)
    a, b, c = certify_samples(data, seed=5), certify_samples(data, seed=5), certify_samples(data, seed=6)
    assert a == b
    assert (a.utility, a.u_weak, a.recovery) == (c.utility, c.u_weak, c.recovery)  # point values use no randomness
    assert a.recovery_lower != c.recovery_lower
    assert a.n == 60 and a.n_boot == 1000 and a.seed == 5 and (a.bar, a.floor, a.level) == (0.98, 0.8, 0.95)


def test_certify_never_defer_recovers_zero_and_is_not_certified():
    base = samples(60, seed=19)
    never = [dataclasses.replace(s, preference=s.weak_preference, candidate_length=s.weak_length) for s in base]
    c = certify_samples(never)
    assert c.utility == c.u_weak  # bit-identical: one code path on equal arrays
    assert c.recovery == 0.0 and c.recovery_lower == 0.0
    assert not c.certified
    assert c.reasons == (
        "recovery 0.000 is below the bar 0.98",
        "the one-sided 95% lower bound of recovery, 0.000, is below the floor 0.80",
    )


def test_certify_always_defer_recovers_exactly_one_and_is_certified():
    base = samples(60, seed=20)
    always = [dataclasses.replace(s, preference=0.5, candidate_length=s.reference_length) for s in base]
    c = certify_samples(always)
    assert c.utility == 0.5 and c.u_weak < 0.5
    assert c.recovery == 1.0 and c.recovery_lower == 1.0
    assert c.certified and c.reasons == ()
    assert c.utility_penalised == 0.5 and c.recovery_penalised == 1.0


def test_certify_gives_reasons_exactly_when_not_certified():
    seen = set()
    for i, (cand_mean, weak_mean, n) in enumerate(
        [(0.2, 0.2, 50), (0.35, 0.2, 50), (0.45, 0.2, 100), (0.5, 0.2, 200), (0.52, 0.15, 400), (0.5, 0.5, 30)]
    ):
        c = certify_samples(samples(n, seed=21 + i, cand_mean=cand_mean, weak_mean=weak_mean), n_boot=300)
        assert bool(c.reasons) == (not c.certified)
        assert c.certified == (c.recovery is not None and c.recovery >= c.bar and c.recovery_lower >= c.floor)
        seen.add(c.certified)
    assert seen == {True, False}


def test_certify_without_a_gap_has_nothing_to_recover():
    data = samples(40, seed=27, cand_mean=0.6, weak_mean=0.65)  # the weak model already beats the reference
    c = certify_samples(data, n_boot=300)
    assert c.u_weak >= 0.5 and c.recovery is None and not c.certified
    assert c.reasons[0].startswith("the weak model is not worse than the reference")
    assert c.dropped > 0.05 * c.n_boot and c.recovery_lower == -math.inf  # resamples without a gap are failures
    assert "lower bound of recovery is undefined" in c.reasons[1]
    out = c.to_json()
    assert out["recovery"] is None and out["recovery_lower"] is None
    json.dumps(out, allow_nan=False)


def test_certify_counts_resamples_without_a_gap_as_failures():
    from workspace.stats.rule import lower_quantile

    # resamples without a gap sit at -inf, below every defined recovery
    values = np.concatenate([np.linspace(0.5, 1.5, 97), [-np.inf] * 3])
    # numpy's linear quantile at position 0.05 * 99 = 4.95 of the sorted values: 1.95 into the finite ones
    assert lower_quantile(values, 0.05) == pytest.approx(np.quantile(values[:97], 1.95 / 96), abs=1e-12)
    assert lower_quantile(values, 0.02) == -math.inf  # position 1.98: among the failures
    finite = np.random.default_rng(34).normal(size=1000)
    assert lower_quantile(finite, 0.05) == pytest.approx(np.quantile(finite, 0.05), abs=1e-12)
    # a small gap: some resamples have none
    data = samples(30, seed=11, cand_mean=0.55, weak_mean=0.5)
    c = certify_samples(data, n_boot=400)
    assert c.dropped > 0
    assert not c.certified


def test_certification_to_json():
    c = certify_samples(samples(40, seed=28), n_boot=200)
    out = c.to_json()
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    assert set(out) == {f.name for f in dataclasses.fields(Certification)}
    assert out["reasons"] == list(c.reasons) and out["certified"] is c.certified


def test_certify_penalised_values_are_alpaca_evals_and_none_below_five_prompts():
    data = samples(40, seed=29)
    c = certify_samples(data, n_boot=100)
    s = summarize(data, n_boot=50)
    assert (c.utility_penalised, c.u_weak_penalised, c.recovery_penalised) == (s.utility, s.u_weak, s.recovery)
    small = certify_samples(samples(4, seed=30), n_boot=100)
    assert small.utility_penalised is None and small.recovery_penalised is None and small.recovery is not None


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"n_boot": 0}, "n_boot"),
        ({"level": 1.0}, "level"),
        ({"bar": math.nan}, "finite"),
        ({"floor": math.inf}, "finite"),
    ],
)
def test_certify_rejects_bad_settings(kw, match):
    with pytest.raises(StatsError, match=match):
        certify_samples(samples(10, seed=31), **kw)


def test_certify_rejects_bad_input():
    with pytest.raises(StatsError, match="at least 2 prompts"):
        certify([0.5], [0.2], [10], [10], [10])
    with pytest.raises(StatsError, match="pref_weak has 2 items"):
        certify([0.5, 0.5, 0.5], [0.2, 0.2], [10, 11, 12], [10, 11, 12], [10, 11, 12])
    with pytest.raises(StatsError, match="len_weak has 2 items"):
        certify([0.5, 0.5, 0.5], [0.2, 0.2, 0.2], [10, 11, 12], [10, 11], [10, 11, 12])
    with pytest.raises(StatsError, match=r"pref_candidate must be probabilities in \[0, 1\]"):
        certify([0.5, 1.5], [0.2, 0.2], [10, 11], [10, 11], [10, 11])


def test_summary_carries_the_certification():
    data = samples(50, seed=32, cand_mean=0.45)
    s = summarize(data, n_boot=200, seed=3)
    assert s.certification == certify_samples(data, n_boot=200, seed=3)
    assert summarize(samples(1, seed=33), n_boot=20).certification is None


# ---------------------------------------------------------------- the certification rule in simulation
#
# One simulated evaluation: n prompts, each with a reference answer, a weak-only answer and a candidate answer. An
# answer has a quality q ~ N(mu, 1) (the reference mu = 0) and a length: a per-prompt scale (lognormal around 1000
# characters, sd 0.5) times the answer's length ratio times lognormal noise (sd 0.3). The judge's soft preference
# for an answer over the prompt's reference is sigmoid(k * (q - q_ref + tanh((length - length_ref) / 500))): better
# answers win and so do longer ones, by up to 1 unit of quality (a length-biased judge). k is the judge's sharpness:
# 1 by default; 4 for a judge whose preferences are mostly near 0 or 1 (noisier per prompt, and the case where
# alpaca_eval's penalised fit most often shrinks to exactly 0.5). Weak-only answers: mu set for U_weak = 0.2, 0.7x
# the reference's length. The candidate at true recovery 0.8 is verbose (1.3x the reference's length: its raw
# winrate is ~0.50 although its LC winrate is 0.44); the candidate at parity is distributed exactly like the
# reference (mu = 0, ratio 1). The weak-only answer and the candidate are judged against the same reference.
# "True" values are the population values of the statistic being certified: the MLE LC fit on 200,000 prompts
# (the mu values below were found by bisection on 400,000).

SIM = {  # sharpness k: (mu of the weak-only answers, mu of the candidate at true recovery 0.8)
    1.0: (-1.8580190740167382, -0.3374993175448253),
    4.0: (-1.2296, -0.2262),
}
SIM_RUNS = 150  # simulated evaluations per scenario


def simulate(seed: int, runs: int, n: int, mu: float | None, ratio: float, sharpness: float = 1.0):
    """(pref_candidate, pref_weak, len_candidate, len_weak, len_reference), each of shape (runs, n).

    ``mu`` None: the candidate at true recovery 0.8 for this sharpness.
    """
    mu_weak, mu_08 = SIM[sharpness]
    rng = np.random.default_rng(seed)
    scale = 1000.0 * np.exp(rng.normal(0, 0.5, (runs, n)))
    len_ref = np.round(scale * np.exp(rng.normal(0, 0.3, (runs, n))))
    q_ref = rng.normal(0, 1, (runs, n))
    out = []
    for m, r in ((mu_weak, 0.7), (mu_08 if mu is None else mu, ratio)):
        length = np.round(scale * r * np.exp(rng.normal(0, 0.3, (runs, n))))
        logit = sharpness * (rng.normal(m, 1, (runs, n)) - q_ref + np.tanh((length - len_ref) / 500))
        out.append((1 / (1 + np.exp(-logit)), length))
    (pw, lw), (pc, lc) = out
    return pc, pw, lc, lw, len_ref


@pytest.mark.parametrize("sharpness", sorted(SIM))
@pytest.mark.slow
def test_the_simulated_truths(sharpness):
    pc, pw, lc, lw, lr = (x[0] for x in simulate(100, 1, 200_000, None, 1.3, sharpness))
    u_weak, u_08 = lc_winrate_mle(pw, lw, lr), lc_winrate_mle(pc, lc, lr)
    assert abs(u_weak - 0.2) < 0.005
    assert abs((u_08 - u_weak) / (0.5 - u_weak) - 0.8) < 0.015
    assert winrate(pc) > u_08 + 0.04  # the judge's length bias is real: the verbose candidate's raw winrate is higher
    assert winrate(pw) < u_weak - 0.02  # and it holds the shorter weak answers back
    pc, _, lc, _, lr = (x[0] for x in simulate(101, 1, 200_000, 0.0, 1.0, sharpness))
    assert abs(lc_winrate_mle(pc, lc, lr) - 0.5) < 0.005  # parity: the candidate is exchangeable with the reference


@pytest.fixture(scope="module")
def simulated_certifications():
    """certify (n_boot = 1000) on simulated evaluations of n = 100 prompts: SIM_RUNS per scenario."""
    out = {}
    for name, seed, mu, ratio, sharpness, runs in (
        ("0.8", 200, None, 1.3, 1.0, SIM_RUNS),
        ("parity", 201, 0.0, 1.0, 1.0, SIM_RUNS),
        ("0.8 sharp", 202, None, 1.3, 4.0, 100),
    ):
        pc, pw, lc, lw, lr = simulate(seed, runs, 100, mu, ratio, sharpness)
        out[name] = [certify(pc[i], pw[i], lc[i], lw[i], lr[i], seed=i) for i in range(runs)]
    return out


def certified_share(runs: list[Certification]) -> float:
    return float(np.mean([c.certified for c in runs]))


def old_rule_share(runs: list[Certification]) -> float:
    """How often the old rule (alpaca_eval's penalised point recovery >= 0.98) would have certified."""
    return float(np.mean([c.recovery_penalised is not None and c.recovery_penalised >= 0.98 for c in runs]))


@pytest.mark.slow
def test_rule_rarely_certifies_a_policy_whose_true_recovery_is_0_8(simulated_certifications):
    runs = simulated_certifications["0.8"]
    assert all(c.n == 100 and c.n_boot == 1000 for c in runs)
    assert certified_share(runs) <= 0.10
    assert abs(np.mean([c.recovery for c in runs]) - 0.8) < 0.03  # the MLE recovery is centred on the truth


@pytest.mark.slow
def test_rule_rarely_certifies_0_8_with_a_sharp_judge_where_the_old_rule_often_did(simulated_certifications):
    runs = simulated_certifications["0.8 sharp"]
    assert certified_share(runs) <= 0.10
    assert old_rule_share(runs) >= 0.25  # the penalised fit's shrinkage to recovery 1.0: the bug this rule fixes
    assert np.mean([c.recovery_penalised == 1.0 for c in runs]) >= 0.10


@pytest.mark.slow
def test_rule_certifies_a_policy_at_parity_often(simulated_certifications):
    runs = simulated_certifications["parity"]
    assert certified_share(runs) >= 0.40
    assert abs(np.mean([c.recovery for c in runs]) - 1.0) < 0.03


# ---------------------------------------------------------------- pass rates


def test_certify_pass_recovery_is_a_share_of_the_pass_rate_gap():
    from workspace.stats import certify_pass

    strong = [True] * 80 + [False] * 20
    weak = [True] * 10 + [False] * 90
    cand = [True] * 66 + [False] * 34  # 56 of the 70-problem gap recovered
    c = certify_pass(cand, weak, strong, n_boot=500)
    assert (c.utility, c.u_weak, c.u_strong) == (0.66, 0.10, 0.80)
    assert c.recovery == pytest.approx(0.8)
    assert not c.certified and c.recovery_lower < 0.8 < c.ci["recovery"].high
    assert c.ci["u_strong"].low < 0.8 < c.ci["u_strong"].high
    # the candidate is the strong model's answer on every problem: recovered in full, certified
    full = certify_pass(strong, weak, strong, n_boot=500)
    assert full.recovery == 1.0 and full.recovery_lower == 1.0 and full.certified


def test_certify_pass_without_a_gap_says_so_and_refuses_bad_input():
    from workspace.stats import certify_pass

    same = [True, False, True, False]
    c = certify_pass(same, same, same, n_boot=100)
    assert c.recovery is None and not c.certified and "nothing to recover" in c.reasons[0]
    with pytest.raises(StatsError):
        certify_pass([True, False], [True], [True, True])
    with pytest.raises(StatsError):
        certify_pass([0.5, 1.0], [True, False], [True, True])
    with pytest.raises(StatsError):
        certify_pass([True], [False], [True])


def test_summarize_pass_pools_f_weak_and_matches_certify_pass():
    from workspace.stats import PassSample, certify_pass, summarize_pass

    samples = [PassSample(90, 10, True, False, True), PassSample(50, 50, False, False, True),
               PassSample(100, 0, True, True, True), PassSample(0, 80, True, False, True)]  # fmt: skip
    s = summarize_pass(samples, n_boot=300, seed=1)
    assert s.f_weak == pytest.approx(240 / 380) and s.utility == 0.75 and s.u_weak == 0.25
    assert s.recovery == pytest.approx((0.75 - 0.25) / (1.0 - 0.25))
    c = certify_pass([x.passed for x in samples], [x.weak_passed for x in samples],
                     [x.strong_passed for x in samples], n_boot=300, seed=1)  # fmt: skip
    assert s.certification == c and set(s.ci) >= {"f_weak", "utility", "recovery"}


def test_summarize_pass_pools_f_weak_code_and_the_copy_share_on_the_same_resamples():
    from workspace.stats import PassSample, summarize_pass

    code = [(60, 10, 30), (20, 20, 0), (70, 0, 70), (0, 50, 0)]  # (weak, strong, weak copying the prompt) per problem
    passes = [(90, 10, True, False, True), (50, 50, False, False, True), (100, 0, True, True, True),
              (0, 80, True, False, True)]  # fmt: skip
    samples = [PassSample(*p, *c) for p, c in zip(passes, code, strict=True)]
    s = summarize_pass(samples, n_boot=400, seed=3)
    assert s.f_weak == pytest.approx(240 / 380) and s.f_weak_code == pytest.approx(150 / 230)
    assert s.copy_share == pytest.approx(100 / 150)
    for k in ("f_weak_code", "copy_share"):
        iv = s.ci[k]
        assert iv.low <= getattr(s, k) <= iv.high and iv.low < iv.high
    without = summarize_pass([dataclasses.replace(x, weak_copy_chars=None) for x in samples], n_boot=50)
    assert without.f_weak_code is None and "f_weak_code" not in without.ci and without.f_weak == s.f_weak
    with pytest.raises(StatsError, match="within weak_code_chars"):
        summarize_pass([PassSample(1, 1, True, True, True, 5, 0, 6)], n_boot=10)
