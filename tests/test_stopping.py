"""The early stopping rule (`workspace/stats/stopping.py`): its looks and levels, its decisions, and, in simulation,
its false-stop rate for a policy whose true recovery is exactly the target (at most 5%) and how often and how
early it stops policies below the target."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.test_stats import simulate
from workspace.stats import Look, PairedSample, PassSample, StatsError, StopRule, look_order

# ---------------------------------------------------------------- the rule itself


def test_looks_and_levels_spend_alpha_over_fixed_fractions():
    r = StopRule(0.98)
    assert r.schedule(82) == (21, 41, 62) and r.schedule(164) == (41, 82, 123)
    assert r.schedule(20) == (10, 15) and r.schedule(10) == ()  # min_n 10; never at the whole set
    for n in (20, 82, 164, 1000):
        lv = r.levels(n)
        assert len(lv) == len(r.schedule(n)) and math.isclose(sum(lv), 0.025) and all(a > 0 for a in lv)
    lv = r.levels(164)
    assert lv[0] > lv[1] > lv[2]  # Pocock-type spending: the early looks get the larger shares
    assert r.levels(10) == ()
    assert StopRule.from_json(r.to_json()) == r and "looks at 21, 41, 62 of 82" in r.describe(82)


@pytest.mark.parametrize(
    "kw",
    [{"target": math.inf}, {"target": 0.98, "alpha": 0}, {"target": 0.98, "looks": (0.5, 0.25)},
     {"target": 0.98, "looks": (0.5, 1.0)}, {"target": 0.98, "looks": ()}, {"target": 0.98, "min_n": 1},
     {"target": 0.98, "n_boot": 10}],
)  # fmt: skip
def test_a_malformed_rule_is_refused(kw):
    with pytest.raises(StatsError):
        StopRule(**kw)
    with pytest.raises(StatsError, match="not a stop rule"):
        StopRule.from_json({"alpha": 0.05})


def test_the_look_order_is_fixed_and_ignores_the_sets_order():
    ids = [f"HumanEval/{i}" for i in range(40)]
    order = look_order(ids)
    assert sorted(order) == list(range(40)) and order != list(range(40))
    shuffled = list(reversed(ids))
    assert [shuffled[i] for i in look_order(shuffled)] == [ids[i] for i in order]


def passes(cand, weak, strong) -> list[PassSample]:
    return [PassSample(10, 0, bool(c), bool(w), bool(s)) for c, w, s in zip(cand, weak, strong, strict=True)]


def test_a_weak_like_candidate_stops_at_the_first_look_and_a_strong_like_one_does_not():
    rng = np.random.default_rng(3)
    strong = rng.random(21) < 0.6
    weak = strong & (rng.random(21) < 0.15)
    rule = StopRule(0.98)
    low = rule.look(passes(weak, weak, strong), 82)
    assert isinstance(low, Look) and low.look == 1 and low.stop and low.recovery == 0.0 and low.upper < 0.98
    assert "is below the target 0.98" in low.reason() and "-0.000" not in low.reason()
    high = rule.look(passes(strong, weak, strong), 82)
    assert not high.stop and high.recovery == 1.0 and "does not rule out" in high.reason()
    # No gap at all: nothing argues for a stop, however bad the candidate.
    same = rule.look(passes([False] * 21, strong, strong), 82)
    assert same.recovery is None and same.upper == math.inf and not same.stop
    assert same.to_json()["upper"] is None and low.to_json()["stop"] is True
    with pytest.raises(StatsError, match="looks after 21, 41, 62 of 82, not 20"):
        rule.look(passes(weak[:20], weak[:20], strong[:20]), 82)


def test_a_judged_look_uses_the_length_controlled_fit():
    pc, pw, lc, lw, lr = (x[0] for x in simulate(7, 1, 25, 0.0, 1.0))  # a candidate at parity
    samples = [PairedSample(1, 1, pc[i], int(lc[i]), pw[i], int(lw[i]), int(lr[i])) for i in range(25)]
    look = StopRule(0.98, n_boot=500).look(samples, 100)
    assert look.look == 1 and not look.stop and look.upper > 0.98
    weak = [PairedSample(1, 1, s.weak_preference, s.weak_length, s.weak_preference, s.weak_length,
                         s.reference_length) for s in samples]  # fmt: skip
    never = StopRule(0.98, n_boot=500).look(weak, 100)
    assert never.recovery == 0.0 and never.stop  # the weak model's own answers: recovery exactly 0
    with pytest.raises(StatsError, match="one kind"):
        StopRule(0.98).look([*samples[:24], passes([1], [0], [1])[0]], 100)


# ---------------------------------------------------------------- the false-stop rate, simulated
#
# Pass rates: each problem is one of four kinds, as the two models' own answers go: both pass (probability
# 0.8 U_weak: the weak model's passes are mostly problems the strong model passes too), only the strong model's
# passes, only the weak model's, neither. A candidate at true recovery r takes the strong model's outcome with
# probability r and the weak model's otherwise, independently per problem (E[U] = U_weak + r gap exactly); a "noisy"
# candidate then flips each outcome with probability 0.05 (its mixing share raised so that its true recovery is still
# r): it also loses problems both models pass and solves some neither does, as real policies do. Judged:
# tests/test_stats.py's simulation (a length-biased judge, U_weak = 0.2): at 0.98 a candidate as long as the reference
# (its quality mean found by bisection on 400,000 prompts, as test_stats's were), at 0.8 test_stats's verbose one (1.3x
# the reference's length). The rule runs as an evaluation runs it: look after n_1, stop or go on to n_2, and so on.

PASS_RUNS = 500
JUDGED_RUNS = 300
MU_098 = -0.028961181640625  # sharpness 1, length ratio 1: true (population MLE) recovery 0.980


def simulate_passes(seed: int, runs: int, n: int, u_weak: float, u_strong: float, recovery: float,
                    flip: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(candidate, weak, strong) pass outcomes, each of shape (runs, n)."""
    rng = np.random.default_rng(seed)
    both = 0.8 * u_weak
    kind = rng.choice(4, size=(runs, n), p=[both, u_strong - both, u_weak - both, 1 - u_strong - u_weak + both])
    strong, weak = (kind == 0) | (kind == 1), (kind == 0) | (kind == 2)
    target_u = u_weak + recovery * (u_strong - u_weak)
    mix = ((target_u - flip) / (1 - 2 * flip) - u_weak) / (u_strong - u_weak)  # E[flipped] = target_u
    assert 0 <= mix <= 1, mix
    cand = np.where(rng.random((runs, n)) < mix, strong, weak)
    cand ^= rng.random((runs, n)) < flip
    return cand, weak, strong


