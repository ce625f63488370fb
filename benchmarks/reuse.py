"""Exact continuation reuse (issue 23): always-defer against the strong model's own answers and never-defer against
the weak model's own answers, without and with known continuations (workspace/reuse.py), side by side in one run.

    .venv/bin/python benchmarks/reuse.py                                     # the byte-level toy pair (~1 min)
    .venv/bin/python benchmarks/reuse.py --preset cpu --n 16 --rounds 2      # the running `cdw serve --preset cpu`

Each setting ("off": no store; "on": a fresh store) runs, on the first N HumanEval problems with no call cache:
1. the strong model's own answers: one chat request per problem (as the baselines make the reference);
2. always(span=newline) on the same problems (with reuse, its strong spans continue the answers of 1);
3. the weak model's own answers: one completion of the chat-rendered prompt per problem (as the weak baseline);
4. never on the same problems (with reuse, its drafts continue the answers of 3).
`--also POLICY` (repeatable) decodes more policies after these, e.g. `--also "margin(tau=0.1, span=sentence)"`,
timed and checked equal across settings (its drafts reuse the weak model's own answers only where it reads as few
alternatives per token as they were recorded with: one). Rounds alternate which setting goes first. Printed per
setting: wall seconds of each step (mean over rounds), the ratios always / strong own and never / weak own, the
requests each step sent to a server, how many generation requests known continuations answered, and whether the
texts are the models' own (always-defer = the strong model's own answer, never-defer = the weak model's own answer)
and equal across settings. Targets with reuse (issue 23): always <= 0.5x, never <= 1.1x.

With no --preset, the servers are tests/bytetoy.py's byte-level BPE toys in a child process (their CPU is not the
client's), answering every prompt up to --max-tokens (no early end of sequence); `--delay S` adds S seconds to each
request, as a server's fixed cost per request would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tests` is not an installed package

from tests.bytetoy import ByteToy  # noqa: E402
from tests.fakeserver import FakeServer  # noqa: E402
from workspace.benchmarks import get as get_benchmark  # noqa: E402
from workspace.benchmarks import resolve_prompts  # noqa: E402
from workspace.client import ClientSettings, ModelClient  # noqa: E402
from workspace.endpoints import Endpoint, resolve_endpoint  # noqa: E402
from workspace.engine import EngineSettings, Models, decode_many  # noqa: E402
from workspace.reuse import ContinuationStore  # noqa: E402

STEPS = ("strong own", "always(span=newline)", "weak own", "never")
GENERATION = ("draft", "span", "peek")


def _serve(conn, delay: float) -> None:
    """Child process: the byte-level toy pair, answering up to max_tokens (no early end of sequence)."""

    async def main() -> None:
        weak = await FakeServer(ByteToy("weak", seed=11, eos_after=10**9)).start()
        strong = await FakeServer(ByteToy("strong", seed=12, eos_after=10**9)).start()
        weak.faults.delay = strong.faults.delay = delay
        conn.send((weak.url, strong.url))
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await weak.stop()
        await strong.stop()

    asyncio.run(main())


def toy_endpoints(delay: float):
    ctx = mp.get_context("fork")
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child, delay), daemon=True)
    proc.start()
    weak, strong = conn.recv()
    return (Endpoint("weak", (weak,), "weak"), Endpoint("strong", (strong,), "strong")), (conn, proc)


async def own_strong(m: Models, instrs: list[str], n: int) -> list[str]:
    outs = await asyncio.gather(*(m.strong.chat([{"role": "user", "content": i}], max_tokens=n) for i in instrs))
    return [o.text for o in outs]


async def own_weak(m: Models, instrs: list[str], n: int) -> list[str]:
    async def one(i: str) -> str:
        ids = await m.weak.tokenize(messages=[{"role": "user", "content": i}], add_generation_prompt=True)
        return (await m.weak.complete(ids, max_tokens=n)).text

    return list(await asyncio.gather(*(one(i) for i in instrs)))


async def setting(endpoints, instrs: list[str], es: EngineSettings, store: ContinuationStore | None,
                  steps: tuple[str, ...] = STEPS) -> dict:  # fmt: skip
    """The steps in order with one pair of clients (and one store, or none)."""
    cs = ClientSettings()
    m = Models(*(ModelClient(e, cs, reuse=store) for e in endpoints))
    out = {}
    try:
        for step in steps:
            sent0, t0 = m.weak.calls + m.strong.calls, time.monotonic()
            if step == "strong own":
                texts, known = await own_strong(m, instrs, es.max_tokens), 0
            elif step == "weak own":
                texts, known = await own_weak(m, instrs, es.max_tokens), 0
            else:
                ds = await decode_many(instrs, step, m, es, progress=False)
                if errors := [d.error for d in ds if d.error]:
                    raise SystemExit(f"{step}: {len(errors)} decodes failed, e.g. {errors[0]}")
                texts = [d.text for d in ds]
                known = sum(1 for d in ds for c in d.calls if c.kind in GENERATION and c.origin == "reuse")
                out[step + " asked"] = sum(1 for d in ds for c in d.calls if c.kind in GENERATION)
                out[step + " calls"] = _by_kind(ds)
            out[step] = {"wall": time.monotonic() - t0, "sent": m.weak.calls + m.strong.calls - sent0,
                         "known": known, "texts": texts}  # fmt: skip
    finally:
        await m.close()
    return out


def _by_kind(ds) -> dict[str, tuple[int, float]]:
    """Per (role, kind, origin) of the decodes' calls: how many, and their summed latency in seconds (a decode's
    calls are sequential, so the sums say where its time goes; the decodes themselves overlap)."""
    out: dict[str, tuple[int, float]] = {}
    for c in (c for d in ds for c in d.calls):
        key = f"{c.role} {c.kind}" + ("" if c.origin == "server" else f" ({c.origin})")
        n, s = out.get(key, (0, 0.0))
        out[key] = (n + 1, s + c.seconds)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=None, help="measure the running servers (e.g. cpu) instead of the toys")
    ap.add_argument("--n", type=int, default=12, help="the first N HumanEval problems")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--delay", type=float, default=0.0, help="toys only: seconds added to each request")
    ap.add_argument("--texts", type=Path, help="write each step's texts (last round) here as JSON, to compare runs")
    ap.add_argument("--only", choices=("off", "on"), help="run one setting (its ratios only; no comparison across)")
    ap.add_argument("--also", action="append", default=[], metavar="POLICY", help="more policies to decode")
    args = ap.parse_args()
    steps = STEPS + tuple(args.also)

    instrs = [p.instruction for p in resolve_prompts(get_benchmark("humaneval"), args.n)]
    es = EngineSettings(max_tokens=args.max_tokens)
    child = None
    if args.preset:
        endpoints = (resolve_endpoint("weak"), resolve_endpoint("strong"))
        where = f"the running servers ({', '.join(e.urls[0] + ' ' + (e.model or '') for e in endpoints)})"
    else:
        endpoints, child = toy_endpoints(args.delay)
        where = f"the byte-level toy pair (delay {args.delay} s per request)"
    tmp = Path(tempfile.mkdtemp(prefix="cdw-bench-reuse-"))
    names = (args.only,) if args.only else ("off", "on")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    try:
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                store = ContinuationStore(tmp / f"known-{r}.sqlite") if name == "on" else None
                runs[name].append(asyncio.run(setting(endpoints, instrs, es, store, steps)))
                print(f"round {r + 1}, reuse {name}: " + ", ".join(
                    f"{s} {runs[name][-1][s]['wall']:.1f} s" for s in steps), flush=True)  # fmt: skip
    finally:
        if child:
            child[0].send("stop")
            child[1].join(5)

    print(f"\n== {args.n} HumanEval problems, max_tokens {args.max_tokens}, {args.rounds} rounds, no call cache, "
          f"on {where} ==")  # fmt: skip
    print(
        f"{'reuse':<6}{'strong own s':>13}{'always s':>10}{'always/own':>11}{'weak own s':>11}{'never s':>9}"
        f"{'never/own':>10}{'  always: sent / known / asked':>31}{'  never: sent / known / asked':>30}"
    )
    ratios = {}
    for name, rs in runs.items():
        wall = {s: statistics.mean(r[s]["wall"] for r in rs) for s in STEPS}
        a, v = wall["always(span=newline)"] / wall["strong own"], wall["never"] / wall["weak own"]
        ratios[name] = (a, v)
        last = rs[-1]
        req = {s: f"{last[s]['sent']} / {last[s]['known']} / {last[s + ' asked']}" for s in STEPS[1::2]}
        print(f"{name:<6}{wall['strong own']:>13.1f}{wall['always(span=newline)']:>10.1f}{a:>11.2f}"
              f"{wall['weak own']:>11.1f}{wall['never']:>9.1f}{v:>10.2f}{req['always(span=newline)']:>31}"
              f"{req['never']:>30}")  # fmt: skip
        for s in args.also:
            w = statistics.mean(r[s]["wall"] for r in rs)
            print(f"{'':<6}{s}: {w:.1f} s, sent / known / asked {last[s]['sent']} / {last[s]['known']} / "
                  f"{last[s + ' asked']}")  # fmt: skip
    print("\nwhere a decode's time goes (last round; calls, summed latency, mean latency):")
    for name, rs in runs.items():
        for s in steps:
            if s + " calls" in rs[-1]:
                parts = [f"{k} {n} / {t:.0f} s / {1000 * t / n:.0f} ms" for k, (n, t) in
                         sorted(rs[-1][s + " calls"].items(), key=lambda kv: -kv[1][1])]  # fmt: skip
                print(f"  {name:<4}{s}: " + "; ".join(parts))
    first = runs[names[0]][0]
    if args.texts:
        args.texts.write_text(json.dumps({s: runs[names[0]][-1][s]["texts"] for s in steps}, indent=1))
    exact = {
        "always = strong own": all(r["always(span=newline)"]["texts"] == r["strong own"]["texts"]
                                   for rs in runs.values() for r in rs),
        "never = weak own": all(r["never"]["texts"] == r["weak own"]["texts"] for rs in runs.values() for r in rs),
    }  # fmt: skip
    if len(names) == 2:  # (with --only there is nothing to compare across)
        exact["same texts with and without reuse"] = all(r[s]["texts"] == first[s]["texts"] for rs in runs.values()
                                                         for r in rs for s in steps)  # fmt: skip
    print("\n" + "; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in exact.items()))
    said = {"on": "with reuse", "off": "without"}
    print(
        "; ".join(
            f"{said[n]}: always {ratios[n][0]:.2f}x the strong model's own answers, never {ratios[n][1]:.2f}x "
            "the weak model's own answers"
            for n in names
        )
        + " (targets with reuse: <= 0.5 and <= 1.1)"
    )


if __name__ == "__main__":
    main()
