"""The process boundary for untrusted code: Python run in a fresh bubblewrap sandbox that sees nothing of the host.

Untrusted code (benchmark answers, and every policy that is not a built-in family) runs only behind this boundary.
The public API, for one-shot programs and for long-lived workers alike:

- `run(source, args=(), input=b"", timeout_s=10, limits=Limits(), binds=(), pass_fds=())` -> `RunResult`: run a
  Python program to its end (or its wall-clock limit) and keep the tail of its stdout+stderr. `run_python(source)`
  is the same with defaults; `Pool` runs them from async code, a bounded number at a time.
- `start(source, args=(), limits=..., binds=(), pass_fds=(), stderr=STDOUT)` -> `Process`: a sandboxed Python that
  stays up (a policy worker): talk to it over `.stdin` / `.stdout` (binary pipes, or the extra fds in `pass_fds`),
  `.wait_started(timeout_s)` once, `.kill()` (or use it as a context manager) to end it and everything it started.
  `limits.cpu_s=None` means no CPU-time limit (a worker waits most of its life).

`source` is the program's text (it runs as `__main__`, with `sys.argv = [path, *args]`); `binds` are host paths the
program may read (mounted read-only at the same path, or `(host_path, path_inside)`: a folder of modules to import,
say, with `sys.path` set by the program itself); `pass_fds` are host file descriptors the program inherits under
the same numbers (pipes the host holds the other end of). Nothing else of the host is there.

What a sandboxed process sees and may use:
- its own user, pid, network, IPC, UTS and cgroup namespaces, and no new user namespace (`--disable-userns`): no
  network at all (not even the host's 127.0.0.1); the program is the sandbox's pid 1, and when it ends every process
  in it ends (pid namespace, `--die-with-parent`, its process group killed, and its cgroup emptied);
- no variable of the evaluator: bwrap itself starts with an empty environment and the program gets PATH, HOME and
  PYTHONDONTWRITEBYTECODE only, so no process in the sandbox sees one (`/proc/1/environ` included);
- a read-only view of the system's programs and libraries (no /home, /root, project or keys) plus `binds`, a
  minimal read-only /dev (null, zero, full, random, urandom, tty) with a small /dev/shm, and a fresh size-limited
  tmpfs as its working folder and /tmp, gone afterwards;
- memory: the whole process tree's memory — anonymous, tmpfs and memfd pages alike — capped at `memory_mb` by a
  memory cgroup of its own (`memory.max` on cgroup v2, `memory.limit_in_bytes` on v1) where this machine lets the
  evaluator make one (as root, with the memory controller available); `memory_backend()` says which. Everywhere,
  also: address space per process (`RLIMIT_AS`), file size (`RLIMIT_FSIZE`, which bounds each tmpfs or memfd
  file), open files, CPU seconds and process count. Without a cgroup the tree's total is bounded only by those
  (processes x address space + open files x file size + the tmpfs sizes); the README says which one a machine uses.

As root, each concurrent slot runs under its own unprivileged uid (60000 + slot) so the process limit holds (root is
exempt from RLIMIT_NPROC) and one run's fork flood cannot starve another's. As a normal user, bwrap needs
unprivileged user namespaces (Debian and Ubuntu allow them by default).

`RunResult.status`: `passed` (exit 0), `failed` (any other exit: an exception, a limit hit), `timeout`, `error` (the
sandbox itself could not start the program: retry it, it says nothing about the code). An exit status proves
nothing about untrusted code that chose it: callers that must know a program *succeeded* (a benchmark's tests) have
it report through a channel of their own (see `workspace/benchmarks/harness.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install bubblewrap`)"
SLOT_UID_BASE = 60000
MAIN = "/run/cdw/main.py"  # where the program's source is, inside the sandbox
CGROUP_NAME = "cdw-sandbox"  # the evaluator's cgroup of sandbox cgroups, one per run, under the memory hierarchy


# A host path the sandbox may read: at the same path inside, or (host path, path inside).
Bind = str | Path | tuple[str | Path, str | Path]


class SandboxError(RuntimeError):
    """The sandbox cannot be used on this machine (no bwrap, no user namespaces)."""


@dataclass(frozen=True)
class Limits:
    """What one sandbox (its whole process tree) may use."""

    memory_mb: int = 1024  # the tree's memory (cgroup) and each process's address space
    file_mb: int = 16  # largest file it may write (tmpfs and memfd files included)
    tmpfs_mb: int = 64  # its working folder and /tmp, in memory
    shm_mb: int = 16  # /dev/shm
    processes: int = 32  # processes and threads of its uid
    open_files: int = 64  # per process
    cpu_s: int | None = None  # CPU seconds per process; None: none (`run` gives timeout_s + 2)


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
    sandboxed programs need only the standard library, and this workspace's Python may live in a folder the
    sandbox's unprivileged uid cannot read (pyenv under /root)."""
    system = shutil.which("python3", path="/usr/bin:/bin:/usr/local/bin")
    exe = os.path.realpath(system or sys.executable)
    prefix = str(Path(exe).parent.parent)
    need = {"/usr", "/bin", "/lib", "/lib64", "/sbin", prefix}
    return exe, sorted(p for p in need if os.path.exists(p))


