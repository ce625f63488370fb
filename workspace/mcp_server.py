"""`cdw mcp`: the agents' interface, an MCP server whose tools are thin calls into the Python API (AGENTS.md).

Tools: `get_baselines`, `get_findings`, `get_leaderboard`, `get_headroom`, `evaluate_policy`, `search_policies`,
`evaluate_generations`, `share_finding`, `write_policy`, `list_policies`. `get_baselines`, `evaluate_policy`,
`search_policies` and `get_leaderboard` take a `benchmark` (`workspace/benchmarks/`: alpaca_eval, the default, judged
pairwise; humaneval, scored by unit tests), each run with that benchmark's own canonical settings; `get_headroom`
reads the baselines of a benchmark whose answers are code (`workspace/headroom.py`). Nothing an agent sends becomes a
number: evaluations run the engine and the judge here, and every number is recomputed from the evaluation records.
Policy files load only from the workspace's policy folder (`policies/` in the project, `CDW_POLICIES_DIR` moves it):
a path that resolves outside it (`..`, an absolute path elsewhere, a symlink out) is refused, and so is
`module:Class`, which would import any installed module.

The servers (weak, strong, judge) are found as everywhere else: `--weak-url` etc., `CDW_WEAK_URL` etc., or what
`cdw serve` started. Transports: stdio (the default), or `--http`: streamable HTTP on 127.0.0.1 that answers only
requests carrying `Authorization: Bearer <token>`.

    cdw mcp                                   # stdio; or python -m workspace.cli mcp
    cdw mcp --http --port 8765 --token SECRET
"""

from __future__ import annotations

import asyncio
import hmac
import re
import secrets
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from servers.settings import PROJECT_ROOT, mcp_token, paths
from servers.settings import reuse as reuse_enabled

from . import benchmarks, forum, leaderboard
from .agents.budget import Budget, BudgetError
from .benchmarks import DEFAULT, DataError, resolve_prompts
from .cache import CallCache
from .client import ClientError, ClientSettings
from .endpoints import EndpointError
from .evaluate import (
    EvalSettings,
    EvaluationError,
    SearchError,
    SearchPlan,
    Setup,
    SweepPoint,
    ensure_baselines,
    evaluate,
    load_evaluation,
    search,
)
from .evaluate import evaluate_generations as judge_generations  # the tool of the same name wraps it
from .fileio import atomic_write
from .forum import FindingError
from .headroom import HeadroomError, headroom
from .policies import Policy, PolicyError, canonical_spec, expand_spec, load_policy, registry
from .policies.source_check import PolicySourceError, check_policy_source
from .records.log import StoreError, read_record
from .records.schema import header_of
from .reuse import ContinuationStore
from .stats import BAR, FLOOR, StatsError, StopRule

T = TypeVar("T")
HOST = "127.0.0.1"
DEFAULT_PORT = 8765
POLICY_PREFIX = "policies"  # how records name the policy folder, whatever CDW_POLICIES_DIR says
PROGRESS_EVERY_S = 1.0
# Errors that mean "the request cannot be done as asked": the agent sees the message. Anything else is a bug and
# reaches the agent as the SDK's generic tool error (with the traceback in the server's log).
EXPECTED = (PolicyError, DataError, EvaluationError, FindingError, StoreError, EndpointError, ClientError, BudgetError,
            PolicySourceError, HeadroomError, StatsError)  # fmt: skip

INSTRUCTIONS = """\
Collaborative decoding research: a weak model writes, a deferral policy hands spans to a strong model, and the
answer is scored against the strong model's own. Goal: maximise f_weak (share of characters the weak model wrote)
at recovery >= 0.98 on the canonical set. Read AGENTS.md in the project first. One turn: get_baselines,
get_findings (what others learned), write a Policy class in policies/, evaluate_policy(policy, prompts=10), read the
intervals, then prompts="canonical", and share_finding (results, negative results and refuted hypotheses alike).
Benchmarks (the `benchmark` argument): {benchmarks}. Each is ranked on its own; never compare numbers across
benchmarks.
""".format(benchmarks=" and ".join(
    f"{b.name} ({'default; ' if b.name == DEFAULT else ''}{'a judge' if b.needs_judge else 'scored alone'}, utility = "
    f"{b.utility})" for b in map(benchmarks.get, benchmarks.names())))  # fmt: skip


