"""Baselines: once per (models, judge, prompt set, settings), the strong model's own greedy answers (the
reference), the weak model's own answers (never-defer) and the judge's preference of each weak answer over its
reference (-> U_weak). Appended to `records/baselines/<id>.jsonl` as they are made; resumable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec
from tqdm.auto import tqdm

from .. import data, sandbox
from ..client import ClientError
from ..engine import Decode, decode_many
from ..judge import Judge, Preference
from ..policies import Policy
from ..records import (
    Generation,
    Header,
    PromptsRef,
    Reference,
    ReferenceTest,
    Timing,
    Verdict,
    WeakAnswer,
    WeakTest,
    WeakVerdict,
    _Test,
    digest,
    to_fields,
)  # fmt: skip
from ..store import RecordWriter, read_record
from .results import Baselines, latest, read_baselines, typed
from .setup import EvalSettings, Setup, code_version, now


class Progress:
    """Counts of work done per phase, passed to an `on_progress(phase, done, total)` callback as they change."""

    def __init__(self, on_progress: Callable[[str, int, int], None] | None, progress_bars: bool):
        self.on_progress, self.bars = on_progress, progress_bars

    def phase(self, name: str, total: int, desc: str) -> Callable[[], None]:
        """Start a phase of `total` steps; returns the function that counts one step done."""
        bar = tqdm(total=total, desc=desc, unit="prompt", disable=not self.bars)
        done = [0]
        if self.on_progress:
            self.on_progress(name, 0, total)

        def step() -> None:
            done[0] += 1
            bar.update(1)
            if self.on_progress:
                self.on_progress(name, done[0], total)
            if done[0] == total:
                bar.close()

        return step


NO_JUDGE = "none: unit tests"  # the header's judge for a benchmark scored by tests


async def baselines_header(prompts: data.PromptSet, setup: Setup, settings: EvalSettings) -> Header:
    tests = settings.scored_by_tests
    return Header(
        kind="baselines",
        models=await setup.names(judge=not tests),
        judge=NO_JUDGE if tests else await Judge(setup.judge, settings.judge).id(),
        prompts=PromptsRef(prompts.name, prompts.hash, [p.id for p in prompts]),
        settings=settings.identity(),
        benchmark=settings.benchmark,
    )


class TestPhase:
    """Unit tests of answers as they are written (tests benchmarks): each answer submitted runs at once in the
    sandbox pool, beside the decoding that continues, and its result is appended to the record."""

    def __init__(self, w: RecordWriter, kind: type[_Test], progress: Progress, desc: str, total: int,
                 pool: sandbox.Pool, reuse: dict[str, list[tuple[str, _Test]]] | None = None):  # fmt: skip
        self.w, self.kind, self.pool, self.reuse = w, kind, pool, reuse or {}
        self.step = progress.phase(kind.__struct_config__.tag, total, desc) if total else (lambda: None)
        self.tasks: list[asyncio.Task] = []
        self.seconds, self.n = 0.0, 0

    def submit(self, pid: str, text: str) -> None:
        self.tasks.append(asyncio.ensure_future(self._one(pid, text)))

    async def _one(self, pid: str, text: str) -> None:
        from .. import humaneval

        # An answer already tested with exactly this text (never-defer is the weak baseline) keeps its result.
        same = next((t for known, t in self.reuse.get(pid, ()) if known == text and t.error is None), None)
        if same is not None:
            fields = {k: getattr(same, k) for k in ("status", "program", "seconds", "output")}
        else:
            o = await humaneval.run_tests(text, humaneval.problem(pid), self.pool)
            fields = {"status": o.status, "program": o.program, "seconds": o.seconds, "output": o.output}
            self.seconds += o.seconds
            self.n += 1
        self.w.append(self.kind.__struct_config__.tag, **to_fields(self.kind(prompt_id=pid, **fields)))
        self.step()

    async def finish(self) -> None:
        """Wait for every submitted test and record the phase's timing (sandbox seconds, summed)."""
        if not self.tasks:
            return
        await asyncio.gather(*self.tasks)
        phase = self.kind.__struct_config__.tag + "s"  # reference_tests, weak_tests, tests: apart in the timings
        self.w.append("timing", **to_fields(Timing(phase=phase, seconds=round(self.seconds, 3), n=self.n)))


def test_pool(settings: EvalSettings) -> sandbox.Pool:
    """The sandbox pool an evaluation tests with (checked once: a machine that cannot sandbox fails early)."""
    from ..benchmark import get

    sandbox.bwrap_path()
    return sandbox.Pool(timeout_s=get(settings.benchmark).test_timeout_s)


