"""Engine efficiency: weak requests per weak token, client CPU per token, latency overhead, real-server cost.

    .venv/bin/python benchmarks/engine.py                  # fake servers only (~1 min)
    .venv/bin/python benchmarks/engine.py --preset cpu     # also the running `cdw serve --preset cpu` servers

Each part compares, in the same run, three ways of asking for weak drafts: a fixed 16-token draft after every
handoff (before issue 11), chunks of 8 tokens after a handoff doubling to 32 while the policy stays quiet (before
issue 23), and now one streamed request per weak run, cut at the token where the policy defers (target: <= 1.3
weak tokens drafted per token kept with margin(tau=0.1, span=sentence) on `cpu`, no more requests per weak token).

Fake part: the weak and strong toy servers of tests/fakeserver.py (a cross-tokenizer pair, as in
tests/test_engine.py) run in a child process, so their CPU time is not the client's. `--n` instructions are
decoded concurrently with `--policy`. The toy weak model's distribution is flat (top-1 probability ~0.3), so
`margin(tau=0.1)` defers at half its tokens; the default tau=0.005 gives f_weak ~0.75, a realistic mix.
1. Weak requests per weak token: weak draft requests (and all weak requests, tokenize included) / weak tokens
   in the final answers; drafted / kept: weak tokens drafted / weak tokens in the answers (each deferral
   discards the rest of its draft).
2. Client CPU per generated token: time.process_time() of this process around the batch / (weak + strong
   tokens in the answers).
3. Latency overhead: the servers delay every request by L (`--latency`). Ideal batch time = max over
   instructions of (its sequential requests x L + the same decode's time alone at delay 0): the critical path
   if all decodes ran in parallel and the servers had unlimited capacity; the delay-0 time is the fair compute
   allowance (toy generation, HTTP, engine work, unloaded). The toy server is single-threaded Python: the
   compute of 100 concurrent requests would serialise after every latency wave, which a batching vLLM server
   does not do, so the benchmark's server replays answers it has given before (decoding is deterministic and
   the delay-0 runs come first); its CPU time is printed, and the most requests one server saw at once.
4. Sandboxed policy (issue 22): a file copy of `margin` (so it runs in the policy worker, in the sandbox) against
   the built-in `margin`, both reading drafts in chunks (as a sandboxed policy does), the same decodes in one
   run, batches alternating, at delay 0 and at `--latency`'s first value, each policy loaded once (as an
   evaluation does) and warmed up by one batch (the servers learn the answers, the other workers start); the
   one-time cost of loading (which starts a sandbox) is printed apart.
   Texts must be identical. Target: <= 1.10x wall. Also printed: CPU seconds per batch of this process and of the
   policy workers, and the ratio of their sums (the sandbox's cost in work, steadier than wall time on a machine
   others are using). `--only-sandbox` runs this part alone.
5. `--preset cpu`: the same comparison on the servers found by Models.from_endpoints(), with a weak-only
   (`never`) batch of the same instructions and token budget for the wall-time ratio. Start them first
   (`cdw serve --preset cpu`, ~2 min), stop them after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import psutil
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tests` is not an installed package

from tests.fakeserver import FakeServer, ToyModel  # noqa: E402
from workspace.client import ClientSettings, ModelClient  # noqa: E402
from workspace.endpoints import Endpoint  # noqa: E402
from workspace.engine import Decode, EngineSettings, Models, decode, decode_many, pooled_f_weak  # noqa: E402
from workspace.policies import load_policy, remote  # noqa: E402

REAL_INSTRUCTIONS = [
    "Give three tips for staying healthy.", "Explain what a hash table is in two sentences.",
    "Describe the water cycle briefly.", "Why is the sky blue?", "Write a short poem about autumn.",
    "What are the benefits of regular exercise?", "Summarize the plot of Romeo and Juliet.",
    "How do vaccines work?", "List three uses of a paperclip.", "Explain recursion to a beginner.",
    "What causes the seasons on Earth?", "Give advice for a job interview.", "Describe how a bicycle works.",
    "What is photosynthesis?", "Suggest a name for a coffee shop and explain it.", "How can I save money on groceries?",
]  # fmt: skip


class ReplayServer(FakeServer):
    """A FakeServer that answers a request it has answered before from memory."""

    def __init__(self, model: ToyModel):
        super().__init__(model)
        self.memo: dict[tuple[str, bytes], bytes] = {}

    async def _replay(self, request: web.Request, handler) -> web.Response:
        if (await request.json()).get("stream"):  # generated as sent, and cut where the client stops reading
            return await handler(request)
        key = (request.path, await request.read())
        if key not in self.memo:
            resp = await handler(request)
            if resp.status != 200:
                return resp
            self.memo[key] = resp.body
        return web.Response(body=self.memo[key], content_type="application/json")

    async def _completions(self, request):
        return await self._replay(request, super()._completions)

    async def _chat(self, request):
        return await self._replay(request, super()._chat)

    async def _tokenize(self, request):
        return await self._replay(request, super()._tokenize)


def _serve(conn) -> None:
    """Child process: the toy pair of tests/test_engine.py; obeys ("delay", seconds) and ("stop", None)."""

    async def main() -> None:
        weak = await ReplayServer(ToyModel(name="weak", seed=1, eos_after=110)).start()
        strong = await ReplayServer(
            ToyModel(name="strong", seed=2, reverse=True, eos_after=100, extra=(".\n\n", ":\n\n", ", ", "the "))
        ).start()
        conn.send((weak.url, strong.url))
        while (msg := await asyncio.get_running_loop().run_in_executor(None, conn.recv))[0] != "stop":
            weak.faults.delay = strong.faults.delay = msg[1]
            conn.send(max(weak.max_active, strong.max_active))  # the most requests in flight at once, then reset
            weak.max_active = strong.max_active = 0
        await weak.stop()
        await strong.stop()

    asyncio.run(main())


class FakeServers:
    def __enter__(self) -> FakeServers:
        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self.proc.start()
        self.urls, self.ps = self.conn.recv(), psutil.Process(self.proc.pid)
        return self

    def delay(self, seconds: float) -> int:
        self.conn.send(("delay", seconds))
        return self.conn.recv()

    def cpu(self) -> float:
        return sum(self.ps.cpu_times()[:2])

    def models(self, cs: ClientSettings) -> Models:
        return Models(
            *(ModelClient(Endpoint(r, (u,), r), cs) for r, u in zip(("weak", "strong"), self.urls, strict=True))
        )

    def __exit__(self, *exc) -> None:
        self.conn.send(("stop", None))
        self.proc.join(5)


def count(ds: list[Decode], role: str, kinds: tuple[str, ...] = (), tokens: bool = False) -> int:
    calls = [c for d in ds for c in d.calls if c.role == role and (not kinds or c.kind in kinds)]
    return sum(c.tokens for c in calls) if tokens else len(calls)


async def batch(models: Models, instrs: list[str], policy: str, es: EngineSettings) -> dict:
    """Decode a batch concurrently: the decodes, wall and client CPU seconds, token and request counts."""
    try:
        cpu0, t0 = time.process_time(), time.monotonic()
        ds = await decode_many(instrs, policy, models, es, progress=False)
        wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    finally:
        await models.close()
    if errors := [d.error for d in ds if d.error]:
        raise SystemExit(f"{len(errors)} decodes failed, e.g. {errors[0]}")
    wt = sum(s.tokens for d in ds for s in d.segments if s.author == "weak")
    st = sum(s.tokens for d in ds for s in d.segments if s.author == "strong")
    n, per_wtok = len(ds), (lambda x: x / max(wt, 1))
    return {"ds": ds, "wall": wall, "cpu": cpu, "wt": wt, "st": st, "f_weak": pooled_f_weak(ds),
            "defer": sum(d.num_deferrals for d in ds) / n, "draft": per_wtok(count(ds, "weak", ("draft",))),
            "weak": per_wtok(count(ds, "weak")), "drafted": per_wtok(count(ds, "weak", ("draft",), tokens=True)),
            "cpu_tok": 1e3 * cpu / max(wt + st, 1)}  # fmt: skip


async def alone(models: Models, instrs: list[str], policy: str, es: EngineSettings) -> list[Decode]:
    """Each instruction decoded on its own, one after another (unloaded servers)."""
    try:
        return [await decode(i, policy, models, es) for i in instrs]
    finally:
        await models.close()


VARIANTS = {  # how weak drafts are asked for, otherwise the default settings
    "fixed 16 (before issue 11)": {"first_chunk": 16, "chunk_tokens": 16, "stream_drafts": False},
    "chunks 8->32 (before issue 23)": {"stream_drafts": False},
    "streamed, cut at the deferral (now)": {},
}


def fake_part(args) -> list[tuple[str, str, str]]:
    instrs, out, cs = [f"Tell me about item {i}." for i in range(args.n)], [], ClientSettings()
    variants = {name: EngineSettings(top_k=args.top_k, **kw) for name, kw in VARIANTS.items()}
    with FakeServers() as fs:
        print(f"\n== fake servers, delay 0: {args.n} instructions, {args.policy}, top_k {args.top_k} ==")
        print(f"{'drafts':<38}{'draft req/wtok':>15}{'weak req/wtok':>14}{'drafted/kept':>13}{'f_weak':>7}"
              f"{'defer/dec':>10}{'weak tok':>9}{'strong tok':>11}{'wall s':>7}{'client CPU ms/tok':>18}")  # fmt: skip
        for name, es in variants.items():
            r = asyncio.run(batch(fs.models(cs), instrs, args.policy, es))
            print(f"{name:<38}{r['draft']:>15.3f}{r['weak']:>14.3f}{r['drafted']:>13.2f}{r['f_weak']:>7.3f}"
                  f"{r['defer']:>10.2f}{r['wt']:>9}{r['st']:>11}{r['wall']:>7.2f}{r['cpu_tok']:>18.3f}")  # fmt: skip
            out += [(f"weak draft requests / weak token, {name}", f"{r['draft']:.3f}", "<= 0.1"),
                    (f"weak tokens drafted / kept, {name}", f"{r['drafted']:.2f}", ""),
                    (f"client CPU ms / token, {name}", f"{r['cpu_tok']:.3f}", "")]  # fmt: skip
        print(f"\n== latency: {args.n} concurrent decodes, median of {args.repeat} batches ==")
        print(f"{'L ms':>5}  {'drafts':<38}{'requests/decode':>16}{'wall s':>7}{'ideal s':>8}{'ratio':>6}"
              f"{'client CPU s':>13}{'server CPU s':>13}{'peak in flight':>15}")  # fmt: skip
        for name, es in variants.items():
            solo = asyncio.run(alone(fs.models(cs), instrs, args.policy, es))
            reqs = sorted(len(d.calls) for d in solo)
            for L in args.latency:
                fs.delay(L)
                ideal = max(len(d.calls) * L + d.seconds for d in solo)
                runs = []
                for _ in range(args.repeat):
                    s0 = fs.cpu()
                    r = asyncio.run(batch(fs.models(cs), instrs, args.policy, es))
                    r["server_cpu"], r["peak"] = fs.cpu() - s0, fs.delay(L)
                    assert [len(d.calls) for d in r["ds"]] == [len(d.calls) for d in solo], "decodes changed"
                    runs.append(r)
                r = sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]  # the median run
                print(f"{L * 1e3:>5.0f}  {name:<22}{f'{reqs[0]}..{reqs[-1]}':>16}{r['wall']:>7.2f}{ideal:>8.2f}"
                      f"{r['wall'] / ideal:>6.2f}{r['cpu']:>13.2f}{r['server_cpu']:>13.2f}{r['peak']:>15}")  # fmt: skip
                out.append((f"latency wall / ideal, L={L * 1e3:.0f} ms, {name}", f"{r['wall'] / ideal:.2f}", "<= 1.25"))
            fs.delay(0)
    return out


MARGIN_COPY = """from workspace.policies import Action, Decision, Policy, parse_span


