"""Baselines: once per (models, judge, prompt set, settings), the strong model's own greedy answers (the
reference), the weak model's own answers (never-defer) and the judge's preference of each weak answer over its
reference (-> U_weak). Appended to `records/baselines/<id>.jsonl` as they are made; resumable.

A prompt's baseline is a function of the prompt, the models, the judge and the settings, not of the set it is in: a
prompt that another verified baselines record of the same models, judge, settings and benchmark holds in full is
copied from it (a search's growing subsets, the first N of a set already run), never asked again."""

from __future__ import annotations

import asyncio
import time

import msgspec

from ..benchmarks import Prompt, PromptSet
from ..client import ClientError
from ..judge import Judge
from ..records.log import RecordWriter, StoreError, list_records, read_record
from ..records.schema import (
    Header,
    PromptsRef,
    Reference,
    ReferenceTest,
    Timing,
    WeakAnswer,
    WeakTest,
    WeakVerdict,
    digest,
    to_fields,
)
from .phases import OnProgress, Progress, TestPhase, decode_phase, judge_phase
from .results import Baselines, latest, read_baselines, typed
from .setup import EvalSettings, EvaluationError, Setup, code_version, now

NO_JUDGE = "none: unit tests"  # the header's judge for a benchmark whose answers are scored alone
PARTS = ("reference", "weak", "weak_preference", "reference_test", "weak_test")  # a prompt's baseline events


def _copy_known(w: RecordWriter, bid: str, header: Header, prompts: PromptSet, judged: bool) -> int:
    """Append, for each prompt this record lacks, the baseline events another verified baselines record of the same
    models, judge, settings and benchmark holds for it in full (every part without an error, the same instruction);
    returns how many prompts were copied. Only verified sources (valid, signed by a trusted key): a copy is signed
    by this writer, so copying from an untrusted record would launder it."""
    from ..records.verify import check_baselines

    have = {k for k, v in latest(typed(w.record_now())[1], "reference").items() if v.error is None}
    want = {p.id: p.instruction for p in prompts if p.id not in have}
    same = (header.models, header.judge, header.settings, header.benchmark)
    parts = PARTS[:3] if judged else (*PARTS[:2], *PARTS[3:])
    copied = 0
    for rid in list_records("baselines"):
        if not want or rid == bid:
            continue
        try:
            other, events = typed(read_record("baselines", rid))
        except (EvaluationError, StoreError):
            continue  # a damaged record is never a source
        if (other.models, other.judge, other.settings, other.benchmark) != same or not want.keys() & set(
            other.prompts.ids
        ):
            continue
        if not check_baselines(rid).verified:
            continue
        found = {t: latest(events, t) for t in parts}
        for pid in [p for p in want if p in other.prompts.ids]:
            lines = [found[t].get(pid) for t in parts]
            if any(e is None or _failed(e) for e in lines) or lines[0].instruction != want[pid]:
                continue
            for e in lines:
                w.append(e.type, **to_fields(e))
            del want[pid]
            copied += 1
    return copied


def _failed(e) -> bool:
    decode = getattr(e, "decode", None)
    if isinstance(decode, dict):
        return decode.get("error") is not None
    return getattr(e, "error", None) is not None


async def baselines_header(prompts: PromptSet, setup: Setup, settings: EvalSettings) -> Header:
    judged = settings.needs_judge
    return Header(
        kind="baselines",
        models=await setup.names(judge=judged),
        judge=await Judge(setup.judge, settings.judge).id() if judged else NO_JUDGE,
        prompts=PromptsRef(prompts.name, prompts.hash, [p.id for p in prompts]),
        settings=settings.identity(),
        benchmark=settings.benchmark,
    )


async def baselines_id(prompts: PromptSet, setup: Setup, settings: EvalSettings | None = None) -> str:
    """The id of the baselines record these prompts and servers have (whether it exists yet or not)."""
    return digest((await baselines_header(prompts, setup, settings or EvalSettings())).identity())


