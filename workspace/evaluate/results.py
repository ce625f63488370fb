"""Reading evaluations back: typed examples, recomputed numbers, the certification rule and why an evaluation is
not certified. Numbers come from the recorded generations and preferences only (ARCHITECTURE.md “Records and
findings”)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from servers.presets import load_catalog

from ..benchmarks import Conditions, PromptSet, ScoredShare
from ..benchmarks import get as get_benchmark
from ..engine import Decode
from ..format import pair
from ..judge import Preference
from ..records import verify
from ..records.log import Record, StoreError, list_records, read_record
from ..records.schema import Event, Header, SchemaError, Stopped, TestRun, event_of, header_of, to_fields
from ..stats import (
    Certification,
    Look,
    PairedSample,
    PassSample,
    StatsError,
    StopRule,
    Summary,
    look_order,
    summarize,
    summarize_pass,
)
from .setup import EvalSettings, EvaluationError


@dataclass(frozen=True)
class Example:
    """One prompt of an evaluation: reference, weak-only answer, candidate answer and the two preferences."""

    prompt_id: str
    instruction: str
    reference: str | None
    weak: Decode | None
    weak_preference: Preference | None
    candidate: Decode | None = None
    preference: Preference | None = None
    # Benchmarks that score answers alone: how each answer's scoring ended (the preferences stay None).
    reference_test: TestRun | None = None
    weak_test: TestRun | None = None
    test: TestRun | None = None
    judged: bool = True  # judged pairwise (else scored alone)
    # Who wrote the candidate's scored characters (the extracted code): benchmarks that score part of an answer.
    scored: ScoredShare | None = None

    @property
    def error(self) -> str | None:
        """Why this example has no numbers (None: it is complete)."""
        if self.reference is None:
            return "no reference answer"
        for what, d in (("weak", self.weak), ("candidate", self.candidate)):
            if d is None:
                return f"no {what} decode"
            if d.error:
                return f"{what} decode failed: {d.error}"
        if not self.judged:
            for what, t in (("reference", self.reference_test), ("weak", self.weak_test), ("candidate", self.test)):
                if t is None:
                    return f"{what} answer not tested"
                if t.error:
                    return f"{what} tests: {t.error}"
            return None
        for what, p in (("weak preference", self.weak_preference), ("preference", self.preference)):
            if p is None:
                return f"{what} not judged"
            if p.error:
                return f"judge failed ({what}): {p.error}"
        return None

    def sample(self) -> PairedSample | PassSample:
        assert self.error is None and self.candidate and self.weak and self.reference is not None
        if not self.judged:
            assert self.test and self.weak_test and self.reference_test
            sc = self.scored
            return PassSample(weak_chars=self.candidate.weak_chars, strong_chars=self.candidate.strong_chars,
                              passed=self.test.passed, weak_passed=self.weak_test.passed,
                              strong_passed=self.reference_test.passed, weak_code_chars=sc and sc.weak,
                              strong_code_chars=sc and sc.strong, weak_copy_chars=sc and sc.weak_copied)  # fmt: skip
        assert self.preference and self.weak_preference
        return PairedSample(
            weak_chars=self.candidate.weak_chars, strong_chars=self.candidate.strong_chars,
            preference=self.preference.preference, candidate_length=len(self.candidate.text),
            weak_preference=self.weak_preference.preference, weak_length=len(self.weak.text),
            reference_length=len(self.reference),
        )  # fmt: skip


GENERATION_CALLS = ("draft", "span", "peek")  # the engine's requests that generate (a known continuation answers)


def _finite(x: float | None) -> float | None:
    return x if x is None or math.isfinite(x) else None  # -inf: too many resamples without a gap (JSON: null)


def latest(events: Iterable[Event], type_: str) -> dict[str, Event]:
    """The last event of a type per prompt: a retried example supersedes its failed attempt."""
    return {e.prompt_id: e for e in events if e.type == type_}


def timings(events: Iterable[Event]) -> dict[str, float]:
    out: dict[str, float] = {}
    for e in events:
        if e.type == "timing":
            out[e.phase] = round(out.get(e.phase, 0.0) + e.seconds, 3)
    return out


def typed(rec: Record) -> tuple[Header, list[Event]]:
    """A record's header and events as the schema's structs (a line that does not fit is an error)."""
    try:
        return header_of(rec.header), [event_of(e) for e in rec.events]
    except SchemaError as e:
        raise EvaluationError(f"{rec.path}: {e}") from e


def _preference(v) -> Preference:
    mass = None if v.label_mass is None else tuple(v.label_mass)
    return Preference(v.preference, v.candidate_first, v.reference_first, v.calls, v.error, mass, v.pair)


@dataclass(frozen=True)
class Baselines:
    """Reference and weak-only answers with the weak preferences, for one (models, judge, prompts, settings)."""

    id: str
    header: Header
    examples: tuple[Example, ...]  # candidate fields unset
    timings: dict[str, float]

    @property
    def needs_judge(self) -> bool:
        """Whether its benchmark judges answers pairwise (else it scores them alone: pass rates, no judge)."""
        return get_benchmark(self.header.benchmark).needs_judge

    @property
    def errors(self) -> list[tuple[str, str]]:
        out = []
        for e in self.examples:
            if not self.needs_judge:
                bad = e.reference is None or e.weak is None or e.weak.error or not e.reference_test or not e.weak_test
                if bad or e.reference_test.error or e.weak_test.error:
                    out.append((e.prompt_id, e.error or "not tested"))
            elif e.reference is None:
                out.append((e.prompt_id, "no reference answer"))
            elif e.weak is None or e.weak.error:
                out.append((e.prompt_id, f"weak decode: {e.weak.error if e.weak else 'missing'}"))
            elif e.weak_preference is None or e.weak_preference.error:
                why = e.weak_preference.error if e.weak_preference else "not judged"
                out.append((e.prompt_id, f"weak preference: {why}"))
        return out

    @property
    def complete(self) -> bool:
        return not self.errors

    @property
    def u_weak(self) -> float | None:
        """U_weak from the unpenalised length-controlled fit (the one certification uses)."""
        from ..stats import lc_winrate_mle

        if not self.complete or len(self.examples) < 2:
            return None
        ex = self.examples
        if not self.needs_judge:
            return sum(e.weak_test.passed for e in ex) / len(ex)
        return lc_winrate_mle(
            [e.weak_preference.preference for e in ex], [len(e.weak.text) for e in ex], [len(e.reference) for e in ex]
        )

    @property
    def u_strong(self) -> float | None:
        """0.5 for a judge (the reference against itself); the strong model's own pass rate when scored alone."""
        if self.needs_judge:
            return 0.5
        if not self.complete or not self.examples:
            return None
        return sum(e.reference_test.passed for e in self.examples) / len(self.examples)

    def to_json(self) -> dict:
        u, us, h = self.u_weak, self.u_strong, self.header
        return {
            "baselines_id": self.id, "benchmark": h.benchmark, "prompts": h.prompts.name,
            "prompts_hash": h.prompts.hash, "n": len(self.examples), "u_weak": u, "u_strong": us,
            "gap": None if u is None or us is None else us - u,
            "models": h.models, "judge": h.judge, "settings": h.settings, "created": h.created,
            "code": None if h.code is None else {"commit": h.code.commit, "dirty": h.code.dirty},
            "timings": self.timings, "errors": [{"prompt_id": p, "error": e} for p, e in self.errors],
        }  # fmt: skip


