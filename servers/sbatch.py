"""SLURM's command-line tools (sbatch, squeue, scontrol, scancel) behind a few typed calls.

Everything the workspace submits goes through `submit()`: a readable batch script written to a file (so a person
can see, and resubmit by hand, exactly what ran) and `sbatch --parsable`. Job states come from `squeue`, and for
jobs that have left the queue from `scontrol show job` (kept for `MinJobAge`, 300 s by default); no accounting
database (`sacct`) is needed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

# States in which a job holds (or waits for) resources; anything else has ended.
ACTIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING",
                    "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED"})  # fmt: skip


class SlurmError(RuntimeError):
    """SLURM is not here, refused a job, or answered something we cannot read."""


@dataclass(frozen=True)
class SlurmOptions:
    """What a job asks SLURM for. `extra` holds further `sbatch` arguments, passed on as they are."""

    partition: str | None = None
    account: str | None = None
    time: str | None = None  # SLURM's format: minutes, or [D-]HH:MM:SS
    gpus: int = 0
    cpus: int = 1
    mem: str | None = None  # memory per node (sbatch --mem, e.g. "64G"); None: the cluster's default
    extra: tuple[str, ...] = ()

    def directives(self) -> list[str]:
        # --export=ALL: the job sees this environment (API keys included) without it being written into the script.
        out = ["--nodes=1", "--ntasks=1", f"--cpus-per-task={self.cpus}", "--export=ALL"]
        if self.partition:
            out.append(f"--partition={self.partition}")
        if self.account:
            out.append(f"--account={self.account}")
        if self.time:
            out.append(f"--time={self.time}")
        if self.gpus:
            out.append(f"--gres=gpu:{self.gpus}")
        if self.mem:
            out.append(f"--mem={self.mem}")
        for arg in self.extra:
            if not arg.startswith("-") or "\n" in arg:
                raise SlurmError(f"--sbatch-arg {arg!r}: give one sbatch option per flag, e.g. --sbatch-arg=--qos=high")
            out.append(arg)
        return out


@dataclass(frozen=True)
class JobState:
    job_id: str
    state: str  # SLURM's state (PENDING, RUNNING, FAILED, …), or GONE when SLURM no longer knows the job
    node: str = ""
    reason: str = ""  # why it waits, or why it ended
    exit_code: str = ""  # "status:signal", for an ended job
    fields: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def describe(self) -> str:
        out = self.state
        if self.node and self.state not in ("PENDING", "GONE"):
            out += f" on {self.node}"
        if self.reason and self.reason not in ("None", "(null)"):
            out += f" ({self.reason})"
        if self.exit_code and self.exit_code != "0:0" and not self.active:
            out += f", exit {self.exit_code}"
        return out


def require() -> None:
    """Raise SlurmError with what to do if SLURM's client tools are missing."""
    missing = [t for t in ("sbatch", "squeue", "scontrol", "scancel") if shutil.which(t) is None]
    if missing:
        raise SlurmError(
            f"SLURM's {', '.join(missing)} not found: run this on a cluster's login node, or set up a one-node "
            "cluster here with `servers/slurm/local-cluster.sh` (Debian's slurm-wlm and munge)"
        )


def _run(args: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        require()
        raise
    except subprocess.TimeoutExpired as e:
        raise SlurmError(f"`{shlex.join(args)}` did not answer in {timeout:.0f} s: is slurmctld up?") from e


def render(name: str, command: list[str], options: SlurmOptions, *, log: Path, workdir: Path,
           env: dict[str, str], setup: Iterable[str] = (), errors: Path | None = None) -> str:  # fmt: skip
    """A batch script: #SBATCH directives, the environment the command needs, and the command (exec'd, so SLURM's
    signals reach it directly). Standard error goes to `log` too unless `errors` names its own file."""
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --output={log}"]
    if errors is not None:
        lines.append(f"#SBATCH --error={errors}")
    lines += [f"#SBATCH {d}" for d in options.directives()]
    lines += ["# Written by the Collaborative Decoding Workspace (servers/sbatch.py).", "set -euo pipefail",
              f"cd {shlex.quote(str(workdir))}"]  # fmt: skip
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    lines += list(setup)
    lines.append("exec " + shlex.join(command))
    return "\n".join(lines) + "\n"


def submit(script: Path, text: str) -> str:
    """Write the script and submit it; returns the job id."""
    require()
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(text)
    script.chmod(0o755)
    r = _run(["sbatch", "--parsable", str(script)])
    if r.returncode != 0:
        raise SlurmError(f"sbatch refused {script}: {(r.stderr or r.stdout).strip()}")
    job_id = r.stdout.strip().split(";")[0]  # --parsable: "id" or "id;cluster"
    if not job_id.isdigit():
        raise SlurmError(f"sbatch answered {r.stdout.strip()!r}, not a job id")
    return job_id


def _parse_scontrol(text: str) -> dict[str, str]:
    """`scontrol show job -o` prints one line of Key=Value pairs (values without spaces, except the last ones)."""
    out: dict[str, str] = {}
    for tok in text.strip().split():
        if "=" in tok:
            k, _, v = tok.partition("=")
            out[k] = v
    return out


def states(job_ids: Iterable[str]) -> dict[str, JobState]:
    """The current state of each job: from squeue while queued or running, else from scontrol, else GONE."""
    ids = [j for j in dict.fromkeys(job_ids) if j]
    if not ids:
        return {}
    require()
    out: dict[str, JobState] = {}
    r = _run(["squeue", "-h", "-o", "%i|%T|%N|%r"])
    if r.returncode != 0:
        raise SlurmError(f"squeue failed: {(r.stderr or r.stdout).strip()}")
    for line in r.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4 and parts[0] in ids:
            out[parts[0]] = JobState(parts[0], parts[1], parts[2], parts[3])
    for j in ids:
        if j in out:
            continue
        r = _run(["scontrol", "show", "job", "-o", j])
        f = _parse_scontrol(r.stdout) if r.returncode == 0 else {}
        if f.get("JobState"):
            node = f.get("NodeList", "")
            out[j] = JobState(j, f["JobState"], "" if node == "(null)" else node, f.get("Reason", ""),
                              f.get("ExitCode", ""), f)  # fmt: skip
        else:
            out[j] = JobState(j, "GONE", reason="SLURM no longer knows this job")
    return out


def cancel(job_ids: Iterable[str]) -> None:
    """scancel the given jobs (only these: never by name or user)."""
    ids = [j for j in dict.fromkeys(job_ids) if j]
    if not ids:
        return
    require()
    r = _run(["scancel", *ids])
    if r.returncode != 0 and "Invalid job id" not in r.stderr:
        raise SlurmError(f"scancel {' '.join(ids)} failed: {(r.stderr or r.stdout).strip()}")


def wait_ended(
    job_ids: Iterable[str],
    timeout: float | None = 120.0,
    poll: float = 1.0,
    on_state: Callable[[JobState], None] | None = None,
) -> dict[str, JobState]:
    """Wait until none of the jobs is active (queued, running or completing), or `timeout` seconds (None: no
    limit); returns their last states. `on_state` hears each job's state whenever it changes."""
    ids = list(job_ids)
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: dict[str, str] = {}
    while True:
        now = states(ids)
        for j, st in now.items():
            if on_state is not None and seen.get(j) != st.state:
                on_state(st)
            seen[j] = st.state
        if not any(s.active for s in now.values()) or (deadline is not None and time.monotonic() > deadline):
            return now
        time.sleep(poll)


def in_job() -> bool:
    """True inside a SLURM job (its environment says so)."""
    return bool(os.environ.get("SLURM_JOB_ID"))
