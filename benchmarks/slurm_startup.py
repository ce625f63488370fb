"""What running a server as a SLURM job costs: start-to-healthy of the same servers, local and as jobs, side by side.

    servers/slurm/local-cluster.sh                              # a one-node cluster here (or run on a login node)
    python benchmarks/slurm_startup.py --preset tiny --roles weak --rounds 2

Alternates, round by round: the launcher starting the servers on this machine (`cdw serve`), then the same
servers as SLURM jobs (`cdw serve --slurm`), each time from nothing (stopped in between), in a private CDW_HOME
so no server of yours is touched. Per way: seconds from the call to every server healthy and generating; for jobs
also the part spent queued. Prints the median of each and their ratio (jobs / local), measured in one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import psutil


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--roles", default=None, help="comma-separated subset of weak,strong,judge")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--partition", default=None)
    args = ap.parse_args()

    home = tempfile.mkdtemp(prefix="cdw-slurm-bench-")
    from servers.settings import paths

    os.environ.setdefault("CDW_MODELS_DIR", str(paths().models))  # the models you fetched
    os.environ["CDW_HOME"] = home

    from servers import control
    from servers.sbatch import SlurmOptions

    roles = args.roles.split(",") if args.roles else None
    local, jobs, queued = [], [], []
    for i in range(args.rounds):
        t0 = time.monotonic()
        control.start(args.preset, roles, timeout=900)
        local.append(time.monotonic() - t0)
        control.stop(args.preset)

        waits: list[float] = []

        def on_event(e, waits=waits):
            if e.state == "healthy" and "queued" in e.detail:
                waits.append(float(e.detail.split(": ")[1].split(" s queued")[0]))

        t0 = time.monotonic()
        control.start(args.preset, roles, slurm=True, options=SlurmOptions(partition=args.partition, time="30"),
                      timeout=900, on_event=on_event)  # fmt: skip
        jobs.append(time.monotonic() - t0)
        queued.append(max(waits, default=0.0))
        control.stop(args.preset)
        print(f"round {i + 1}: local {local[-1]:.0f} s, as SLURM jobs {jobs[-1]:.0f} s ({queued[-1]:.0f} s queued)")

    lm, jm, qm = statistics.median(local), statistics.median(jobs), statistics.median(queued)
    print(f"preset {args.preset}, servers {args.roles or 'all'}: start to healthy (median of {args.rounds} rounds)")
    print(f"  local (cdw serve):          {lm:6.0f} s")
    print(f"  SLURM jobs (cdw serve --slurm): {jm:6.0f} s, of which queued {qm:.0f} s")
    print(f"  ratio jobs / local:         {jm / lm:6.2f}")
    print(f"machine: {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB")


if __name__ == "__main__":
    main()
