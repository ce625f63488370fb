"""Policy search by successive halving (Karnin, Koren & Somekh 2013; Jamieson & Talwalkar 2016): every point of a
policy grid on a small subset of a search split, the best fraction kept, the subset grown, until the finalists; then
the finalists evaluated in full on a held-out split.

- **Rungs.** Rung r runs the candidates still in on the first n_r = n0 * eta^r prompts of the search split (at most
  all of it) and keeps the best 1/eta of them (at least `finalists`); the rung that reaches the whole split keeps
  only the finalists. Each rung's subset is a prompt set of its own (`humaneval:train[:20]`), so every evaluation
  a search runs is an ordinary record, read back by any later search or `cdw eval` of the same policy and prompts
  (with the call cache and the known continuations, a grown subset re-asks the servers nothing for the prompts the
  smaller one ran).
- **The criterion: f_weak at the target recovery.** The search looks for the policy with the highest f_weak whose
  recovery reaches the target (default the certification bar, 0.98). At each rung, the candidates whose recovery on
  the subset reaches the target rank first, by f_weak (then recovery); the others after them, by how close they
  come: utility on the same prompts, which orders them as recovery does and is defined even where a small subset
  has no gap (then f_weak). Ties keep grid order; a candidate whose evaluation has errors ranks last. The subset's
  noise is what the growing rungs are for: a candidate that reached the target by luck on ten prompts meets twenty
  next. Not frontier dominance: on small subsets most points of a grid sit on the noisy frontier, and dominance
  neither says which of them to drop nor names one winner; the criterion does both, and asks the leaderboard's
  question (the best f_weak that is certified). Not an optimistic bound either (in reach while an upper confidence
  bound reaches the target): on ten prompts that bound reaches 0.98 for nearly every candidate, which then keeps
  the highest f_weak, the riskiest, and drops the candidates that do reach the target.
- **The final.** The finalists (default one) are evaluated on the whole held-out split, which no decision saw; the
  search's choice is the finalist ranked first on the search split, so the held-out numbers are not selected on. An
  early stopping rule (`stop`) may end a final that cannot reach the target.
- **The record.** `records/searches/<id>.jsonl` (signed, append-only, like every record): a header with the grid,
  both splits, the plan and the criterion, one `rung` line per decision (each candidate's evaluation id and the
  numbers it was ranked by, who was kept) and a `final` line (the finalists' held-out evaluations, the choice). Its
  id is a hash of what is searched, so the same search resumes or reads its record back. A decided rung is never
  run again (a retry would move its evaluations): its decision is taken again from the evaluation records it names
  (`rederived`; `rederive` checks a whole search offline), and one that no longer follows from them is an error.
  Before a rung is decided, a candidate whose evaluation has errors (a server's hiccup) is evaluated once more,
  which retries the failed prompts; errors that remain rank it last.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import msgspec

from ..benchmarks import DataError, PromptSet, resolve_prompts
from ..records.log import RecordWriter, read_record
from ..records.schema import digest
from ..stats import BAR, StopRule
from .baselines import baselines_id
from .phases import OnProgress
from .results import Evaluation, load_evaluation
from .runs import evaluate
from .setup import EvalSettings, EvaluationError, Setup, code_version, now
from .sweeps import SweepPoint, sweep, sweep_points

CRITERION = ("f_weak among the candidates whose recovery on the rung's prompts reaches the target, then the others by "
             "utility; errors last; ties in grid order")  # fmt: skip


JUDGED_MIN = 5  # prompts alpaca_eval's length-control fit needs (5 cross-validation folds)


class SearchError(EvaluationError):
    """A search cannot run as asked, or its record does not follow from the evaluations it names."""


@dataclass(frozen=True)
class SearchPlan:
    """What a search does besides the grid: where it searches, where its finalists are evaluated, how it halves."""

    on: str  # the search split (a prompt set spec: "humaneval:train")
    final: str  # the held-out split ("humaneval:test")
    n0: int = 10  # prompts of the first rung
    eta: int = 2  # keep 1/eta of the candidates at each rung, and grow the subset eta-fold
    finalists: int = 1
    target: float = BAR  # the recovery the search wants reached

    def __post_init__(self):
        for what, v, least in (("n0", self.n0, 2), ("eta", self.eta, 2), ("finalists", self.finalists, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise SearchError(f"{what} must be an integer >= {least}, got {v!r}")
        if not (isinstance(self.target, int | float) and math.isfinite(self.target)):
            raise SearchError(f"target must be a finite recovery, got {self.target!r}")

    def rungs(self, candidates: int, n_on: int) -> list[tuple[int, int, int]]:
        """(prompts, candidates, kept) of each rung, for this many candidates on a search split of `n_on` prompts
        (no rung when there are no more candidates than finalists: they all go to the final)."""
        out, c, n = [], candidates, self.n0
        while c > self.finalists:
            n = min(n, n_on)
            keep = self.finalists if n == n_on else max(self.finalists, math.ceil(c / self.eta))
            out.append((n, c, keep))
            c, n = keep, n * self.eta
        return out

    def splits(self, settings: EvalSettings, files: bool = False) -> tuple[PromptSet, PromptSet]:
        """The search split and the held-out split, resolved for the settings' benchmark (prompt set names; JSONL
        files too with `files`, never for an agent); SearchError when they do not resolve or overlap."""
        try:
            on, final = (resolve_prompts(settings.bench, s, files=files) for s in (self.on, self.final))
        except DataError as e:
            raise SearchError(f"search splits: {e}") from e
        if both := set(on.ids) & set(final.ids):
            raise SearchError(f"the final split must be held out from the search split: {len(both)} prompts are in "
                              "both")  # fmt: skip
        return on, final

    def cost(self, candidates: int, n_on: int, n_final: int) -> tuple[int, int]:
        """(evaluations, prompts) the search runs at most: every rung's and the final's."""
        rungs = self.rungs(candidates, n_on)
        finals = min(candidates, self.finalists)
        return sum(c for _, c, _ in rungs) + finals, sum(n * c for n, c, _ in rungs) + finals * n_final


@dataclass(frozen=True)
class Standing:
    """One candidate at one rung: its evaluation, the numbers it is ranked by, and its rank."""

    spec: str
    evaluation: str
    f_weak: float | None
    recovery: float | None
    utility: float | None
    reaches: bool  # its recovery on the rung's prompts reaches the target
    errors: int  # prompts of its evaluation without numbers
    rank: int = 0
    kept: bool = False

    def to_json(self) -> dict:
        return asdict(self)


def standing(spec: str, ev: Evaluation, target: float) -> Standing:
    """A candidate's standing from its evaluation on a rung's subset (every number recomputed from the record)."""
    s, c = ev.summary, ev.certification
    rec = c.recovery if c else None
    return Standing(spec, ev.id, s.f_weak if s else None, rec, c.utility if c else None,
                    rec is not None and rec >= target and not ev.errors, len(ev.errors))  # fmt: skip


def rank(standings: Sequence[Standing], keep: int) -> list[Standing]:
    """The standings with their ranks (1 = best, by `CRITERION`) and whether they are kept, in grid order."""
    num = lambda v: -math.inf if v is None else v  # noqa: E731

    def key(i: int) -> tuple:
        s = standings[i]
        if s.errors or s.utility is None:
            return (2, i)
        if s.reaches:
            return (0, -num(s.f_weak), -num(s.recovery), i)
        return (1, -num(s.utility), -num(s.f_weak), i)

    order = sorted(range(len(standings)), key=key)
    ranks = {i: r for r, i in enumerate(order, 1)}
    return [Standing(**{**asdict(s), "rank": ranks[i], "kept": ranks[i] <= keep}) for i, s in enumerate(standings)]


@dataclass(frozen=True)
class Rung:
    """One decision: the candidates on `prompts` (its first `n` prompts of the search split), ranked; the kept go on."""

    rung: int
    n: int
    prompts: str
    standings: tuple[Standing, ...]

    @property
    def kept(self) -> list[str]:
        return [s.spec for s in sorted(self.standings, key=lambda s: s.rank) if s.kept]

    def to_json(self) -> dict:
        return {"rung": self.rung, "n": self.n, "prompts": self.prompts,
                "candidates": [s.to_json() for s in self.standings], "kept": self.kept}  # fmt: skip


@dataclass
class Search:
    """A search as it ran (or was read back): its id, plan, rungs, the finalists' held-out evaluations, its choice."""

    id: str
    specs: list[str]
    plan: SearchPlan
    rungs: list[Rung] = field(default_factory=list)
    final: list[Evaluation] = field(default_factory=list)
    choice: str | None = None  # the finalist ranked first on the search split

    @property
    def chosen(self) -> Evaluation | None:
        """The choice's held-out evaluation."""
        return next((e for e in self.final if e.policy == self.choice), None)

    def to_json(self) -> dict:
        return {"search_id": self.id, "grid": self.specs, "plan": asdict(self.plan), "criterion": CRITERION,
                "rungs": [r.to_json() for r in self.rungs], "choice": self.choice,
                "final": [e.to_json() for e in self.final],
                "record": f"records/searches/{self.id}.jsonl"}  # fmt: skip


