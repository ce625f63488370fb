"""Candidate runs: decode a policy on a prompt set, judge it against the reference, append both to the record;
engine runs judged later. Record ids are hashes of what is evaluated, so running the
same evaluation again resumes its record (a finished one is only read)."""

from __future__ import annotations

import msgspec

from ..benchmarks import Prompt, PromptSet
from ..judge import Judge, Preference
from ..policies import Policy, PolicyError, load_policy
from ..records import aliases
from ..records.log import RecordWriter, read_record
from ..records.schema import Generation, Header, Test, Verdict, digest, to_fields
from ..stats import StopRule, look_order
from .baselines import baselines_header, ensure_baselines
from .phases import OnProgress, Progress, TestPhase, decode_phase, judge_phase
from .results import Evaluation, build, latest, load_evaluation, read_baselines, read_existing, stopped_line, typed
from .setup import EvalSettings, EvaluationError, Setup, code_version, now


def policy_identity(policy: Policy | str) -> tuple[Policy, str, str]:
    """(the policy, its spec, its source hash): resolved once, at the edge. A policy built in code that cannot
    be named by a spec (see `workspace.policies.constructor_spec`) is refused: two such policies would share
    an evaluation id."""
    pol = load_policy(policy)
    if getattr(pol, "_spec", None) is None:
        from ..policies import constructor_spec

        try:
            constructor_spec(pol)
        except ValueError as e:
            raise PolicyError(f"this policy cannot be evaluated under a name: {e}") from None
    return pol, pol.describe(), pol.source_hash()


async def evaluation_id(policy: Policy | str, prompts: PromptSet, setup: Setup, settings: EvalSettings) -> str:
    """The id an evaluation of this policy on these prompts with these servers has (and resumes under): the hash
    of what is evaluated, or the record an identity epoch's alias names for it (`records/aliases.py`)."""
    _, spec, source = policy_identity(policy)
    return record_id(spec, source, digest((await baselines_header(prompts, setup, settings)).identity()))


def record_id(spec: str, source: str, baselines: str) -> str:
    """The id of the record of this policy spec, with this identity, on these baselines: the hash of the three, or
    the record an identity epoch's alias names for it."""
    return aliases.resolve(digest({"policy": spec, "source": source, "baselines": baselines}), spec, baselines)


async def evaluate(
    policy: Policy | str,
    prompts: PromptSet,
    setup: Setup,
    settings: EvalSettings | None = None,
    progress: bool = True,
    judge: bool = True,
    on_progress: OnProgress | None = None,
    stop: StopRule | None = None,
) -> Evaluation:
    """Evaluate a policy on a prompt set, resuming its record if it exists; returns the recomputed numbers.

    `on_progress(phase, done, total)` is called as work is recorded (phases: reference, weak, weak_preference,
    generation, preference); `progress` shows bars. `judge=False` stops after the candidate's decodes (see
    `generate`); `evaluate_generations` judges them later.

    `stop` (a `workspace.stats.StopRule`): run the prompts in the rule's order, in stages that end at its looks, and
    end the evaluation at the first look that shows the policy cannot reach the rule's target recovery; the record
    then holds a `stopped` line (the look, its numbers, why) and the evaluation is never certified. Run again with
    the same rule, a stopped evaluation is read back; without a rule (or with another), it goes on.
    """
    settings = settings or EvalSettings()
    if stop is not None and not judge:
        raise EvaluationError("early stopping looks at scores: it needs the answers judged (judge=True)")
    pol, spec, source = policy_identity(policy)
    eid = await evaluation_id(pol, prompts, setup, settings)
    if read_record("evaluations", eid) is not None:
        try:
            ev = load_evaluation(eid, settings)
        except EvaluationError:
            ev = None  # e.g. its baselines are unfinished: the run below completes them
        if ev is not None and (ev.complete or (stop is not None and ev.stopped_by(stop))):
            return ev  # nothing to do: no server is asked anything
    base = await ensure_baselines(prompts, setup, settings, progress, on_progress)
    header = msgspec.structs.replace(base.header, kind="evaluation", policy=spec, policy_source_hash=source,
                                     baselines=base.id, created=now(), servers=None, code=code_version(),
                                     decoding=await setup.decoding(judge=settings.needs_judge))  # fmt: skip
    existing = read_record("evaluations", eid)
    if existing is not None:  # resuming: when, by which code and (an alias) under which source hash it started
        old = typed(existing)[0]
        header = msgspec.structs.replace(header, created=old.created, code=old.code, decoding=old.decoding,
                                         policy_source_hash=old.policy_source_hash)  # fmt: skip
    stages = _stages(prompts, stop)
    staged = _StagedProgress(on_progress, len(prompts)) if on_progress and len(stages) > 1 else None
    prog = Progress(staged or on_progress, progress)
    with RecordWriter("evaluations", eid, {"type": "header", **to_fields(header)}) as w:
        for stage in stages:
            if staged:
                staged.stage(len(stage))
            await _run_stage(w, pol, spec, stage, base, setup, settings, prog, judge)
            result = build(eid, w.record_now(), base, settings)
            look = result.look(stop, len(stage)) if stop is not None and len(stage) < len(prompts) else None
            if look is not None and look.stop:
                if not result.stopped_by(stop):  # a rerun of a stopped evaluation adds no second line
                    w.append("stopped", **to_fields(stopped_line(look)))
                    result = build(eid, w.record_now(), base, settings)
                break
        if judge:
            w.append("summary", comment="for people reading this file; readers recompute it", **result.numbers())
    return result  # its offline checks (`result.check`) run when first asked: after the record is signed


