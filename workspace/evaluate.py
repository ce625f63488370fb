"""Evaluations: a policy on a prompt set → decodes → judge → a record → f_weak, utility, recovery (DESIGN.md §1, §6).

Phases, each fully concurrent and each appended to a record as it goes:
1. **Baselines** (once per models, judge, prompt set and decoding settings; `records/baselines/`): the strong
   model's free-running greedy answers (the *reference*), the weak model's own answers (never-defer), and the
   judge's preference of each weak answer over its reference (→ U_weak).
2. **Decode** the candidate policy on every prompt (`records/evaluations/`).
3. **Judge** each candidate against its reference, both orders. A candidate identical to the reference is 0.5
   and one identical to the weak answer takes the weak preference, without calls.

Record ids are hashes of what is evaluated, so running the same evaluation again resumes its record: work
already recorded is skipped and failed examples are retried. Numbers are always recomputed from the recorded
generations and preferences (`load_evaluation`); a summary line in a record is for people reading the file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from tqdm.auto import tqdm

from servers.presets import load_catalog

from . import data
from .client import ClientError, ClientSettings, ModelClient
from .endpoints import resolve_endpoint
from .engine import Decode, EngineSettings, Models, decode_many
from .judge import Judge, JudgeSettings, Preference
from .policies import Policy, load_policy
from .stats import PairedSample, StatsError, Summary, summarize
from .store import CallCache, RecordWriter, StoreError, list_records, read_record

BAR = 0.98  # recovery a canonical evaluation must reach to be certified (DESIGN.md §1)


class EvaluationError(RuntimeError):
    """An evaluation cannot run or be read (no such record, damaged baselines, bad arguments)."""


@dataclass(frozen=True)
class EvalSettings:
    """Everything besides the policy that decides an evaluation's numbers; part of the record's identity."""

    engine: EngineSettings = field(default_factory=EngineSettings)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    n_boot: int = 1000  # bootstrap resamples (intervals only; not part of the identity)
    seed: int = 0

    def identity(self) -> dict:
        j = self.judge
        judge = {"template": j.template, "labels": list(j.labels), "top_logprobs": j.top_logprobs, "digest": j.digest()}
        return {"engine": asdict(self.engine), "judge": judge}


@dataclass
class Setup:
    """The three servers an evaluation talks to, and the call cache in front of them."""

    weak: ModelClient
    strong: ModelClient
    judge: ModelClient

    @classmethod
    def from_endpoints(
        cls, urls: dict[str, str | None] | None = None, cache: CallCache | None = None,
        settings: ClientSettings | None = None,
    ) -> Setup:  # fmt: skip
        """Clients for each role found as `resolve_endpoint` finds them, all sharing one call cache."""
        urls = urls or {}
        return cls(
            *(ModelClient(resolve_endpoint(r, urls.get(r)), settings, cache) for r in ("weak", "strong", "judge"))
        )

    @property
    def models(self) -> Models:
        return Models(self.weak, self.strong)

    async def names(self) -> dict[str, str]:
        """Served model name per role (from the endpoint when known: no request)."""
        got = await asyncio.gather(self.weak.model(), self.strong.model(), self.judge.model())
        return dict(zip(("weak", "strong", "judge"), got, strict=True))

    async def servers(self) -> dict[str, str]:
        """Server version per role, for the record (best effort)."""
        out = {}
        for role, c in (("weak", self.weak), ("strong", self.strong), ("judge", self.judge)):
            reps = await c.status()
            out[role] = ", ".join(f"{r.url} vllm {r.version}" for r in reps)
        return out

    async def close(self) -> None:
        await asyncio.gather(self.weak.close(), self.strong.close(), self.judge.close())

    async def __aenter__(self) -> Setup:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


# ---------------------------------------------------------------- typed results


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
        for what, p in (("weak preference", self.weak_preference), ("preference", self.preference)):
            if p is None:
                return f"{what} not judged"
            if p.error:
                return f"judge failed ({what}): {p.error}"
        return None

    def sample(self) -> PairedSample:
        assert self.error is None and self.candidate and self.weak and self.reference is not None
        assert self.preference and self.weak_preference
        return PairedSample(
            weak_chars=self.candidate.weak_chars, strong_chars=self.candidate.strong_chars,
            preference=self.preference.preference, candidate_length=len(self.candidate.text),
            weak_preference=self.weak_preference.preference, weak_length=len(self.weak.text),
            reference_length=len(self.reference),
        )  # fmt: skip


@dataclass(frozen=True)
class Baselines:
    """Reference and weak-only answers with the weak preferences, for one (models, judge, prompts, settings)."""

    id: str
    header: dict
    examples: tuple[Example, ...]  # candidate fields unset

    @property
    def errors(self) -> list[tuple[str, str]]:
        out = []
        for e in self.examples:
            if e.reference is None:
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
        from .stats import length_controlled_winrate

        if not self.complete or not self.examples:
            return None
        ex = self.examples
        return length_controlled_winrate(
            [e.weak_preference.preference for e in ex], [len(e.weak.text) for e in ex], [len(e.reference) for e in ex]
        )

    def to_json(self) -> dict:
        u = self.u_weak
        rec = read_record("baselines", self.id)
        return {
            "baselines_id": self.id,
            "prompts": self.header["prompts"]["name"],
            "prompts_hash": self.header["prompts"]["hash"],
            "n": len(self.examples),
            "u_weak": u,
            "u_strong": 0.5,
            "gap": None if u is None else 0.5 - u,
            "models": self.header["models"],
            "judge": self.header.get("judge", ""),
            "settings": self.header["settings"],
            "created": self.header.get("created"),
            "timings": _timings(rec.events if rec else ()),
            "errors": [{"prompt_id": p, "error": e} for p, e in self.errors],
        }


@dataclass(frozen=True)
class Evaluation:
    """An evaluation read back from its record, numbers recomputed."""

    id: str
    header: dict
    baselines: Baselines
    examples: tuple[Example, ...]
    summary: Summary | None  # over the complete examples; None when there are none
    timings: dict[str, float]
    note: str = ""  # why there are no numbers although examples were judged (e.g. too few for length control)

    @property
    def policy(self) -> str:
        return self.header["policy"]

    @property
    def n(self) -> int:
        return len(self.examples)

    @property
    def errors(self) -> list[tuple[str, str]]:
        return [(e.prompt_id, e.error) for e in self.examples if e.error]

    @property
    def complete(self) -> bool:
        return not self.errors

    @property
    def canonical(self) -> bool:
        """On the canonical prompt set with the canonical models, judge and settings."""
        h = self.header
        return (
            h["prompts"]["name"] == "canonical"
            and h["prompts"]["hash"] == json.loads(data.CANONICAL_FILE.read_text())["hash"]
            and h["models"] == load_catalog().canonical
            and h["settings"]["judge"]["digest"] == JudgeSettings().digest()
            and h["settings"]["engine"] == asdict(EngineSettings())
        )

    @property
    def certified(self) -> bool:
        s = self.summary
        return self.canonical and self.complete and s is not None and s.recovery is not None and s.recovery >= BAR

    def to_json(self) -> dict:
        s = self.summary
        return {
            "evaluation_id": self.id,
            "policy": self.policy,
            "prompts": self.header["prompts"]["name"],
            "n": self.n,
            "judged": s.n if s else 0,
            "f_weak": s.f_weak if s else None,
            "utility": s.utility if s else None,
            "raw_winrate": s.raw_winrate if s else None,
            "u_weak": s.u_weak if s else None,
            "recovery": s.recovery if s else None,
            "ci": {k: [v.low, v.high] for k, v in s.ci.items()} if s else {},
            "certified": self.certified,
            "canonical": self.canonical,
            "errors": [{"prompt_id": p, "error": e} for p, e in self.errors],
            "note": self.note,
            "created": self.header.get("created"),
            "timings": self.timings,
        }


# ---------------------------------------------------------------- identity


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _latest(events: Iterable[dict], type_: str) -> dict[str, dict]:
    """The last event of a type per prompt: a retried example supersedes its failed attempt."""
    return {e["prompt_id"]: e for e in events if e.get("type") == type_}


def _timings(events: Iterable[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for e in events:
        if e.get("type") == "timing":
            out[e["phase"]] = round(out.get(e["phase"], 0.0) + e["seconds"], 3)
    return out


# ---------------------------------------------------------------- baselines


async def _baselines_header(prompts: data.PromptSet, setup: Setup, settings: EvalSettings) -> dict:
    return {
        "kind": "baselines",
        "models": await setup.names(),
        "judge": await Judge(setup.judge, settings.judge).id(),
        "prompts": {"name": prompts.name, "hash": prompts.hash, "ids": [p.id for p in prompts]},
        "settings": settings.identity(),
    }


def _read_baselines(record_id: str, prompts: data.PromptSet | None = None) -> Baselines:
    rec = read_record("baselines", record_id)
    if rec is None:
        raise EvaluationError(f"no baselines record {record_id}")
    refs = _latest(rec.events, "reference")
    weak = _latest(rec.events, "weak")
    prefs = _latest(rec.events, "weak_preference")
    ids = rec.header["prompts"]["ids"]
    by_id = {p.id: p.instruction for p in prompts} if prompts else {}
    examples = []
    for pid in ids:
        w = Decode.from_record(weak[pid]["decode"]) if pid in weak else None
        instr = by_id.get(pid) or (w.instruction if w else refs.get(pid, {}).get("instruction", ""))
        examples.append(Example(
            pid, instr,
            refs[pid]["text"] if pid in refs and refs[pid].get("error") is None else None,
            w,
            Preference.from_json(prefs[pid]) if pid in prefs else None,
        ))  # fmt: skip
    return Baselines(record_id, rec.header, tuple(examples))


async def ensure_baselines(
    prompts: data.PromptSet, setup: Setup, settings: EvalSettings | None = None, progress: bool = True
) -> Baselines:
    """Compute (or finish, or just read) the reference and weak-only baselines for a prompt set."""
    settings = settings or EvalSettings()
    header = await _baselines_header(prompts, setup, settings)
    bid = _digest(header)
    existing = read_record("baselines", bid)
    if existing is not None:
        done = _read_baselines(bid, prompts)
        if done.complete:
            return done
    if existing is None:  # a new record says when and against which server versions it was made
        header = {**header, "created": _now(), "servers": await setup.servers()}
    else:
        header = {**header, "created": existing.header.get("created"), "servers": existing.header.get("servers")}
    with RecordWriter("baselines", bid, header) as w:
        refs = {k: v for k, v in _latest(w.record.events, "reference").items() if v.get("error") is None}
        weak = {k: v for k, v in _latest(w.record.events, "weak").items() if v["decode"].get("error") is None}
        todo = [p for p in prompts if p.id not in refs]
        if todo:
            t0 = time.monotonic()
            bar = tqdm(total=len(todo), desc="reference (strong model)", unit="prompt", disable=not progress)
            max_tokens = settings.engine.max_tokens

            async def ref(p: data.Prompt) -> None:
                try:
                    out = await setup.strong.chat([{"role": "user", "content": p.instruction}], max_tokens=max_tokens)
                    ev = {"prompt_id": p.id, "instruction": p.instruction, "text": out.text,
                          "finish_reason": out.finish_reason, "error": None}  # fmt: skip
                except ClientError as e:
                    ev = {
                        "prompt_id": p.id,
                        "instruction": p.instruction,
                        "text": None,
                        "error": f"{type(e).__name__}: {e}",
                    }
                w.append("reference", **ev)
                if ev["error"] is None:
                    refs[p.id] = ev
                bar.update(1)

            try:
                await asyncio.gather(*(ref(p) for p in todo))
            finally:
                bar.close()
            w.append("timing", phase="reference", seconds=round(time.monotonic() - t0, 3), n=len(todo))
        todo = [p for p in prompts if p.id not in weak]
        if todo:
            t0 = time.monotonic()

            def done_weak(i: int, d: Decode) -> None:
                w.append("weak", prompt_id=todo[i].id, decode=d.to_record())
                if d.error is None:
                    weak[todo[i].id] = {"decode": d.to_record()}

            await decode_many([p.instruction for p in todo], "never", setup.models, settings.engine,
                              progress=progress, on_done=done_weak)  # fmt: skip
            w.append("timing", phase="weak", seconds=round(time.monotonic() - t0, 3), n=len(todo))
        prefs = _latest(w.record.events, "weak_preference")
        judge = Judge(setup.judge, settings.judge)
        todo = [p for p in prompts if p.id in refs and p.id in weak and (p.id not in prefs or prefs[p.id].get("error"))]
        await _judge_phase(
            w, "weak_preference", judge,
            [(p.id, p.instruction, weak[p.id]["decode"]["text"], refs[p.id]["text"]) for p in todo],
            "judge weak vs reference", progress,
        )  # fmt: skip
    return _read_baselines(bid, prompts)


async def _judge_phase(
    w: RecordWriter, type_: str, judge: Judge, pairs: list[tuple[str, str, str, str]], desc: str, progress: bool,
    reuse: dict[str, Preference] | None = None,
) -> None:  # fmt: skip
    """Judge (prompt_id, instruction, candidate, reference) pairs concurrently, appending each preference."""
    if not pairs:
        return
    t0 = time.monotonic()
    bar = tqdm(total=len(pairs), desc=desc, unit="prompt", disable=not progress)

    async def one(pid: str, instr: str, cand: str, ref: str) -> None:
        pref = (reuse or {}).get(pid) or await judge.prefer(instr, cand, ref)
        w.append(type_, prompt_id=pid, **pref.to_json())
        bar.update(1)

    try:
        await asyncio.gather(*(one(*p) for p in pairs))
    finally:
        bar.close()
    w.append("timing", phase="judge", seconds=round(time.monotonic() - t0, 3), n=len(pairs))


# ---------------------------------------------------------------- evaluations


async def evaluation_id(policy: Policy | str, prompts: data.PromptSet, setup: Setup, settings: EvalSettings) -> str:
    """The id an evaluation of this policy on these prompts with these servers has (and resumes under)."""
    pol = load_policy(policy)
    base = _digest(await _baselines_header(prompts, setup, settings))
    return _digest({"policy": pol.describe(), "source": pol.source_hash(), "baselines": base})


async def evaluate(
    policy: Policy | str,
    prompts: data.PromptSet,
    setup: Setup,
    settings: EvalSettings | None = None,
    progress: bool = True,
    judge: bool = True,
) -> Evaluation:
    """Evaluate a policy on a prompt set, resuming its record if it exists; returns the recomputed numbers.

    `judge=False` stops after the candidate's decodes (see `generate`); `evaluate_generations` judges them later.
    """
    settings = settings or EvalSettings()
    pol = load_policy(policy)
    eid = await evaluation_id(pol, prompts, setup, settings)
    if read_record("evaluations", eid) is not None:
        try:
            ev = load_evaluation(eid, settings)
        except EvaluationError:
            ev = None  # e.g. its baselines are unfinished: the run below completes them
        if ev is not None and ev.complete:
            return ev  # nothing to do: no server is asked anything
    base = await ensure_baselines(prompts, setup, settings, progress)
    header = {
        "kind": "evaluation",
        "policy": pol.describe(),
        "policy_source_hash": pol.source_hash(),
        "baselines": base.id,
        "models": base.header["models"],
        "judge": await Judge(setup.judge, settings.judge).id(),
        "prompts": base.header["prompts"],
        "settings": base.header["settings"],
    }
    by_base = {e.prompt_id: e for e in base.examples}
    with RecordWriter("evaluations", eid, {**header, "created": _now()}) as w:
        gens = {k: v for k, v in _latest(w.record.events, "generation").items() if v["decode"].get("error") is None}
        todo = [p for p in prompts if p.id not in gens]
        if todo:
            t0 = time.monotonic()

            def done(i: int, d: Decode) -> None:
                w.append("generation", prompt_id=todo[i].id, decode=d.to_record())
                if d.error is None:
                    gens[todo[i].id] = {"decode": d.to_record()}

            await decode_many([p.instruction for p in todo], pol, setup.models, settings.engine,
                              progress=progress, on_done=done)  # fmt: skip
            w.append("timing", phase="decode", seconds=round(time.monotonic() - t0, 3), n=len(todo))
        if not judge:
            return _build(eid, read_record("evaluations", eid), base, settings)
        prefs = _latest(w.record.events, "preference")
        pairs, reuse = [], {}
        for p in prompts:
            b = by_base[p.id]
            if p.id not in gens or b.reference is None or (p.id in prefs and not prefs[p.id].get("error")):
                continue
            text = gens[p.id]["decode"]["text"]
            if b.weak and text == b.weak.text and b.weak_preference and not b.weak_preference.error:
                reuse[p.id] = b.weak_preference  # never-defer is exactly the weak baseline
            pairs.append((p.id, p.instruction, text, b.reference))
        await _judge_phase(w, "preference", Judge(setup.judge, settings.judge), pairs, "judge candidate vs reference",
                           progress, reuse)  # fmt: skip
        result = _build(eid, read_record("evaluations", eid), base, settings)
        w.append("summary", comment="for people reading this file; readers recompute it", **result.to_json())
    return result


def _build(eid: str, rec, base: Baselines, settings: EvalSettings) -> Evaluation:
    gens = _latest(rec.events, "generation")
    prefs = _latest(rec.events, "preference")
    examples = []
    for b in base.examples:
        g = Decode.from_record(gens[b.prompt_id]["decode"]) if b.prompt_id in gens else None
        p = Preference.from_json(prefs[b.prompt_id]) if b.prompt_id in prefs else None
        examples.append(Example(b.prompt_id, b.instruction, b.reference, b.weak, b.weak_preference, g, p))
    ok = [e.sample() for e in examples if e.error is None]
    summary, note = None, ""
    if ok:
        try:
            summary = summarize(ok, n_boot=settings.n_boot, seed=settings.seed)
        except StatsError as e:  # e.g. fewer than 5 judged prompts: the record stays readable, without numbers
            note = str(e)
    base_rec = read_record("baselines", base.id)
    timings = _timings((*(base_rec.events if base_rec else ()), *rec.events))
    return Evaluation(eid, rec.header, base, tuple(examples), summary, timings, note)


@dataclass(frozen=True)
class JudgeDrift:
    """Stored preferences vs the same pairs judged again now."""

    baselines_id: str
    n: int
    mean_abs_delta: float
    max_abs_delta: float
    flipped: int  # pairs whose verdict crossed 0.5
    errors: tuple[tuple[str, str], ...]
    judge_changed: str = ""  # non-empty when the judge now answering is not the one on record

    def to_json(self) -> dict:
        return {**asdict(self), "errors": [{"prompt_id": p, "error": e} for p, e in self.errors]}


async def judge_check(baselines_id: str, judge_client: ModelClient, pairs: int = 20) -> JudgeDrift:
    """Re-judge the first `pairs` stored (weak answer, reference) pairs of a baselines record and compare.

    Pass a client without a call cache: the point is to ask the judge again.
    """
    base = _read_baselines(baselines_id)
    j = base.header["settings"]["judge"]
    settings = JudgeSettings(template=j["template"], labels=tuple(j["labels"]), top_logprobs=j["top_logprobs"])
    judge = Judge(judge_client, settings)
    now_id = await judge.id()
    changed = "" if now_id == base.header.get("judge") else f"on record {base.header.get('judge')}, now {now_id}"
    chosen = [e for e in base.examples if e.weak_preference and e.weak_preference.error is None and e.weak
              and e.reference is not None and e.weak.text != e.reference][:pairs]  # fmt: skip
    got = await asyncio.gather(*(judge.prefer(e.instruction, e.weak.text, e.reference) for e in chosen))
    deltas, flipped, errors = [], 0, []
    for e, p in zip(chosen, got, strict=True):
        if p.error:
            errors.append((e.prompt_id, p.error))
            continue
        old = e.weak_preference.preference
        deltas.append(abs(p.preference - old))
        flipped += (p.preference > 0.5) != (old > 0.5)
    return JudgeDrift(baselines_id, len(deltas), sum(deltas) / len(deltas) if deltas else 0.0,
                      max(deltas, default=0.0), flipped, tuple(errors), changed)  # fmt: skip


def load_evaluation(evaluation_id: str, settings: EvalSettings | None = None) -> Evaluation:
    """Read an evaluation back, recomputing every number from its generations and preferences."""
    try:
        rec = read_record("evaluations", evaluation_id)
    except StoreError as e:
        raise EvaluationError(str(e)) from e
    if rec is None:
        raise EvaluationError(f"no evaluation {evaluation_id!r} (see `cdw leaderboard` or records/evaluations/)")
    base = _read_baselines(rec.header["baselines"])
    return _build(evaluation_id, rec, base, settings or EvalSettings())


def list_evaluations(settings: EvalSettings | None = None) -> list[Evaluation]:
    """Every evaluation on record (oldest first); damaged ones raise."""
    return [load_evaluation(i, settings) for i in list_records("evaluations")]


# ---------------------------------------------------------------- engine runs, judged later


async def generate(
    policy: Policy | str,
    prompts: data.PromptSet,
    setup: Setup,
    settings: EvalSettings | None = None,
    progress: bool = True,
) -> str:
    """Decode a policy on a prompt set into an evaluation record without judging it; returns the run id.

    The baselines are made (or read) as for `evaluate`; the candidate's generations are recorded with their
    segments, which are f_weak's provenance. `evaluate_generations(run_id, ...)` judges them later and gives
    exactly the numbers `evaluate` would have given.
    """
    return (await evaluate(policy, prompts, setup, settings, progress, judge=False)).id


def recorded_settings(header: dict, n_boot: int = 1000, seed: int = 0) -> EvalSettings:
    """The settings a record was made with, rebuilt from its header (engine settings, judge template)."""
    s = header["settings"]
    j = s["judge"]
    judge = JudgeSettings(template=j["template"], labels=tuple(j["labels"]), top_logprobs=j["top_logprobs"])
    return EvalSettings(EngineSettings(**s["engine"]), judge, n_boot=n_boot, seed=seed)


async def baselines_id(prompts: data.PromptSet, setup: Setup, settings: EvalSettings | None = None) -> str:
    """The id of the baselines record these prompts and servers have (whether it exists yet or not)."""
    return _digest(await _baselines_header(prompts, setup, settings or EvalSettings()))


async def evaluate_generations(
    run_id: str,
    setup: Setup,
    settings: EvalSettings | None = None,
    policy: Policy | str | None = None,
    progress: bool = True,
) -> Evaluation:
    """Judge the generations of a stored engine run (from `generate`) and return its recomputed numbers.

    Everything comes from the record, nothing from the caller: the policy spec, prompt ids and settings from
    its header, f_weak from the recorded segments, utility from the judge, recovery from the baselines record
    (summary lines are never read). `setup` must reach the models and judge the run was made with; the run id
    is recomputed to check it. A generation that failed is decoded again, so the policy must still load (pass
    `policy`, with the recorded spec, to load it yourself) and its code must not have changed.
    """
    try:
        rec = read_record("evaluations", run_id)
    except StoreError as e:
        raise EvaluationError(str(e)) from e
    if rec is None:
        raise EvaluationError(f"no engine run {run_id!r} on record (records/evaluations/)")
    h = rec.header
    base = _read_baselines(h["baselines"])
    # The instructions live in the baselines record; the header's hash proves they are the run's prompts.
    prompts = data.PromptSet(h["prompts"]["name"], [data.Prompt(e.prompt_id, e.instruction) for e in base.examples])
    if prompts.hash != h["prompts"]["hash"]:
        raise EvaluationError(f"run {run_id}: its baselines {base.id} do not hold the instructions of its prompts")
    settings = settings or recorded_settings(h)
    pol = load_policy(h["policy"] if policy is None else policy)
    if pol.describe() != h["policy"]:
        raise EvaluationError(f"run {run_id} was made by policy {h['policy']!r}, not {pol.describe()!r}")
    eid = await evaluation_id(pol, prompts, setup, settings)
    if eid != run_id:
        raise EvaluationError(
            f"run {run_id} cannot be judged with these servers and this code: its policy source, models "
            f"({h['models']}), judge ({h['judge']}) or settings differ from what this setup gives (run {eid})"
        )
    return await evaluate(pol, prompts, setup, settings, progress)
