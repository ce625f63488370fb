"""Are the engine's endpoints exact on real models? never-defer vs the weak model's own answer, always-defer
(every span rule) vs the strong model's own answer, both with the same `max_tokens` (ARCHITECTURE.md “The engine's
invariants”).

    cdw serve --preset cpu && python benchmarks/exactness.py                 # 20 canonical + 3 hand-picked
    python benchmarks/exactness.py --n 20 --max-tokens 256 --spans default   # the rate at 256 tokens only
    python benchmarks/exactness.py --benchmark humaneval --n 10 --no-hand-picked --spans line block block:2 body

For each instruction and policy it decodes with the engine (the same API `cdw decode` calls) and compares with
one greedy request to the server itself (chat for the strong model, a completion of the chat-rendered prompt
for the weak one). It also checks what must hold on every decode: no U+FFFD, segments concatenate to the
text, f_weak is the weak character share, the budget spent in the author's tokens. The hand-picked
instructions hit the length limit and ask for accented letters and emoji (characters split across tokens).
Prints a line per mismatch and a table of exactness rates.
"""

from __future__ import annotations

import argparse
import asyncio
import time

HAND_PICKED = [
    "Explain how a bicycle gear system works, with a numbered list of 4 points.",
    "Write two sentences in French about a café in Paris, using accented letters, and end with a coffee emoji.",
    "Reply with a short greeting followed by three different emoji.",
]
SPANS = ["default", "sentence", "words:1", "tokens:5", "agree:2", "block"]


async def run(args) -> None:
    from workspace.benchmarks import DEFAULT, resolve_prompts
    from workspace.engine import EngineSettings, Models, decode_many
    from workspace.policies import parse_span

    m = Models.from_endpoints()
    instrs = [p.instruction for p in resolve_prompts(args.benchmark or DEFAULT, args.n)]
    instrs += [] if args.no_hand_picked else HAND_PICKED
    s = EngineSettings(max_tokens=args.max_tokens, max_deferrals=10_000)
    t0 = time.monotonic()
    strong_own = await asyncio.gather(
        *(m.strong.chat([{"role": "user", "content": i}], max_tokens=args.max_tokens, logprobs=0) for i in instrs)
    )

    async def weak_one(i: str) -> str:
        ids = await m.weak.tokenize(messages=[{"role": "user", "content": i}], add_generation_prompt=True)
        return (await m.weak.complete(ids, max_tokens=args.max_tokens)).text

    weak_own = await asyncio.gather(*(weak_one(i) for i in instrs))
    at_limit = sum(r.finish_reason == "length" for r in strong_own)
    print(f"{len(instrs)} instructions, max_tokens {args.max_tokens}: the strong model's own answer hits the limit "
          f"in {at_limit}; own answers took {time.monotonic() - t0:.0f} s")  # fmt: skip
    # A structural rule may run its span over several requests, up to the whole answer.
    policies = ["never"] + [
        "always" if r == "default" else f"always(span={r}, max_span={args.max_tokens})" if parse_span(r).structural
        else f"always(span={r})" for r in args.spans
    ]  # fmt: skip
    rows = []
    for pol in policies:
        t0 = time.monotonic()
        ds = await decode_many(instrs, pol, m, s, progress=not args.quiet)
        own = weak_own if pol == "never" else [r.text for r in strong_own]
        exact, broken = 0, 0
        for d, ref, instr in zip(ds, own, instrs, strict=True):
            ok = d.error is None and d.text == ref
            exact += ok
            wrong = (d.error or "\ufffd" in d.text or "".join(x.text for x in d.segments) != d.text
                     or d.f_weak not in ((1.0, None) if pol == "never" else (0.0, None))
                     or (d.finish_reason == "length" and sum(d.tokens_spent.values()) != args.max_tokens))  # fmt: skip
            broken += bool(wrong)
            if not ok or wrong:
                cut = next((k for k in range(min(len(d.text), len(ref))) if d.text[k] != ref[k]), None)
                print(
                    f"  MISMATCH {pol} on {instr[:50]!r}: {d.error or ''} first difference at {cut}: "
                    f"engine {d.text[cut or 0 : (cut or 0) + 40]!r} vs own {ref[cut or 0 : (cut or 0) + 40]!r}"
                )
        rows.append((pol, exact, broken, len(ds), time.monotonic() - t0))
    await m.close()
    print(f"\n{'policy':<28}{'exact':>8}{'rate':>7}{'broken':>8}{'wall s':>8}")
    for pol, exact, broken, n, wall in rows:
        print(f"{pol:<28}{exact:>5}/{n:<3}{exact / n:>6.0%}{broken:>8}{wall:>8.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20, help="the benchmark's first N canonical prompts")
    ap.add_argument("--benchmark", default=None, help="alpaca_eval (the default) or humaneval")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--spans", nargs="+", default=SPANS, help="span rules for always-defer ('default': none given)")
    ap.add_argument("--no-hand-picked", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