class Margin(Policy):
    top_k = 2

    def __init__(self, tau: float, span: str = "sentence", max_span: int = 64):
        self.tau = float(tau)
        self.span = parse_span(span, max_span)

    def decide(self, s):
        v = s.p1 - s.p2
        return Decision(Action.DEFER if v < self.tau else Action.CONTINUE, v)
"""


def workers_cpu(fs: FakeServers) -> float:
    """CPU seconds of this process's children but the fake servers': the policy workers (and their sandboxes)."""
    servers = {fs.proc.pid, *(c.pid for c in fs.ps.children(recursive=True))}
    total = 0.0
    for c in psutil.Process().children(recursive=True):
        if c.pid not in servers:
            with contextlib.suppress(psutil.Error):
                total += sum(c.cpu_times()[:2])
    return total


def sandbox_part(args) -> list[tuple[str, str, str]]:
    """The built-in margin gate and a file copy of it (run in the sandboxed policy worker), side by side."""
    from workspace.policies.spec import split_head

    head, rest = split_head(args.policy)
    if head != "margin":
        raise SystemExit(f"the sandbox part copies margin; --policy is {args.policy!r}")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "margin_copy.py"
        copy.write_text(MARGIN_COPY)
        specs = {"built-in": args.policy, "file, sandboxed": f"{copy}:Margin{rest}"}
        # Both in chunks (a sandboxed policy reads drafts in chunks; the built-in one would stream them): the
        # difference is the sandbox's cost alone.
        instrs, cs = [f"Tell me about item {i}." for i in range(args.n)], ClientSettings()
        es = EngineSettings(stream_drafts=False)
        out = []
        with FakeServers() as fs:
            t0 = time.monotonic()
            policies = {name: load_policy(spec) for name, spec in specs.items()}
            cold = time.monotonic() - t0  # loading the file policy starts its first sandbox
            for pol in policies.values():  # warm-up: the servers learn the answers, the other workers start
                asyncio.run(batch(fs.models(cs), instrs, pol, es))
            for L in (0.0, args.latency[0]):
                fs.delay(L)
                walls: dict[str, list[float]] = {name: [] for name in policies}
                cpus = {name: [0.0, 0.0] for name in policies}  # this process's, the policy workers'
                texts = {}
                for _ in range(args.repeat):
                    for name, pol in policies.items():
                        w0 = workers_cpu(fs)
                        r = asyncio.run(batch(fs.models(cs), instrs, pol, es))
                        walls[name].append(r["wall"])
                        cpus[name][0] += r["cpu"] / args.repeat
                        cpus[name][1] += (workers_cpu(fs) - w0) / args.repeat
                        texts[name] = [[(g.author, g.text) for g in d.segments] for d in r["ds"]]
                same = texts["built-in"] == texts["file, sandboxed"]
                med = {name: sorted(w)[len(w) // 2] for name, w in walls.items()}
                ratio = med["file, sandboxed"] / med["built-in"]
                cpu_ratio = sum(cpus["file, sandboxed"]) / sum(cpus["built-in"])
                print(f"\n== sandboxed policy, L = {L * 1e3:.0f} ms: {args.n} concurrent decodes, {args.policy}, "
                      f"median of {args.repeat} ==")  # fmt: skip
                print(f"{'':<18}{'wall s':>8}{'client CPU s':>14}{'worker CPU s':>14}   (CPU: mean per batch)")
                for name, w in med.items():
                    print(f"{name:<18}{w:>8.3f}{cpus[name][0]:>14.3f}{cpus[name][1]:>14.3f}")
                print(f"{'ratio':<18}{ratio:>8.3f}{cpu_ratio:>14.3f} (CPU: client + workers)   texts identical: {same}")
                if not same:
                    raise SystemExit("the sandboxed copy of margin wrote other texts than the built-in one")
                out.append((f"sandboxed / built-in margin wall, L={L * 1e3:.0f} ms", f"{ratio:.3f}", "<= 1.10"))
                out.append((f"sandboxed / built-in margin CPU (client + workers), L={L * 1e3:.0f} ms",
                            f"{cpu_ratio:.3f}", ""))  # fmt: skip
            fs.delay(0)
    print(f"\nonce per evaluation: loading the file policy (starting its first sandbox) took {cold:.2f} s; up to "
          f"{remote.MAX_WORKERS} workers start as decodes arrive")  # fmt: skip
    return [*out, ("sandboxed policy: loading it, s (once per evaluation)", f"{cold:.2f}", "")]


def real_part(args) -> list[tuple[str, str, str]]:
    instrs = REAL_INSTRUCTIONS[: args.real_n]
    base = EngineSettings(max_tokens=args.real_max_tokens, top_k=args.top_k)
    asyncio.run(batch(Models.from_endpoints(), ["Say hello."], args.real_policy, EngineSettings(max_tokens=16)))
    runs = {"never": asyncio.run(batch(Models.from_endpoints(), instrs, "never", base))}
    for name, kw in VARIANTS.items():
        es = EngineSettings(max_tokens=args.real_max_tokens, top_k=args.top_k, **kw)
        runs[f"{args.real_policy}, {name}"] = asyncio.run(batch(Models.from_endpoints(), instrs, args.real_policy, es))
    print(f"\n== preset {args.preset}: {len(instrs)} instructions, max_tokens {base.max_tokens} (after a warm-up) ==")
    print(f"{'policy, drafts':<70}{'wall s':>7}{'f_weak':>7}{'defer/dec':>10}{'draft req/wtok':>15}"
          f"{'weak req/wtok':>14}{'drafted/kept':>13}{'client CPU ms/tok':>18}")  # fmt: skip
    for p, r in runs.items():
        print(f"{p:<70}{r['wall']:>7.1f}{r['f_weak']:>7.3f}{r['defer']:>10.2f}{r['draft']:>15.3f}{r['weak']:>14.3f}"
              f"{r['drafted']:>13.2f}{r['cpu_tok']:>18.3f}")  # fmt: skip
    out = []
    for p, r in list(runs.items())[1:]:
        out += [(f"[{args.preset}] wall, {p} / never", f"{r['wall'] / runs['never']['wall']:.2f}", ""),
                (f"[{args.preset}] weak draft requests / weak token, {p}", f"{r['draft']:.3f}", ""),
                (f"[{args.preset}] weak tokens drafted / kept, {p}", f"{r['drafted']:.2f}", "")]  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="instructions in a fake-server batch")
    ap.add_argument("--latency", type=float, nargs="+", default=[0.05, 0.2], help="seconds added to each request")
    ap.add_argument("--repeat", type=int, default=3, help="latency batches per setting; the median is shown")
    ap.add_argument("--top-k", type=int, default=EngineSettings().top_k, help="logprobs per weak token")
    ap.add_argument("--policy", default="margin(tau=0.005, span=sentence)", help="policy on the fake servers")
    ap.add_argument("--preset", help="also measure the running servers of this preset (e.g. cpu)")
    ap.add_argument("--real-policy", default="margin(tau=0.1, span=sentence)")
    ap.add_argument("--real-n", type=int, default=16, help="instructions on the real servers (at most 16)")
    ap.add_argument("--real-max-tokens", type=int, default=128)
    ap.add_argument("--skip-fake", action="store_true", help="only the --preset part")
    ap.add_argument("--only-sandbox", action="store_true", help="only the sandboxed-policy part")
    args = ap.parse_args()

    if args.only_sandbox:
        summary = sandbox_part(args)
    else:
        summary = [] if args.skip_fake else fake_part(args) + sandbox_part(args)
    if args.preset:
        summary += real_part(args)
    print(f"\n{'metric':<90}{'value':>8}  target")
    for name, value, target in summary:
        print(f"{name:<90}{value:>8}  {target}")


if __name__ == "__main__":
    main()
