"""Labels for traced weak tokens: was this token harmful? Each label line names its `label_source`.

- `disagreement` (cheap: one short strong request): given the answer before the token, does the strong model's
  next piece differ from the weak answer's? A piece is the leading whitespace and the first word or symbol (in
  code, indentation is meaning). R2R's "divergent token" label, without its continuation check.
- `disagreement_words`: the same requests (answered by the call cache once `disagreement` ran), compared on the
  first word or symbol only: whitespace differences (one blank line or two) are not divergence.
- `outcome` (faithful, benchmarks that score answers alone such as `humaneval`: a whole decode and a test run per
  label): hand the token's line to the strong model (a `newline` span), let the weak model finish, run the unit
  tests. Harmful = the handoff makes a failing weak answer pass. AutoJudge's mining of tokens whose replacement
  changes the final answer.

Positions are sampled per problem across confidence strata (by the weak model's margin p1 − p2), not only where
it hesitates: confident errors are where the hand-made gates fail. Every request goes through the client (its
throttles and the call cache), so labelling is concurrent, and a second run of the same labels is answered from
the cache with the same result. Label files are appended as labels arrive; a rerun labels only what is missing.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections.abc import Callable, Collection
from pathlib import Path

import msgspec
from tqdm.auto import tqdm

from ..benchmarks import TestedBenchmark
from ..benchmarks import get as get_benchmark
from ..engine import EngineSettings, Models, decode
from ..fileio import append_lines
from ..policies import Action, Decision, Policy, SpanRule, TokenSignal
from .traces import TokenRow, TraceError, Traces, read_jsonl

SOURCES = ("disagreement", "disagreement_words", "outcome")
STRATA = (0.1, 0.5, 0.9)  # margin cut points: [0, .1) [.1, .5) [.5, .9) [.9, 1]
PEEK_TOKENS = 8  # strong tokens asked for per disagreement label: enough for indentation and one word


class LabelRow(msgspec.Struct, frozen=True):
    """One labelled position (the lines of `labels-<source>.jsonl`)."""

    problem: str
    position: int
    label_source: str
    label: int  # 1: the weak token is harmful (divergent / its handoff fixes the program)
    stratum: int  # the margin stratum it was sampled from (0 = least confident)
    weak: str = ""  # disagreement: the weak answer's next piece; outcome: the weak answer's test status
    strong: str = ""  # disagreement: the strong model's next piece; outcome: the handed-off answer's status
    error: str | None = None  # a label that could not be made (not written; kept for reports)


def label_path(traces: Traces, source: str) -> Path:
    return traces.path / f"labels-{source}.jsonl"


def read_labels(traces: Traces, source: str) -> list[LabelRow]:
    seen = {(r.problem, r.position): r for r in read_jsonl(label_path(traces, source), LabelRow)}
    return list(seen.values())


def stratum(row: TokenRow) -> int:
    s = row.signal("")  # p1 and p2 as every policy reads them (the text before the token plays no part)
    return sum(s.p1 - s.p2 >= c for c in STRATA)


def sample(traces: Traces, per_problem: int, seed: int = 0) -> list[TokenRow]:
    """Up to `per_problem` kept tokens per problem, spread evenly over the margin strata (a stratum with too few
    tokens gives its share to the others). Seeded per problem: the same traces give the same positions."""
    out: list[TokenRow] = []
    for problem in sorted(traces.decodes):
        rows = [r for r in traces.rows_of(problem) if not r.deferred and r.char_end > r.char_start]
        rng = random.Random(hashlib.sha256(f"{seed}:{problem}".encode()).digest())
        by = {k: [r for r in rows if stratum(r) == k] for k in range(len(STRATA) + 1)}
        for v in by.values():
            rng.shuffle(v)
        picked: list[TokenRow] = []
        while len(picked) < per_problem and any(by.values()):
            for k in sorted(by):
                if by[k] and len(picked) < per_problem:
                    picked.append(by[k].pop())
        out += sorted(picked, key=lambda r: r.position)
    return out


_PIECE = re.compile(r"\s*(?:\w+|[^\w\s])|\s+$", re.S)


def piece(text: str) -> str:
    """Leading whitespace and the first word or symbol: what two continuations are compared on."""
    m = _PIECE.match(text)
    return m.group(0) if m else ""


async def _disagreement(traces: Traces, row: TokenRow, models: Models, words_only: bool = False) -> LabelRow:
    d = traces.decodes[row.problem]
    prefix, weak_rest = d.answer[: row.char_start], d.answer[row.char_start :]
    msgs = [{"role": "user", "content": d.instruction}]
    if prefix:
        msgs.append({"role": "assistant", "content": prefix})
    out = await models.strong.chat(msgs, max_tokens=PEEK_TOKENS, continue_final=bool(prefix))
    w, s = piece(weak_rest), piece(out.text)
    if not s.strip() and out.finish_reason == "length":  # eight strong tokens of whitespace: compare what there is
        s = out.text
    if words_only:
        w, s = w.strip(), s.strip()
        return LabelRow(row.problem, row.position, "disagreement_words", int(w != s), stratum(row), w, s)
    return LabelRow(row.problem, row.position, "disagreement", int(w != s), stratum(row), w, s)


class DeferAt(Policy):
    """Hand off exactly once, at answer token `position`, for one `span`; the weak model writes the rest. Drafts
    ask for as many logprobs as traces do, so the decode up to `position` is the traced one (from the cache)."""

    top_k = None

    def __init__(self, position: int, span: str = "newline"):
        self.position = int(position)
        self.span = SpanRule(span)

    def decide(self, s: TokenSignal) -> Decision:
        return Decision(Action.DEFER if s.position == self.position else Action.CONTINUE)


async def _outcome(traces: Traces, row: TokenRow, models: Models, settings: EngineSettings, tests) -> LabelRow:
    d = traces.decodes[row.problem]
    handed = await decode(d.instruction, DeferAt(row.position), models, settings)
    if handed.error:
        return LabelRow(row.problem, row.position, "outcome", 0, stratum(row), error=handed.error)
    weak_status, strong_status = await asyncio.gather(tests(row.problem, d.answer), tests(row.problem, handed.text))
    harmful = int(strong_status == "passed" and weak_status != "passed")
    return LabelRow(row.problem, row.position, "outcome", harmful, stratum(row), weak_status, strong_status)


async def label(
    traces: Traces,
    source: str,
    models: Models,
    *,
    per_problem: int = 16,
    seed: int = 0,
    settings: EngineSettings | None = None,
    concurrency: int | None = None,
    progress: bool = True,
    on_label: Callable[[LabelRow], None] | None = None,
    positions: Collection[tuple[str, int]] | None = None,
) -> list[LabelRow]:
    """Label sampled positions of `traces` by `source` (or exactly `positions`, as (problem, position) pairs);
    returns every label on file (old and new). Positions already labelled are skipped; a position whose requests
    fail is reported, not written (a rerun retries it)."""
    if source not in SOURCES:
        raise TraceError(f"unknown label source {source!r}; one of {', '.join(SOURCES)}")
    bench = traces.meta.get("benchmark")
    tests = None
    if source == "outcome":
        scorer = get_benchmark(bench)
        if scorer.needs_judge:
            raise TraceError(f"outcome labels score answers alone (unit tests): {scorer.name}'s are judged; "
                             "they need traces of a benchmark such as humaneval")  # fmt: skip
        tests = _test_runner(scorer)
    if settings is None:
        settings = EngineSettings(**traces.meta["engine"])
    have = {(r.problem, r.position) for r in read_labels(traces, source)}
    if positions is None:
        rows = sample(traces, per_problem, seed)
    else:
        by_key = {(r.problem, r.position): r for r in traces.tokens}
        missing = [k for k in positions if k not in by_key]
        if missing:
            raise TraceError(f"no token row at {missing[:3]} in {traces.path}")
        rows = [by_key[k] for k in positions]
    todo = [r for r in rows if (r.problem, r.position) not in have]
    limit = concurrency or min(models.weak.settings.max_in_flight, models.strong.settings.max_in_flight)
    sem = asyncio.Semaphore(limit)
    enc = msgspec.json.Encoder()
    bar = tqdm(total=len(todo), desc=f"label {source}", unit="label", disable=not progress)
    failed: list[LabelRow] = []

    async def one(row: TokenRow) -> None:
        async with sem:
            try:
                if source.startswith("disagreement"):
                    lab = await _disagreement(traces, row, models, words_only=source == "disagreement_words")
                else:
                    lab = await _outcome(traces, row, models, settings, tests)
            except Exception as e:  # a dead server or a bad answer: this label only
                lab = LabelRow(row.problem, row.position, source, 0, stratum(row), error=f"{type(e).__name__}: {e}")
        if lab.error is None:
            append_lines(label_path(traces, source), [enc.encode(lab)])
        else:
            failed.append(lab)
        if on_label is not None:
            on_label(lab)
        bar.update(1)

    try:
        await asyncio.gather(*(one(r) for r in todo))
    finally:
        bar.close()
    if failed:
        raise TraceError(f"{len(failed)} of {len(todo)} labels failed (first: {failed[0].problem} "
                         f"@{failed[0].position}: {failed[0].error}); run again to retry them")  # fmt: skip
    return read_labels(traces, source)


def _test_runner(bench: TestedBenchmark):
    """Score an answer to a problem (run its tests); status only, one result per (problem, answer)."""
    pool = bench.pool()
    done: dict[tuple[str, str], asyncio.Future] = {}

    async def run(problem: str, answer: str) -> str:
        key = (problem, answer)
        if key not in done:
            done[key] = asyncio.ensure_future(bench.score(answer, problem, pool))
        return (await done[key]).status

    return run
