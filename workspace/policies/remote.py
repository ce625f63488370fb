"""Policies from files, run out of process: a sandboxed worker per decode, one round trip per draft.

Every policy that is not a built-in family (a `.py` file, an agent's `write_policy`, a `module:Class`) is loaded
into `worker.py` inside a bubblewrap sandbox: no network, no environment, no view of the project, the keys, the
records or the cache; a bare interpreter that can import the standard library and the policy protocol only, and
a read-only copy of the policy's file taken when it was loaded. Nothing the file does can reach the evaluator:
the evaluator never imports it (even its identity, `source_hash()`, is computed in the worker).

`WorkerPolicy` is the evaluator's handle. The engine asks it for a whole draft at once (`scan`); each decode
(`fresh()`) has its state on one worker (a decode id in every message); a few workers (`MAX_WORKERS`) serve all
the decodes of an evaluation, each answering its requests in the order they were sent (pipelined: a request is
written as soon as it is made). A policy that crashes, hangs past `MESSAGE_TIMEOUT_S`, floods (a reply over
`MAX_REPLY_BYTES`) or answers nonsense (replies are schema-checked) is a `PolicyWorkerError` on the decode whose
message it was answering; that worker is killed, and the other decodes it held move to another worker, which
replays their messages so far (a policy is a deterministic function of what it was sent).
Called directly (`decide`, `keep_weak`, as a notebook's unit check does), a handle asks its pool's own direct
worker, a token at a time.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import functools
import itertools
import os
import selectors
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import Literal

import msgspec

from .. import sandbox
from .protocol import Action, Decision, Policy, SpanRule, TokenSignal

MESSAGE_TIMEOUT_S = 10.0  # the longest a policy may take over one message (a draft) before its decode fails
LOAD_TIMEOUT_S = 60.0  # starting the sandbox and loading the file
MAX_REPLY_BYTES = 1 << 20
MAX_WORKERS = min(4, os.cpu_count() or 1)  # per loaded policy
# A worker waits most of its life (no CPU-time limit); its prints are capped by the file size limit.
LIMITS = sandbox.Limits(memory_mb=1024, file_mb=1, tmpfs_mb=16, processes=8, cpu_s=None)
_HEADER = struct.Struct(">I")
_IDS = itertools.count(1)
_ENCODE = msgspec.json.Encoder().encode
# The policy API the sandbox can import: the protocol's modules, copied (never the rest of the project).
_API_FILES = ("protocol.py", "registry.py", "identity.py", "structure.py", "worker.py")
_API_INIT = (
    '"""The policy API inside the policy sandbox."""\n\n'
    "from .protocol import Action, Decision, Policy, SpanRule, TokenSignal, as_decision, parse_span\n"
    "from .structure import Where\n"
)
_BOOT = "import sys; sys.path.insert(0, '/cdw/api'); from workspace.policies.worker import main; main()"


class PolicyWorkerError(RuntimeError):
    """A sandboxed policy failed: it raised, crashed, hung, flooded or answered nonsense (or no sandbox)."""


class _Reply(msgspec.Struct, forbid_unknown_fields=True):
    """What a worker may answer; anything else is nonsense."""

    error: str | None = None
    kind: Literal["missing", "class", "arguments"] | None = None
    identity: str | None = None
    top_k: int | None = None
    prompt_level: bool = False
    span: tuple[str, int, int] | None = None
    attrs: dict[str, bool | int | float | str | None] = {}
    i: int | None = None
    a: Literal["defer", "peek"] | None = None
    s: int | float | None = None
    keep: bool | None = None
    q: int | None = None  # the number of the request answered (pipelined requests are answered in order)


_DECODE = msgspec.json.Decoder(_Reply).decode


def _reply(body: bytes) -> _Reply:
    try:
        return _DECODE(body)
    except msgspec.MsgspecError as e:
        raise PolicyWorkerError(f"the policy worker answered nonsense ({e}): {body[:200]!r}") from None


def _span(value: tuple[str, int, int]) -> SpanRule:
    try:
        return SpanRule(*value)
    except (TypeError, ValueError) as e:
        raise PolicyWorkerError(f"the policy worker answered nonsense: span {value!r}: {e}") from None


# ---------------------------------------------------------------- the sandbox


@functools.cache
def _api_dir() -> Path:
    """A read-only package holding the policy API only, made once per process."""
    root = Path(tempfile.mkdtemp(prefix="cdw-policy-api-"))
    atexit.register(shutil.rmtree, root, True)
    pkg = root / "workspace" / "policies"
    pkg.mkdir(parents=True)
    (root / "workspace" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text(_API_INIT)
    for name in _API_FILES:
        shutil.copyfile(Path(__file__).with_name(name), pkg / name)
    _readable(root)
    return root


def _readable(root: Path) -> None:
    """World-readable: the sandbox runs as an unprivileged user."""
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def _launch(policy_dir: Path) -> tuple[sandbox.Process, int]:
    """Start a policy worker in a fresh sandbox (`workspace/sandbox.py`), talking on its stdin and stdout; its
    stderr goes to an unnamed temp file (the returned descriptor), read back for error messages."""
    binds = [(_api_dir(), "/cdw/api"), (policy_dir, "/cdw/policy")]
    with tempfile.TemporaryFile() as err:
        try:
            proc = sandbox.start(_BOOT, limits=LIMITS, binds=binds, stderr=err.fileno())
        except sandbox.SandboxError as e:
            raise PolicyWorkerError(f"policies from files run in a sandbox: {e}") from None
        except OSError as e:
            raise PolicyWorkerError(f"the policy sandbox did not start: {e}") from None
        return proc, os.dup(err.fileno())


# ---------------------------------------------------------------- one worker process


class _Dead(Exception):
    """The worker was killed before it answered a decode's request: the decode moves to another one."""