OnEvent = Callable[[str, dict], None]  # ("rung" | "final", the line recorded): a decision as it is made


async def search(
    specs: str | Sequence[str | SweepPoint],
    plan: SearchPlan,
    setup: Setup,
    settings: EvalSettings | None = None,
    progress: bool = True,
    on_progress: OnProgress | None = None,
    on_event: OnEvent | None = None,
    stop: StopRule | None = None,
    files: bool = False,
) -> Search:
    """Search a policy grid by successive halving (module docstring) and return its rungs, final and choice.

    `specs`: grid specs as `cdw sweep` takes them, or points already loaded (the MCP server loads policies from its
    own folder). Every evaluation is an ordinary `evaluate` (candidates of a rung run concurrently); its record, and
    the search's own (`records/searches/`), make a second run of the same search read everything back, or resume
    where the first stopped. `on_event(kind, line)` is called with each decision as it is recorded (and for a
    decision read back); `stop` runs the final under an early stopping rule; `files`: the splits may name JSONL
    files (the CLI's; never an agent's).
    """
    settings = settings or EvalSettings()
    points = sweep_points(specs)
    names = [p.spec for p in points]
    if len(set(names)) != len(names):
        raise SearchError(f"the grid names a policy twice: {sorted({n for n in names if names.count(n) > 1})}")
    on, final = plan.splits(settings, files)
    if settings.needs_judge and plan.n0 < JUDGED_MIN:
        raise SearchError(f"n0 = {plan.n0}: a judged benchmark's length control needs at least {JUDGED_MIN} prompts "
                          "per rung")  # fmt: skip
    header = await _header(points, plan, on, final, setup, settings)
    sid = digest({k: v for k, v in header.items() if k not in ("created", "code")})
    result = Search(sid, names, plan)
    with RecordWriter("searches", sid, {"type": "header", **header}) as w:
        recorded = [e for e in w.record.events if e.get("type") == "rung"]
        by_spec = {p.spec: p for p in points}
        alive = points
        for r, (n, _, keep) in enumerate(plan.rungs(len(points), len(on))):
            subset = head(on, n)
            if r < len(recorded):  # decided: read back, never run again (a retry would move its evaluations)
                rung = rederived(recorded[r], plan.target)
                if [s.spec for s in rung.standings] != [p.spec for p in alive] or rung.kept != recorded[r]["kept"]:
                    raise SearchError(f"search {sid}: rung {r}'s recorded decision ({recorded[r]['kept']}) does not "
                                      f"follow from its evaluations now ({rung.kept})")  # fmt: skip
            else:
                done = await sweep([SweepPoint(p.spec, p.policy) for p in alive], subset, setup, settings, progress,
                                   on_progress, concurrent=True)  # fmt: skip
                for p in done:  # failed prompts (a server's hiccup) are retried once before anything is decided
                    if p.evaluation.errors:
                        p.evaluation = await evaluate(p.policy, subset, setup, settings, progress,
                                                      on_progress=on_progress)  # fmt: skip
                rung = Rung(r, n, subset.name, tuple(rank([standing(p.spec, p.evaluation, plan.target) for p in done],
                                                          keep)))  # fmt: skip
                w.append("rung", **rung.to_json())
            if on_event:
                on_event("rung", rung.to_json())
            result.rungs.append(rung)
            alive = [by_spec[spec] for spec in rung.kept]
        result.final = list(
            await asyncio.gather(
                *(
                    evaluate(p.policy, final, setup, settings, progress, on_progress=on_progress, stop=stop)
                    for p in alive
                )
            )
        )
        result.choice = alive[0].spec if alive else None
        line = {
            "prompts": final.name,
            "choice": result.choice,
            "finalists": [{"spec": e.policy, "evaluation": e.id, **_final_numbers(e)} for e in result.final],
        }
        before = [e for e in w.record.events if e.get("type") == "final"]
        if before and before[0]["choice"] != result.choice:
            raise SearchError(
                f"search {sid}: the recorded choice {before[0]['choice']!r} does not follow from its "
                f"rungs now ({result.choice!r})"
            )
        if not before:
            w.append("final", **line)
        if on_event:
            on_event("final", line)
    return result