def read_existing(folder: str, record_id: str, missing: str) -> Record:
    """A record that must exist: EvaluationError with `missing` when it does not, or when it cannot be read."""
    try:
        rec = read_record(folder, record_id)
    except StoreError as e:
        raise EvaluationError(str(e)) from e
    if rec is None:
        raise EvaluationError(missing)
    return rec


def read_baselines(record_id: str, prompts: PromptSet | None = None) -> Baselines:
    """A baselines record, typed; raises EvaluationError when it does not exist or does not fit the schema."""
    header, events = typed(read_existing("baselines", record_id, f"no baselines record {record_id}"))
    refs, weak, prefs = latest(events, "reference"), latest(events, "weak"), latest(events, "weak_preference")
    rtests, wtests = latest(events, "reference_test"), latest(events, "weak_test")
    judged = get_benchmark(header.benchmark).needs_judge
    by_id = {p.id: p.instruction for p in prompts} if prompts else {}
    examples = []
    for pid in header.prompts.ids:
        w = Decode.from_record(weak[pid].decode) if pid in weak else None
        ref = refs.get(pid)
        instr = by_id.get(pid) or (ref.instruction if ref else w.instruction if w else "")
        text = ref.text if ref is not None and ref.error is None else None
        pref = _preference(prefs[pid]) if pid in prefs else None
        examples.append(Example(pid, instr, text, w, pref, reference_test=rtests.get(pid), weak_test=wtests.get(pid),
                                judged=judged))  # fmt: skip
    return Baselines(record_id, header, tuple(examples), timings(events))