class _Proc:
    """One worker process and its framed channel. Requests are pipelined: each is written when it is made, the
    worker answers them in order (each reply echoes its request's number `q`), so a worker woken once answers all
    the requests waiting for it (one request in flight at a time cost a wake-up of each side per draft, which on a
    busy machine is most of the sandbox's overhead). Each request's clock starts when the one before it is answered."""

    def __init__(self, process: sandbox.Process, err: int):
        self.process, self.popen, self.err = process, process.proc, err
        self.started = False  # the sandbox's start marker read off the channel
        self.dead = False
        self.decodes = 0  # decodes whose state lives here
        self.ended: list[int] = []  # decodes to forget, sent with the next request
        self.w, self.r = process.stdin.fileno(), process.stdout.fileno()
        os.set_blocking(self.w, False)
        os.set_blocking(self.r, False)
        self.buf = bytearray()
        self.out = bytearray()  # request bytes the pipe has not taken yet
        self.writing = False  # the loop waits for the pipe to take more of them
        self.pending: collections.deque[tuple[asyncio.Future, int, float]] = collections.deque()  # in send order
        self.seq = itertools.count(1)
        self.loop: asyncio.AbstractEventLoop | None = None  # where the reader is registered while requests wait
        self.timer: asyncio.TimerHandle | None = None  # the oldest waiting request's deadline

    def _stderr(self) -> str:
        try:
            size = os.lseek(self.err, 0, os.SEEK_END)
            tail = os.pread(self.err, 4096, max(0, size - 4096)).decode(errors="replace").strip()[-600:]
        except OSError:
            return ""
        return f"; its stderr: {tail}" if tail else ""

    def _gone(self) -> PolicyWorkerError:
        try:
            code = self.popen.wait(timeout=1)
        except subprocess.TimeoutExpired:
            code = None
        if code == -signal.SIGXFSZ:
            return PolicyWorkerError(f"the policy flooded its output (over {MAX_REPLY_BYTES} bytes) and was stopped")
        return PolicyWorkerError(f"the policy worker exited (status {code}) without answering{self._stderr()}")

    def _frame(self) -> bytes | None:
        if not self.started:
            if len(self.buf) < len(sandbox.STARTED):
                return None
            if not self.buf.startswith(sandbox.STARTED):
                raise PolicyWorkerError(f"the policy sandbox did not start{self._stderr()}")
            del self.buf[: len(sandbox.STARTED)]
            self.started = True
        if len(self.buf) < _HEADER.size:
            return None
        n = _HEADER.unpack_from(self.buf)[0]
        if n > MAX_REPLY_BYTES:
            raise PolicyWorkerError(f"the policy worker flooded: a {n}-byte answer (the cap is {MAX_REPLY_BYTES})")
        if len(self.buf) < _HEADER.size + n:
            return None
        body = bytes(self.buf[_HEADER.size : _HEADER.size + n])
        del self.buf[: _HEADER.size + n]
        return body

    def _fill(self) -> bool:
        """Read what the channel holds into the buffer; False when nothing was there."""
        try:
            chunk = os.read(self.r, 1 << 16)
        except BlockingIOError:
            return False
        except OSError:
            chunk = b""
        if not chunk:
            raise self._gone()
        self.buf += chunk
        return True

    def _write(self, out: memoryview) -> memoryview:
        try:
            return out[os.write(self.w, out) :]
        except BlockingIOError:
            return out
        except OSError:
            raise self._gone() from None

    def ask_sync(self, msg: dict, timeout: float) -> _Reply:
        """One request, waited for without an event loop (loading; direct calls): never while async ones wait."""
        data = _ENCODE(msg)
        out = self._write(memoryview(_HEADER.pack(len(data)) + data))
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.r, selectors.EVENT_READ)
            if out:
                sel.register(self.w, selectors.EVENT_WRITE)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PolicyWorkerError(f"the policy did not answer within {timeout:g} s")
                for key, _ in sel.select(left):
                    if key.fd == self.w:
                        out = self._write(out)
                        if not out:
                            sel.unregister(self.w)
                    elif self._fill() and (body := self._frame()) is not None:
                        if self.buf:
                            raise PolicyWorkerError("the policy worker answered nonsense: two answers to one message")
                        return _reply(body)

    async def request(self, msg: dict, timeout: float) -> _Reply:
        """Send one request (decodes share the worker) and wait for its answer, for at most `timeout` from when
        the worker has answered the requests sent before it. Raises `_Dead` if the worker was killed (by another
        decode's failure) before it answered this one."""
        if self.dead:
            raise _Dead
        if self.ended:
            msg, self.ended = {**msg, "e": self.ended}, []
        q = next(self.seq)
        data = _ENCODE({**msg, "q": q})
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # (asyncio.run makes a new loop per run; the reader is on none while idle)
            self.loop = loop
            loop.add_reader(self.r, self._readable)
        done = loop.create_future()
        self.pending.append((done, q, timeout))
        if len(self.pending) == 1:
            self._arm()
        self._send(_HEADER.pack(len(data)) + data)
        return await done  # (`_readable` matched it to this request by its number)

    def _send(self, frame: bytes) -> None:
        # Written once the callbacks ready now have run, so requests made together wake the worker once.
        if not self.out:
            self.loop.call_soon(self._flush)
        self.out += frame

    def _flush(self) -> None:
        """Write what the pipe takes; while it is full, the loop calls this again when it can take more."""
        if self.dead:
            return
        try:
            del self.out[: os.write(self.w, self.out)]
        except BlockingIOError:
            pass
        except OSError:
            return self._fail(self._gone())
        if self.out and not self.writing:
            self.loop.add_writer(self.w, self._flush)
        elif self.writing and not self.out:
            self.loop.remove_writer(self.w)
        self.writing = bool(self.out)

    def _readable(self) -> None:
        answered = False
        try:
            if not self._fill():
                return
            while (body := self._frame()) is not None:
                if not self.pending:
                    raise PolicyWorkerError("the policy worker answered nonsense: an answer to no message")
                reply, q = _reply(body), self.pending[0][1]
                if reply.q is not None and reply.q < q:
                    # A second answer to a message already answered: a policy wrote into the channel while
                    # answering it, and that decode has its answer. No waiting request is to blame: they move.
                    return self.kill()
                if reply.q != q:
                    # The worker answers in order, so whatever comes before the answer to the oldest waiting
                    # request was written while that request's policy ran: that decode fails, the others move.
                    raise PolicyWorkerError(f"the policy worker answered nonsense: the answer to message {reply.q}"
                                            f" for {q}")  # fmt: skip
                done = self.pending.popleft()[0]
                if not done.done():
                    done.set_result(reply)
                answered = True
        except PolicyWorkerError as e:
            return self._fail(e)
        if answered:  # (a part of an answer does not restart the clock)
            self._arm()

    def _arm(self) -> None:
        """The oldest waiting request's clock (it starts when the one before it is answered); idle: no reader."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.pending:
            self.timer = self.loop.call_later(self.pending[0][2], self._late, self.pending[0][2])
        elif self.loop is not None:
            self.loop.remove_reader(self.r)
            self.loop = None

    def _late(self, timeout: float) -> None:
        self._fail(PolicyWorkerError(f"the policy did not answer within {timeout:g} s"))

    def _fail(self, error: PolicyWorkerError) -> None:
        """The oldest waiting request fails with `error` (the message the worker was answering); the others'
        decodes move to another worker. The process ends."""
        if self.pending:
            done = self.pending.popleft()[0]
            if not done.done():
                done.set_exception(error)
        self.kill()

    def kill(self) -> None:
        """End the worker; requests still waiting raise `_Dead`. Idempotent."""
        if self.dead:
            return
        self.dead = True
        while self.pending:
            done = self.pending.popleft()[0]
            if not done.done():
                done.set_exception(_Dead())
        if self.loop is not None:
            self.loop.remove_reader(self.r)
            self.loop.remove_writer(self.w)
        self._arm()
        self.process.kill()
        with contextlib.suppress(OSError):
            os.close(self.err)


# ---------------------------------------------------------------- one loaded policy


def _close_all(procs: set[_Proc], folder: Path) -> None:
    for p in list(procs):
        p.kill()
    procs.clear()
    shutil.rmtree(folder, ignore_errors=True)


class _Pool:
    """The workers of one loaded policy. Each decode lives on one worker (its state is there); a worker serves
    many decodes, their requests in order; a new one starts while every worker has decodes, up to `MAX_WORKERS`."""

    def __init__(self, file: Path, cls: str, args: list, kwargs: dict):
        self.folder = Path(tempfile.mkdtemp(prefix="cdw-policy-"))
        shutil.copyfile(file, self.folder / file.name)  # a snapshot: every decode runs the code that was loaded
        _readable(self.folder)
        self.load = {"op": "load", "file": f"/cdw/policy/{file.name}", "cls": cls, "args": args, "kwargs": kwargs}
        self.procs: set[_Proc] = set()
        self.workers: list[_Proc] = []  # the engine's
        self.direct: _Proc | None = None  # direct (token-at-a-time) calls' own worker, never the engine's
        self.starting: asyncio.Future | None = None
        weakref.finalize(self, _close_all, self.procs, self.folder)

    def spawn(self) -> _Proc:
        proc = _Proc(*_launch(self.folder))
        self.procs.add(proc)
        return proc

    def kill(self, proc: _Proc) -> None:
        self.procs.discard(proc)
        if proc in self.workers:
            self.workers.remove(proc)
        proc.kill()

    def first(self) -> _Reply:
        """Start a worker and load the policy: what it is (its identity, span rule, top-k). The worker then
        waits for the first decode."""
        proc = self.spawn()
        try:
            reply = proc.ask_sync(self.load, LOAD_TIMEOUT_S)
        except PolicyWorkerError:
            self.kill(proc)
            raise
        self.workers.append(proc)
        return reply

    def ask_direct(self, msg: dict) -> _Reply:
        try:
            if self.direct is None:
                self.direct = self.spawn()
                self._checked(self.direct.ask_sync(self.load, LOAD_TIMEOUT_S))
            return self.direct.ask_sync(msg, MESSAGE_TIMEOUT_S)
        except PolicyWorkerError:
            self.kill(self.direct)
            self.direct = None
            raise

    async def assign(self) -> _Proc:
        """The worker a new decode lives on: the least busy, or a new one while all have decodes."""
        live = [p for p in self.workers if not p.dead]
        least = min(live, key=lambda p: p.decodes, default=None)
        if least is None or (least.decodes and len(live) < MAX_WORKERS):
            if self.starting is None:  # one start at a time: decodes arriving meanwhile share what is there
                self.starting = asyncio.ensure_future(self._start())
                try:
                    self.workers.append(await asyncio.shield(self.starting))
                finally:
                    self.starting = None
                return await self.assign()
            if least is None:
                await asyncio.shield(self.starting)
                return await self.assign()
        least.decodes += 1
        return least

    async def _start(self) -> _Proc:
        proc = self.spawn()
        try:
            self._checked(await proc.request(self.load, LOAD_TIMEOUT_S))
        except BaseException:
            self.kill(proc)
            raise
        return proc

    @staticmethod
    def _checked(reply: _Reply) -> _Reply:
        if reply.error is not None or reply.identity is None or reply.span is None:
            raise PolicyWorkerError(f"the policy no longer loads: {reply.error or 'no identity'}")
        return reply


class WorkerPolicy(Policy):
    """The evaluator's handle on a policy that runs in the sandbox. `fresh()` is a new decode (its state lives in
    the worker); the engine uses `scan`, `keep` and `release`; `decide`, `on_handoff` and `keep_weak` work as
    for any policy, a message each."""

    def __init__(self, pool: _Pool, info: _Reply):
        self._pool, self._info = pool, info
        self.span, self.top_k, self.prompt_level = _span(info.span), info.top_k, info.prompt_level
        for k, v in info.attrs.items():  # the policy's plain parameters, readable as before (a copy)
            if not hasattr(WorkerPolicy, k) and k not in ("span", "top_k", "prompt_level"):
                setattr(self, k, v)
        self._decode = next(_IDS)
        self._handoffs: list[str] = []
        self._told = False  # the instruction went with this decode's first message
        self._proc: _Proc | None = None  # the worker this decode's state lives on (the engine's calls)
        self._sent: list[dict] = []  # what made that state: replayed on another worker if this one is lost

    def fresh(self) -> WorkerPolicy:
        new = WorkerPolicy(self._pool, self._info)
        new._spec = getattr(self, "_spec", None)
        return new

    def __deepcopy__(self, memo) -> WorkerPolicy:  # wrappers deep-copy their inner policies: a new decode
        return self.fresh()

    def source_hash(self) -> str:
        return self._info.identity

    def on_handoff(self, strong_text: str) -> None:
        self._handoffs.append(strong_text)  # sent with the next message

    def _message(self, op: str, **fields) -> dict:
        msg = {"op": op, "d": self._decode, "h": self._handoffs, **fields}
        self._handoffs = []
        return msg

    @staticmethod
    def _answer(reply: _Reply, n: int) -> tuple[int, Decision] | None:
        if reply.error is not None:
            raise PolicyWorkerError(f"the policy raised {reply.error[:1000]}")
        if reply.i is None:
            return None
        if not 0 <= reply.i < n or reply.a is None or reply.span is None:
            raise PolicyWorkerError(f"the policy worker answered nonsense: token {reply.i} of {n}, {reply.a!r}")
        return reply.i, Decision(Action(reply.a), reply.s, _span(reply.span))

    @staticmethod
    def _kept(reply: _Reply) -> bool:
        if reply.error is not None:
            raise PolicyWorkerError(f"the policy raised {reply.error[:1000]}")
        if reply.keep is None:
            raise PolicyWorkerError("the policy worker answered nonsense: no keep_weak answer")
        return reply.keep

    # ------------------------------------------------------------ the engine's calls (its own worker per decode)

    async def _ask(self, msg: dict, check) -> _Reply:
        """Send `msg` and return the reply, which `check` vets (nonsense raises and costs the worker: what else it
        sent may still be in the channel)."""
        while True:
            moved = self._proc is not None and self._proc.dead  # another decode broke the worker: move
            if self._proc is None or moved:
                self._proc = await self._pool.assign()
            try:
                if moved and self._sent:
                    self._answer(await self._proc.request(self._replay(), LOAD_TIMEOUT_S), 0)
                reply = await self._proc.request(msg, MESSAGE_TIMEOUT_S)
                result = None if reply.error is not None else check(reply)
            except _Dead:
                continue
            except BaseException:  # failed, or cancelled mid-message (its answer may still come): it cannot go on
                self._pool.kill(self._proc)
                raise
            self._sent.append(msg)
            return check(reply) if reply.error is not None else result  # (an error reply raises)

    def _replay(self) -> dict:
        return {"op": "replay", "d": self._decode, "msgs": self._sent}

    async def scan(self, draft: dict, n: int) -> tuple[int, Decision] | None:
        """The first of a draft's `n` tokens at which the policy fires (`worker.py` says what `draft` holds; the
        instruction, `instr`, is sent with the decode's first message only)."""
        if self._told:
            draft = {k: v for k, v in draft.items() if k != "instr"}
        self._told = True
        return await self._ask(self._message("scan", **draft), lambda r: self._answer(r, n))

    async def keep(self, signals: list[TokenSignal]) -> bool:
        return await self._ask(self._message("keep", **_signal_rows(signals)), self._kept)

    def release(self) -> None:
        """The decode is over: its worker forgets it (with the next request it gets)."""
        if self._proc is not None and not self._proc.dead:
            self._proc.ended.append(self._decode)
            self._proc.decodes -= 1
        self._proc, self._sent = None, []

    # ------------------------------------------------------------ direct calls (their own worker)

    def _direct(self, msg: dict) -> _Reply:
        return self._pool.ask_direct(msg)

    def decide(self, s: TokenSignal) -> Decision:
        token = [s.token_id, s.text, s.logprob, list(s.top), 0]
        draft = {"base": s.text_so_far, "draft": "", "pos": s.position, "since": s.since_handoff,
                 "prompt": s.prompt_tokens, "defer": True, "tok": [token], "w": [[list(s.where), list(s.after)]],
                 "instr": s.instruction}  # fmt: skip
        found = self._answer(self._direct(self._message("scan", **draft)), 1)
        return found[1] if found else Decision(Action.CONTINUE)

    def keep_weak(self, signals: list[TokenSignal]) -> bool:
        return self._kept(self._direct(self._message("keep", **_signal_rows(signals))))