async def baselines_id(prompts: data.PromptSet, setup: Setup, settings: EvalSettings | None = None) -> str:
    """The id of the baselines record these prompts and servers have (whether it exists yet or not)."""
    return digest((await baselines_header(prompts, setup, settings or EvalSettings())).identity())


async def judge_phase(
    w: RecordWriter, kind: type[Verdict] | type[WeakVerdict], judge: Judge, pairs: list[tuple[str, str, str, str]],
    progress: Progress, desc: str, reuse: dict[str, Preference] | None = None,
) -> None:  # fmt: skip
    """Judge (prompt_id, instruction, candidate, reference) pairs concurrently, appending each verdict."""
    if not pairs:
        return
    t0 = time.monotonic()
    step = progress.phase(kind.__struct_config__.tag, len(pairs), desc)

    async def one(pid: str, instr: str, cand: str, ref: str) -> None:
        pref = (reuse or {}).get(pid) or await judge.prefer(instr, cand, ref)
        v = kind(prompt_id=pid, **{k: v for k, v in pref.to_json().items()})
        w.append(kind.__struct_config__.tag, **to_fields(v))
        step()

    await asyncio.gather(*(one(*p) for p in pairs))
    w.append("timing", **to_fields(Timing(phase="judge", seconds=round(time.monotonic() - t0, 3), n=len(pairs))))


async def decode_phase(
    w: RecordWriter, kind: type[WeakAnswer] | type[Generation], policy: Policy | str, todo: list[data.Prompt],
    setup: Setup, settings: EvalSettings, progress: Progress, desc: str, done: dict[str, WeakAnswer | Generation],
    tests: TestPhase | None = None,
) -> None:  # fmt: skip
    """Decode `todo` concurrently with `policy`, appending each decode to the record as it finishes (the
    successful ones also into `done`, by prompt id, and to `tests` to be tested at once), then the phase's
    timing."""
    if not todo:
        return
    tag = kind.__struct_config__.tag
    t0 = time.monotonic()
    step = progress.phase(tag, len(todo), desc)

    def record(i: int, d: Decode) -> None:
        ev = kind(prompt_id=todo[i].id, decode=d.to_record())
        w.append(tag, **to_fields(ev))
        if d.error is None:
            done[todo[i].id] = ev
            if tests is not None:
                tests.submit(todo[i].id, d.text)
        step()

    await decode_many([p.instruction for p in todo], policy, setup.models, settings.engine, progress=False,
                      on_done=record)  # fmt: skip
    phase = "weak" if kind is WeakAnswer else "decode"
    w.append("timing", **to_fields(Timing(phase=phase, seconds=round(time.monotonic() - t0, 3), n=len(todo))))


async def ensure_baselines(
    prompts: data.PromptSet, setup: Setup, settings: EvalSettings | None = None, progress: bool = True,
    on_progress: Callable[[str, int, int], None] | None = None,
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
        header = msgspec.structs.replace(header, created=old.created, servers=old.servers, code=old.code)
    else:  # a new record says when, against which server versions and by which code it was made
        header = msgspec.structs.replace(header, created=now(), servers=await setup.servers(), code=code_version())
    with RecordWriter("baselines", bid, {"type": "header", **to_fields(header)}) as w:
        events = typed(w.record)[1]
        refs = {k: v for k, v in latest(events, "reference").items() if v.error is None}
        weak = {k: v for k, v in latest(events, "weak").items() if v.decode.get("error") is None}
        ref_tests = weak_tests = None
        if settings.scored_by_tests:
            pool = test_pool(settings)
            tested = {t: {k for k, v in latest(events, t).items() if v.error is None}
                      for t in ("reference_test", "weak_test")}  # fmt: skip
            n_ref, n_weak = len(prompts) - len(tested["reference_test"]), len(prompts) - len(tested["weak_test"])
            ref_tests = TestPhase(w, ReferenceTest, prog, "tests: reference", n_ref, pool)
            weak_tests = TestPhase(w, WeakTest, prog, "tests: weak only", n_weak, pool)
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

            async def ref(p: data.Prompt) -> None:
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
        if settings.scored_by_tests:
            await ref_tests.finish()
            await weak_tests.finish()
            return read_baselines(bid, prompts)
        prefs = latest(typed(read_record("baselines", bid))[1], "weak_preference")
        judge = Judge(setup.judge, settings.judge)
        todo = [p for p in prompts if p.id in refs and p.id in weak and (p.id not in prefs or prefs[p.id].error)]
        pairs = [(p.id, p.instruction, weak[p.id].decode["text"], refs[p.id].text) for p in todo]
        await judge_phase(w, WeakVerdict, judge, pairs, prog, "judge weak vs reference")
    return read_baselines(bid, prompts)
