"""The test harness's sandboxed side (never imported: `harness.py` runs this file's text in the sandbox).

Two processes, one file. `check SECRET_FD REPORT_FD` (the checker, the sandbox's pid 1) reads a job from stdin
({"answer", "tests", "entry_point"}), makes itself non-dumpable (so a process of the same uid can neither read its
memory nor open its fds through /proc, nor ptrace it), and starts `answer REQUEST_FD REPLY_FD` (the answer's
process) without its fds. The answer's module runs only in the answer's process. The checker runs the problem's own
tests (trusted text) with a stand-in for the function that sends each call's arguments to the answer's process and
takes back its result as plain data (None, bool, int, float, complex, str, bytes, and lists, tuples, dicts, sets,
frozensets, ranges and iterators of them), so an object that claims to equal anything never reaches a comparison.
Only when `check` returns does the checker read the run's secret from SECRET_FD and write it to REPORT_FD; an
answer that exits, raises, hangs, or kills the checker leaves the report empty: not passed.

Everything is defined inside `_main` so the answer's module, which runs in this file's `__main__` namespace (as it
did when the program ran whole), cannot replace the harness's helpers by defining names of its own.
"""


def _main():  # noqa: C901 (the harness is one closure on purpose: see the docstring)
    import builtins
    import json
    import os
    import subprocess
    import sys
    import traceback

    sys.set_int_max_str_digits(0)
    max_message = 64 << 20  # bytes of one reply; more is a failed call
    max_items = 1 << 20  # items of an iterator the answer returns

    def encode(x, depth=0):
        if depth > 200:
            raise ValueError("nested too deeply")
        d = depth + 1
        if x is None or isinstance(x, bool):
            return x
        if isinstance(x, int):
            return int.__int__(x)
        if isinstance(x, float):
            return float.__float__(x)
        if isinstance(x, str):
            return str.__str__(x)
        if isinstance(x, list):
            return [encode(v, d) for v in list.__iter__(x)]
        if isinstance(x, tuple):
            return {"t": "tuple", "v": [encode(v, d) for v in tuple.__iter__(x)]}
        if isinstance(x, dict):
            return {"t": "dict", "v": [[encode(k, d), encode(v, d)] for k, v in dict.items(x)]}
        if isinstance(x, set | frozenset):
            kind = "set" if isinstance(x, set) else "frozenset"
            return {"t": kind, "v": [encode(v, d) for v in (set.__iter__ if kind == "set" else frozenset.__iter__)(x)]}
        if isinstance(x, bytes | bytearray):
            return {"t": "bytes", "v": bytes(x).hex()}
        if isinstance(x, complex):
            return {"t": "complex", "v": [x.real, x.imag]}
        if isinstance(x, range):
            return {"t": "range", "v": [x.start, x.stop, x.step]}
        if hasattr(type(x), "__iter__") or hasattr(type(x), "__next__"):  # a generator, map, deque...: its items
            items = []
            for v in x:
                if len(items) >= max_items:
                    raise ValueError(f"an iterator of over {max_items} items")
                items.append(encode(v, d))
            return {"t": "iter", "v": items}
        raise TypeError(f"returned a {type(x).__name__}, which is not plain data")

    def decode(x, depth=0):
        if depth > 200:
            raise ValueError("nested too deeply")
        d = depth + 1
        if x is None or type(x) in (bool, int, float, str):
            return x
        if type(x) is list:
            return [decode(v, d) for v in x]
        if type(x) is dict and set(x) == {"t", "v"}:
            t, v = x["t"], x["v"]
            if t == "tuple" and type(v) is list:
                return tuple(decode(i, d) for i in v)
            if t == "dict" and type(v) is list and all(type(kv) is list and len(kv) == 2 for kv in v):
                return {decode(k, d): decode(i, d) for k, i in v}
            if t in ("set", "frozenset") and type(v) is list:
                return (set if t == "set" else frozenset)(decode(i, d) for i in v)
            if t == "bytes" and type(v) is str:
                return bytes.fromhex(v)
            if t == "complex" and type(v) is list and len(v) == 2 and all(type(i) in (int, float) for i in v):
                return complex(v[0], v[1])
            if t == "range" and type(v) is list and len(v) == 3 and all(type(i) is int for i in v):
                return range(*v)
            if t == "iter" and type(v) is list:
                return iter([decode(i, d) for i in v])
        raise ValueError("not plain data")

    def lines(source, name):
        """Tracebacks show the lines of `<answer>` and `<tests>` (code compiled from a string has none)."""
        import linecache

        linecache.cache[name] = (len(source), None, source.splitlines(True), name)

    def send(fd, message):
        data = (json.dumps(message) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def answer(request_fd, reply_fd):
        """The answer's process: run its module, then call its function for each request."""
        requests = os.fdopen(request_fd, "rb")
        job = json.loads(requests.readline())
        g = sys.modules["__main__"].__dict__
        g["sys"] = sys  # as when the program ran whole after `import sys`
        lines(job["answer"], "<answer>")
        try:
            exec(compile(job["answer"], "<answer>", "exec"), g)
            fn = g[job["entry_point"]]
        except BaseException as e:  # noqa: BLE001 (any end of the module's code is the answer's failure)
            traceback.print_exc()
            send(reply_fd, {"error": f"the answer's module did not load: {type(e).__name__}: {e}"})
            return
        send(reply_fd, {"ok": True})
        for line in requests:
            args = decode(json.loads(line)["args"])
            try:
                result = {"value": encode(fn(*args))}
            except BaseException as e:  # noqa: BLE001 (SystemExit too: a call that exits has failed)
                traceback.print_exc()
                result = {"error": f"{type(e).__name__}: {e}"}
            sys.stdout.flush()
            send(reply_fd, result)

    class CandidateError(Exception):
        """The answer's function did not return plain data (it raised, exited, or returned something else)."""

    def check(secret_fd, report_fd):
        """The checker: the tests run here, against a stand-in that calls the answer's process."""
        import ctypes

        job = json.loads(sys.stdin.read())
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE 0
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        child = subprocess.Popen([sys.executable, "-I", "-S", "-B", sys.argv[0], "answer", str(req_r), str(rep_w)],
                                 stdin=subprocess.DEVNULL, pass_fds=(req_r, rep_w))  # fmt: skip
        os.close(req_r)
        os.close(rep_w)
        replies = os.fdopen(rep_r, "rb")

        def reply():
            sys.stdout.flush()
            line = replies.readline(max_message + 1)
            if not line:
                raise CandidateError("the answer's process ended without replying (it exited, or hit a limit)")
            if not line.endswith(b"\n"):
                raise CandidateError("the answer's process sent an oversized reply")
            msg = json.loads(line)
            if type(msg) is not dict:
                raise CandidateError("the answer's process sent nonsense")
            if "error" in msg:
                raise CandidateError(str(msg["error"]))
            return msg

        send(req_w, {"answer": job["answer"], "entry_point": job["entry_point"]})
        reply()

        def candidate(*args):
            send(req_w, {"args": encode(list(args))})
            msg = reply()
            if "value" not in msg:
                raise CandidateError("the answer's process sent nonsense")
            return decode(msg["value"])

        tests = {"__name__": "__main__", "__builtins__": builtins}
        lines(job["tests"], "<tests>")
        exec(compile(job["tests"], "<tests>", "exec"), tests)
        tests[job["entry_point"]] = candidate  # tests that call the function by its name call the answer too
        try:
            tests["check"](candidate)
        except BaseException as e:  # noqa: BLE001 (said briefly: the line of the tests, and why)
            at = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == "<tests>"]
            where = f"line {at[-1].lineno} of the tests: {at[-1].line}\n" if at else ""
            sys.stdout.flush()
            sys.stderr.write(f"{where}{type(e).__name__}: {e}\n".replace(": \n", "\n"))
            raise SystemExit(1) from None
        # check returned: only now is the secret read, and reported on an fd the answer's process never had
        secret = os.read(secret_fd, 4096)
        os.close(secret_fd)
        send(report_fd, {"secret": secret.decode()})
        os.close(report_fd)
        child.kill()

    role, fds = sys.argv[1], [int(a) for a in sys.argv[2:]]
    if role == "answer":
        answer(*fds)
    else:
        check(*fds)


_main()
