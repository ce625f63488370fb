"""Statistics of an evaluation (DESIGN.md §1): LC winrate against alpaca_eval's own fit, recovery, bootstrap."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest

from workspace.stats import (
    Interval,
    PairedSample,
    StatsError,
    Summary,
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
CASES += [("near_parity", 100, 0), ("near_parity", 40, 3), ("length_biased", 37, 2), ("candidate_longer", 103, 2)]


@pytest.mark.parametrize(("kind", "n", "seed"), CASES)
def test_lc_winrate_equals_alpaca_eval_length_controlled_minimal(alpaca_eval_lc, kind, n, seed):
    p, cand, ref = dataset(kind, n, seed)
    ours = length_controlled_winrate(p, cand, ref)
    theirs = alpaca_eval_lc(p, cand, ref)
    assert abs(ours - theirs) <= 1e-3, (ours, theirs)


def test_folds_are_groupkfold_on_alpaca_evals_duplicated_rows():
    model_selection = pytest.importorskip("sklearn.model_selection", reason="needs scikit-learn (dev extra)")
    from workspace.stats import _folds

    for n in (5, 7, 23, 100, 101):
        groups = np.tile(np.arange(n), 2)  # alpaca_eval's frame: every prompt twice (y=1, y=0), grouped by prompt
        splits = model_selection.GroupKFold(n_splits=5).split(groups, groups=groups)
        theirs = [sorted(set(groups[test].tolist())) for _, test in splits]
        train, test_idx, test_w = _folds(n)
        ours = [sorted(test_idx[k][test_w[k] > 0].tolist()) for k in range(5)]
        assert ours == theirs, n
        for k in range(5):
            assert np.flatnonzero(train[k] == 0).tolist() == ours[k]


def test_lc_winrate_corrects_for_length_unlike_the_raw_winrate(alpaca_eval_lc):
    # The equality above means something only if length control moves the number: here it moves it a lot.
    p, cand, ref = dataset("candidate_longer", 100, 0)
    lc, raw = length_controlled_winrate(p, cand, ref), winrate(p)
    assert lc < raw - 0.05
    assert abs(lc - alpaca_eval_lc(p, cand, ref)) <= 1e-3
    # and the other way: a systematically shorter candidate, penalised for it, is raised by length control
    p, cand, ref = dataset("candidate_shorter", 100, 0)
    lc, raw = length_controlled_winrate(p, cand, ref), winrate(p)
    assert lc > raw + 0.05
    assert abs(lc - alpaca_eval_lc(p, cand, ref)) <= 1e-3


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
    small, large = summarize(samples(40, seed=5), n_boot=400), summarize(samples(400, seed=6), n_boot=400)
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
