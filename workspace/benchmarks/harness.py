"""Run a function's unit tests on an untrusted answer in the sandbox, counting a pass only when it is proven.

A pass is proven, not inferred from an exit status: the answer's module runs in a process of its own, the tests run
in another (the checker, `harness_inside.py`), and the checker reports a per-run secret, on a file descriptor the
answer's process never holds, only after `check(candidate)` returned. The secret is made here for each run and
handed to the checker on another fd that it reads only then. Results cross from the answer's process as plain data,
so an object whose `__eq__` says yes to everything cannot pass a comparison. `SystemExit`, `os._exit`, `atexit`
hooks, excepthooks, threads that end the process, exits while the module loads, and killing the checker all leave
the report empty: `failed`. See `workspace/sandbox.py` for what the sandbox itself allows.

- `TestJob(answer, tests, entry_point)`: the answer's module (its code, run only in its own process), the tests'
  module (problem text: defines `check(candidate)`), and the function's name.
- `run_job(job, timeout_s=...)` -> `sandbox.RunResult` with status passed | failed | timeout | error.
- `Pool`: the same from async code, a bounded number at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .. import sandbox


@dataclass(frozen=True)
class TestJob:
    answer: str  # the answer's module: the only code of the answer that runs, in its own process
    tests: str  # the tests' module: defines check(candidate); runs in the checker
    entry_point: str  # the function check is given


@cache
def _inside() -> str:
    return (Path(__file__).parent / "harness_inside.py").read_text(encoding="utf-8")


def run_job(job: TestJob, *, timeout_s: float = 10.0, limits: sandbox.Limits | None = None) -> sandbox.RunResult:
    """Run the tests on the answer in a fresh sandbox; `passed` only when the checker reported this run's secret."""
    secret = secrets.token_hex(16)
    secret_r, secret_w = os.pipe()
    report_r, report_w = os.pipe()
    try:
        os.write(secret_w, secret.encode())
        os.close(secret_w)
        secret_w = -1
        data = json.dumps({"answer": job.answer, "tests": job.tests, "entry_point": job.entry_point}).encode()
        r = sandbox.run(_inside(), ["check", str(secret_r), str(report_w)], input=data, timeout_s=timeout_s,
                        limits=limits, pass_fds=[secret_r, report_w])  # fmt: skip
        os.close(report_w)
        report_w = -1
        report = _read_all(report_r)
    finally:
        for fd in (secret_w, secret_r, report_w, report_r):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
    if r.status in ("timeout", "error"):
        return r
    proven = _reported(report) == secret
    return sandbox.RunResult("passed" if proven else "failed", r.returncode, r.seconds, r.output)


def _read_all(fd: int, limit: int = 4096) -> bytes:
    """What the checker reported (the sandbox has ended, so the pipe holds all of it, or more than any report)."""
    os.set_blocking(fd, False)
    out = b""
    while len(out) <= limit:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            break
        if not chunk:
            break
        out += chunk
    return out


def _reported(report: bytes) -> str | None:
    try:
        msg = json.loads(report)
    except ValueError:
        return None
    return msg.get("secret") if isinstance(msg, dict) else None


class Pool(sandbox.Pool):
    """A bounded pool of test runs for async code: tests run beside decoding without stalling it."""

    async def run(self, job: TestJob) -> sandbox.RunResult:  # type: ignore[override]
        return await self.submit(run_job, job, timeout_s=self.timeout_s, limits=self.limits)