def python() -> str:
    """The interpreter sandboxed programs run with (a path inside the sandbox: the host's, bound read-only)."""
    return _interpreter()[0]


# The first thing the sandboxed Python writes: output that starts with it came from a program that ran, so a
# program printing "bwrap: ..." cannot pass itself off as a sandbox failure (which is retried, not counted).
STARTED = b"\x1ecdw-sandbox-started\n"
_PRELUDE = (
    f"import sys; sys.stdout.buffer.write({STARTED!r}); sys.stdout.flush(); sys.argv = sys.argv[1:]; "
    "exec(compile(open(sys.argv[0], encoding='utf-8').read(), sys.argv[0], 'exec'))"
)


def _command(limits: Limits, source_fd: int, args: Sequence[str], binds: Sequence[str | tuple[str, str]]) -> list[str]:
    exe, folders = _interpreter()
    cmd = [bwrap_path(), "--die-with-parent", "--new-session", "--unshare-all", "--unshare-user", "--disable-userns",
           "--hostname", "sandbox", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/sandbox",
           "--setenv", "PYTHONDONTWRITEBYTECODE", "1"]  # fmt: skip
    for f in folders:
        if os.path.islink(f):  # merged-/usr systems: /bin -> usr/bin
            cmd += ["--symlink", os.readlink(f), f]
        else:
            cmd += ["--ro-bind", f, f]
    size, shm = str(limits.tmpfs_mb << 20), str(limits.shm_mb << 20)
    cmd += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", shm, "--tmpfs", "/dev/shm",
            "--remount-ro", "/dev", "--size", size, "--tmpfs", "/tmp", "--size", size, "--tmpfs", "/sandbox",
            "--ro-bind-data", str(source_fd), MAIN]  # fmt: skip
    for b in binds:  # after the tmpfs folders, so that a bind under /tmp is not hidden by the sandbox's own /tmp
        src, dest = (b, b) if isinstance(b, str) else b
        cmd += ["--ro-bind", os.path.realpath(src), dest if dest != src else os.path.realpath(src)]
    cmd += ["--remount-ro", "/", "--chdir", "/sandbox"]
    # --as-pid-1: the program is the sandbox's init, so no bwrap process inside holds the fds passed in (a program's
    # children cannot reach them through /proc/1/fd), and /proc/1/environ is the program's own, cleared environment.
    cmd += ["--as-pid-1", "--", exe, "-I", "-S", "-B", "-c", _PRELUDE, MAIN, *args]
    return cmd