def platform_problems(header: Header, what: str) -> list[str]:
    """Records made with a GPU preset's models (the `paper` presets') must say each server ran on a platform that
    preset lists (vLLM's CUDA build): the same models served by the CPU build are not the canonical conditions.
    Records of other models are not asked (none made before platforms were recorded is a GPU preset's)."""
    wanted = load_catalog().platforms_of(header.models)
    if not wanted:
        return []
    engines = (header.decoding or {}).get("servers", {})
    out = []
    for role in header.models:
        got = engines.get(role, {}).get("platform")
        if got not in wanted:
            out.append(f"the {what} record's {role} server ran on {got or 'an unrecorded platform'}, not "
                       f"{' or '.join(wanted)} (vLLM's build for these models: README, On a GPU)")  # fmt: skip
    return out


@dataclass(frozen=True)
class Evaluation:
    """An evaluation read back from its record, numbers recomputed."""

    id: str
    header: Header
    baselines: Baselines
    examples: tuple[Example, ...]
    summary: Summary | None  # over the complete examples; None when there are none
    timings: dict[str, float]
    note: str = ""  # why there are no numbers although examples were judged (e.g. too few for length control)
    stops: tuple[Stopped, ...] = ()  # the early stopping rule's `stopped` lines, in the order written

    @property
    def policy(self) -> str:
        return self.header.policy or ""

    @property
    def prompts(self) -> str:
        return self.header.prompts.name

    @property
    def n(self) -> int:
        return len(self.examples)

    @property
    def errors(self) -> list[tuple[str, str]]:
        """(prompt id, why it has no numbers); a stopped evaluation's prompts after the stop are not errors."""
        stopped = self.stopped is not None
        return [(e.prompt_id, e.error) for e in self.examples if e.error and not (stopped and e.candidate is None)]

    @property
    def complete(self) -> bool:
        return not self.errors and self.stopped is None

    @cached_property
    def stopped(self) -> Stopped | None:
        """The `stopped` line that ended this evaluation, None when it was not stopped (or was run on after a stop:
        then more prompts were decoded than the line looked at)."""
        if not self.stops:
            return None
        last = self.stops[-1]
        return last if sum(e.candidate is not None for e in self.examples) == last.n else None

    def stopped_by(self, rule: StopRule) -> bool:
        """Whether this evaluation stands stopped by this very rule."""
        return self.stopped is not None and self.stopped.rule == rule.to_json()

    def look(self, rule: StopRule, n: int) -> Look | None:
        """The stop rule's look after the first `n` prompts of its order (`workspace.stats.look_order`), taken on
        this record's results; None when one of those prompts has no numbers (a look sees whole samples only)."""
        first = [self.examples[i] for i in look_order([e.prompt_id for e in self.examples])[:n]]
        if len(first) < n or any(e.error for e in first):
            return None
        return rule.look([e.sample() for e in first], self.n)

    def stop_problem(self) -> str | None:
        """Why the `stopped` line does not follow from the record's results (None: it does, or there is none)."""
        s = self.stopped
        if s is None:
            return None
        try:
            look = self.look(StopRule.from_json(s.rule), s.n)
        except StatsError as e:
            return f"its stopped line names no look the rule takes: {e}"
        if look is None or not look.stop or look.look != s.look or look.of != s.of:
            return "its stopped line does not follow from its results (the rule, taken again, does not stop there)"
        return None

    @property
    def certification(self) -> Certification | None:
        """The certification rule (`stats.certify`) on the judged examples; None with fewer than 2."""
        return self.summary.certification if self.summary else None

    @cached_property
    def check(self) -> verify.Check:
        """The offline checks of this record and its baselines (signatures, ids, texts, verdicts)."""
        return verify.check("evaluation", self.id)

    @property
    def verified(self) -> bool:
        return self.check.verified

    def canonical_problems(self) -> list[str]:
        """What keeps this evaluation off the canonical conditions (empty: canonical set, models, judge, settings).
        The confirmation set counts as canonical prompts too (it confirms a canonical result)."""
        h = self.header
        return get_benchmark(h.benchmark).canonical_problems(Conditions(h.prompts.name, h.prompts.hash, h.models,
                                                                        h.settings)) + \
            platform_problems(h, "evaluation") + platform_problems(self.baselines.header, "baselines")  # fmt: skip

    @property
    def canonical(self) -> bool:
        """On the canonical prompt set with the canonical models, judge and settings."""
        return not self.canonical_problems()

    def reasons(self) -> list[str]:
        """Why it is not certified, each in plain words (empty: certified)."""
        out = self.canonical_problems()
        if self.stopped is not None:
            out.append(f"stopped early ({self.stopped.n} of {self.n} prompts run): {self.stopped.reason}")
            if problem := self.stop_problem():
                out.append(problem)
        if self.errors:
            out.append(f"{len(self.errors)} of {self.n} example(s) have no numbers (see errors)")
        if not self.check.verified:
            out.append(f"the record is not verified: {self.check.reason}")
        c = self.certification
        if c is None:
            out.append(self.note or "nothing judged")
        else:
            out += list(c.reasons)
        return out

    @property
    def certified(self) -> bool:
        return not self.reasons()

    def requests(self) -> dict:
        """The candidate decodes' generation requests (drafts, spans, peeks) per role, by where each was answered:
        the server, the call cache, or a known continuation (`reuse`: workspace/reuse.py); `reused` is the share
        answered from known continuations, `saved` the share answered without the server."""
        out = {role: {"server": 0, "cache": 0, "reuse": 0} for role in ("weak", "strong")}
        for e in self.examples:
            for c in e.candidate.calls if e.candidate else ():
                if c.kind in GENERATION_CALLS and c.role in out:
                    out[c.role][c.origin] = out[c.role].get(c.origin, 0) + 1
        total = sum(sum(v.values()) for v in out.values())
        reused = sum(v["reuse"] for v in out.values())
        saved = reused + sum(v["cache"] for v in out.values())
        return {**out, "reused": reused / total if total else None, "saved": saved / total if total else None}

    def to_json(self) -> dict:
        """The numbers, certification and verification, as `cdw eval --json` prints them."""
        return {**self.numbers(), "certified": self.certified, "verified": self.check.verified,
                "verification": self.check.reason, "reasons": self.reasons()}  # fmt: skip

    def numbers(self) -> dict:
        """What the record's generations and preferences give (no verification: cheap, and the same before and
        after the record is signed)."""
        s, c = self.summary, self.certification
        return {
            "evaluation_id": self.id,
            "benchmark": self.header.benchmark,
            "policy": self.policy,
            "prompts": self.prompts,
            "n": self.n,
            "judged": s.n if s else 0,
            "f_weak": s.f_weak if s else None,
            "f_weak_code": s.f_weak_code if s else None,
            "copy_share": s.copy_share if s else None,
            "utility": c.utility if c else None,
            "u_weak": c.u_weak if c else None,
            "u_strong": c.u_strong if c else None,
            "recovery": c.recovery if c else None,
            "recovery_lower": _finite(c.recovery_lower) if c else None,
            "utility_penalised": c.utility_penalised if c else None,
            "recovery_penalised": c.recovery_penalised if c else None,
            "raw_winrate": s.raw_winrate if s else None,
            "ci": {
                **({k: pair(s.ci[k]) for k in ("f_weak", "f_weak_code", "copy_share") if s and k in s.ci}),
                **({k: pair(v) for k, v in c.ci.items()} if c else {}),
            },  # fmt: skip
            "canonical": self.canonical,
            "stopped": None if self.stopped is None else to_fields(self.stopped),
            "errors": [{"prompt_id": p, "error": e} for p, e in self.errors],
            "note": self.note,
            "created": self.header.created,
            "code": None
            if self.header.code is None
            else {"commit": self.header.code.commit, "dirty": self.header.code.dirty},  # fmt: skip
            "timings": self.timings,
            "requests": self.requests(),
        }