def head(prompts: PromptSet, n: int) -> PromptSet:
    """Its first `n` prompts, named as the first `n` of the set it is itself a head of ("humaneval:train[:20]", not
    "humaneval:train[:40][:20]"), so a rung's records are the same whichever head of a split a search ran on."""
    base, cut, rest = prompts.name.rpartition("[:")
    if cut and rest.endswith("]") and rest[:-1].isdigit() and n < len(prompts):
        return PromptSet(f"{base}[:{n}]", prompts.prompts[:n])
    return prompts.head(n)


def _final_numbers(ev: Evaluation) -> dict:
    d = ev.numbers()
    return {k: d[k] for k in ("f_weak", "recovery", "recovery_lower", "utility", "n", "judged", "stopped")}


async def _header(points, plan: SearchPlan, on: PromptSet, final: PromptSet, setup: Setup,
                  settings: EvalSettings) -> dict:  # fmt: skip
    """The search record's header: what is searched (its id is a hash of all but when and by which code)."""
    return {
        "kind": "search", "benchmark": settings.bench.name,
        "grid": [{"spec": p.spec, "source": p.policy.source_hash()} for p in points],
        "on": {"name": on.name, "hash": on.hash, "n": len(on), "baselines": await baselines_id(on, setup, settings)},
        "final": {"name": final.name, "hash": final.hash, "n": len(final),
                  "baselines": await baselines_id(final, setup, settings)},
        "plan": asdict(plan), "criterion": CRITERION, "settings": settings.identity(),
        "created": now(), "code": msgspec.to_builtins(code_version()),
    }  # fmt: skip