def _stages(prompts: PromptSet, stop: StopRule | None) -> list[list[Prompt]]:
    """The prompts each stage has run by its end: all of them at once, or, with a stop rule, the first n_k of its
    order for each look, then all of them."""
    if stop is None:
        return [list(prompts)]
    order = [prompts.prompts[i] for i in look_order(prompts.ids)]
    return [order[:n] for n in stop.schedule(len(prompts))] + [order]


class _StagedProgress:
    """Progress counted over the whole evaluation when it runs in stages (each stage's phases count from 0 again):
    the work of earlier stages counts as done, the prompts of later stages as still to do."""

    def __init__(self, on_progress: OnProgress, n: int):
        self.on_progress, self.n, self.later = on_progress, n, 0
        self.offset: dict[str, int] = {}
        self.current: dict[str, int] = {}

    def stage(self, size: int) -> None:
        """A stage that ends with `size` prompts run starts."""
        self.later = self.n - size

    def __call__(self, phase: str, done: int, total: int) -> None:
        if done == 0 and phase in self.current:  # the phase starts again, in a later stage
            self.offset[phase] = self.offset.get(phase, 0) + self.current.pop(phase)
        self.current[phase] = total
        base = self.offset.get(phase, 0)
        self.on_progress(phase, base + done, base + total + self.later)


async def _run_stage(
    w: RecordWriter, pol: Policy, spec: str, stage: list[Prompt], base, setup: Setup, settings: EvalSettings,
    prog: Progress, score: bool,
) -> None:  # fmt: skip
    """Decode and score (judge, or test) the prompts of `stage` that the record does not hold results for yet."""
    gens = {k: v for k, v in latest(typed(w.record_now())[1], "generation").items() if v.decode.get("error") is None}
    todo = [p for p in stage if p.id not in gens]
    if not settings.needs_judge:
        return await _decode_and_test(w, pol, spec, stage, todo, gens, base, setup, settings, prog, score)
    await decode_phase(w, Generation, pol, todo, setup, settings, prog, f"decode {spec}", gens)
    if not score:
        return
    by_base = {e.prompt_id: e for e in base.examples}
    prefs = latest(typed(w.record_now())[1], "preference")
    pairs, reuse = [], {}
    for p in stage:
        b = by_base[p.id]
        if p.id not in gens or b.reference is None or (p.id in prefs and not prefs[p.id].error):
            continue
        text = gens[p.id].decode["text"]
        if b.weak and text == b.weak.text and b.weak_preference and not b.weak_preference.error:
            reuse[p.id] = b.weak_preference  # never-defer is exactly the weak baseline
        pairs.append((p.id, p.instruction, text, b.reference))
    await judge_phase(w, Verdict, Judge(setup.judge, settings.judge), pairs, prog,
                      "judge candidate vs reference", reuse)  # fmt: skip


