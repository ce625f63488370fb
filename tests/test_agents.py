"""`cdw agents run --backend openai` end to end, with a scripted OpenAI-compatible tool-calling model (an in-test
server) in place of a real one: real openai-agents, real MCP servers (one per agent, stdio), real forum files.

Each agent is recognised by its author name in the system prompt and plays a script: read the forum, make a
hostile call (a path outside its policy folder, a module spec, forbidden code), share a finding, end. A third agent's
model never answers: it must be ended at the time budget while the others finish."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiohttp import web

from servers.settings import PROJECT_ROOT

SCRIPT = [  # (tool, arguments) per turn; then a final message
    ("get_findings", {}),
    ("evaluate_policy", {"policy": "../../../etc/evil.py:Evil(tau=1)", "prompts": 2}),
    ("evaluate_policy", {"policy": "subprocess:run(['touch', '/tmp/cdw-agent-pwned'])", "prompts": 2}),
    ("write_policy", {"filename": "gate.py", "source": "import os\nos.system('touch /tmp/cdw-agent-pwned')\n"}),
    ("write_policy", {"filename": "../escape.py", "source": "x = 1\n"}),
    ("run_shell", {"command": "rm -rf records"}),  # a tool that does not exist
    ("share_finding", {"title": "TITLE", "kind": "hypothesis", "body": "Margin may miss confident errors."}),
]


class ScriptedToolModel:
    """/v1/chat/completions answering with the next scripted tool call for the agent named in the system prompt."""

    def wait_for_requests(self, n: int, timeout: float) -> bool:
        """Whether `n` requests have arrived within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.requests) < n:
            time.sleep(0.5)
        return len(self.requests) >= n

    def __init__(self):
        self.requests: list[dict] = []
        self.hang = re.compile(r"agent-\S+-2\b")  # the third agent's model never answers
        self.release: asyncio.Event | None = None  # set at teardown: hung requests end (as 503) so the server stops
        self.as_text = False  # write each call as JSON in a ```json fence, as small local models do

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        system = next((m["content"] for m in body["messages"] if m["role"] in ("system", "developer")), "")
        who = re.search(r"You are (agent-\S+-\d+)\.", system)
        author = who.group(1) if who else "?"
        if self.hang.search(author):
            self.release = self.release or asyncio.Event()
            await self.release.wait()
            return web.json_response({"error": "shutting down"}, status=503)
        step = sum(1 for m in body["messages"] if m["role"] == "assistant")
        assert body.get("tools"), "the agent's tools must be offered to the model"
        if step < len(SCRIPT):
            name, args = SCRIPT[step]
            if name == "share_finding":
                args = {**args, "title": f"{author} thinks margin misses confident errors"}
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{step}",
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps(args)},
                    }
                ],
            }
            finish = "tool_calls"
            if self.as_text:
                text = "```json\n" + json.dumps({"name": name, "arguments": args}, indent=2) + "\n```"
                message, finish = {"role": "assistant", "content": text}, "stop"
        else:
            message, finish = {"role": "assistant", "content": "Done: I shared one hypothesis."}, "stop"
        return web.json_response({
            "id": f"chatcmpl-{step}", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        })  # fmt: skip


@pytest.fixture
def model_server():
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    model = ScriptedToolModel()

    async def start():
        app = web.Application()
        app.router.add_post("/v1/chat/completions", model.chat)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]

    runner, port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    yield f"http://127.0.0.1:{port}/v1", model

    async def stop():
        if model.release is not None:
            model.release.set()
        await runner.cleanup()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)


@pytest.fixture
def agent_env(tmp_path):
    env = {**os.environ, "CDW_HOME": str(tmp_path / "home"), "CDW_FINDINGS_DIR": str(tmp_path / "findings"),
           "CDW_RECORDS_DIR": str(tmp_path / "records"), "OPENAI_API_KEY": "sk-test-not-a-key"}  # fmt: skip
    for role in ("WEAK", "STRONG", "JUDGE"):
        env[f"CDW_{role}_URL"] = "http://127.0.0.1:9"  # nothing there: these scripts never need a model server
    return env


