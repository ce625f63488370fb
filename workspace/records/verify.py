"""The offline checks of a record: everything that can be checked without a server (ARCHITECTURE.md “Records and
findings”).

`check(kind, id)`:
- the id is recomputed from the header (a record cannot be moved under another id);
- every signature holds and the last line is one; the signer's key is on the trusted list (`signing`);
- each decode's text is its joined segments, its segments tile the weak token range, authors are weak/strong;
- each preference is the mean of its two recorded one-order verdicts (or 0.5 for identical texts, with no
  call), its labels held enough probability, and it is bound (`pair`) to the texts it judged;
- a successful event is never followed by another for the same prompt (only failures are retried);
- baselines hold the prompts their header names (ids, count, hash) and canonical ones the canonical prompts;
- an evaluation's baselines pass too and share its models, judge, prompts and settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..benchmarks import STATUSES, DataError, Prompt, PromptSet
from ..benchmarks import get as get_benchmark
from ..judge import MIN_LABEL_MASS, pair_hash
from . import signing
from .log import Record, StoreError, read_record
from .schema import Header, Judgement, Reference, SchemaError, TestRun, digest, event_of, header_of


@dataclass(frozen=True)
class Coverage:
    """How much of its prompt set a record holds, and the writer sessions it was written in. Signatures cannot
    show that a record was cut after one of its sessions' signatures (every byte left is signed): this can."""

    prompts: int  # the prompts its header names
    scored: int  # with a result (a test status, a verdict)
    errors: int  # whose last result is an error (retried by a later run)
    sessions: tuple[int, ...]  # events written in each writer session, in order

    @property
    def missing(self) -> int:
        return self.prompts - self.scored - self.errors

    @property
    def complete(self) -> bool:
        return self.missing == 0

    def describe(self) -> str:
        """One line: "incomplete: 40 of 164 prompts have results (2 errors); written in 1 session (120 events)"."""
        state = "complete" if self.complete else "incomplete"
        errors = f" ({self.errors} errors)" if self.errors else ""
        n = len(self.sessions)
        sessions = f"{n} writer session{'s' if n != 1 else ''} ({' + '.join(map(str, self.sessions)) or 0} events)"
        return f"{state}: {self.scored + self.errors} of {self.prompts} prompts have results{errors}; {sessions}"

    def to_json(self) -> dict:
        return {"complete": self.complete, "prompts": self.prompts, "scored": self.scored, "errors": self.errors,
                "missing": self.missing, "sessions": list(self.sessions)}  # fmt: skip


def _coverage(ids: list[str], parts: list[dict[str, Any]], sessions: tuple[int, ...]) -> Coverage:
    """Parts in the order a prompt goes through them (its answer, then its score...): a prompt is scored when every
    part has a last event without an error, an error when a part is an error and every part before it is there
    (an answer that failed is never scored), missing otherwise."""
    scored = errors = 0
    for pid in ids:
        for part in parts:
            e = part.get(pid)
            if e is None:
                break
            if _is_error(e):
                errors += 1
                break
        else:
            scored += 1
    return Coverage(len(ids), scored, errors, sessions)


def _is_error(e) -> bool:
    if isinstance(e, TestRun):
        return e.status == "error"
    decode = getattr(e, "decode", None)
    if isinstance(decode, dict):
        return decode.get("error") is not None
    return getattr(e, "error", None) is not None


@dataclass(frozen=True)
class Check:
    """The verdict of the offline checks on one record (and, for an evaluation, on its baselines)."""

    kind: str
    id: str
    problems: tuple[str, ...]  # empty: the record is internally consistent and properly signed
    signed_by: str | None = None
    trusted_by: str | None = None  # who the trusted-keys file names for the signing key (None: not trusted)
    coverage: Coverage | None = None  # how many of its prompts have results (None: the record could not be read)

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def verified(self) -> bool:
        """Valid and signed by a key the group trusts: the only records the leaderboard certifies."""
        return self.valid and self.trusted_by is not None

    @property
    def reason(self) -> str:
        """Why it is not verified, in one line ("" when it is)."""
        if self.problems:
            return "; ".join(self.problems)
        if self.trusted_by is None:
            return f"signed by a key not in {signing.trusted_keys_file().name} ({self.signed_by})"
        return ""


def _decode_problems(where: str, d: dict) -> list[str]:
    out = []
    segs = d.get("segments") or []
    if "".join(s[1] for s in segs) != d.get("text"):
        out.append(f"{where}: the text is not its segments joined")
    pos = None
    for s in segs:
        author, _, tokens, span = s[0], s[1], s[2], s[3]
        if author not in ("weak", "strong") or not isinstance(tokens, int) or tokens < 0:
            out.append(f"{where}: a segment with author {author!r} and {tokens!r} tokens")
        if pos is not None and span[0] != pos or span[1] < span[0]:
            out.append(f"{where}: segment token ranges do not tile the answer")
        pos = span[1]
    return out


