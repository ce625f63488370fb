"""Phases an evaluation runs over a prompt set (decode, unit tests, judge), each appending its events and its
timing to a record as it goes; shared by the baselines and the candidate runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tqdm.auto import tqdm

from ..benchmarks import Prompt, TestedBenchmark
from ..engine import Decode, decode_many
from ..judge import Judge, Preference
from ..policies import Policy
from ..records.log import RecordWriter
from ..records.schema import Generation, TestRun, Timing, Verdict, WeakAnswer, WeakVerdict, to_fields
from .setup import EvalSettings, Setup

OnProgress = Callable[[str, int, int], None]  # (phase, done, total): a phase's work recorded so far


class Progress:
    """Counts of work done per phase, passed to an `on_progress(phase, done, total)` callback as they change."""

    def __init__(self, on_progress: OnProgress | None, progress_bars: bool):
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


class TestPhase:
    """Answers scored alone as they are written (unit tests, say): each answer submitted is scored at once by the
    benchmark (with its `pool`), beside the decoding that continues, and its result is appended to the record."""

    def __init__(self, w: RecordWriter, kind: type[TestRun], progress: Progress, desc: str, total: int,
                 bench: TestedBenchmark, pool, reuse: dict[str, list[tuple[str, TestRun]]] | None = None):  # fmt: skip
        self.w, self.kind, self.bench, self.pool, self.reuse = w, kind, bench, pool, reuse or {}
        self.step = progress.phase(kind.__struct_config__.tag, total, desc) if total else (lambda: None)
        self.tasks: list[asyncio.Task] = []
        self.seconds, self.n = 0.0, 0

    def submit(self, pid: str, text: str) -> None:
        self.tasks.append(asyncio.ensure_future(self._one(pid, text)))

    async def _one(self, pid: str, text: str) -> None:
        # An answer already tested with exactly this text (never-defer is the weak baseline) keeps its result.
        same = next((t for known, t in self.reuse.get(pid, ()) if known == text and t.error is None), None)
        if same is not None:
            fields = {k: getattr(same, k) for k in ("status", "program", "seconds", "output")}
        else:
            o = await self.bench.score(text, pid, self.pool)
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
    w: RecordWriter, kind: type[WeakAnswer] | type[Generation], policy: Policy | str, todo: list[Prompt],
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