def cdw(env, *args, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workspace.cli", *args], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.mark.slow  # agents, each a worker and an MCP server process
def test_two_agents_research_a_hostile_call_fails_and_a_hung_agent_is_ended(model_server, agent_env, tmp_path):
    url, model = model_server
    Path("/tmp/cdw-agent-pwned").unlink(missing_ok=True)
    t0 = time.monotonic()
    budget_s = 90  # generous: under load, starting a worker and its MCP server takes seconds
    hours = budget_s / 3600
    run = cdw(agent_env, "agents", "run", "--backend", "openai", "--model", "scripted", "--model-url", url,
              "--agents", "3", "--max-turns", "12", "--hours", str(hours), "--brief", "full", "--quiet")  # fmt: skip
    wall = time.monotonic() - t0
    assert run.returncode == 0, run.stderr
    run_id = re.search(r"run (\S+):", run.stdout).group(1)
    folder = Path(agent_env["CDW_HOME"]) / "agents" / run_id
    st = json.loads(cdw(agent_env, "agents", "status", run_id, "--json").stdout)["agents"]
    assert [a["state"] for a in st] == ["done", "done", "time_budget"], st
    assert wall < budget_s + 60, wall  # the hung agent did not hold the run past its budget (plus start-up and grace)

    findings = sorted(Path(agent_env["CDW_FINDINGS_DIR"]).glob("*.md"))
    authors = sorted(re.search(r"^author: (.+)$", f.read_text(), re.M).group(1).strip().strip("'\"") for f in findings)
    assert authors == [f"agent-{run_id}-0", f"agent-{run_id}-1"]  # each with its own name, none as anyone else
    for i in (0, 1):
        events = [json.loads(x) for x in (folder / f"agent-{i}.jsonl").read_text().splitlines()]
        kinds = [e["kind"] for e in events]
        assert kinds[0] == "start" and kinds[-1] == "end" and events[-1]["status"] == "done"
        calls = [e for e in events if e["kind"] == "tool_call"]
        results = {e["call_id"]: e for e in events if e["kind"] == "tool_result"}
        assert [c["name"] for c in calls] == [name for name, _ in SCRIPT]  # every call, in order
        assert all(c["call_id"] in results for c in calls)  # and every result
        refused = [results[c["call_id"]] for c in calls if results[c["call_id"]]["error"]]
        assert len(refused) == 5 and "'..' is not allowed" in refused[0]["result"]
        assert "run_shell" in refused[4]["result"]
        assert "not from modules" in refused[1]["result"]
        assert "import os" in refused[2]["result"] and "file name" in refused[3]["result"]
        assert not results[calls[-1]["call_id"]]["error"]  # after the refusals the agent carried on and shared
        assert st[i]["findings"] == 1 and st[i]["tool_errors"] == 5 and st[i]["turns"] == len(SCRIPT) + 1
        assert sorted(p.name for p in (folder / f"agent-{i}" / "policies").iterdir()) == ["README.md", "template.py"]
    hung = [json.loads(x) for x in (folder / "agent-2.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in hung] == ["start", "end"] and hung[-1]["status"] == "time_budget"
    assert not Path("/tmp/cdw-agent-pwned").exists() and not (folder / "agent-0" / "escape.py").exists()
    assert not Path(agent_env["CDW_RECORDS_DIR"]).exists()  # nothing was evaluated, nothing recorded

    # the page and the forum notebook's feed say which run each finding came from
    site = cdw(agent_env, "site", "--out", tmp_path / "site")
    assert site.returncode == 0, site.stderr
    assert (tmp_path / "site" / "index.html").read_text().count(f"agent run <code>{run_id}</code>") == 2
    feed = subprocess.run([sys.executable, "-c", "from workspace import forum; from workspace.notebook import html; "
                           "print(html.feed_markdown(forum.get_findings()))"], env=agent_env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert feed.stdout.count(f"agent run `{run_id}`") == 2, feed.stderr


@pytest.mark.slow  # agents, each a worker and an MCP server process
def test_stop_ends_a_run_cleanly(model_server, agent_env):
    url, model = model_server
    model.hang = re.compile(r"agent-")  # every agent waits on its model
    proc = subprocess.Popen([sys.executable, "-m", "workspace.cli", "agents", "run", "--model", "scripted",
                             "--model-url", url, "--agents", "2", "--hours", "1", "--brief", "short", "--quiet"],
                            env=agent_env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert model.wait_for_requests(2, timeout=120), "the agents never asked their model"
    stopped = cdw(agent_env, "agents", "stop")
    assert stopped.returncode == 0, stopped.stderr
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    st = json.loads(cdw(agent_env, "agents", "status", "--json").stdout)["agents"]
    assert [a["state"] for a in st] == ["stopped", "stopped"]


@pytest.mark.slow  # agents, each a worker and an MCP server process
def test_tool_calls_written_as_text_count_only_when_asked(model_server, agent_env):
    url, model = model_server
    model.as_text = True
    base = ("agents", "run", "--model", "scripted", "--model-url", url, "--max-turns", "12", "--hours", "0.05",
            "--quiet")  # fmt: skip
    plain = cdw(agent_env, *base)
    assert plain.returncode == 0, plain.stderr
    st = json.loads(cdw(agent_env, "agents", "status", "--json").stdout)["agents"][0]
    assert st["state"] == "done" and st["tool_calls"] == 0  # a JSON answer is only text to the framework
    parsed = cdw(agent_env, *base, "--text-tool-calls")
    assert parsed.returncode == 0, parsed.stderr
    run_id = re.search(r"run (\S+):", parsed.stdout).group(1)
    events = [json.loads(x) for x in (Path(agent_env["CDW_HOME"]) / "agents" / run_id / "agent-0.jsonl").read_text()
              .splitlines()]  # fmt: skip
    # calls of the agent's tools are read; text naming a tool it does not have stays text (and ends the run here)
    known = [name for name, _ in SCRIPT[: [n for n, _ in SCRIPT].index("run_shell")]]
    assert [e["name"] for e in events if e["kind"] == "parsed_from_text"] == known
    results = [e for e in events if e["kind"] == "tool_result"]
    assert len(results) == len(known) and not results[0]["error"] and results[1]["error"]  # get_findings ran
    assert events[-1]["kind"] == "end" and events[-1]["status"] == "done" and "run_shell" in events[-1]["detail"]


def test_bad_settings_are_clear_errors(agent_env, tmp_path):
    from click.testing import CliRunner

    from workspace.cli import main

    def refused(*args: str) -> str:  # in this process: the checks come before any agent starts
        r = CliRunner().invoke(main, list(args), env=agent_env)
        assert r.exit_code != 0, r.output
        return r.output

    assert "--agents" in refused("agents", "run", "--agents", "0", "--quiet")
    empty = tmp_path / "directions.txt"
    empty.write_text("# nothing\n\n")
    assert "no directions" in refused("agents", "run", "--directions", str(empty), "--quiet")
    assert "no agent runs" in refused("agents", "status")


def test_text_tool_call_reads_only_calls_of_known_tools():
    from workspace.agents.backends import SHORT_TOOLS, text_tool_call

    fenced = '```json\n{"name": "get_findings", "arguments": {"limit": 3}}\n```'
    assert text_tool_call(fenced, SHORT_TOOLS) == ("get_findings", {"limit": 3})
    two = '{"name": "evaluate_policy", "parameters": {"policy": "never"}}\n{"name": "share_finding", "arguments": {}}'
    assert text_tool_call(two, SHORT_TOOLS) == ("evaluate_policy", {"policy": "never"})  # the first of several
    assert text_tool_call('{"name": "write_policy", "arguments": {}}', SHORT_TOOLS) is None  # not offered
    assert text_tool_call('{"name": "get_findings", "arguments": "all"}', SHORT_TOOLS) is None
    assert text_tool_call("I would call get_findings first.", SHORT_TOOLS) is None
    assert text_tool_call('{"name": "get_findings", "arguments": {', SHORT_TOOLS) is None


async def test_claude_backend_maps_the_sdk_messages_to_the_transcript(tmp_path, monkeypatch):
    """The claude backend without Anthropic's service: `query` replaced by the messages the SDK yields for a
    tool call, its result and the end. What is checked is ours: the options it asks for and the transcript."""
    claude_agent_sdk = pytest.importorskip("claude_agent_sdk", reason="needs the agents extra")
    from claude_agent_sdk import AssistantMessage, ResultMessage, UserMessage
    from claude_agent_sdk.types import TextBlock, ToolResultBlock, ToolUseBlock

    from workspace.agents.backends import AgentSpec, run_claude
    from workspace.agents.transcript import Transcript

    seen = {}

    async def fake_query(prompt, options):
        seen["options"] = options
        yield AssistantMessage([TextBlock("Reading the forum."), ToolUseBlock("t1", "mcp__cdw__get_findings", {})], "m")
        yield UserMessage([ToolResultBlock("t1", [{"type": "text", "text": '{"total": 0}'}], False)])
        yield AssistantMessage([ToolUseBlock("t2", "mcp__cdw__evaluate_policy", {"policy": "../x.py:X"})], "m")
        yield UserMessage([ToolResultBlock("t2", "Error executing tool evaluate_policy: PolicyError: ..", True)])
        yield ResultMessage("success", 10, 5, False, 2, "s", result="Shared nothing yet.")

    monkeypatch.setattr(claude_agent_sdk, "query", fake_query)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    spec = AgentSpec("agent-x-0", "brief", "claude-sonnet-4-5", None, "ANTHROPIC_API_KEY", 5, None,
                     ("cdw", "mcp"), {}, tmp_path)  # fmt: skip
    t = Transcript(tmp_path / "agent-0.jsonl")
    assert await run_claude(spec, t) == ("done", "Shared nothing yet.")
    o = seen["options"]
    assert o.tools == [] and o.strict_mcp_config and o.max_turns == 5 and o.system_prompt == "brief"
    assert set(o.allowed_tools) == {f"mcp__cdw__{n}" for n in spec.tools} and set(o.mcp_servers) == {"cdw"}
    ev = [(e["kind"], e.get("name"), e.get("error")) for e in t.events()]
    assert ev == [("message", None, None), ("tool_call", "get_findings", None), ("tool_result", "get_findings", False),
                  ("tool_call", "evaluate_policy", None), ("tool_result", "evaluate_policy", True)]  # fmt: skip
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    status, detail = await run_claude(spec, t)
    assert status == "error" and "ANTHROPIC_API_KEY" in detail
