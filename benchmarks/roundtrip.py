"""How often does the strong model's text re-tokenise to the ids it generated? (ARCHITECTURE.md “The engine's
invariants”)

Exactness across consecutive strong spans needs each span's text to re-tokenise to the generated ids, since
text is the only interface to the strong model. This asks the strong server for greedy answers to a few
instructions (token ids included), cuts each answer into spans of `--span` tokens as the engine would, and
checks tokenize(text of ids[:k]) == ids[:k] for every span end k, and for the whole answer.

    cdw serve --preset cpu && python benchmarks/roundtrip.py
"""

from __future__ import annotations

import argparse
import asyncio

INSTRUCTIONS = [
    "Give three tips for staying healthy.",
    "Explain what a hash table is to a beginner.",
    "Write a short poem about the sea.",
    "What are the causes of inflation?",
    "Translate 'good morning, how are you?' into French and Spanish.",
    "Write a Python function that reverses a string, with a docstring.",
    "Summarise the plot of Romeo and Juliet in three sentences.",
    "List five uses for baking soda.",
]


async def main(span: int, max_tokens: int) -> None:
    from workspace.client import ModelClient
    from workspace.endpoints import resolve_endpoint

    async with ModelClient(resolve_endpoint("strong")) as c:

        async def one(instr: str) -> tuple[int, int, bool]:
            prompt = await c.tokenize(messages=[{"role": "user", "content": instr}], add_generation_prompt=True)
            out = await c.complete(prompt, max_tokens=max_tokens)
            ids = list(out.token_ids)
            if out.finish_reason == "stop" and ids:
                ids = ids[:-1]  # the end-of-sequence token is not text
            ends = list(range(span, len(ids), span)) + [len(ids)]
            texts = await asyncio.gather(*(c.detokenize(ids[:k]) for k in ends))
            back = await asyncio.gather(*(c.tokenize(t) for t in texts))
            ok = sum(b == ids[:k] for b, k in zip(back, ends, strict=True))
            return ok, len(ends), back[-1] == ids

        rows = await asyncio.gather(*(one(i) for i in INSTRUCTIONS))
    ok, total = sum(r[0] for r in rows), sum(r[1] for r in rows)
    whole = sum(r[2] for r in rows)
    print(f"model {await c.model()}: span prefixes that re-tokenise exactly: {ok}/{total} = {ok / total:.3f}")
    print(f"whole answers that re-tokenise exactly: {whole}/{len(rows)}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--span", type=int, default=8, help="tokens per span")
    ap.add_argument("--max-tokens", type=int, default=160)
    a = ap.parse_args()
    asyncio.run(main(a.span, a.max_tokens))
