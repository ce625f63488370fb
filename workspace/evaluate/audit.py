"""Checking records against the servers: the judge re-asked on stored pairs (`judge_check`), and an evaluation's
decodes and verdicts made again on a seeded sample of its prompts (`replay`). Pass clients without a call cache:
the point is to ask again."""

from __future__ import annotations

import asyncio
import random
from dataclasses import asdict, dataclass

from ..engine import decode
from ..judge import Judge
from ..policies import load_policy
from .results import load_evaluation, read_baselines
from .runs import record_id
from .setup import EvalSettings, EvaluationError, Setup


@dataclass(frozen=True)
class JudgeDrift:
    """Stored preferences vs the same pairs judged again now."""

    baselines_id: str
    n: int  # pairs re-judged successfully (0: nothing could be compared; the deltas are then None)
    mean_abs_delta: float | None
    max_abs_delta: float | None
    flipped: int  # pairs whose verdict crossed 0.5
    errors: tuple[tuple[str, str], ...]
    judge_changed: str = ""  # non-empty when the judge now answering is not the one on record

    def to_json(self) -> dict:
        return {**asdict(self), "errors": [{"prompt_id": p, "error": e} for p, e in self.errors]}


async def judge_check(baselines_id: str, judge_client, pairs: int = 20) -> JudgeDrift:
    """Re-judge the first `pairs` stored (weak answer, reference) pairs of a baselines record and compare."""
    base = read_baselines(baselines_id)
    settings = EvalSettings.from_identity(base.header.settings, base.header.benchmark).judge
    judge = Judge(judge_client, settings)
    now_id = await judge.id()
    changed = "" if now_id == base.header.judge else f"on record {base.header.judge}, now {now_id}"
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
    mean = sum(deltas) / len(deltas) if deltas else None
    return JudgeDrift(baselines_id, len(deltas), mean, max(deltas) if deltas else None, flipped, tuple(errors),
                      changed)  # fmt: skip


@dataclass(frozen=True)
class Replay:
    """An evaluation's examples decoded and judged again now, compared with the record."""

    evaluation_id: str
    prompt_ids: tuple[str, ...]
    same_text: int  # candidates decoded again to exactly the recorded text
    same_verdict: int  # preferences within `tolerance` of the recorded ones (tests: the same test status)
    tolerance: float
    mismatches: tuple[tuple[str, str], ...]  # (prompt id, what differed)
    # Non-empty when the policy the spec loads now is not the one on record (its file edited since, say): nothing
    # is decoded then, since agreeing texts would say nothing about the record.
    policy_changed: str = ""

    @property
    def agrees(self) -> bool:
        return not self.mismatches and not self.policy_changed

    def to_json(self) -> dict:
        return {**asdict(self), "agrees": self.agrees,
                "mismatches": [{"prompt_id": p, "what": w} for p, w in self.mismatches]}  # fmt: skip


async def replay(evaluation_id: str, setup: Setup, k: int = 3, seed: int = 0, tolerance: float = 0.02) -> Replay:
    """Decode and judge `k` seeded prompts of an evaluation again (use a setup without a call cache) and compare
    the texts exactly and the preferences within `tolerance`. A policy whose identity is no longer the recorded
    one (its file was edited since) is not replayed: the result says so and does not agree."""
    ev = load_evaluation(evaluation_id)
    settings = EvalSettings.from_identity(ev.header.settings, ev.header.benchmark)
    judged = settings.needs_judge
    names = await setup.names(judge=judged)
    if names != ev.header.models:
        raise EvaluationError(f"these servers serve {names}, the record was made with {ev.header.models}")
    done = [e for e in ev.examples if e.error is None]
    chosen = random.Random(seed).sample(done, min(k, len(done)))
    pol = load_policy(ev.policy)
    now = pol.source_hash()
    if record_id(ev.policy, now, ev.header.baselines) != evaluation_id:  # (an alias may carry an older identity)
        was = ev.header.policy_source_hash
        changed = (
            f"{ev.policy} is not the policy on record: its identity is {now} now, {was} on record (its code was "
            "edited since); it was not replayed"
        )
        return Replay(evaluation_id, (), 0, 0, tolerance, (), changed)
    judge = Judge(setup.judge, settings.judge)
    same_text = same_verdict = 0
    pool = None  # made once, at the first answer scored again
    mismatches = []
    for e in chosen:
        d = await decode(e.instruction, pol, setup.models, settings.engine)
        if d.error or d.text != e.candidate.text:
            mismatches.append((e.prompt_id, d.error or "the candidate decodes to another text now"))
            continue
        same_text += 1
        if not judged:  # scored again (the tests run again in the sandbox): the same status
            pool = settings.bench.pool() if pool is None else pool
            o = await settings.bench.score(d.text, e.prompt_id, pool)
            if o.status != e.test.status:
                mismatches.append((e.prompt_id, f"tests {o.status} now, {e.test.status} on record"))
                continue
            same_verdict += 1
            continue
        p = await judge.prefer(e.instruction, d.text, e.reference)
        if p.error or abs(p.preference - e.preference.preference) > tolerance:
            was = e.preference.preference
            mismatches.append((e.prompt_id, p.error or f"preference {p.preference:.3f} now, {was:.3f} on record"))
            continue
        same_verdict += 1
    return Replay(evaluation_id, tuple(e.prompt_id for e in chosen), same_text, same_verdict, tolerance,
                  tuple(mismatches))  # fmt: skip
