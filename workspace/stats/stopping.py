"""Early stopping: an evaluation may end once its first prompts show that the candidate cannot reach a target recovery.

The rule (``StopRule``), for a target recovery r* (e.g. the certification bar, 0.98):

- **Fixed looks.** The rule looks only after the first n_k prompts of a fixed order (``look_order``: prompts sorted by
  a salted hash of their id, so every look sees a random sample of the set, whatever order the set is in, and every
  policy sees the same prompts), at fixed fractions of the set (default 1/4, 1/2 and 3/4; at least ``min_n``
  prompts), never after every prompt: looking at every prompt and stopping at the first bad-looking one would make
  a false stop far more likely than any one look's level.
- **Alpha spending.** Look k is tested at level alpha_k = alpha * (f(t_k) - f(t_{k-1})) / f(t_K), t the fraction of the
  set seen and f(t) = ln(1 + (e - 1) t) the Pocock-type spending function of Lan & DeMets ("Discrete sequential
  boundaries for clinical trials", Biometrika 70(3), 1983), rescaled so that the last look spends the rest (no look is
  taken at the end, where stopping saves nothing). Pocock's shape spends more early than O'Brien-Fleming's, which is
  what a futility rule is for: it stops hopeless candidates after a quarter of the prompts.
- **The test.** At look k the candidate stops when the one-sided (1 - alpha_k) paired-bootstrap upper bound of its
  recovery on those n_k prompts is below r* (the resamples are drawn as the certification rule's are: prompt indices
  with replacement, the same for the candidate and the baselines; a resample with no gap, where recovery is
  undefined, counts as +inf: it never argues for a stop).
- **Why the total holds.** By the union (Bonferroni) bound, P(some look stops a policy at r*) <= sum_k alpha_k = alpha
  if each look's bound holds at its level, whatever the correlation between looks. The percentile bootstrap's far
  tails are too thin at these sizes, though: in simulation (tests/test_stopping.py) the judge's length-controlled
  recovery at n = 25-75 crosses a (1 - alpha_k) bound about twice as often as alpha_k says. So the default nominal
  alpha is 0.025, half the false-stop rate promised: simulated, a policy whose true recovery is exactly the target is
  stopped in at most 5% of evaluations on every scenario tried (judged and pass rates; README "Early stopping" has
  the table, ``python -m tests.test_stopping`` prints it).

A stopped evaluation is a futility decision: it never certifies anything (``workspace/evaluate`` records it and
keeps it off the certified board). Continuing it later to the whole set is allowed: a futility look that is ignored
cannot raise the certification rule's error rate (the full-set decision is the same event it was without the look).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .base import StatsError, check_lengths, check_preferences
from .judged import PairedSample, paired_mle_fits
from .passrate import PassSample
from .rule import lower_quantile

ORDER_SALT = "cdw-stop-order-v1"  # changing it changes which prompts every look sees: never change it


def look_order(ids: Sequence[str]) -> list[int]:
    """Indices of ``ids`` in the order the looks take prompts: by sha256 of the salted id (fixed, random-like)."""
    return sorted(range(len(ids)), key=lambda i: hashlib.sha256(f"{ORDER_SALT}:{ids[i]}".encode()).digest())


def _spend(t: float) -> float:
    return math.log1p((math.e - 1.0) * t)  # Lan-DeMets, Pocock type (before scaling by alpha)


@dataclass(frozen=True)
class StopRule:
    """Stop a candidate whose recovery is shown to be below ``target``: at the default nominal ``alpha`` (0.025), a
    policy whose true recovery is ``target`` is stopped in at most 5% of evaluations in simulation (module docstring).
    """

    target: float  # the recovery the candidate must still be able to reach (e.g. 0.98, the certification bar)
    alpha: float = 0.025  # nominal level spent over the looks (union bound); half the false-stop rate it keeps
    looks: tuple[float, ...] = (0.25, 0.5, 0.75)  # fractions of the prompt set after which the rule looks
    min_n: int = 10  # no look before this many prompts
    n_boot: int = 2000  # bootstrap resamples per look (extreme quantiles need more than the certification's 1000)
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "looks", tuple(float(t) for t in self.looks))
        if not (isinstance(self.target, int | float) and math.isfinite(self.target)):
            raise StatsError(f"the stop rule's target must be a finite recovery, got {self.target!r}")
        if not 0 < self.alpha < 1:
            raise StatsError(f"the stop rule's alpha must be in (0, 1), got {self.alpha!r}")
        if not self.looks or any(not 0 < t < 1 for t in self.looks) or list(self.looks) != sorted(set(self.looks)):
            raise StatsError(f"looks must be increasing fractions in (0, 1), got {self.looks!r}")
        if not (isinstance(self.min_n, int) and self.min_n >= 2):
            raise StatsError(f"min_n must be an integer >= 2, got {self.min_n!r}")
        if not (isinstance(self.n_boot, int) and self.n_boot >= 100):
            raise StatsError(f"n_boot must be an integer >= 100, got {self.n_boot!r}")

    def schedule(self, n_total: int) -> tuple[int, ...]:
        """How many prompts each look sees in a set of ``n_total`` (none at or after the whole set)."""
        ns = sorted({max(self.min_n, math.ceil(t * n_total)) for t in self.looks})
        return tuple(n for n in ns if n < n_total)

    def levels(self, n_total: int) -> tuple[float, ...]:
        """alpha_k of each look of ``schedule(n_total)``: they sum to ``alpha`` (none when there is no look)."""
        ts = [n / n_total for n in self.schedule(n_total)]
        if not ts:
            return ()
        cum = [self.alpha * _spend(t) / _spend(ts[-1]) for t in ts]
        return tuple(c - p for c, p in zip(cum, [0.0, *cum[:-1]], strict=True))

    def describe(self, n_total: int | None = None) -> str:
        """One line: 'stop below recovery 0.98 (nominal alpha 0.025; looks at 21, 41, 62 of 82 prompts)'."""
        at = f"; looks at {', '.join(map(str, self.schedule(n_total)))} of {n_total} prompts" if n_total else ""
        return f"stop below recovery {self.target:g} (nominal alpha {self.alpha:g}{at})"

    def to_json(self) -> dict:
        return {**asdict(self), "looks": list(self.looks)}

    @classmethod
    def from_json(cls, d: dict) -> StopRule:
        """The rule a record names (``to_json``'s dict); StatsError for anything else."""
        try:
            return cls(**{**d, "looks": tuple(d["looks"])})
        except (TypeError, KeyError) as e:
            raise StatsError(f"not a stop rule: {d!r} ({e})") from None

    def look(self, samples: Sequence[PassSample] | Sequence[PairedSample], n_total: int) -> Look:
        """The look after the first ``len(samples)`` prompts (in ``look_order``) of a set of ``n_total``: all of
        them pass samples (scored alone) or all judged samples. StatsError when no look is taken at that count."""
        n, sched = len(samples), self.schedule(n_total)
        if n not in sched:
            raise StatsError(f"the rule looks after {', '.join(map(str, sched)) or 'no prompt'} of {n_total}, not {n}")
        k = sched.index(n)
        alpha_k = self.levels(n_total)[k]
        rec, upper = recovery_upper(samples, 1 - alpha_k, self.n_boot, self.seed)
        return Look(self, k + 1, n, n_total, alpha_k, rec, upper)


@dataclass(frozen=True)
class Look:
    """One look of a stop rule: on the first ``n`` of ``of`` prompts, the point recovery and its one-sided
    (1 - ``alpha``) bootstrap upper bound; ``stop`` when that bound is below the rule's target."""

    rule: StopRule
    look: int  # 1-based, in the rule's schedule
    n: int
    of: int
    alpha: float  # this look's share of the rule's alpha
    recovery: float | None  # None when the first n prompts have no gap
    upper: float  # +inf when too many resamples have no gap

    @property
    def stop(self) -> bool:
        return self.upper < self.rule.target

    def reason(self) -> str:
        """Why it stops (or not), in words."""
        rec = "undefined (no gap)" if self.recovery is None else f"{self.recovery:.3f}"
        bound = f"{100 * (1 - self.alpha):.2f}% upper bound {_num(self.upper)}"
        verb = "is below" if self.stop else "does not rule out"
        return (f"look {self.look} after {self.n} of {self.of} prompts: recovery {rec}, its one-sided {bound} {verb} "
                f"the target {self.rule.target:g}")  # fmt: skip

    def to_json(self) -> dict:
        return {"look": self.look, "n": self.n, "of": self.of, "alpha": self.alpha, "recovery": self.recovery,
                "upper": self.upper if math.isfinite(self.upper) else None, "target": self.rule.target,
                "stop": self.stop, "rule": self.rule.to_json(), "reason": self.reason()}  # fmt: skip


def recovery_upper(
    samples: Sequence[PassSample] | Sequence[PairedSample], level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float | None, float]:
    """(recovery, its one-sided ``level`` paired-bootstrap upper bound) on pass samples or judged samples (all of one
    kind): the statistic of every look, and what the policy search ranks by (``workspace/evaluate/search.py``).
    Recovery is None when the samples have no gap; the bound is +inf when more than 1 - ``level`` of the resamples
    have none (a resample without a gap never argues that the target is out of reach)."""
    if not 0 < level < 1:
        raise StatsError(f"level must be in (0, 1), got {level!r}")
    if len(samples) < 2:
        raise StatsError(f"an upper bound of recovery needs at least 2 prompts; got {len(samples)}")
    if all(isinstance(s, PassSample) for s in samples):
        rec, b_rec = _pass_recoveries(samples, n_boot, seed)
    elif all(isinstance(s, PairedSample) for s in samples):
        rec, b_rec = _judged_recoveries(samples, n_boot, seed)
    else:
        raise StatsError("a look needs samples of one kind: all pass samples or all judged samples")
    return rec, -lower_quantile(-b_rec, 1 - level)


def _num(x: float) -> str:
    return f"{x + 0.0:.3f}" if math.isfinite(x) else "+inf"  # + 0.0: no "-0.000"


def _boot_idx(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _ratio(u: np.ndarray, w: np.ndarray, s: np.ndarray | float) -> np.ndarray:
    gap = s - w
    out = np.full(np.shape(u), np.inf)
    ok = gap > 0
    out[ok] = (u[ok] - w[ok]) / np.broadcast_to(gap, np.shape(u))[ok]
    return out


def _pass_recoveries(samples: Sequence[PassSample], n_boot: int, seed: int) -> tuple[float | None, np.ndarray]:
    pc, pw, ps = (np.array([getattr(s, k) for s in samples], dtype=float)
                  for k in ("passed", "weak_passed", "strong_passed"))  # fmt: skip
    gap = ps.mean() - pw.mean()
    rec = float((pc.mean() - pw.mean()) / gap) if gap > 0 else None
    idx = _boot_idx(len(samples), n_boot, seed)
    return rec, _ratio(pc[idx].mean(axis=1), pw[idx].mean(axis=1), ps[idx].mean(axis=1))


def _judged_recoveries(samples: Sequence[PairedSample], n_boot: int, seed: int) -> tuple[float | None, np.ndarray]:
    n = len(samples)
    pc = check_preferences([s.preference for s in samples], "preference")
    pw = check_preferences([s.weak_preference for s in samples], "weak_preference")
    lc, lw, lr = (check_lengths([getattr(s, k) for s in samples], n, k)
                  for k in ("candidate_length", "weak_length", "reference_length"))  # fmt: skip
    utility, u_weak, b_u, b_w = paired_mle_fits(pc, pw, lr - lc, lr - lw, _boot_idx(n, n_boot, seed))
    rec = (utility - u_weak) / (0.5 - u_weak) if 0.5 - u_weak > 0 else None
    return rec, _ratio(b_u, b_w, 0.5)
