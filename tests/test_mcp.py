"""The agents' MCP server, driven by the `mcp` SDK's own client over stdio (and once over HTTP).

The server runs as a subprocess (`python -m workspace.cli mcp`, i.e. `cdw mcp`) pointed at in-test weak, strong and
judge servers that live on a background thread's event loop, with records, findings, the call cache and the policy
folder in temp dirs. Prompts are the first few canonical ones (the AlpacaEval instructions are copied from this
machine's cache, or fetched once).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from tests.fakeserver import STRONG_EXTRA, ToyModel
from workspace import charts, forum, leaderboard
from workspace.benchmarks import alpaca_eval
from workspace.client import ModelClient
from workspace.endpoints import Endpoint
from workspace.evaluate import EngineSettings, Setup, evaluate, generate, load_evaluation, rederive
from workspace.records.log import record_path

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
N = 5  # prompts per evaluation: the fewest the length-controlled fit accepts
TOOLS = {
    "get_baselines",
    "get_findings",
    "get_leaderboard",
    "get_headroom",
    "evaluate_policy",
    "search_policies",
    "evaluate_generations",
    "share_finding",
    "write_policy",
    "list_policies",
}
TEMPLATE = "template.py:MarginCooldown(tau=0.3, min_gap=3, span=punct)"


class AnswerToy(ToyModel):
    """A toy model whose end of sequence depends on the answer's length, not the whole context's: canonical
    instructions run from one line to a page, and `eos_after` counts from the last `<s>` (the assistant turn)."""

    def logprobs(self, context: list[int]) -> list[float]:
        bos = self.ids["<s>"]
        start = len(context) - context[::-1].index(bos) if bos in context else 0
        saved = self.eos_after
        self.eos_after = saved + start  # the server is one thread and this call does not yield: nothing sees it
        try:
            return super().logprobs(context)
        finally:
            self.eos_after = saved


@pytest.fixture(scope="module")
def alpaca_cache(tmp_path_factory, session_env) -> Path:
    """The AlpacaEval cache file (copied from this machine's, else fetched once into a temp home)."""
    home = tmp_path_factory.mktemp("alpaca-home")
    (home / "data").mkdir()
    mine = session_env.data / alpaca_eval.CACHE_NAME
    if mine.is_file():
        shutil.copy(mine, home / "data" / alpaca_eval.CACHE_NAME)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CDW_HOME", str(home))
        alpaca_eval.alpaca_eval()  # verifies the copy, or fetches
    return home / "data" / alpaca_eval.CACHE_NAME


@pytest.fixture(scope="module")
def prompts(alpaca_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CDW_HOME", str(alpaca_cache.parent.parent))
        return alpaca_eval.canonical().head(N)


@pytest.fixture(scope="module")
def servers(prompts, start_toys):
    """The toy trio with answer-length toys (a subprocess and the test's loop both reach it); the scripted judge
    knows the strong model's answers at the default max_tokens, as the evaluations will make them."""
    strong = AnswerToy(name="strong", seed=2, reverse=True, eos_after=80, extra=STRONG_EXTRA)
    toys = start_toys(weak=AnswerToy(name="weak", seed=1, eos_after=90), strong=strong)
    toys.learn_references([p.instruction for p in prompts], EngineSettings().max_tokens)
    return toys


@pytest.fixture
def env(cdw_env, monkeypatch, servers, alpaca_cache) -> dict[str, str]:
    """The server subprocess's CDW_* variables: this test's folders (conftest) and the suite's key, so records it
    starts this process may finish; the policy folder holds the template."""
    data_dir = cdw_env / "home" / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(alpaca_cache, data_dir / alpaca_eval.CACHE_NAME)
    shutil.copy(ROOT / "policies" / "template.py", cdw_env / "policies" / "template.py")
    monkeypatch.setenv("CDW_AUTHOR", "agent-under-test")
    for k, v in servers.env.items():
        monkeypatch.setenv(k, v)
    return {k: v for k, v in os.environ.items() if k.startswith("CDW_")}


@asynccontextmanager
async def connect(env: dict[str, str], *args: str):
    """A ClientSession on a fresh server subprocess (its stderr goes to a log file beside the records)."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "workspace.cli", "mcp", *args], env=env, cwd=str(ROOT)
    )
    log = Path(env["CDW_HOME"]) / "mcp-server.log"
    with log.open("a") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session


async def call(session: ClientSession, tool: str, progress: list | None = None, **args) -> dict:
    """Call a tool that must succeed; returns its structured result."""

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    r = await session.call_tool(tool, args, progress_callback=on_progress if progress is not None else None)
    assert not r.is_error, r.content[0].text
    return r.structured_content


async def refused(session: ClientSession, tool: str, **args) -> str:
    """Call a tool that must fail with a readable message (a tool error, not a crash); returns the message."""
    r = await session.call_tool(tool, args)
    assert r.is_error, f"{tool}({args}) should have failed: {r.structured_content}"
    text = r.content[0].text
    assert text != f"Error executing tool {tool}", "a crash, not an expected error"
    return text


def numbers(d: dict) -> dict:
    """What the generations and verdicts give (not when, and not whether the file verifies)."""
    return {k: v for k, v in d.items() if k not in ("timings", "created", "verified", "verification", "reasons")}


async def test_tools_are_listed_with_their_schemas(env):
    async with connect(env) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
    assert set(tools) == TOOLS
    for t in tools.values():
        assert t.description and t.input_schema["type"] == "object"
        assert "ctx" not in t.input_schema.get("properties", {})
    ev = tools["evaluate_policy"].input_schema
    assert ev["required"] == ["policy"] and ev["properties"]["policy"]["type"] == "string"
    assert {"string", "integer"} == {a["type"] for a in ev["properties"]["prompts"]["anyOf"]}
    assert ev["properties"]["prompts"]["default"] == "canonical"
    for tool in ("evaluate_policy", "get_baselines"):  # which benchmark: alpaca_eval unless told
        prop = tools[tool].input_schema["properties"]["benchmark"]
        assert prop["default"] == "alpaca_eval" and "humaneval" in prop["description"]
    assert tools["evaluate_generations"].input_schema["required"] == ["run_id"]
    share = tools["share_finding"].input_schema
    assert sorted(share["required"]) == ["body", "kind", "title"]
    assert share["properties"]["kind"]["enum"] == list(forum.KINDS)
    assert set(share["properties"]) == {"title", "kind", "body", "policy", "evaluation_id", "tags"}
    assert set(tools["get_findings"].input_schema["properties"]) == {"kind", "policy", "since", "text", "limit"}
    board = tools["get_leaderboard"].input_schema
    assert set(board["properties"]) == {"benchmark"} and not board.get("required")


async def test_bad_arguments_come_back_as_tool_errors_and_nothing_runs(env, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    marker = tmp_path / "imported"
    (outside / "evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
        "from workspace.policies import Policy\n\nclass Evil(Policy):\n    def decide(self, s):\n        return True\n"
    )
    folder = Path(env["CDW_POLICIES_DIR"])
    (folder / "link.py").symlink_to(outside / "evil.py")
    (folder / "sub").symlink_to(outside, target_is_directory=True)
    async with connect(env) as session:
        assert "unknown policy 'nosuch'" in await refused(session, "evaluate_policy", policy="nosuch(tau=1)")
        assert "empty policy" in await refused(session, "evaluate_policy", policy="  ")
        for escape in ("link.py:Evil", "sub/evil.py:Evil", f"{outside}/evil.py:Evil", "../outside/evil.py:Evil",
                       "policies/../../outside/evil.py:Evil"):  # fmt: skip
            msg = await refused(session, "evaluate_policy", policy=escape)
            assert "outside the policy folder" in msg or "'..' is not allowed" in msg, msg
        assert "not from modules" in await refused(session, "evaluate_policy", policy="subprocess:run(['true'])")
        assert "has no 'Nope'" in await refused(session, "evaluate_policy", policy="template.py:Nope")
        assert "no policy file" in await refused(session, "evaluate_policy", policy="missing.py:X")
        assert "tau is a probability" in await refused(session, "evaluate_policy", policy=TEMPLATE.replace("0.3", "3"))
        assert "prompts" in await refused(session, "evaluate_policy", policy="never", prompts="/etc/passwd")
        assert "choose 1 to 100" in await refused(session, "evaluate_policy", policy="never", prompts=0)
        assert "no engine run 'nope'" in await refused(session, "evaluate_generations", run_id="nope")
        assert "not a record id" in await refused(session, "evaluate_generations", run_id="../x")
        assert "needs a title" in await refused(session, "share_finding", title="  ", kind="insight", body="b")
        assert "must name the evaluation" in await refused(session, "share_finding", title="t", kind="result", body="b")
        msg = await refused(session, "share_finding", title="t", kind="result", body="b", evaluation_id="abc123")
        assert "abc123" in msg
        assert "kind" in await refused(session, "share_finding", title="t", kind="rumour", body="b")
        assert "ISO date" in await refused(session, "get_findings", since="last tuesday")
        assert "limit" in await refused(session, "get_findings", limit=0)
        for tool, args in (("evaluate_policy", {"policy": "never"}), ("get_baselines", {}), ("get_leaderboard", {})):
            msg = await refused(session, tool, benchmark="mbpp", **args)
            assert "unknown benchmark 'mbpp'" in msg and "alpaca_eval, humaneval" in msg, msg
        board = await call(session, "get_leaderboard")  # still serving
        tests_board = await call(session, "get_leaderboard", benchmark="humaneval")
    assert board["certified"] == [] and board["non_canonical"] == []
    assert board["benchmarks"] == ["alpaca_eval"] and {b["benchmark"] for b in board["baselines"]} == {"alpaca_eval"}
    assert tests_board["benchmarks"] == ["humaneval"] and len(tests_board["baselines"]) == 2
    assert {b["benchmark"] for b in tests_board["baselines"]} == {"humaneval"}
    assert not marker.exists(), "a policy file outside the folder was imported"
    assert not Path(env["CDW_RECORDS_DIR"]).exists() and not Path(env["CDW_FINDINGS_DIR"]).exists()


GATE = """from workspace.policies import Policy, parse_span


class LowP(Policy):
    top_k = 1

    def __init__(self, tau: float = 0.5, span: str = "punct"):
        self.tau = float(tau)
        self.span = parse_span(span)

    def decide(self, s):
        return s.p1 < self.tau
"""


async def test_write_policy_saves_checked_files_only_in_its_folder_and_budgets_hold(env, tmp_path, prompts):
    folder = Path(env["CDW_POLICIES_DIR"])
    usage = tmp_path / "usage.json"
    args = ("--budget-evals", "2", "--budget-prompts", str(N + 1), "--usage", str(usage))
    async with connect(env, *args) as session:
        wrote = await call(session, "write_policy", filename="low_p.py", source=GATE)
        assert wrote["written"] == "low_p.py" and (folder / "low_p.py").read_text() == GATE
        for name in ("../escape.py", "/tmp/x.py", "sub/x.py", ".hidden.py", "x.txt", "x.py.py/"):
            assert "file name" in await refused(session, "write_policy", filename=name, source=GATE)
        hostile = {
            "import os\n": "import os",
            "import subprocess as s\n": "import subprocess",
            "from pathlib import Path\n": "from pathlib",
            "x = open('/etc/passwd')\n": "open is not allowed",
            "f = __import__('os')\n": "__import__ is not allowed",
            "y = ().__class__.__bases__\n": ".__bases__ is not allowed",
            "def f(:\n": "line 1",
        }
        for src, why in hostile.items():
            assert why in await refused(session, "write_policy", filename="bad.py", source=src)
        assert not (folder / "bad.py").exists() and not (tmp_path / "escape.py").exists()
        listed = await call(session, "list_policies")
        assert {"low_p.py", "template.py"} <= set(listed["files"]) and "margin" in listed["builtin"]
        assert listed["budget_left"] == {"evaluations": 2, "prompts": N + 1}
        ev = await call(session, "evaluate_policy", policy="low_p.py:LowP(tau=0.5)", prompts=N)
        assert ev["policy"].endswith("/low_p.py:LowP(tau=0.5)") and ev["errors"] == []
        # the prompt budget: N + 1 allowed, N spent
        assert "prompt budget" in await refused(session, "evaluate_policy", policy="never", prompts=N)
        await call(session, "evaluate_policy", policy="never", prompts=1)
        assert "evaluation budget spent: 2 of 2" in await refused(session, "evaluate_policy", policy="never", prompts=1)
    async with connect(env, *args) as session:  # a new server process: the budget is still spent
        assert "evaluation budget spent" in await refused(session, "evaluate_policy", policy="never", prompts=1)
        assert (await call(session, "list_policies"))["budget_left"] == {"evaluations": 0, "prompts": 0}


async def test_a_search_under_a_budget_with_progress_and_its_records(env, tmp_path):
    usage = tmp_path / "usage.json"
    grid = ["never", "always(span=[sentence, punct])"]  # 3 candidates on the first N canonical prompts
    args = {"grid": grid, "on": f"canonical:{N}", "final": "confirmation:5", "n0": N}
    # rungs: 3 candidates on N prompts, 1 kept; the final: N more prompts; charged as 4 evaluations, 4 N prompts
    async with connect(env, "--budget-prompts", str(4 * N - 1), "--usage", str(usage)) as session:
        assert "this search needs 20 prompts" in await refused(session, "search_policies", **args)
        assert "held out" in await refused(session, "search_policies", **{**args, "final": "canonical:3"})
        assert "is not allowed" in await refused(session, "search_policies", grid=["../x.py:X(a=[1, 2])"])
        assert "no fixed halves" in await refused(session, "search_policies", grid=grid)  # alpaca_eval: name them
    async with connect(env, "--budget-prompts", str(4 * N), "--budget-evals", "4", "--usage", str(usage)) as session:
        steps: list = []
        out = await call(session, "search_policies", steps, **args)
        assert (await call(session, "list_policies"))["budget_left"] == {"evaluations": 0, "prompts": 0}
    (rung,) = out["rungs"]
    assert rung["prompts"].endswith(f"[:{N}]") and len(rung["candidates"]) == 3 and len(rung["kept"]) == 1
    assert out["choice"] == rung["kept"][0] and out["final"][0]["policy"] == out["choice"]
    assert out["final"][0]["prompts"].startswith("confirmation") and out["final"][0]["n"] == 5
    assert steps and steps[-1][0] == steps[-1][1] == 2 and "rung 1" in " ".join(m or "" for _, _, m in steps)
    assert rederive(out["search_id"]) == []


async def test_every_step_of_a_search_is_reported_also_when_it_ends_between_polls():
    """A search whose rungs end faster than the progress poll (one second) still reports each rung, in order."""
    from workspace.mcp_server import _with_steps

    class Ctx:
        def __init__(self):
            self.sent = []

        async def report_progress(self, done, total, message):
            self.sent.append((done, total, message))

    async def search(done):
        await asyncio.sleep(0)
        done += ["rung 1: kept never", "final: never"]
        return "result"

    ctx, done = Ctx(), []
    assert await _with_steps(ctx, search(done), done, 2) == "result"
    assert [m for _, _, m in ctx.sent if m.startswith(("rung", "final", "done"))] == [*done, "done"]
    assert [d for d, _, _ in ctx.sent][-3:] == [1, 2, 2]


async def test_baselines_and_an_evaluation_with_progress_and_intervals(env, prompts):
    async with connect(env) as session:
        steps: list = []
        base = await call(session, "get_baselines", steps, prompts=N)
        assert steps and steps[-1][0] == steps[-1][1] == 3 * N
        progress: list = []
        ev = await call(session, "evaluate_policy", progress, policy="margin(tau=0.3, span=punct)", prompts=N)
        again = await call(session, "evaluate_policy", policy="margin(tau=0.3, span=punct)", prompts=str(N))
    assert base["u_strong"] == 0.5 and 0 < base["u_weak"] < 0.5 and base["gap"] == pytest.approx(0.5 - base["u_weak"])
    assert base["n"] == N and base["errors"] == [] and base["bar"] == 0.98
    assert base["models"] == {"weak": "weak", "strong": "strong", "judge": "judge"}
    assert base["judge"].startswith("judge#")
    assert base["canonical_hash"] == alpaca_eval.definition("canonical")["hash"]
    assert base["benchmark"] == ev["benchmark"] == "alpaca_eval" and ev["u_strong"] == 0.5
    assert base["prompts"] == f"canonical[:{N}]" and base["prompts_hash"] == prompts.hash
    assert progress and progress[-1][:2] == (5 * N, 5 * N)
    assert all(done <= total for done, total, _ in progress)
    assert ev["n"] == ev["judged"] == N and ev["errors"] == []
    assert 0 < ev["f_weak"] < 1 and ev["u_weak"] == pytest.approx(base["u_weak"])
    for k in ("f_weak", "utility", "u_weak", "recovery"):
        low, high = ev["ci"][k]
        assert low <= ev[k] <= high, k
    assert ev["certified"] is False and ev["canonical"] is False  # toy models, 5 prompts
    assert numbers(load_evaluation(ev["evaluation_id"]).to_json()) == numbers(ev)  # what the record says
    assert numbers(again) == numbers(ev)  # the same evaluation, read back


async def test_evaluate_generations_returns_the_true_numbers_whatever_the_record_claims(
    env, servers, prompts, tmp_path, monkeypatch
):
    policy = "top1(tau=0.4, span=words:2)"

    def setup() -> Setup:
        return Setup(*(ModelClient(Endpoint(r, (servers[r].url,), r)) for r in ("weak", "strong", "judge")))

    async with setup() as s:
        run_id = await generate(policy, prompts, s, progress=False)
    path = record_path("evaluations", run_id)
    assert load_evaluation(run_id).summary is None  # decoded, not judged
    forged = {"type": "summary", "f_weak": 0.99, "utility": 0.9, "recovery": 1.0, "certified": True, "judged": N}
    with path.open("a") as f:
        f.write(json.dumps(forged) + "\n")
    # the one the server must refuse: a run of a policy file outside the policy folder
    outside = tmp_path / "elsewhere.py"
    shutil.copy(ROOT / "policies" / "template.py", outside)
    async with setup() as s:
        foreign = await generate(f"{outside}:MarginCooldown(tau=0.3)", prompts, s, progress=False)

    async with connect(env) as session:
        first = await call(session, "evaluate_generations", run_id=run_id)
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({**o, **forged} if o["type"] == "summary" else o) + "\n" for o in lines))
        second = await call(session, "evaluate_generations", run_id=run_id)
        assert "outside the policy folder" in await refused(session, "evaluate_generations", run_id=foreign)

    assert first["evaluation_id"] == run_id and first["judged"] == N and first["policy"] == policy
    assert first["recovery"] != 1.0 and first["f_weak"] != 0.99 and first["certified"] is False
    assert numbers(second) == numbers(first)
    assert first["verified"] and not second["verified"], (first["verification"], second["verification"])
    # f_weak is the pooled share of weak characters in the recorded segments
    gens = [o["decode"] for o in lines if o["type"] == "generation"]
    weak = sum(len(seg[1]) for g in gens for seg in g["segments"] if seg[0] == "weak")
    assert first["f_weak"] == pytest.approx(weak / sum(len(g["text"]) for g in gens))
    # and the numbers are those of the same evaluation run straight through, elsewhere
    monkeypatch.setenv("CDW_RECORDS_DIR", str(tmp_path / "straight"))
    async with setup() as s:
        straight = await evaluate(policy, prompts, s, progress=False)
    assert numbers(straight.to_json()) == numbers(first)


async def test_one_agent_turn_end_to_end(env, prompts):
    seed = forum.share_finding("Margin gates may need a cooldown after each handoff", "hypothesis",
                               "Back-to-back handoffs look wasteful; a minimum gap should cut them.", "someone",
                               policy="margin")  # fmt: skip
    async with connect(env, "--author", "agent-7") as session:
        feed = await call(session, "get_findings")
        base = await call(session, "get_baselines", prompts=N)
        ev = await call(session, "evaluate_policy", policy=TEMPLATE, prompts=N)
        same = await call(session, "evaluate_policy", policy=f"policies/{TEMPLATE}", prompts=N)  # one policy, read
        body = (f"MarginCooldown on the first {N} canonical prompts: f_weak {ev['f_weak']:.3f} "
                f"{ev['ci']['f_weak']}, recovery {ev['recovery']:.3f} {ev['ci']['recovery']}. Too few prompts to "
                "claim anything; the intervals are wide.")  # fmt: skip
        shared = await call(session, "share_finding", title=f"Cooldown margin gate on {N} prompts", kind="result",
                            body=body, policy=TEMPLATE, evaluation_id=ev["evaluation_id"],
                            tags=["template", "cooldown"])  # fmt: skip
        results = await call(session, "get_findings", kind="result")
        everything = await call(session, "get_findings", limit=1)
        board = await call(session, "get_leaderboard")

    assert feed["total"] == 1 and feed["findings"][0]["id"] == seed
    assert feed["findings"][0]["body"].startswith("Back-to-back handoffs")
    assert base["gap"] > 0
    # records name a policy file as the CLI would: relative to the project, absolute outside it (this folder)
    assert ev["policy"] == f"{Path(env['CDW_POLICIES_DIR']).resolve()}/{TEMPLATE}" and ev["judged"] == N
    assert ev["recovery"] is not None
    assert numbers(same) == numbers(ev)
    fid = shared["id"]
    assert shared["finding"]["author"] == "agent-7" and shared["finding"]["kind"] == "result"
    assert shared["finding"]["policy"] == ev["policy"] and shared["finding"]["tags"] == ["template", "cooldown"]
    assert numbers(shared["evaluation"]) == numbers(ev)
    assert (Path(env["CDW_FINDINGS_DIR"]) / f"{fid}.md").is_file()
    assert [f["id"] for f in results["findings"]] == [fid] and results["findings"][0]["body"].strip() == body
    assert everything["total"] == 2 and [f["id"] for f in everything["findings"]] == [fid]  # newest first
    (entry,) = [e for e in board["non_canonical"] if e["evaluation"] == ev["evaluation_id"]]
    assert entry["benchmark"] == "alpaca_eval" and all("benchmark" in e for e in board["baselines"])
    assert entry["finding"] == fid and entry["f_weak"] == ev["f_weak"] and entry["recovery"] == ev["recovery"]
    assert entry["f_weak_ci"] == ev["ci"]["f_weak"] and entry["recovery_ci"] == ev["ci"]["recovery"]
    assert board["certified"] == []
    # the frontier chart's data holds the point, built from the records
    frontier = json.dumps(charts.frontier_chart(leaderboard.get_leaderboard()).to_dict())
    assert ev["evaluation_id"] in frontier and f"policies/{TEMPLATE}" in frontier


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_http_transport_answers_only_with_the_bearer_token(env, tmp_path):
    port, token = _free_port(), "test-token-123"
    log = (tmp_path / "http.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "workspace.cli", "mcp", "--http", "--port", str(port), "--token", token],
        env={**os.environ, **env}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "http.log").read_text()
                await asyncio.sleep(0.1)
        hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        async with httpx2.AsyncClient() as plain:
            assert (await plain.post(url, json=hello)).status_code == 401
            wrong = await plain.post(url, json=hello, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as authed,
            streamable_http_client(url, http_client=authed) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            assert {t.name for t in (await session.list_tools()).tools} == TOOLS
            feed = await call(session, "get_findings")
        assert feed == {"total": 0, "findings": [], "skipped": []}
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


async def test_a_hostile_policy_file_leaves_the_server_untouched_and_scores_as_its_honest_twin(env, tmp_path):
    """Issue 22: a file that got past write_policy's check (placed in the folder) patches the judge, reads the keys
    and an environment canary, runs commands and writes into the records, from the policy worker's sandbox: none
    of it reaches the server, and its evaluation is the honest gate's. A policy that crashes is an error on its
    prompts, and the server goes on."""
    from tests.test_policy_worker import CANARY, MISBEHAVE, hostile, untouched

    folder, records, host = Path(env["CDW_POLICIES_DIR"]), Path(env["CDW_RECORDS_DIR"]), tmp_path / "host"
    host.mkdir()
    hostile(folder, host, records, env["CDW_KEYS_DIR"])
    (folder / "bad.py").write_text(MISBEHAVE)
    async with connect({**env, "SECRET_CANARY": CANARY}) as session:
        honest = await call(session, "evaluate_policy", policy="gate.py:Gate(tau=0.3)", prompts=N)
        before = {str(p): p.read_text() for p in records.rglob("*.jsonl")}
        evil = await call(session, "evaluate_policy", policy="gate_hostile.py:Gate(tau=0.3)", prompts=N)
        crashed = await session.call_tool("evaluate_policy", {"policy": "bad.py:Gate(how='crash')", "prompts": N})
        board = await call(session, "get_leaderboard")  # still serving
    untouched(host, records, before)
    same = ("n", "f_weak", "utility", "u_weak", "recovery", "ci", "errors", "certified")
    assert set(same) <= set(evil) and evil["errors"] == [] and evil["n"] == N
    assert {k: evil[k] for k in same} == {k: honest[k] for k in same}
    assert evil["evaluation_id"] != honest["evaluation_id"]
    text = crashed.content[0].text if crashed.is_error else json.dumps(crashed.structured_content)
    assert "PolicyWorkerError" in text and "exited" in text, text
    assert CANARY not in text and "PRIVATE" not in text
    assert board["benchmarks"] == ["alpaca_eval"]