# Only what bwrap needs: its own environment is what the sandbox's init (pid 1) shows in /proc/1/environ.
_BWRAP_ENV = {"PATH": "/usr/bin:/bin"}


# ---------------------------------------------------------------- memory cgroups


@dataclass(frozen=True)
class _Hierarchy:
    version: int  # 1 or 2
    base: Path  # the evaluator's CGROUP_NAME folder


def _mounts() -> list[tuple[str, str, str]]:
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    return [(f[1], f[2], f[3]) for f in (line.split() for line in lines) if len(f) >= 4]


@cache
def _hierarchy() -> _Hierarchy | None:
    """The memory cgroup hierarchy the sandbox's cgroups go in; None when this machine gives the evaluator none
    (not root, no memory controller, cgroups read-only). Found once per process."""
    if os.geteuid() != 0:
        return None
    for mount, fstype, options in _mounts():
        try:
            if fstype == "cgroup2" and "memory" in (Path(mount) / "cgroup.controllers").read_text().split():
                with contextlib.suppress(OSError):  # the root cgroup may enable it for its children itself
                    (Path(mount) / "cgroup.subtree_control").write_text("+memory")
                base = Path(mount) / CGROUP_NAME
                base.mkdir(exist_ok=True)
                (base / "cgroup.subtree_control").write_text("+memory")
                if "memory" in (base / "cgroup.subtree_control").read_text().split():
                    return _Hierarchy(2, base)
            elif fstype == "cgroup" and "memory" in options.split(","):
                base = Path(mount) / CGROUP_NAME
                base.mkdir(exist_ok=True)
                if (base / "memory.limit_in_bytes").exists():
                    return _Hierarchy(1, base)
        except OSError:
            continue
    return None


def memory_backend() -> str:
    """How the sandbox caps a process tree's memory here: `cgroup v2 memory.max`, `cgroup v1 memory.limit_in_bytes`,
    or `rlimits` (per process only: no cgroup available to this evaluator)."""
    h = _hierarchy()
    if h is None:
        return "rlimits"
    return "cgroup v2 memory.max" if h.version == 2 else "cgroup v1 memory.limit_in_bytes"


class _Cgroup:
    """One run's memory cgroup: made before the run, joined by its first process before exec, emptied and removed."""

    def __init__(self, h: _Hierarchy, name: str, memory_mb: int):
        self.h, self.path = h, h.base / name
        self.path.mkdir(exist_ok=True)
        limit = str(memory_mb << 20)
        if h.version == 2:
            (self.path / "memory.max").write_text(limit)
            with contextlib.suppress(OSError):  # no swap accounting: nothing to cap
                (self.path / "memory.swap.max").write_text("0")
        else:
            (self.path / "memory.limit_in_bytes").write_text(limit)
            with contextlib.suppress(OSError):
                (self.path / "memory.memsw.limit_in_bytes").write_text(limit)
        self.procs = str(self.path / "cgroup.procs")

    def join(self) -> None:
        """In the child before exec: move itself (and so everything it starts) into the cgroup."""
        fd = os.open(self.procs, os.O_WRONLY)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)

    def peak_bytes(self) -> int | None:
        name = "memory.peak" if self.h.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.path / name).read_text())
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        """Kill whatever is left in it and remove it (a cgroup with processes cannot be removed)."""
        for _ in range(100):
            try:
                pids = [int(x) for x in Path(self.procs).read_text().split()]
            except OSError:
                return
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                self.path.rmdir()
                return
            time.sleep(0.02)


# ---------------------------------------------------------------- slots and processes


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


SLOT_LOCKS = Path("/run/cdw-sandbox-slots")  # as root: a lock file per slot, held while a sandbox uses its uid