async def _decode_and_test(
    w, pol: Policy, spec: str, stage: list[Prompt], todo: list[Prompt], gens: dict, base, setup: Setup,
    settings: EvalSettings, prog: Progress, test: bool,
) -> None:  # fmt: skip
    """A benchmark scored alone: decode, each answer scored as soon as it is written; reuses the
    baselines' result for an answer identical to the weak or the reference answer."""
    if not test:
        await decode_phase(w, Generation, pol, todo, setup, settings, prog, f"decode {spec}", gens)
        return
    ids = {p.id for p in stage}
    tested = {k for k, v in latest(typed(w.record_now())[1], "test").items() if v.error is None}
    reuse = {b.prompt_id: [(t, r) for t, r in ((b.weak.text if b.weak else None, b.weak_test),
                                                (b.reference, b.reference_test)) if t is not None and r]
             for b in base.examples}  # fmt: skip
    bench = settings.bench
    tests = TestPhase(w, Test, prog, "tests: candidate", len(ids - tested), bench, bench.pool(), reuse)
    for pid, g in gens.items():  # resuming: generations on record not tested yet
        if pid in ids and pid not in tested:
            tests.submit(pid, g.decode["text"])
    await decode_phase(w, Generation, pol, todo, setup, settings, prog, f"decode {spec}", gens, tests)
    await tests.finish()


async def generate(
    policy: Policy | str, prompts: PromptSet, setup: Setup, settings: EvalSettings | None = None,
    progress: bool = True,
) -> str:  # fmt: skip
    """Decode a policy on a prompt set into an evaluation record without judging it; returns the run id.

    The baselines are made (or read) as for `evaluate`; the candidate's generations are recorded with their
    segments, which are f_weak's provenance. `evaluate_generations(run_id, ...)` judges them later and gives
    exactly the numbers `evaluate` would have given.
    """
    return (await evaluate(policy, prompts, setup, settings, progress, judge=False)).id


async def evaluate_generations(
    run_id: str,
    setup: Setup,
    settings: EvalSettings | None = None,
    policy: Policy | str | None = None,
    progress: bool = True,
    on_progress: OnProgress | None = None,
) -> Evaluation:
    """Judge the generations of a stored engine run (from `generate`) and return its recomputed numbers.

    Everything comes from the record, nothing from the caller: the policy spec, prompt ids and settings from
    its header, f_weak from the recorded segments, utility from the judge, recovery from the baselines record
    (summary lines are never read). `setup` must reach the models and judge the run was made with; the run id
    is recomputed to check it. A generation that failed is decoded again, so the policy must still load (pass
    `policy`, with the recorded spec, to load it yourself) and its code must not have changed.
    """
    rec = read_existing("evaluations", run_id, f"no engine run {run_id!r} on record (records/evaluations/)")
    h: Header = typed(rec)[0]
    base = read_baselines(h.baselines or "")
    # The instructions live in the baselines record; the header's hash proves they are the run's prompts.
    prompts = PromptSet(h.prompts.name, [Prompt(e.prompt_id, e.instruction) for e in base.examples])
    if prompts.hash != h.prompts.hash:
        raise EvaluationError(f"run {run_id}: its baselines {base.id} do not hold the instructions of its prompts")
    settings = settings or EvalSettings.from_identity(h.settings, h.benchmark)
    pol = load_policy(h.policy if policy is None else policy)
    if pol.describe() != h.policy:
        raise EvaluationError(f"run {run_id} was made by policy {h.policy!r}, not {pol.describe()!r}")
    eid = await evaluation_id(pol, prompts, setup, settings)
    if eid != run_id:
        raise EvaluationError(
            f"run {run_id} cannot be judged with these servers and this code: its policy source, models "
            f"({h.models}), judge ({h.judge}) or settings differ from what this setup gives (run {eid})"
        )
    return await evaluate(pol, prompts, setup, settings, progress, on_progress=on_progress)


def recorded_settings(header: dict, n_boot: int = 1000, seed: int = 0) -> EvalSettings:
    """The settings a record was made with, rebuilt from its header (engine settings, the judge's prompt)."""
    return EvalSettings.from_identity(header["settings"], header.get("benchmark"), n_boot=n_boot, seed=seed)


__all__ = ["Preference", "evaluate", "evaluate_generations", "evaluation_id", "generate", "policy_identity",
           "recorded_settings"]  # fmt: skip