def scored_share(benchmark: str, d: Decode | None, prompt_id: str, instruction: str) -> ScoredShare | None:
    """Who wrote the scored characters of a decode (`Benchmark.scored_share`); None when its benchmark scores
    answers as a whole, or the decode is missing or failed, or its segments do not make up its text (the offline
    checks say so)."""
    if d is None or d.error:
        return None
    try:
        return get_benchmark(benchmark).scored_share(d.text, [(s.author, s.text) for s in d.segments], prompt_id,
                                                     instruction)  # fmt: skip
    except (ValueError, KeyError):
        return None


def build(eid: str, rec: Record, base: Baselines, settings: EvalSettings) -> Evaluation:
    header, events = typed(rec)
    gens, prefs, tests = latest(events, "generation"), latest(events, "preference"), latest(events, "test")
    examples = []
    for b in base.examples:
        g = Decode.from_record(gens[b.prompt_id].decode) if b.prompt_id in gens else None
        p = _preference(prefs[b.prompt_id]) if b.prompt_id in prefs else None
        share = scored_share(header.benchmark, g, b.prompt_id, b.instruction)
        examples.append(dataclasses.replace(b, candidate=g, preference=p, test=tests.get(b.prompt_id), scored=share))
    ok = [e.sample() for e in examples if e.error is None]
    summary, note = None, ""
    if ok:
        try:
            how = summarize if base.needs_judge else summarize_pass
            summary = how(ok, n_boot=settings.n_boot, seed=settings.seed)
        except StatsError as e:  # e.g. one judged prompt: the record stays readable, without numbers
            note = str(e)
    stops = tuple(e for e in events if isinstance(e, Stopped))
    return Evaluation(eid, header, base, tuple(examples), summary, {**base.timings, **timings(events)}, note, stops)