class _Slots:
    """Concurrent sandboxes, each with its own uid when running as root. A slot is this machine's, not only this
    process's: every evaluator (a `cdw eval`, the MCP server, a test run) takes a slot's lock file before using its
    uid, so one evaluator's clean-up never kills another's sandbox and a uid's process limit is one sandbox's."""

    def __init__(self, n: int = 64):
        self.n = n
        self.free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(n):
            self.free.put(i)
        self.locks: dict[int, int] = {}

    def get(self) -> int:
        if os.geteuid() != 0:
            return self.free.get()
        while True:
            tried = [self.free.get()]
            while True:
                slot = tried[-1]
                if self._lock(slot):
                    for other in tried[:-1]:
                        self.free.put(other)
                    return slot
                if len(tried) == self.n:
                    break
                tried.append(self.free.get())  # blocks while this process's other slots are all in use
            for other in tried:
                self.free.put(other)
            time.sleep(0.05)  # every slot is another evaluator's now

    def _lock(self, slot: int) -> bool:
        SLOT_LOCKS.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(SLOT_LOCKS / f"{slot}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self.locks[slot] = fd
        return True

    def put(self, slot: int) -> None:
        fd = self.locks.pop(slot, None)
        if fd is not None:
            os.close(fd)  # releases the lock
        self.free.put(slot)


_SLOTS = _Slots()


class Process:
    """A running sandbox (see `start`). Its `stdin` and `stdout` are the program's (binary, unbuffered pipes; stdout
    carries stderr too unless `start` was told otherwise). `kill()` ends it and everything it started, and frees its
    slot; call it (or use the object as a context manager) even after the program exited."""

    def __init__(self, source: str, args: Sequence[str], limits: Limits, binds: Sequence[str],
                 pass_fds: Sequence[int], stderr: int | None):  # fmt: skip
        self.limits = limits
        self.slot = _SLOTS.get()
        root = os.geteuid() == 0
        self.uid = SLOT_UID_BASE + self.slot if root else os.geteuid()
        self.root, self.proc, self.cgroup, self._closed = root, None, None, False
        self.t0 = time.monotonic()
        try:
            h = _hierarchy()
            if h is not None:
                self.cgroup = _Cgroup(h, f"run-{os.getpid()}-{self.slot}", limits.memory_mb)
            src = os.memfd_create("cdw-sandbox-source")
            try:
                os.write(src, source.encode("utf-8", "replace"))
                os.lseek(src, 0, os.SEEK_SET)
                cmd = _command(limits, src, args, binds)
                self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                             pass_fds=(src, *pass_fds), preexec_fn=self._preexec(),
                                             start_new_session=True, cwd="/", env=_BWRAP_ENV, bufsize=0)  # fmt: skip
            finally:
                os.close(src)
        except BaseException:
            self.kill()
            raise
        self.stdin, self.stdout, self.stderr = self.proc.stdin, self.proc.stdout, self.proc.stderr
        self.pid = self.proc.pid

    def _preexec(self):
        limits, uid, root, cgroup = self.limits, self.uid, self.root, self.cgroup
        nproc = limits.processes + (0 if root else _uid_tasks(uid))
        mem, fsize = limits.memory_mb << 20, limits.file_mb << 20

        def preexec() -> None:  # in the child, before exec: cgroup and limits, then (as root) drop to the slot's uid
            if cgroup is not None:
                cgroup.join()
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            if limits.cpu_s is not None:
                resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s))
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
            resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if root:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)

        return preexec

    def wait_started(self, timeout_s: float) -> bool:
        """Read the start marker from stdout: True once the program runs, False when the sandbox failed to start it
        (or took longer than `timeout_s`). For workers that speak over stdout; `run` does this itself."""
        assert self.stdout is not None
        got = b""
        deadline = time.monotonic() + timeout_s
        fd = self.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while len(got) < len(STARTED) and (left := deadline - time.monotonic()) > 0:
                if not sel.select(left):
                    break
                chunk = os.read(fd, len(STARTED) - len(got))
                if not chunk:
                    break
                got += chunk
        return got == STARTED

    def peak_memory_bytes(self) -> int | None:
        """The tree's peak memory so far, from its cgroup; None without one."""
        return self.cgroup.peak_bytes() if self.cgroup is not None else None

    def kill(self) -> None:
        """End the sandbox and every process in it; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.proc is not None:
                _kill_group(self.proc)
            if self.root:
                _kill_uid(self.uid)
            if self.cgroup is not None:
                self.cgroup.remove()
            if self.proc is not None:
                for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                    if pipe is not None and not pipe.closed:
                        with contextlib.suppress(OSError):
                            pipe.close()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(5)
        finally:
            _SLOTS.put(self.slot)

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def start(source: str, args: Sequence[str] = (), *, limits: Limits | None = None, binds: Sequence[Bind] = (),
          pass_fds: Sequence[int] = (), stderr: int | None = subprocess.STDOUT) -> Process:  # fmt: skip
    """Start a Python program in a fresh sandbox and return it running (see the module docstring).

    Raises SandboxError when this machine cannot sandbox at all (bwrap missing), OSError when it cannot start."""
    return Process(source, list(args), limits or Limits(), _binds(binds), list(pass_fds), stderr)


def _binds(binds: Sequence[Bind]) -> list[str | tuple[str, str]]:
    return [str(b) if isinstance(b, str | Path) else (str(b[0]), str(b[1])) for b in binds]


def run(source: str, args: Sequence[str] = (), *, input: bytes = b"", timeout_s: float = 10.0,
        limits: Limits | None = None, binds: Sequence[Bind] = (),
        pass_fds: Sequence[int] = ()) -> RunResult:  # fmt: skip
    """Run a Python program in a fresh sandbox to its end; returns how it ended (never raises for the program's
    sake). `input` is its stdin. Raises SandboxError only when this machine cannot sandbox at all (bwrap missing)."""
    limits = limits or Limits()
    if limits.cpu_s is None:
        limits = replace(limits, cpu_s=int(timeout_s) + 2)
    t0 = time.monotonic()
    try:
        p = start(source, args, limits=limits, binds=binds, pass_fds=pass_fds)
    except OSError as e:
        return RunResult("error", None, round(time.monotonic() - t0, 3), f"{type(e).__name__}: {e}")
    with p:
        try:
            out, timed_out, started = _communicate(p.proc, input, timeout_s)
            if timed_out:
                _kill_group(p.proc)
                out += _drain(p.proc)
                return RunResult("timeout", None, round(time.monotonic() - t0, 3), _tail(out))
            text = _tail(out)
            rc = p.proc.returncode
            if not started:  # the program never ran: bwrap (or the interpreter) failed
                return RunResult("error", rc, round(time.monotonic() - t0, 3), text or f"exit status {rc}, no output")
            return RunResult("passed" if rc == 0 else "failed", rc, round(time.monotonic() - t0, 3), text)
        except OSError as e:
            return RunResult("error", None, round(time.monotonic() - t0, 3), f"{type(e).__name__}: {e}")


def run_python(source: str, *, timeout_s: float = 10.0, limits: Limits | None = None) -> RunResult:
    """`run` with no arguments, input, binds or fds: a self-contained program."""
    return run(source, timeout_s=timeout_s, limits=limits)


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

    async def submit(self, fn, *args, **kwargs):
        """Call a blocking `fn` (one that runs a sandbox) in a thread, when one of the pool's workers is free."""
        async with self._sem:
            return await asyncio.to_thread(fn, *args, **kwargs)

    async def run(self, source: str) -> RunResult:
        return await self.submit(run_python, source, timeout_s=self.timeout_s, limits=self.limits)


def check_available() -> None:
    """Raise SandboxError (with what to do) unless a trivial program runs and passes in the sandbox."""
    r = run_python("print('ok')", timeout_s=20)
    if not r.passed:
        raise SandboxError(f"the code sandbox does not work here ({r.status}): {r.output.strip()[-500:]}")
