"""Run untrusted Python (a model's code and its tests) in a sandbox: `run_python(source, timeout_s=...)`.

Each run is a fresh bubblewrap (`bwrap`) sandbox:
- its own user, pid, network, IPC and UTS namespaces: no network at all (not even the host's 127.0.0.1), and
  when it ends every process in it ends (pid namespace, `--die-with-parent`, and its process group killed);
- a read-only view of the system's programs and libraries only (no /home, /root, project or keys), a fresh
  size-limited tmpfs as its working folder and /tmp, and nothing of it left on the host afterwards (the
  program comes in on stdin, so no file is written outside);
- resource limits: address space, CPU seconds, file size and process count, and a wall-clock timeout.

As root, each concurrent slot runs under its own unprivileged uid (60000 + slot) so the process limit holds
(root is exempt from RLIMIT_NPROC) and one run's fork flood cannot starve another's. As a normal user, bwrap
needs unprivileged user namespaces (Debian and Ubuntu allow them by default).

Statuses: `passed` (exit 0), `failed` (any other exit: an assertion, an exception, a limit hit), `timeout`,
`error` (the sandbox itself could not run the program: retry it, it says nothing about the code).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install bubblewrap`)"
SLOT_UID_BASE = 60000


class SandboxError(RuntimeError):
    """The sandbox cannot be used on this machine (no bwrap, no user namespaces)."""


@dataclass(frozen=True)
class Limits:
    """What one run may use."""

    memory_mb: int = 1024  # address space
    file_mb: int = 16  # largest file it may write
    tmpfs_mb: int = 64  # its working folder and /tmp, in memory
    processes: int = 32  # processes and threads of its uid


@dataclass(frozen=True)
class RunResult:
    status: str  # passed | failed | timeout | error
    returncode: int | None
    seconds: float
    output: str  # the tail of stdout and stderr

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def bwrap_path() -> str:
    """The bwrap executable, or SandboxError saying how to install it."""
    found = shutil.which("bwrap")
    if found is None:
        raise SandboxError(f"the code sandbox needs bubblewrap, which is not installed: {INSTALL_HINT}")
    return found


def _interpreter() -> tuple[str, list[str]]:
    """A Python for the sandbox and the host folders it needs, read-only. The system's own Python is preferred:
    HumanEval needs only the standard library, and this workspace's Python may live in a folder the sandbox's
    unprivileged uid cannot read (pyenv under /root)."""
    system = shutil.which("python3", path="/usr/bin:/bin:/usr/local/bin")
    exe = os.path.realpath(system or sys.executable)
    prefix = str(Path(exe).parent.parent)
    need = {"/usr", "/bin", "/lib", "/lib64", "/sbin", prefix}
    return exe, sorted(p for p in need if os.path.exists(p))


def _command(limits: Limits) -> list[str]:
    exe, folders = _interpreter()
    cmd = [bwrap_path(), "--die-with-parent", "--new-session", "--unshare-all", "--hostname", "sandbox",
           "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/sandbox",
           "--setenv", "PYTHONDONTWRITEBYTECODE", "1"]  # fmt: skip
    for f in folders:
        if os.path.islink(f):  # merged-/usr systems: /bin -> usr/bin
            cmd += ["--symlink", os.readlink(f), f]
        else:
            cmd += ["--ro-bind", f, f]
    size = str(limits.tmpfs_mb << 20)
    cmd += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/tmp", "--size", size, "--tmpfs",
            "/sandbox", "--remount-ro", "/", "--chdir", "/sandbox"]  # fmt: skip
    cmd += ["--", exe, "-I", "-S", "-B", "-c", _PRELUDE]
    return cmd


# The first thing the sandboxed Python writes: output that starts with it came from a program that ran, so a
# program printing "bwrap: ..." cannot pass itself off as a sandbox failure (which is retried, not counted).
STARTED = b"\x1ecdw-sandbox-started\n"
_PRELUDE = (
    f"import sys; sys.stdout.buffer.write({STARTED!r}); sys.stdout.flush(); "
    "exec(compile(sys.stdin.read(), '<stdin>', 'exec'))"
)


def _uid_tasks(uid: int) -> int:
    """How many processes a uid has now (RLIMIT_NPROC counts them all, not only this run's)."""
    n = 0
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and d.stat().st_uid == uid:
                n += 1
        except OSError:
            pass
    return n


def _kill_uid(uid: int) -> None:
    """Kill whatever a slot's uid still runs (belt and braces: the pid namespace should have done it)."""
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and d.stat().st_uid == uid:
                os.kill(int(d.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


class _Slots:
    """Concurrent runs, each with its own uid when running as root."""

    def __init__(self, n: int = 64):
        self.free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(n):
            self.free.put(i)


_SLOTS = _Slots()


def run_python(source: str, *, timeout_s: float = 10.0, limits: Limits | None = None) -> RunResult:
    """Run a Python program in a fresh sandbox; returns how it ended (never raises for the program's sake).

    Raises SandboxError only when this machine cannot sandbox at all (bwrap missing)."""
    limits = limits or Limits()
    cmd = _command(limits)
    slot = _SLOTS.free.get()
    root = os.geteuid() == 0
    uid = SLOT_UID_BASE + slot if root else os.geteuid()
    nproc = limits.processes + (0 if root else _uid_tasks(uid))

    def preexec() -> None:  # in the child, before exec: limits, then (as root) drop to the slot's uid
        cpu = int(timeout_s) + 2
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb << 20, limits.memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb << 20, limits.file_mb << 20))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if root:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    t0 = time.monotonic()
    proc = None
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                preexec_fn=preexec, start_new_session=True, cwd="/")  # fmt: skip
        out, timed_out, started = _communicate(proc, source.encode("utf-8", "replace"), timeout_s)
        if timed_out:
            _kill_group(proc)
            if root:
                _kill_uid(uid)
            out += _drain(proc)
            return RunResult("timeout", None, round(time.monotonic() - t0, 3), _tail(out))
        text = _tail(out)
        rc = proc.returncode
        if not started:  # the program never ran: bwrap (or the interpreter) failed
            return RunResult("error", rc, round(time.monotonic() - t0, 3), text or f"exit status {rc}, no output")
        return RunResult("passed" if rc == 0 else "failed", rc, round(time.monotonic() - t0, 3), text)
    except OSError as e:
        return RunResult("error", None, round(time.monotonic() - t0, 3), f"{type(e).__name__}: {e}")
    finally:
        if proc is not None:
            _kill_group(proc)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None and not pipe.closed:
                    pipe.close()
        if root:
            _kill_uid(uid)
        _SLOTS.free.put(slot)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


