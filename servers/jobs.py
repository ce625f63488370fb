"""The client side as SLURM jobs: `cdw eval|sweep --slurm` and `cdw agents run --slurm`.

A job runs the same command in the same checkout and folder, with the same CDW_* settings, and finds the servers
as any command does (the runtime file `cdw serve --slurm` wrote, or the URLs given). Records and findings are
written to the shared checkout; their writers lock with `flock` and publish with hard links and atomic renames,
so the filesystem every node shares must support all three (NFSv4, Lustre and GPFS do; NFSv3 without a lock
manager does not).
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from servers import sbatch
from servers.sbatch import JobState, SlurmOptions
from servers.settings import job_environment, paths


@dataclass(frozen=True)
class SubmittedJob:
    job_id: str
    name: str
    script: Path
    log: Path  # the command's standard output
    errors: Path  # its standard error (progress bars, warnings)


def submit(
    name: str, command: list[str], options: SlurmOptions, workdir: Path | None = None, log: Path | None = None
) -> SubmittedJob:
    """Submit `command` (an argv) as a job named `name`; its script and logs go to `<CDW_HOME>/slurm/` (or both
    output streams to `log`)."""
    stem = f"{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"
    folder = paths().slurm.resolve()
    script = folder / f"{stem}.sbatch"
    log, errors = (log, log) if log else (folder / f"{stem}-%j.log", folder / f"{stem}-%j.err")
    env = job_environment() | {"COLUMNS": "160"}  # tables in the job's output are not cut to 80 columns
    text = sbatch.render(name, command, options, log=log, errors=errors, workdir=workdir or Path.cwd(),
                         env=env)  # fmt: skip
    job_id = sbatch.submit(script, text)
    return SubmittedJob(job_id, name, script, *(Path(str(p).replace("%j", job_id)) for p in (log, errors)))


def submit_cli(name: str, args: list[str], options: SlurmOptions) -> SubmittedJob:
    """Submit a `cdw` command line (without `cdw`) as a job, run by this Python in this folder."""
    return submit(name, [sys.executable, "-m", "workspace.cli", *args], options)


def exit_status(state: JobState) -> int:
    """The job's exit status from SLURM's "status:signal" (1 if it ended without one, e.g. cancelled)."""
    code, _, sig = state.exit_code.partition(":")
    if state.state == "COMPLETED":
        return 0
    if code.isdigit() and int(code) > 0:
        return int(code)
    return 128 + int(sig) if sig.isdigit() and int(sig) > 0 else 1