def stopped_line(look: Look) -> Stopped:
    """The record line of a look that stops an evaluation."""
    return Stopped(**{k: v for k, v in look.to_json().items() if k != "stop"})


def load_evaluation(evaluation_id: str, settings: EvalSettings | None = None) -> Evaluation:
    """Read an evaluation back, recomputing every number from its generations and preferences."""
    missing = f"no evaluation {evaluation_id!r} (see `cdw leaderboard` or records/evaluations/)"
    rec = read_existing("evaluations", evaluation_id, missing)
    base = read_baselines(rec.header["baselines"])
    return build(evaluation_id, rec, base, settings or EvalSettings())


def list_evaluations(settings: EvalSettings | None = None) -> list[Evaluation]:
    """Every evaluation on record (oldest first); damaged ones raise."""
    return [load_evaluation(i, settings) for i in list_records("evaluations")]


def confirmation_of(ev: Evaluation, others: Iterable[Evaluation]) -> Certification | None:
    """A certified canonical result confirmed (alpaca_eval: at n = 400): the certification rule on its examples
    pooled with a verified, complete evaluation of the same policy (spec and code), models, judge and settings on
    its benchmark's confirmation set. None when there is no such evaluation (or no such set)."""
    from ..stats import certify

    h = ev.header
    bench = get_benchmark(h.benchmark)
    if bench.confirmation_set is None or not bench.needs_judge:
        return None
    for o in others:
        oh = o.header
        same = (oh.benchmark, oh.policy, oh.policy_source_hash, oh.models, oh.judge, oh.settings) == (
            h.benchmark, h.policy, h.policy_source_hash, h.models, h.judge, h.settings)  # fmt: skip
        if not (same and oh.prompts.name == bench.confirmation_set and o.complete and o.verified and ev.complete):
            continue
        samples = [e.sample() for e in (*ev.examples, *o.examples)]
        return certify([s.preference for s in samples], [s.weak_preference for s in samples],
                       [s.candidate_length for s in samples], [s.weak_length for s in samples],
                       [s.reference_length for s in samples])  # fmt: skip
    return None
