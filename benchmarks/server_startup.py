"""Start-up time and memory of each server of a preset, measured by starting them fresh.

    python benchmarks/server_startup.py --preset cpu     # or tiny

Stops the preset's servers if running, starts them with the launcher (servers of one preset start in
parallel, each pinned to its core), and prints per server: seconds to healthy-and-generating, and resident
memory of its whole process tree (API server, engine core, worker) after one generation. Leaves the servers
running unless --stop is given.
"""

from __future__ import annotations

import argparse
import time

import psutil

from servers import control


def tree_rss_gib(pid: int) -> float:
    p = psutil.Process(pid)
    procs = [p, *p.children(recursive=True)]
    return sum(x.memory_info().rss for x in procs if x.is_running()) / 2**30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--stop", action="store_true", help="stop the servers afterwards")
    args = ap.parse_args()

    control.stop(args.preset)
    ready: dict[str, float] = {}
    t0 = time.monotonic()
    recs = control.start(
        args.preset, on_event=lambda e: ready.__setitem__(e.role, e.elapsed) if e.state == "healthy" else None
    )
    total = time.monotonic() - t0
    print(f"preset {args.preset}: all servers healthy and generating in {total:.0f} s (started in parallel)")
    print(f"{'server':<14}{'model':<32}{'ready (s)':>10}{'RSS (GiB)':>11}")
    for r in recs:
        print(f"{'+'.join(r.serves):<14}{r.model:<32}{ready.get(r.role, 0):>10.0f}{tree_rss_gib(r.pid):>11.2f}")
    print(f"machine: {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB")
    if args.stop:
        control.stop(args.preset)


if __name__ == "__main__":
    main()