# ---------------------------------------------------------------- argument checks (no I/O beyond the policy folder)


def policies_dir() -> Path:
    """The folder policy files are loaded from (`CDW_POLICIES_DIR`, default `policies/` in the project)."""
    return paths().policies


def resolve_policy(spec: str, folder: Path | None = None) -> Policy:
    """Load a policy an agent named: a built-in spec (`margin(tau=0.05)`) or `file.py:Class(args)` in the folder
    (default `policies_dir()`). A `probe(path=...)` must name weights inside this project (e.g. `probes/…json`),
    never elsewhere on disk."""
    from .policies.probe import Probe, resolve_path

    def probes(p: Policy):
        yield from ([p] if isinstance(p, Probe) else [])
        for inner in p.inner_policies():
            yield from probes(inner)

    for name in re.findall(r"path\s*=\s*['\"]([^'\"]*)['\"]", spec):
        if not _inside_project(resolve_path(name) if name.endswith(".json") else Path(name)):
            raise PolicyError(f"probe weights must be a file inside the project (e.g. probes/x.json), not {name!r}")
    pol = load_policy(spec, folder=folder or policies_dir())
    for p in probes(pol):
        if not _inside_project(resolve_path(p.path)):
            raise PolicyError(f"probe weights must be a file inside the project, not {p.path!r}")
    return pol


def _inside_project(path: Path) -> bool:
    return path.resolve().is_relative_to(PROJECT_ROOT.resolve())


def recorded_spec(spec: str, folder: Path | None = None) -> str:
    """The name records give a policy spec (file specs relative to the project, as `policies/<file>.py:…`);
    unchanged if it names no file here yet (a hypothesis may be about a policy not written)."""
    try:
        return canonical_spec(spec, folder=folder or policies_dir())
    except PolicyError:
        return spec


def eval_settings(benchmark: str | None = None) -> EvalSettings:
    """The canonical settings of a benchmark (its default answer budget, its scorer): agents cannot change what is
    measured."""
    bench = benchmarks.get(benchmark)
    return EvalSettings(bench.engine_settings(), benchmark=bench.name)


@contextmanager
def _tool_errors() -> Iterator[None]:
    """Turn an expected failure into a tool error the agent can read (the server keeps running)."""
    try:
        yield
    except EXPECTED as e:
        raise ToolError(f"{type(e).__name__}: {e}") from e