def rederived(line: dict, target: float) -> Rung:
    """A recorded rung's decision taken again from the evaluation records it names (no server asked)."""
    cands = line["candidates"]
    keep = sum(c["kept"] for c in cands)
    standings = rank([standing(c["spec"], load_evaluation(c["evaluation"]), target) for c in cands], keep)
    return Rung(line["rung"], line["n"], line["prompts"], tuple(standings))


def rederive(search_id: str) -> list[str]:
    """Take every recorded decision of a search again from the evaluation records it names; what does not follow
    (empty: every decision and the choice do). No server is asked anything."""
    rec = read_record("searches", search_id)
    if rec is None:
        raise SearchError(f"no search {search_id!r} (records/searches/)")
    target = rec.header["plan"]["target"]
    problems, last = [], None
    for line in rec.of_type("rung"):
        last = rederived(line, target)
        for c, s in zip(line["candidates"], last.standings, strict=True):
            if (c["rank"], c["kept"], c["reaches"]) != (s.rank, s.kept, s.reaches):
                problems.append(f"rung {line['rung']}: {c['spec']} was ranked {c['rank']} (kept: {c['kept']}); its "
                                f"evaluation {c['evaluation']} ranks it {s.rank} (kept: {s.kept}) now")  # fmt: skip
    for line in rec.of_type("final"):
        want = last.kept[0] if last is not None else (rec.header["grid"][0]["spec"] if rec.header["grid"] else None)
        if line["choice"] != want:
            problems.append(f"the choice {line['choice']!r} is not the finalist ranked first ({want!r})")
    return problems
