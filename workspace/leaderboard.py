"""The leaderboard: computed from evaluation records only, never from a number someone typed (ARCHITECTURE.md “What is
measured”, “Records and findings”).

Every entry belongs to one benchmark (`workspace/benchmarks/`): alpaca_eval (utility = the judge's
length-controlled winrate, U_strong = 0.5) or humaneval (utility = pass@1 on the unit tests, U_weak and U_strong
the two models' own pass rates). Numbers of different benchmarks are never compared: certified evaluations
(canonical for their benchmark, complete, verified: valid and signed by a trusted key, and passing the
certification rule) are ranked within their benchmark by f_weak (ties by recovery, then the earlier one);
unverified records, canonical evaluations below the bar and non-canonical ones are listed apart, each with the
reason; the two baselines (weak only, strong only) are there for each benchmark shown (alpaca_eval always). Rows
come from `workspace.frames.evaluations_frame`. Each entry names the finding that reported it, but takes nothing
else from it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from . import benchmarks
from .benchmarks import DEFAULT
from .evaluate import Evaluation
from .format import pair
from .forum import Finding, get_findings
from .frames import evaluations_frame, load_all_evaluations
from .policies import family
from .stats import BAR, Interval

CERTIFIED, BELOW_BAR, NOT_CANONICAL, UNVERIFIED, STOPPED, BASELINE = (
    "certified", "below bar", "not canonical", "unverified", "stopped", "baseline")  # fmt: skip


@dataclass(frozen=True)
class LeaderboardEntry:
    """One evaluation's numbers as recomputed from its record, and where it stands."""

    status: str  # certified | below bar | not canonical | unverified | stopped (early stopping) | baseline
    policy: str
    evaluation: str | None  # record id (None for the definitional baselines)
    f_weak: float | None
    recovery: float | None
    f_weak_ci: Interval | None = None
    recovery_ci: Interval | None = None
    utility: float | None = None
    n: int = 0  # prompts in the evaluation
    judged: int = 0  # prompts with numbers
    prompts: str = ""  # prompt set name
    created: str | None = None  # UTC ISO, when the evaluation was made
    rank: int | None = None  # 1-based, certified entries only
    finding: str | None = None  # id of the finding that reported it
    finding_title: str | None = None
    note: str = ""  # why it is not certified
    verified: bool = False  # valid and signed by a trusted key (the definitional baselines: True)
    recovery_lower: float | None = None  # the one-sided 95% lower bound the certification rule reads
    confirmed: bool = False  # certified again with the 300 confirmation prompts pooled in (n = 400)
    benchmark: str = DEFAULT  # what it was measured on (workspace/benchmarks/); ranks are within it
    u_weak: float | None = None  # the weak model's own utility on the same prompts
    u_strong: float | None = None  # the strong model's: 0.5 for a judge, its pass rate for tests
    # Benchmarks that score part of an answer (the code): the weak share of the scored characters, and the share of
    # those weak characters that copy the instruction (None elsewhere).
    f_weak_code: float | None = None
    f_weak_code_ci: Interval | None = None
    copy_share: float | None = None
    copy_share_ci: Interval | None = None

    @property
    def family(self) -> str:
        return family(self.policy)

    def to_json(self) -> dict:
        return {
            "rank": self.rank, "benchmark": self.benchmark, "status": self.status, "policy": self.policy,
            "evaluation": self.evaluation, "f_weak": self.f_weak, "f_weak_ci": pair(self.f_weak_ci),
            "f_weak_code": self.f_weak_code, "f_weak_code_ci": pair(self.f_weak_code_ci),
            "copy_share": self.copy_share, "copy_share_ci": pair(self.copy_share_ci),
            "recovery": self.recovery, "recovery_ci": pair(self.recovery_ci), "utility": self.utility,
            "u_weak": self.u_weak, "u_strong": self.u_strong, "n": self.n, "judged": self.judged,
            "prompts": self.prompts, "created": self.created, "finding": self.finding,
            "finding_title": self.finding_title, "note": self.note, "verified": self.verified,
            "recovery_lower": self.recovery_lower, "confirmed": self.confirmed,
        }  # fmt: skip