def _verdict_problems(where: str, v: Judgement, instruction: str, candidate: str | None, reference: str | None) -> list:
    out = []
    if candidate is not None and reference is not None and v.pair != pair_hash(instruction, candidate, reference):
        out.append(f"{where}: the verdict is not about the texts on record")
    if v.error is not None:
        if v.preference is not None:
            out.append(f"{where}: a failed verdict with a preference")
        return out
    if v.preference is None or not 0.0 <= v.preference <= 1.0:
        out.append(f"{where}: preference {v.preference!r} is not a probability")
    elif v.calls == 0:
        if v.preference != 0.5 or candidate != reference:
            out.append(f"{where}: a preference without a judge call is only 0.5 for identical texts")
    elif v.candidate_first is None or v.reference_first is None:
        out.append(f"{where}: a judged preference without its two one-order verdicts")
    elif abs(v.preference - (v.candidate_first + 1.0 - v.reference_first) / 2.0) > 1e-9:
        out.append(f"{where}: the preference is not the mean of its two one-order verdicts")
    elif v.label_mass is None or min(v.label_mass) < MIN_LABEL_MASS:
        out.append(f"{where}: the judge's labels held too little probability ({v.label_mass})")
    return out


def _test_problems(where: str, t: TestRun, pid: str, text: str | None, benchmark: str) -> list[str]:
    """A test line must be about the answer on record: its program hash is the one the benchmark gives that answer."""
    if t.status not in STATUSES:
        return [f"{where}: unknown test status {t.status!r}"]
    if text is None or t.status == "error":
        return []
    try:
        bench = get_benchmark(benchmark)
    except DataError as e:
        return [f"{where}: {e}"]
    if bench.needs_judge:
        return [f"{where}: a test result in a record of {benchmark}, whose answers are judged"]
    try:
        want = bench.scored_hash(text, pid)
    except KeyError:
        return [f"{where}: {pid} is not a {benchmark} problem"]
    if t.program != want:
        return [f"{where}: the test result is not about the answer on record (program {t.program[:12]} != {want[:12]})"]
    if (t.status == "no_code") != (want == ""):
        return [f"{where}: status {t.status!r} for an answer {'without' if want == '' else 'with'} code"]
    return []


def _latest_ok(events, type_: str, ok) -> tuple[dict[str, Any], list[str]]:
    """The last event of a type per prompt, and problems: a success followed by another event (overwritten)."""
    latest: dict[str, Any] = {}
    problems = []
    for e in events:
        if e.type != type_:
            continue
        prev = latest.get(e.prompt_id)
        if prev is not None and ok(prev):
            problems.append(f"{type_} of {e.prompt_id}: a successful event was overwritten by a later one")
        latest[e.prompt_id] = e
    return latest, problems


def _typed(rec: Record) -> tuple[Header, list, list[str]]:
    problems = []
    try:
        header = header_of(rec.header)
    except SchemaError as e:
        raise SchemaError(f"{rec.path}: {e}") from e
    events = []
    for i, obj in enumerate(rec.events):
        try:
            events.append(event_of(obj))
        except SchemaError as e:
            problems.append(f"event {i + 1}: {e}")
    return header, events, problems


def _open(folder: str, record_id: str) -> tuple[Header, list, list[str], str | None, str | None, tuple] | None:
    """(header, events, problems so far, signing key, who the trusted list names for it, events per writer
    session); None: no such record."""
    rec = read_record(folder, record_id)
    if rec is None:
        return None
    header, events, problems = _typed(rec)
    sig = rec.signature
    if sig.problem is not None:
        problems.append(sig.problem)
    trusted = signing.trusted_keys().get(sig.key) if sig.key else None
    return header, events, problems, sig.key, trusted.who if trusted else None, rec.sessions


def _judged(benchmark: str) -> bool:
    try:
        return get_benchmark(benchmark).needs_judge
    except DataError:
        return True