def _signal_rows(signals: list[TokenSignal]) -> dict:
    """A prompt-level policy's signals as a `keep` message carries them (the instruction once)."""
    rows = [[s.token_id, s.text, s.logprob, list(s.top), s.position, s.text_so_far, s.since_handoff, s.prompt_tokens,
             list(s.where), list(s.after)] for s in signals]  # fmt: skip
    return {"sig": rows, "instr": signals[0].instruction if signals else ""}


def load(file: Path, cls: str, args: list, kwargs: dict) -> WorkerPolicy:
    """Load class `cls` of `file` with these arguments (plain data) into a sandboxed worker.

    Raises PolicyWorkerError when there is no sandbox or the worker fails, and returns the worker's refusal as
    `LoadRefused` (no such class, not a Policy, arguments it rejects, a file that does not import)."""
    pool = _Pool(file, cls, args, kwargs)
    reply = pool.first()
    if reply.error is not None:
        raise LoadRefused(reply.error, reply.kind)
    return WorkerPolicy(pool, _Pool._checked(reply))


class LoadRefused(Exception):
    """The worker could not make the policy: `kind` is missing (no such class), class (not a Policy), arguments
    (its constructor refused them) or None (the file raised while importing)."""

    def __init__(self, message: str, kind: str | None):
        super().__init__(message)
        self.kind = kind