@dataclass(frozen=True)
class Leaderboard:
    """Everything on record, sorted into the ranked board and the lists beside it."""

    bar: float
    certified: tuple[LeaderboardEntry, ...]
    below_bar: tuple[LeaderboardEntry, ...]
    non_canonical: tuple[LeaderboardEntry, ...]
    baselines: tuple[LeaderboardEntry, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (evaluation id, why it could not be read)
    unverified: tuple[LeaderboardEntry, ...] = ()
    stopped: tuple[LeaderboardEntry, ...] = ()  # ended by the early stopping rule: numbers on their first prompts

    @property
    def best(self) -> LeaderboardEntry | None:
        """The best certified alpaca_eval entry (see `best_for` for another benchmark)."""
        return self.best_for(DEFAULT)

    def best_for(self, benchmark: str) -> LeaderboardEntry | None:
        """The best certified entry of one benchmark (rank 1 there), None when it has none."""
        return next((e for e in self.certified if e.benchmark == benchmark), None)

    @property
    def evaluations(self) -> tuple[LeaderboardEntry, ...]:
        """Every evaluation entry (baselines excluded)."""
        return self.certified + self.below_bar + self.non_canonical + self.unverified + self.stopped

    @property
    def benchmarks(self) -> tuple[str, ...]:
        """The benchmarks on the board (those with an entry, baselines included), in registration order."""
        return _in_order({e.benchmark for e in self.evaluations + self.baselines})

    def for_benchmark(self, benchmark: str) -> Leaderboard:
        """The same board with only one benchmark's entries (its ranks are already per benchmark); its definitional
        baselines are there even with no evaluation on record."""
        pick = lambda entries: tuple(e for e in entries if e.benchmark == benchmark)  # noqa: E731
        return replace(
            self, certified=pick(self.certified), below_bar=pick(self.below_bar),
            non_canonical=pick(self.non_canonical), unverified=pick(self.unverified), stopped=pick(self.stopped),
            baselines=pick(self.baselines) or baselines_for(benchmark),
        )  # fmt: skip

    def to_json(self) -> dict:
        return {
            "bar": self.bar,
            "benchmarks": list(self.benchmarks),
            **{
                k: [e.to_json() for e in getattr(self, k)]
                for k in ("certified", "below_bar", "non_canonical", "unverified", "stopped")
            },  # fmt: skip
            "baselines": [e.to_json() for e in self.baselines],
            "skipped": [{"evaluation": i, "error": e} for i, e in self.skipped],
        }


# The endpoints hold by definition (ARCHITECTURE.md “What is measured”), on every benchmark: weak only writes
# everything and recovers
# nothing; strong only writes nothing and is the reference itself.
BASELINES = (
    LeaderboardEntry(BASELINE, "weak only (never defer)", None, 1.0, 0.0, note="by definition", verified=True),
    LeaderboardEntry(BASELINE, "strong only (always defer)", None, 0.0, 1.0, note="by definition", verified=True),
)


def baselines_for(benchmark: str) -> tuple[LeaderboardEntry, ...]:
    """The two definitional baselines entries of one benchmark (with f_weak_code where it has one: the weak only
    writes all the scored characters, the strong only none)."""
    code = benchmark in benchmarks.names() and benchmarks.get(benchmark).has_f_weak_code
    return tuple(replace(b, benchmark=benchmark, f_weak_code=b.f_weak if code else None) for b in BASELINES)


def _in_order(names: Iterable[str]) -> tuple[str, ...]:
    known = list(benchmarks.names())
    return tuple(sorted(set(names), key=lambda b: (known.index(b) if b in known else len(known), b)))


def utility_meaning(benchmark: str) -> str:
    """What utility (and so recovery) means on a benchmark, in one phrase."""
    if benchmark not in benchmarks.names():
        return f"utility as the {benchmark} benchmark scores it"
    return benchmarks.get(benchmark).utility_meaning()


def scoring_sentence(benchmark: str) -> str:
    """How a benchmark is scored and what counts as canonical there, as one sentence for people."""
    if benchmark not in benchmarks.names():
        return f"{benchmark}: a benchmark this code does not know; its numbers are shown as recorded."
    return benchmarks.get(benchmark).sentence()


def _status(row: dict) -> str:
    if row["certified"]:
        return CERTIFIED
    if row["stopped"]:
        return STOPPED
    if not row["verified"]:
        return UNVERIFIED
    return BELOW_BAR if row["canonical"] else NOT_CANONICAL


def entry_from_row(row: dict, finding: Finding | None = None) -> LeaderboardEntry:
    """The leaderboard entry of one row of `frames.evaluations_frame`; every number comes from the records."""
    status = _status(row)
    iv = lambda lo, hi: None if row[lo] is None else Interval(row[lo], row[hi])  # noqa: E731
    return LeaderboardEntry(
        status=status, policy=row["policy"], evaluation=row["evaluation"], f_weak=row["f_weak"],
        recovery=row["recovery"], f_weak_ci=iv("f_weak_low", "f_weak_high"),
        recovery_ci=iv("recovery_low", "recovery_high"), utility=row["utility"], n=row["n"], judged=row["judged"],
        prompts=row["prompts"], created=row["created"], finding=finding.id if finding else None,
        finding_title=finding.title if finding else None,
        note="" if status == CERTIFIED else "; ".join(row["reasons"]), verified=row["verified"],
        recovery_lower=row["recovery_lower"], confirmed=row["confirmed"], benchmark=row["benchmark"] or DEFAULT,
        u_weak=row["u_weak"], u_strong=row["u_strong"], f_weak_code=row["f_weak_code"],
        f_weak_code_ci=iv("f_weak_code_low", "f_weak_code_high"), copy_share=row["copy_share"],
        copy_share_ci=iv("copy_share_low", "copy_share_high"),
    )  # fmt: skip


def entry(ev: Evaluation, finding: Finding | None = None) -> LeaderboardEntry:
    """The leaderboard entry of one evaluation."""
    from .frames import evaluation_row

    return entry_from_row(evaluation_row(ev), finding)


def _reporters(findings: Iterable[Finding]) -> dict[str, Finding]:
    """Per evaluation id, the finding that reported it: the first result naming it, else the first finding."""
    out: dict[str, Finding] = {}
    for f in sorted(findings, key=lambda f: (f.kind != "result", f.created, f.id)):
        if f.evaluation:
            out.setdefault(f.evaluation, f)
    return out


def _order(e: LeaderboardEntry) -> tuple:
    num = lambda v: -math.inf if v is None else v  # noqa: E731
    return (-num(e.f_weak), -num(e.recovery), e.created or "", e.evaluation or "")


def build_leaderboard(
    evaluations: Iterable[Evaluation], findings: Iterable[Finding] = (), skipped: Iterable[tuple[str, str]] = ()
) -> Leaderboard:
    """Sort evaluations into the board, benchmark by benchmark: certified ranked by f_weak within their benchmark,
    ties by recovery; the rest listed apart; the definitional baselines of each benchmark present."""
    by_eval = _reporters(findings)
    rows = evaluations_frame(list(evaluations)).to_dicts()
    entries = [entry_from_row(r, by_eval.get(r["evaluation"])) for r in rows]
    names = _in_order([DEFAULT, *(e.benchmark for e in entries)])
    ranked, baselines = [], []
    for b in names:
        mine = sorted((e for e in entries if e.status == CERTIFIED and e.benchmark == b), key=_order)
        ranked += [replace(e, rank=i) for i, e in enumerate(mine, 1)]
        baselines += baselines_for(b)
    key = lambda e: (names.index(e.benchmark), *_order(e))  # noqa: E731
    pick = lambda status: tuple(sorted((e for e in entries if e.status == status), key=key))  # noqa: E731
    return Leaderboard(bar=BAR, certified=tuple(ranked), below_bar=pick(BELOW_BAR), non_canonical=pick(NOT_CANONICAL),
                       baselines=tuple(baselines), skipped=tuple(skipped), unverified=pick(UNVERIFIED),
                       stopped=pick(STOPPED))  # fmt: skip


def get_leaderboard(findings: Iterable[Finding] | None = None) -> Leaderboard:
    """The leaderboard from the evaluation records on disk (findings only say who reported what)."""
    evaluations, skipped = load_all_evaluations()
    return build_leaderboard(evaluations, get_findings() if findings is None else findings, skipped)