class PassRuns:
    """The first m problems of simulated run r, as pass samples."""

    def __init__(self, *arrays):
        self.cand, self.weak, self.strong = arrays
        self.runs = self.cand.shape[0]

    def __call__(self, run: int, m: int) -> list[PassSample]:
        return passes(self.cand[run, :m], self.weak[run, :m], self.strong[run, :m])


class JudgedRuns:
    """The first m prompts of simulated run r, as judged samples."""

    def __init__(self, *arrays):
        self.pc, self.pw, self.lc, self.lw, self.lr = arrays
        self.runs = self.pc.shape[0]

    def __call__(self, run: int, m: int) -> list[PairedSample]:
        return [PairedSample(1, 1, self.pc[run, i], int(self.lc[run, i]), self.pw[run, i], int(self.lw[run, i]),
                             int(self.lr[run, i])) for i in range(m)]  # fmt: skip


def run_rule(rule: StopRule, n: int, runs: PassRuns | JudgedRuns) -> tuple[float, float]:
    """(share of the simulated evaluations stopped, mean share of their prompts run)."""
    stops, used = [], []
    for run in range(runs.runs):
        at = next((m for m in rule.schedule(n) if rule.look(runs(run, m), n).stop), None)
        stops.append(at is not None)
        used.append((at or n) / n)
    return float(np.mean(stops)), float(np.mean(used))


def pass_runs(seed, runs, n, u_weak, u_strong, recovery, flip=0.0) -> PassRuns:
    return PassRuns(*simulate_passes(seed, runs, n, u_weak, u_strong, recovery, flip))


def judged_runs(seed, runs, mu, ratio) -> JudgedRuns:
    return JudgedRuns(*simulate(seed, runs, 75, mu, ratio))  # n = 100: the looks see 25, 50, 75


