"""The answer-structure tracker (workspace/policies/structure.py): is it right on real code, and what does it cost?

    .venv/bin/python benchmarks/structure.py            # ~1 min, no servers

1. Agreement with Python's own `tokenize` and `ast` on the 164 HumanEval problems (prompt + canonical solution,
   fenced as an answer): at every character, `string` and `comment` (the tracker's view of the text before it);
   at every logical line's first character, `indent` and `docstring`; at every non-blank character, `body` (for a
   line's first character the view after it: a dedent is known once the line's first character is written). An
   empty string `''` reads as a string until the next character (it could open a triple-quoted one).
2. Cost: the same answers fed in 4-character pieces with `where()` after each (as the engine feeds drafts),
   against re-tracking the whole answer so far at each piece (what a policy without the tracker would do): µs per
   character, and the ratio.
3. Engine: client CPU per token (this thread's CPU time; the toy servers run in another thread) decoding with the
   code-writing toys (tests/fakeserver.py), with the tracker against a stub that tracks nothing, batches
   alternating. Target: <= 1.10x.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import io
import sys
import time
import tokenize
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tests` is not an installed package

from workspace.benchmarks import humaneval  # noqa: E402
from workspace.policies.structure import Tracker, Where, track  # noqa: E402

FENCE = "```python\n"
_NOT_FIRST = (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)


def _offsets(code: str) -> list[int]:
    """Character offset of each line's start (1-based rows as tokenize counts them)."""
    out, pos = [0, 0], 0
    for line in code.splitlines(keepends=True):
        pos += len(line)
        out.append(pos)
    return out


def agreement(codes: list[str]) -> dict[str, list[int]]:
    """field -> [agree, total] over the codes (each fenced as an answer)."""
    score = {k: [0, 0] for k in ("string", "comment", "indent", "docstring", "body")}

    def count(field: str, ok: bool) -> None:
        score[field][0] += ok
        score[field][1] += 1

    for code in codes:
        text = FENCE + code
        base = len(FENCE)
        line_at = _offsets(code)
        views, t = [Where()] * (len(text) + 1), Tracker()
        for i, ch in enumerate(text):
            views[i] = t.where()
            t.feed(ch)
        views[len(text)] = t.where()
        strings, comments, firsts, docs = set(), set(), {}, set()
        prev = tokenize.NEWLINE
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            a = base + line_at[tok.start[0]] + tok.start[1]
            b = base + line_at[tok.end[0]] + tok.end[1]
            if tok.type == tokenize.STRING:
                strings.update(range(a + 1, b))
                if prev in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.NL):
                    docs.add(a + 1)
            elif tok.type == tokenize.COMMENT:
                comments.update(range(a + 1, b + 1))
            if tok.type not in _NOT_FIRST and prev in (
                tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT
            ):  # fmt: skip
                firsts[a] = tok.start[1]
            if tok.type not in (tokenize.NL, tokenize.COMMENT):
                prev = tok.type
        for i in range(base + 1, len(text)):
            count("string", views[i].string == (i in strings))
            count("comment", views[i].comment == (i in comments))
        for a, col in firsts.items():
            count("indent", views[a + 1].indent == col)
        for a in docs:
            count("docstring", views[a].docstring)
        body = set()
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = base + line_at[node.body[0].lineno]
                end = base + line_at[node.end_lineno + 1]
                body.update(i for i in range(start, end) if not text[i].isspace())
        for i in range(base, len(text)):
            view = views[i + 1] if views[i].line_start else views[i]  # a line's first character: after it
            if not text[i].isspace() and view.code:
                count("body", view.body == (i in body))
    return score


def cost(answers: list[str], piece: int = 4) -> tuple[float, float]:
    """(µs per character incrementally, µs per character re-tracking the prefix at each piece)."""
    chars = sum(len(a) for a in answers)
    t0 = time.perf_counter()
    for a in answers:
        t = Tracker()
        for i in range(0, len(a), piece):
            t.feed(a[i : i + piece]).where()
    inc = time.perf_counter() - t0
    t0 = time.perf_counter()
    for a in answers[:20]:
        for i in range(0, len(a), piece):
            track(a[: i + piece])
    again = (time.perf_counter() - t0) * len(answers) / 20
    return inc / chars * 1e6, again / chars * 1e6


class _NoTracker:
    """A tracker that tracks nothing (the engine before issue 24, for the CPU comparison)."""

    def feed(self, text: str):
        return self

    def copy(self):
        return self

    def where(self) -> Where:
        return Where()


async def engine_cpu(batches: int, n: int) -> tuple[float, float]:
    """Client CPU per token with the tracker and with the stub (seconds per token, alternating batches)."""
    from tests.fakeserver import ServerThread, Toys, script_toys
    from workspace import engine
    from workspace.engine import EngineSettings, Models, decode_many

    thread = ServerThread()
    weak, strong = script_toys()
    toys = Toys.start(thread, weak=weak, strong=strong)
    m = Models.from_endpoints(toys.urls)
    settings = EngineSettings(max_tokens=600, max_deferrals=600)
    instructions = [f"Write is_prime, variant {i}." for i in range(n)]
    spent = {"tracker": [0.0, 0], "stub": [0.0, 0]}
    try:
        for b in range(batches + 1):
            for name, cls in (("tracker", Tracker), ("stub", _NoTracker)):
                engine.Tracker = cls  # the engine's only use of the class: one per decode, copies per draft
                t0 = time.thread_time()
                ds = await decode_many(instructions, "margin(tau=0.6, span=block, max_span=400)", m, settings,
                                       progress=False)  # fmt: skip
                cpu = time.thread_time() - t0
                if b:  # the first round warms the servers' answers up
                    spent[name][0] += cpu
                    spent[name][1] += sum(sum(d.tokens_spent.values()) for d in ds)
    finally:
        engine.Tracker = Tracker
        await m.close()
        toys.close()
        thread.close()
    return spent["tracker"][0] / spent["tracker"][1], spent["stub"][0] / spent["stub"][1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--n", type=int, default=20, help="decodes per engine batch")
    args = ap.parse_args()
    problems = humaneval.problems()
    codes = [p.prompt + p.canonical_solution for p in problems]
    print(f"1. agreement with tokenize/ast on {len(codes)} HumanEval programs (prompt + canonical solution)")
    for field, (ok, total) in agreement(codes).items():
        print(f"   {field:<10} {ok:>7}/{total:<7} {ok / total:.4%}")
    answers = [f"Here is the function:\n\n{FENCE}{c}```\n\nIt works.\n" for c in codes]
    inc, again = cost(answers)
    print(f"2. cost: {inc:.2f} µs/char fed in 4-char pieces; re-tracking the prefix each piece {again:.1f} µs/char "
          f"({again / inc:.0f}x)")  # fmt: skip
    with_t, without = asyncio.run(engine_cpu(args.batches, args.n))
    print(f"3. engine client CPU per token, code toys: tracker {with_t * 1e6:.0f} µs, none {without * 1e6:.0f} µs "
          f"({with_t / without:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