async def ensure_baselines(
    prompts: PromptSet, setup: Setup, settings: EvalSettings | None = None, progress: bool = True,
    on_progress: OnProgress | None = None,
) -> Baselines:  # fmt: skip
    """Compute (or finish, or just read) the reference and weak-only baselines for a prompt set."""
    settings = settings or EvalSettings()
    prog = Progress(on_progress, progress)
    header = await baselines_header(prompts, setup, settings)
    bid = digest(header.identity())
    existing = read_record("baselines", bid)
    if existing is not None:
        done = read_baselines(bid, prompts)
        if done.complete:
            return done
        old = typed(existing)[0]
        header = msgspec.structs.replace(header, created=old.created, servers=old.servers, code=old.code,
                                         decoding=old.decoding)  # fmt: skip
    else:  # a new record says when, against which servers, decoding how and by which code it was made
        header = msgspec.structs.replace(header, created=now(), servers=await setup.servers(), code=code_version(),
                                         decoding=await setup.decoding(judge=settings.needs_judge))  # fmt: skip
    with RecordWriter("baselines", bid, {"type": "header", **to_fields(header)}) as w:
        if copied := _copy_known(w, bid, header, prompts, settings.needs_judge):
            w.append("timing", **to_fields(Timing(phase="copied", seconds=0.0, n=copied)))
        events = typed(w.record_now())[1]
        refs = {k: v for k, v in latest(events, "reference").items() if v.error is None}
        weak = {k: v for k, v in latest(events, "weak").items() if v.decode.get("error") is None}
        ref_tests = weak_tests = None
        if not settings.needs_judge:
            bench, pool = settings.bench, settings.bench.pool()
            tested = {t: {k for k, v in latest(events, t).items() if v.error is None}
                      for t in ("reference_test", "weak_test")}  # fmt: skip
            n_ref, n_weak = len(prompts) - len(tested["reference_test"]), len(prompts) - len(tested["weak_test"])
            ref_tests = TestPhase(w, ReferenceTest, prog, "tests: reference", n_ref, bench, pool)
            weak_tests = TestPhase(w, WeakTest, prog, "tests: weak only", n_weak, bench, pool)
            for pid, r in refs.items():  # resuming: answers on record that were not tested yet
                if pid not in tested["reference_test"]:
                    ref_tests.submit(pid, r.text)
            for pid, a in weak.items():
                if pid not in tested["weak_test"]:
                    weak_tests.submit(pid, a.decode["text"])
        todo = [p for p in prompts if p.id not in refs]
        if todo:
            t0 = time.monotonic()
            step = prog.phase("reference", len(todo), "reference (strong model)")
            max_tokens = settings.engine.max_tokens

            async def ref(p: Prompt) -> None:
                try:
                    out = await setup.strong.chat([{"role": "user", "content": p.instruction}], max_tokens=max_tokens)
                    ev = Reference(prompt_id=p.id, instruction=p.instruction, text=out.text,
                                   finish_reason=out.finish_reason)  # fmt: skip
                    refs[p.id] = ev
                    if ref_tests is not None:
                        ref_tests.submit(p.id, out.text)
                except ClientError as e:
                    ev = Reference(prompt_id=p.id, instruction=p.instruction, text=None,
                                   error=f"{type(e).__name__}: {e}")  # fmt: skip
                w.append("reference", **to_fields(ev))
                step()

            await asyncio.gather(*(ref(p) for p in todo))
            w.append("timing", **to_fields(Timing(phase="reference", seconds=round(time.monotonic() - t0, 3),
                                                  n=len(todo))))  # fmt: skip
        todo = [p for p in prompts if p.id not in weak]
        await decode_phase(w, WeakAnswer, "never", todo, setup, settings, prog, "weak only (never)", weak, weak_tests)
        if not settings.needs_judge:
            await ref_tests.finish()
            await weak_tests.finish()
            return read_baselines(bid, prompts)
        prefs = latest(typed(read_record("baselines", bid))[1], "weak_preference")
        judge = Judge(setup.judge, settings.judge)
        todo = [p for p in prompts if p.id in refs and p.id in weak and (p.id not in prefs or prefs[p.id].error)]
        pairs = [(p.id, p.instruction, weak[p.id].decode["text"], refs[p.id].text) for p in todo]
        await judge_phase(w, WeakVerdict, judge, pairs, prog, "judge weak vs reference")
    return read_baselines(bid, prompts)