# (scenario, n, target, true recovery, the simulated evaluations): the policy is exactly at the target
AT_TARGET = [
    ("pass rates, cpu pair (U_weak 0.067, U_strong 0.573)", 82, 0.98, 0.98,
     lambda: pass_runs(300, PASS_RUNS, 82, 0.067, 0.573, 0.98)),
    ("pass rates, cpu pair, noisy candidate", 82, 0.8, 0.8,
     lambda: pass_runs(301, PASS_RUNS, 82, 0.067, 0.573, 0.8, 0.05)),
    ("pass rates, cpu pair, noisy candidate", 164, 0.8, 0.8,
     lambda: pass_runs(302, PASS_RUNS, 164, 0.067, 0.573, 0.8, 0.05)),
    ("pass rates, U_weak 0.3, U_strong 0.8, noisy candidate", 164, 0.8, 0.8,
     lambda: pass_runs(303, PASS_RUNS, 164, 0.3, 0.8, 0.8, 0.05)),
    ("judged, length-biased judge", 100, 0.98, 0.98, lambda: judged_runs(700, JUDGED_RUNS, MU_098, 1.0)),
    ("judged, length-biased judge, verbose candidate", 100, 0.8, 0.8,
     lambda: judged_runs(600, JUDGED_RUNS, None, 1.3)),
]  # fmt: skip

# Policies below the target (the rule's power): how often and how early they stop.
BELOW = [
    ("pass rates, cpu pair", 82, 0.98, 0.0, lambda: pass_runs(400, PASS_RUNS, 82, 0.067, 0.573, 0.0)),
    ("pass rates, cpu pair", 82, 0.98, 0.5, lambda: pass_runs(401, PASS_RUNS, 82, 0.067, 0.573, 0.5)),
    ("pass rates, cpu pair", 82, 0.98, 0.8, lambda: pass_runs(402, PASS_RUNS, 82, 0.067, 0.573, 0.8)),
    ("pass rates, cpu pair", 164, 0.98, 0.8, lambda: pass_runs(403, PASS_RUNS, 164, 0.067, 0.573, 0.8)),
    ("judged, length-biased judge, verbose candidate", 100, 0.98, 0.8,
     lambda: judged_runs(602, 150, None, 1.3)),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("scenario", AT_TARGET, ids=lambda s: f"{s[0]} n={s[1]} target={s[2]}")
def test_a_policy_exactly_at_the_target_is_stopped_in_at_most_5_percent(scenario):
    _, n, target, _, runs = scenario
    stopped, used = run_rule(StopRule(target), n, runs())
    assert stopped <= 0.05
    assert used > 0.95  # so nearly every such evaluation runs to the end


@pytest.mark.slow
def test_policies_below_the_target_are_stopped_and_early():
    weak_like, half = (run_rule(StopRule(0.98), 82, pass_runs(400 + i, 200, 82, 0.067, 0.573, r))
                       for i, r in enumerate((0.0, 0.5)))  # fmt: skip
    # Every one stops, nearly all at the first look (the rest where too many resamples of 21 problems had no gap)
    assert weak_like[0] == 1.0 and weak_like[1] < 0.3
    assert half[0] >= 0.95 and half[1] < 0.4


@pytest.mark.slow
def test_judged_the_weak_answers_are_stopped_at_the_first_look():
    pc, pw, lc, lw, lr = simulate(502, 30, 75, None, 1.3)
    runs = JudgedRuns(pw, pw, lw, lw, lr)  # the candidate is the weak model's own answer
    stopped, used = run_rule(StopRule(0.98), 100, runs)
    assert stopped == 1.0 and used < 0.3  # nearly all at the first look


def table() -> str:
    """The README's table: each scenario's share of simulated evaluations stopped and of prompts run."""
    rows = ["| scenario | n | target | true recovery | stopped | prompts run |", "|---|---|---|---|---|---|"]
    for name, n, target, rec, runs in AT_TARGET + BELOW:
        stopped, used = run_rule(StopRule(target), n, runs())
        rows.append(f"| {name} | {n} | {target:g} | {rec:g} | {100 * stopped:.1f}% | {100 * used:.0f}% |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m tests.test_stopping
    print(table())
