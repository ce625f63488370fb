"""Wall time of an evaluation on real servers, split by phase, and of re-running it.

    cdw serve --preset cpu            # or any servers cdw can find (see README)
    python benchmarks/evaluation.py --n 10 --max-tokens 128

Runs one evaluation from scratch (fresh record folder, fresh call cache, so nothing is reused), prints the time
of each phase (reference, weak-only, candidate decode, judge) from the record, then runs the same evaluation
twice more, side by side in this run:
- "records kept": the finished record is read back (no server calls expected);
- "cache only": the records are gone, the call cache answers every request (a sweep revisiting prefixes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path


async def one(policy: str, prompts, cache_path: Path, settings):
    from workspace.cache import CallCache
    from workspace.evaluate import Setup, evaluate

    cache = CallCache(cache_path)
    try:
        async with Setup.from_endpoints(cache=cache) as setup:
            t0 = time.monotonic()
            ev = await evaluate(policy, prompts, setup, settings)
            calls = setup.weak.calls + setup.strong.calls + setup.judge.calls
            return ev, time.monotonic() - t0, calls
    finally:
        cache.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10, help="first N canonical prompts")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--policy", default="margin(tau=0.1, span=sentence)")
    args = ap.parse_args()

    from workspace.benchmarks import DEFAULT, resolve_prompts
    from workspace.engine import EngineSettings
    from workspace.evaluate import EvalSettings

    prompts = resolve_prompts(DEFAULT, args.n)
    settings = EvalSettings(EngineSettings(max_tokens=args.max_tokens))
    tmp = Path(tempfile.mkdtemp(prefix="cdw-bench-eval-"))
    cache = tmp / "calls.sqlite"
    os.environ["CDW_RECORDS_DIR"] = str(tmp / "records-1")
    first, t_first, c_first = asyncio.run(one(args.policy, prompts, cache, settings))
    kept, t_kept, c_kept = asyncio.run(one(args.policy, prompts, cache, settings))
    os.environ["CDW_RECORDS_DIR"] = str(tmp / "records-2")
    cached, t_cached, c_cached = asyncio.run(one(args.policy, prompts, cache, settings))
    assert kept.to_json()["recovery"] == first.to_json()["recovery"] == cached.to_json()["recovery"]

    print(f"\n== {args.policy} on {prompts.name} (n={len(prompts)}), max_tokens {args.max_tokens} ==")
    print(f"{'phase':<34}{'seconds':>10}")
    for phase, sec in first.timings.items():
        print(f"{phase:<34}{sec:>10.1f}")
    print(f"{'whole evaluation (wall)':<34}{t_first:>10.1f}")
    print(f"\n{'run':<34}{'wall s':>10}{'ratio':>8}{'requests':>10}")
    for name, t, c in (("first (nothing reused)", t_first, c_first), ("again, records kept", t_kept, c_kept),
                       ("again, cache only", t_cached, c_cached)):  # fmt: skip
        print(f"{name:<34}{t:>10.2f}{t / t_first:>8.4f}{c:>10}")
    s = first.summary
    print(f"\nf_weak {s.f_weak:.3f}  utility {s.utility:.3f}  raw winrate {s.raw_winrate:.3f}  U_weak {s.u_weak:.3f}  "
          f"recovery {s.recovery}  judged {s.n}/{first.n}  errors {len(first.errors)}")  # fmt: skip


if __name__ == "__main__":
    main()