def _with_warnings(fn, *args, **kw) -> tuple[Any, list[str]]:
    """Call fn, returning what it returned and the findings it skipped (malformed files) as messages."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", forum.FindingWarning)
        out = fn(*args, **kw)
    return out, [str(w.message) for w in caught if issubclass(w.category, forum.FindingWarning)]


BENCHMARK_HELP = "what the policy is measured on: " + " or ".join(
    f"'{b.name}' ({b.description}: utility = {b.utility}{'; the default' if b.name == DEFAULT else ''})"
    for b in map(benchmarks.get, benchmarks.names())
)


# ---------------------------------------------------------------- progress, from the evaluation's own callback

BASELINE_PHASES = ("reference", "weak", "weak_preference")
EVALUATION_PHASES = ("generation", "preference")
TEST_BASELINE_PHASES = ("reference", "weak", "reference_test", "weak_test")  # answers scored alone: no judge
TEST_EVALUATION_PHASES = ("generation", "test")


def progress_phases(benchmark: str | None, evaluation: bool = True) -> tuple[str, ...]:
    """The progress phases of a baselines run, and of the evaluation after it, on one benchmark."""
    if benchmarks.get(benchmark).needs_judge:
        return BASELINE_PHASES + (EVALUATION_PHASES if evaluation else ())
    return TEST_BASELINE_PHASES + (TEST_EVALUATION_PHASES if evaluation else ())


async def _with_progress(ctx: Context, work: Callable[[Callable], Awaitable[T]], phases, n: int) -> T:
    """Run `work(on_progress)`, reporting how many (prompt, phase) steps are done every PROGRESS_EVERY_S seconds.
    A phase with nothing left to do (read from the record) counts as done."""
    total, state = len(phases) * n, {}

    def on_progress(phase: str, done: int, todo: int) -> None:
        state[phase] = (done, todo)

    def count() -> tuple[int, str]:
        done, message = 0, "done"
        for phase in phases:
            k, todo = state.get(phase, (0, 0))
            done += n - todo + k  # what the record already held, and what was done since
            if k < todo and message == "done":
                message = f"{phase.replace('_', ' ')}: {n - todo + k}/{n} prompts"
        return min(done, total), message

    async def poll() -> None:
        last = -1
        while True:
            done, message = count()
            if done != last:
                await ctx.report_progress(done, total, message)
                last = done
            await asyncio.sleep(PROGRESS_EVERY_S)

    poller = asyncio.create_task(poll())
    try:
        result = await work(on_progress)
    finally:
        poller.cancel()
    await ctx.report_progress(total, total, "done")
    return result


async def _with_steps(ctx: Context, work: Awaitable[T], done: list[str], steps: int) -> T:
    """Run `work`, reporting at least every PROGRESS_EVERY_S seconds how many of its `steps` are `done`: each step's
    message (appended to `done` as it ends) is reported once, in order, also when `work` ends before the next poll."""
    reported = 0

    async def report_new() -> None:
        nonlocal reported
        while reported < len(done):
            await ctx.report_progress(min(reported + 1, steps), steps, done[reported])
            reported += 1

    async def poll() -> None:
        await ctx.report_progress(0, steps, "first rung")
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            await report_new()

    poller = asyncio.create_task(poll())
    try:
        result = await work
    finally:
        poller.cancel()
    await report_new()
    await ctx.report_progress(steps, steps, "done")
    return result


# ---------------------------------------------------------------- the server


@dataclass(frozen=True)
class ServerConfig:
    """What a running server needs besides the records: where the model servers are and who posts findings."""

    urls: dict[str, str | None] = field(default_factory=dict)  # role -> URL(s); None: $CDW_<ROLE>_URL or `cdw serve`
    author: str | None = None  # findings' author (None: $CDW_AUTHOR, else the login name)
    cache: bool = True  # answer repeated requests from the call cache
    reuse: bool = True  # answer what continues a known greedy answer from it (workspace/reuse.py; and CDW_REUSE)
    policy_dir: Path | None = None  # where policy files are loaded from and written to (None: policies_dir())
    budget: Budget | None = None  # evaluations and prompts this server may run (None: unlimited)
    max_in_flight: int | None = None  # this server's share of the model servers' capacity (None: all of it)

    @property
    def policies(self) -> Path:
        return self.policy_dir or policies_dir()


def build_server(config: ServerConfig | None = None) -> MCPServer:
    """The MCP server with its tools; each validates its arguments, calls the Python API, returns JSON.
    Evaluations run with their benchmark's canonical settings (`eval_settings`): agents cannot change what is
    measured."""
    config = config or ServerConfig()
    mcp = MCPServer("cdw", instructions=INSTRUCTIONS, log_level="WARNING")

    @asynccontextmanager
    async def setup() -> AsyncIterator[Setup]:
        cache = CallCache() if config.cache else None
        known = ContinuationStore() if config.reuse and reuse_enabled() else None
        client = ClientSettings(max_in_flight=config.max_in_flight) if config.max_in_flight else None
        try:
            async with Setup.from_endpoints(config.urls, cache, client, known) as s:
                yield s
        finally:
            for store in (cache, known):
                if store is not None:
                    store.close()

    @mcp.tool()
    async def get_baselines(
        ctx: Context,
        prompts: Annotated[str | int, Field(description="'canonical', or N: its first N prompts")] = "canonical",
        benchmark: Annotated[str, Field(description=BENCHMARK_HELP)] = DEFAULT,
    ) -> dict[str, Any]:
        """U_weak, U_strong (0.5 by definition for alpaca_eval's judge; the strong model's pass rate for
        humaneval), the gap, the certification bar, the models, the judge and the canonical set's hash. Computed
        once per benchmark, prompt set and servers (that first time takes a while), then read."""
        with _tool_errors():
            bench = benchmarks.get(benchmark)
            ps, settings = resolve_prompts(bench, prompts, files=False), eval_settings(bench.name)  # never a file
            async with setup() as s:
                base = await _with_progress(
                    ctx, lambda cb: ensure_baselines(ps, s, settings, progress=False, on_progress=cb),
                    progress_phases(bench.name, evaluation=False), len(ps),
                )  # fmt: skip
            canonical = bench.canonical()
            return {
                **base.to_json(),
                "benchmark": bench.name,
                "bar": BAR,
                "floor": FLOOR,
                "canonical_hash": canonical.hash,
                "canonical_n": canonical.n,
                "canonical_models": canonical.models,
            }

    @mcp.tool()
    def get_findings(
        kind: Annotated[
            Literal["hypothesis", "negative", "result", "insight"] | None, Field(description="only this kind")
        ] = None,
        policy: Annotated[str | None, Field(description="a policy spec or a family name such as 'margin'")] = None,
        since: Annotated[str | None, Field(description="ISO date or time: only findings created at or after")] = None,
        text: Annotated[str | None, Field(description="only findings whose title, body or tags contain this")] = None,
        limit: Annotated[int, Field(ge=1, le=500, description="at most this many (newest first)")] = 20,
    ) -> dict[str, Any]:
        """The research forum, newest first, bodies included. A result's numbers are in get_leaderboard (read
        from its evaluation record), never in its text."""
        with _tool_errors():
            found, skipped = _with_warnings(forum.get_findings, kind=kind, policy=policy, since=since, text=text)
            return {"total": len(found), "findings": [f.to_json() for f in found[:limit]], "skipped": skipped}

    @mcp.tool()
    def get_leaderboard(
        benchmark: Annotated[str | None, Field(description="only this benchmark (default: all of them)")] = None,
    ) -> dict[str, Any]:
        """As `cdw leaderboard --json`: per benchmark, certified policies ranked by f_weak (ties by recovery), then
        canonical ones below the bar and non-canonical ones, each with its benchmark and 95% intervals, all
        recomputed from the evaluation records. Ranks are within a benchmark."""
        with _tool_errors():
            name = None if benchmark is None else benchmarks.get(benchmark).name
            board, skipped = _with_warnings(leaderboard.get_leaderboard)
            if name is not None:
                board = board.for_benchmark(name)
            return {**board.to_json(), "skipped_findings": skipped}

    @mcp.tool()
    async def evaluate_policy(
        ctx: Context,
        policy: Annotated[
            str,
            Field(
                description="a built-in spec, e.g. 'margin(tau=0.05, span=sentence)', or a class in a file of the "
                "policy folder, e.g. 'template.py:MarginCooldown(tau=0.05, min_gap=4)'"
            ),
        ],
        prompts: Annotated[
            str | int,
            Field(
                description="N (the first N prompts of the benchmark's canonical set: try 10 first), "
                "'canonical' (all of it: alpaca_eval's 100, humaneval's 164 problems), or for humaneval "
                "'humaneval:train' / 'humaneval:test' (its fixed halves; 'test' is held out from probe training)"
            ),
        ] = "canonical",
        benchmark: Annotated[str, Field(description=BENCHMARK_HELP)] = DEFAULT,
        stop_below: Annotated[
            float | None,
            Field(
                description="early stopping: stop once the first prompts show the recovery is below this target "
                "(e.g. 0.98, the bar); a stopped evaluation is never certified and is charged only the prompts "
                "it ran"
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Run the engine and the benchmark's scorer (alpaca_eval: the judge; humaneval: the unit tests) on a policy
        and return the evaluation: its id, benchmark, f_weak, utility, U_weak, U_strong and recovery with 95%
        intervals, how many prompts were scored, errors, whether it was stopped early (`stopped`: after how many
        prompts, why) and whether it is certified. Resumes (and for a finished one, only reads) the record of the
        same policy, code, benchmark and prompts. Reports progress."""
        with _tool_errors():
            bench = benchmarks.get(benchmark)
            pol = resolve_policy(policy, config.policies)
            ps, settings = resolve_prompts(bench, prompts, files=False), eval_settings(bench.name)  # never a file
            stop = None if stop_below is None else StopRule(stop_below)
            if config.budget is not None:
                config.budget.spend(len(ps))
            async with setup() as s:
                ev = await _with_progress(
                    ctx, lambda cb: evaluate(pol, ps, s, settings, progress=False, on_progress=cb, stop=stop),
                    progress_phases(bench.name), len(ps),
                )  # fmt: skip
            if config.budget is not None and ev.stopped is not None:
                config.budget.refund(len(ps) - ev.stopped.n)
            return ev.to_json()

    @mcp.tool()
    async def search_policies(
        ctx: Context,
        grid: Annotated[
            list[str],
            Field(
                description="grid specs, each as evaluate_policy takes a policy but with lists for the values to "
                "try, e.g. ['margin(tau=[0.03, 0.1, 0.3], span=[newline, sentence])', 'never']"
            ),
        ],
        benchmark: Annotated[str, Field(description=BENCHMARK_HELP)] = DEFAULT,
        on: Annotated[str | None, Field(description="the prompt set searched on (default '<benchmark>:train')")] = None,
        final: Annotated[
            str | None,
            Field(description="the held-out prompt set the finalists are evaluated on (default '<benchmark>:test')"),
        ] = None,
        n0: Annotated[int, Field(ge=2, description="prompts of the first rung")] = 10,
        eta: Annotated[int, Field(ge=2, description="keep 1/eta of the candidates per rung; grow the subset")] = 2,
        finalists: Annotated[int, Field(ge=1, description="candidates evaluated on the held-out set")] = 1,
        target: Annotated[float, Field(description="the recovery the search wants reached")] = BAR,
        stop_below: Annotated[
            float | None, Field(description="early stopping for the final evaluations (as evaluate_policy's)")
        ] = None,
    ) -> dict[str, Any]:
        """Search a policy grid by successive halving (README "Searching"): every candidate on the first n0 prompts
        of the search set, the best 1/eta kept (f_weak among those whose recovery reaches the target, then the
        others by utility), the subset grown eta-fold, until the finalists, which are evaluated on the whole held-out
        set. Returns each rung's candidates (evaluation ids, numbers, rank, kept), the finalists' held-out
        evaluations and the choice. Charged up front as every evaluation and prompt it may run; the same search
        again reads its records back (or resumes). Reports progress, one step per decision."""
        with _tool_errors():
            bench = benchmarks.get(benchmark)
            points = [SweepPoint(x, resolve_policy(x, config.policies)) for g in grid for x in expand_spec(g)]
            if not points:
                raise SearchError("the grid is empty: name at least one policy")
            if (on is None or final is None) and f"{bench.name}:train" not in bench.sets():
                raise SearchError(f"{bench.name} has no fixed halves: name `on` and `final`, e.g. on='confirmation', "
                                  "final='canonical'")  # fmt: skip
            plan = SearchPlan(on or f"{bench.name}:train", final or f"{bench.name}:test", n0, eta, finalists, target)
            settings = eval_settings(bench.name)
            on_set, final_set = plan.splits(settings)  # prompt set names only: never a file
            steps = len(plan.rungs(len(points), len(on_set))) + 1
            evaluations, prompts = plan.cost(len(points), len(on_set), len(final_set))
            if config.budget is not None:
                config.budget.spend(prompts, evaluations=evaluations)
            stop = None if stop_below is None else StopRule(stop_below)
            done: list[str] = []

            def on_event(kind: str, line: dict) -> None:
                done.append(f"rung {line['rung'] + 1}: kept {', '.join(line['kept'])}" if kind == "rung" else
                            f"final: {line['choice']}")  # fmt: skip

            async with setup() as s:
                result = await _with_steps(
                    ctx, search(points, plan, s, settings, progress=False, on_event=on_event, stop=stop), done, steps
                )
            if config.budget is not None:
                config.budget.refund(sum(len(final_set) - e.stopped.n for e in result.final if e.stopped))
            return result.to_json()

    @mcp.tool()
    async def evaluate_generations(
        ctx: Context,
        run_id: Annotated[str, Field(description="the id of a stored engine run (from workspace.evaluate.generate)")],
    ) -> dict[str, Any]:
        """Judge the generations of a stored engine run and return its numbers, as evaluate_policy does. It takes
        no numbers: f_weak comes from the run's segment provenance, utility from the judge, recovery from the
        stored baselines; summary lines in the record are ignored."""
        with _tool_errors():
            rec = read_record("evaluations", run_id.strip())
            if rec is None:
                raise EvaluationError(f"no engine run {run_id!r} on record")
            header = header_of(rec.header)  # a damaged header is a SchemaError, a tool error
            # Only a policy this server could have been asked to run is loaded (never a path the record names).
            pol = resolve_policy(header.policy or "", config.policies)
            if config.budget is not None:
                config.budget.spend(len(header.prompts.ids))
            async with setup() as s:
                ev = await _with_progress(
                    ctx, lambda cb: judge_generations(rec.id, s, policy=pol, progress=False, on_progress=cb),
                    progress_phases(header.benchmark), len(header.prompts.ids),
                )  # fmt: skip
            return ev.to_json()

    @mcp.tool()
    def share_finding(
        title: Annotated[str, Field(description="one line: what was found")],
        kind: Annotated[Literal["hypothesis", "negative", "result", "insight"], Field(description="what it is")],
        body: Annotated[str, Field(description="self-contained markdown: what was tried, how, what it means")],
        policy: Annotated[str | None, Field(description="the policy spec it is about")] = None,
        evaluation_id: Annotated[
            str | None, Field(description="the evaluation it reports (required for a result)")
        ] = None,
        tags: Annotated[list[str] | None, Field(description="a few words to find it by")] = None,
    ) -> dict[str, Any]:
        """Post a finding to the forum (findings/*.md): hypotheses, negative results, refutations, results. A
        result names its evaluation; the numbers shown with it are read from that evaluation's record."""
        with _tool_errors():
            author = config.author or forum.default_author()
            # "x.py:C" and "policies/x.py:C" are one policy
            policy = recorded_spec(policy, config.policies) if policy else policy
            fid = forum.share_finding(title, kind, body, author, policy, evaluation_id, tuple(tags or ()))
            out: dict[str, Any] = {"id": fid, "finding": forum.get_finding(fid).to_json()}
            out["evaluation"] = load_evaluation(evaluation_id).to_json() if evaluation_id else None
            return out

    @mcp.tool()
    def write_policy(
        filename: Annotated[str, Field(description="a file name in the policy folder, e.g. 'my_gate.py'")],
        source: Annotated[str, Field(description="the whole Python file: a Policy subclass (see template.py)")],
    ) -> dict[str, Any]:
        """Save a policy file in this server's policy folder (replacing one of the same name), after checking it
        parses and uses only allowed imports and names. Then evaluate it as 'my_gate.py:MyGate(tau=0.1)'."""
        with _tool_errors():
            path = _policy_file(config.policies, filename)
            check_policy_source(source)
            atomic_write(path, source)
            return {"written": path.name, "bytes": len(source.encode()), "folder": str(config.policies)}

    @mcp.tool()
    def get_headroom(
        benchmark: Annotated[str, Field(description="a benchmark whose answers are code")] = "humaneval",
        split: Annotated[str | None, Field(description="'train' or 'test' (one half); default: all problems")] = None,
    ) -> dict[str, Any]:
        """As `cdw headroom --json`: from the weak and strong models' own answers on record, each answer's
        characters by kind (prose, copied from the problem, comment, header, implementation, demo), what the weak
        model gets right (imports, the signature, the strong implementation, a common prefix) and upper bounds on
        f_weak and f_weak_code when the weak model writes the header and the strong one the rest."""
        with _tool_errors():
            return headroom(benchmark, split).to_json()

    @mcp.tool()
    def list_policies() -> dict[str, Any]:
        """The policy files in this server's policy folder, the built-in families, and the budget left."""
        with _tool_errors():
            files = sorted(p.name for p in config.policies.glob("*.py")) if config.policies.is_dir() else []
            left = config.budget.left() if config.budget is not None else None
            return {"files": files, "builtin": sorted(registry.families()), "budget_left": left}

    return mcp


_FILENAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\.py")


def _policy_file(folder: Path, filename: str) -> Path:
    """A plain file name inside the policy folder, or a PolicyError (no paths, no hidden files, .py only)."""
    if not _FILENAME.fullmatch(filename or ""):
        raise PolicyError(f"{filename!r}: a policy file name is letters, digits and _ ending in .py (no folders)")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / filename


# ---------------------------------------------------------------- transports


class BearerAuth:
    """ASGI middleware: every HTTP request must carry `Authorization: Bearer <token>`, else 401."""

    def __init__(self, app, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            got = dict(scope.get("headers") or ()).get(b"authorization", b"")
            if not hmac.compare_digest(got, self.expected):  # constant time: no guessing the token byte by byte
                body = b'{"error": "missing or wrong bearer token (Authorization: Bearer <token>)"}'
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})  # fmt: skip
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def serve(
    config: ServerConfig | None = None, http: bool = False, port: int = DEFAULT_PORT, token: str | None = None
) -> None:
    """Run the server: stdio (blocks until the client closes it), or streamable HTTP on 127.0.0.1:port/mcp."""
    server = build_server(config)
    if not http:
        server.run("stdio")
        return
    import anyio
    import uvicorn

    token = token or mcp_token()
    if not token:
        token = secrets.token_urlsafe(24)
        print(
            f"cdw mcp: generated bearer token (pass --token or $CDW_MCP_TOKEN to choose one): {token}", file=sys.stderr
        )
    print(f"cdw mcp: serving streamable HTTP at http://{HOST}:{port}/mcp", file=sys.stderr, flush=True)
    app = BearerAuth(server.streamable_http_app(host=HOST), token)
    anyio.run(uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, log_level="warning")).serve)


def server_config(urls, author, cache=True, policies=None, budget_evals=None, budget_prompts=None, usage=None,
                  max_in_flight=None, reuse=True) -> ServerConfig:  # fmt: skip
    """A ServerConfig from command-line values (budgets need a usage file to count in)."""
    budget = None
    if budget_evals is not None or budget_prompts is not None:
        budget = Budget(usage or (policies or policies_dir()) / ".usage.json", budget_evals, budget_prompts)
    return ServerConfig(urls, author, cache, reuse, policies, budget, max_in_flight)