def check_baselines(record_id: str) -> Check:
    opened = _open("baselines", record_id)
    if opened is None:
        return Check("baselines", record_id, ("no such record",))
    header, events, problems, key, who, sessions = opened
    if header.kind != "baselines":
        problems.append(f"a {header.kind} header in a baselines record")
    if digest(header.identity()) != record_id:
        problems.append("its id is not the hash of its header (moved, or its header was edited)")
    refs, p = _latest_ok(events, "reference", lambda e: e.error is None)
    problems += p
    weak, p = _latest_ok(events, "weak", lambda e: e.decode.get("error") is None)
    problems += p
    prefs, p = _latest_ok(events, "weak_preference", lambda e: e.error is None)
    problems += p
    problems += _prompt_problems(header, refs)
    scores: list[dict[str, Any]] = [prefs] if _judged(header.benchmark) else []
    for type_, answers in (("reference_test", None), ("weak_test", weak)):
        tests, p = _latest_ok(events, type_, lambda e: e.error is None)
        problems += p
        if not _judged(header.benchmark):
            scores.append(tests)
        for pid, t in tests.items():
            if answers is None:
                text = refs[pid].text if pid in refs else None
            else:
                text = answers[pid].decode.get("text") if pid in answers else None
            problems += _test_problems(f"{type_} {pid}", t, pid, text, header.benchmark)
    for pid in header.prompts.ids:
        w = weak.get(pid)
        if w is not None:
            problems += _decode_problems(f"weak answer {pid}", w.decode)
        v = prefs.get(pid)
        if v is not None:
            ref, instr = refs.get(pid), refs[pid].instruction if pid in refs else ""
            problems += _verdict_problems(f"weak preference {pid}", v, instr, w.decode.get("text") if w else None,
                                          ref.text if ref else None)  # fmt: skip
    coverage = _coverage(list(header.prompts.ids), [refs, weak, *scores], sessions)
    return Check("baselines", record_id, tuple(problems), key, who, coverage)


def _prompt_problems(header: Header, refs: dict[str, Reference]) -> list[str]:
    ps = header.prompts
    out = []
    if set(refs) - set(ps.ids):
        out.append("references for prompts the header does not name")
    if len(refs) == len(ps.ids):
        got = PromptSet(ps.name, tuple(Prompt(i, refs[i].instruction) for i in ps.ids))
        if got.hash != ps.hash:
            out.append("its instructions do not hash to the prompt set its header names")
    try:
        out += get_benchmark(header.benchmark).prompt_problems(ps.name, ps.ids, ps.hash)
    except DataError as e:
        out.append(str(e))
    return out


def check_evaluation(record_id: str) -> Check:
    opened = _open("evaluations", record_id)
    if opened is None:
        return Check("evaluation", record_id, ("no such record",))
    header, events, problems, key, who, sessions = opened
    if header.kind != "evaluation" or not header.baselines or not header.policy:
        return Check("evaluation", record_id, (*problems, "not an evaluation header"), key, who)
    if digest(header.identity()) != record_id:
        problems.append("its id is not the hash of its policy and baselines (moved, or its header was edited)")
    base = check_baselines(header.baselines)
    if not base.valid:
        problems.append(f"its baselines {header.baselines}: {base.reason}")
    elif base.signed_by != key and base.trusted_by is None:
        # Another key is fine when the group trusts it (baselines made on another machine, whose key is listed).
        problems.append("its baselines were signed by another key, one not in the trusted list")
    brec = read_record("baselines", header.baselines)
    if brec is not None:
        bh, bevents, _ = _typed(brec)
        for f in ("models", "judge", "prompts", "settings", "benchmark"):
            if getattr(bh, f) != getattr(header, f):
                problems.append(f"its {f} differ from its baselines'")
        refs, _ = _latest_ok(bevents, "reference", lambda e: e.error is None)
    else:
        refs = {}
    gens, p = _latest_ok(events, "generation", lambda e: e.decode.get("error") is None)
    problems += p
    prefs, p = _latest_ok(events, "preference", lambda e: e.error is None)
    problems += p
    for pid, g in gens.items():
        if pid not in header.prompts.ids:
            problems.append(f"a generation for {pid}, which is not one of its prompts")
        problems += _decode_problems(f"generation {pid}", g.decode)
        if g.decode.get("policy") not in (None, header.policy):
            problems.append(f"generation {pid} was made by {g.decode.get('policy')!r}, not the record's policy")
    tests, p = _latest_ok(events, "test", lambda e: e.error is None)
    problems += p
    for pid, t in tests.items():
        g = gens.get(pid)
        problems += _test_problems(f"test {pid}", t, pid, g.decode.get("text") if g else None, header.benchmark)
    for pid, v in prefs.items():
        g, ref = gens.get(pid), refs.get(pid)
        text = g.decode.get("text") if g else None
        problems += _verdict_problems(f"preference {pid}", v, ref.instruction if ref else "", text,
                                      ref.text if ref else None)  # fmt: skip
    scores = prefs if _judged(header.benchmark) else tests
    coverage = _coverage(list(header.prompts.ids), [gens, scores], sessions)
    return Check("evaluation", record_id, tuple(problems), key, who, coverage)


def check(kind: str, record_id: str) -> Check:
    """The offline checks of one record (`kind`: evaluation | baselines)."""
    try:
        return check_evaluation(record_id) if kind.startswith("evaluation") else check_baselines(record_id)
    except StoreError as e:
        return Check(kind, record_id, (str(e),))