OUTPUT_KEPT = 2000  # bytes of a run's output kept (its tail); the rest is read and dropped as it comes


def _communicate(proc: subprocess.Popen, data: bytes, timeout_s: float) -> tuple[bytes, bool, bool]:
    """Feed the program, read its output until it exits or the time is up: (the output's tail without the start
    marker, timed out, whether the output began with the marker `STARTED`).

    Unlike `Popen.communicate`, which keeps everything in memory, only the last OUTPUT_KEPT bytes are kept: a
    program printing in an endless loop would otherwise fill the host's memory at the pipe's speed."""
    assert proc.stdin is not None and proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    out, head = bytearray(), bytearray()
    stdin, stdout = proc.stdin.fileno(), proc.stdout.fileno()
    os.set_blocking(stdin, False)
    view, sent = memoryview(data), 0
    with selectors.DefaultSelector() as sel:
        sel.register(stdout, selectors.EVENT_READ)
        if data:
            sel.register(stdin, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(out[-OUTPUT_KEPT:]), True, head.startswith(STARTED)
            for key, _ in sel.select(left):
                if key.fd == stdin:
                    try:
                        sent += os.write(stdin, view[sent : sent + 65536])
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:  # it stopped reading (bwrap failed, or the program exited)
                        sent = len(data)
                    if sent >= len(data):
                        sel.unregister(stdin)
                        proc.stdin.close()
                else:
                    chunk = os.read(stdout, 65536)
                    if not chunk:
                        sel.unregister(stdout)
                    if len(head) < len(STARTED):
                        take = len(STARTED) - len(head)
                        head += chunk[:take]
                        if head.startswith(STARTED):
                            chunk = chunk[take:]
                    out += chunk
                    if len(out) > 4 * OUTPUT_KEPT:
                        del out[:-OUTPUT_KEPT]
    if not proc.stdin.closed:
        proc.stdin.close()
    try:  # output closed: the program has ended, or closed it and runs on
        proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return bytes(out[-OUTPUT_KEPT:]), True, head.startswith(STARTED)
    return bytes(out[-OUTPUT_KEPT:]), False, head.startswith(STARTED)


def _drain(proc: subprocess.Popen, wait_s: float = 5.0) -> bytes:
    """After a kill: what output is left (bounded), and the process reaped."""
    out = bytearray()
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()
    if proc.stdout is not None and not proc.stdout.closed:
        deadline = time.monotonic() + wait_s
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while (left := deadline - time.monotonic()) > 0 and sel.select(left):
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                out += chunk
                if len(out) > 4 * OUTPUT_KEPT:
                    del out[:-OUTPUT_KEPT]
        proc.stdout.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(wait_s)
    return bytes(out[-OUTPUT_KEPT:])


def _tail(out: bytes | None, n: int = OUTPUT_KEPT) -> str:
    return (out or b"")[-n:].decode("utf-8", "replace")


class Pool:
    """A bounded pool of sandbox runs for async code: tests run beside decoding without stalling it."""

    def __init__(self, workers: int | None = None, timeout_s: float = 10.0, limits: Limits | None = None):
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self.timeout_s, self.limits = timeout_s, limits
        self._sem = asyncio.Semaphore(self.workers)

    async def run(self, source: str) -> RunResult:
        async with self._sem:
            return await asyncio.to_thread(run_python, source, timeout_s=self.timeout_s, limits=self.limits)


def check_available() -> None:
    """Raise SandboxError (with what to do) unless a trivial program runs and passes in the sandbox."""
    r = run_python("print('ok')", timeout_s=20)
    if not r.passed:
        raise SandboxError(f"the code sandbox does not work here ({r.status}): {r.output.strip()[-500:]}")
