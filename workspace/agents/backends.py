"""Agent backends on existing frameworks: `openai` (openai-agents, any OpenAI-compatible chat endpoint) and
`claude` (claude-agent-sdk, the user's own Anthropic key). Both attach the same MCP server (`cdw mcp`, stdio) and
write the same transcript events; the loop itself (model call, tool calls, results, next turn) is the framework's.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from .transcript import RESULT_CHARS, Transcript, is_tool_error

START = "Begin your research session now. Use the tools; do not just describe what you would do."
MAX_OUTPUT_TOKENS = 1024  # per model turn: a small model that rambles must not hold the server for minutes
# Small models (the short brief) need the first step named.
START_SHORT = ("Call the get_findings tool now to read the forum. Then call evaluate_policy on one policy with "
               "prompts=3, and finally share_finding with what you saw.")  # fmt: skip
TOOLS = ("get_baselines", "get_findings", "get_leaderboard", "get_headroom", "evaluate_policy", "evaluate_generations",
         "share_finding", "write_policy", "list_policies")  # fmt: skip
# With the short brief (small models, short contexts) the model sees only these: every tool's schema is context.
SHORT_TOOLS = ("get_findings", "evaluate_policy", "share_finding", "list_policies")


@dataclass(frozen=True)
class AgentSpec:
    """What one agent runs with (built by the worker from the run file)."""

    author: str
    brief: str
    model: str
    model_url: str | None
    api_key_env: str
    max_turns: int
    temperature: float | None
    mcp_command: tuple[str, ...]  # the MCP server's command line (stdio)
    mcp_env: dict[str, str]
    cwd: Path
    tools: tuple[str, ...] = TOOLS  # the MCP tools the model is offered
    text_tool_calls: bool = False  # read a tool call written as JSON text (small models) as a tool call


def text_tool_call(text: str, tools: tuple[str, ...]) -> tuple[str, dict] | None:
    """A tool call a small model wrote as text instead of in its chat format: a JSON object (bare or in a ```json
    fence) with `name` (one of `tools`) and `arguments` (or `parameters`). None if the text is not one."""
    start = text.find("{")
    if start < 0:
        return None
    try:  # the first JSON object (a model may write several calls in one answer: the first is taken)
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in tools:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    return (obj["name"], args) if isinstance(args, dict) else None


def _text(result: object) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, dict) and "text" in result:
        return str(result["text"])
    if isinstance(result, list):
        return "\n".join(_text(r) for r in result)
    return str(result)


async def run_openai(spec: AgentSpec, transcript: Transcript) -> tuple[str, str]:
    """openai-agents against `spec.model_url` (chat completions with tool calls). Returns (status, detail)."""
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        RunConfig,
        RunHooks,
        Runner,
        set_tracing_disabled,
    )
    from agents.exceptions import MaxTurnsExceeded
    from agents.mcp import MCPServerStdio, create_static_tool_filter
    from openai import AsyncOpenAI

    set_tracing_disabled(True)  # traces would go to OpenAI's servers
    client = AsyncOpenAI(base_url=spec.model_url, api_key=os.environ.get(spec.api_key_env) or "unused-local",
                         timeout=600, max_retries=2)  # fmt: skip
    model = OpenAIChatCompletionsModel(model=spec.model, openai_client=client)
    if spec.text_tool_calls:
        model = _with_text_tool_calls(model, spec.tools, transcript)

    class Hooks(RunHooks):
        turn = 0
        calls: dict[str, str] = {}  # call id -> tool name
        answered: set[str] = set()  # call ids whose result is in the transcript

        async def on_llm_start(self, context, agent, system_prompt, input_items) -> None:
            # Results the framework gave the model without running a tool (an unknown tool name): from the input.
            for item in input_items or []:
                get = item.get if isinstance(item, dict) else lambda k, i=item: getattr(i, k, None)
                cid = get("call_id")
                if get("type") == "function_call_output" and cid in self.calls and cid not in self.answered:
                    text = _text(get("output"))
                    self.answered.add(cid)
                    transcript.append("tool_result", name=self.calls[cid], result=text[:RESULT_CHARS], error=True,
                                      call_id=cid)  # fmt: skip

        async def on_llm_end(self, context, agent, response) -> None:
            self.turn += 1
            for item in response.output:
                kind = getattr(item, "type", "")
                if kind == "message":
                    text = "".join(getattr(c, "text", "") or "" for c in getattr(item, "content", []) or [])
                    if text:
                        transcript.append("message", text=text, turn=self.turn)
                elif kind == "function_call":
                    self.calls[item.call_id] = item.name
                    transcript.append("tool_call", name=item.name, arguments=item.arguments, call_id=item.call_id,
                                      turn=self.turn)  # fmt: skip

        async def on_tool_end(self, context, agent, tool, result) -> None:
            text, cid = _text(result), getattr(context, "tool_call_id", None)
            self.answered.add(cid)
            transcript.append("tool_result", name=tool.name, result=text[:RESULT_CHARS], error=is_tool_error(text),
                              call_id=cid)  # fmt: skip

    params = {"command": spec.mcp_command[0], "args": list(spec.mcp_command[1:]), "env": spec.mcp_env,
              "cwd": str(spec.cwd)}  # fmt: skip
    # An evaluation can take many minutes: the MCP session's per-request timeout must allow it.
    only = create_static_tool_filter(allowed_tool_names=list(spec.tools))
    async with MCPServerStdio(params, name="cdw", cache_tools_list=True, client_session_timeout_seconds=4 * 3600,
                              tool_filter=only) as mcp:  # fmt: skip
        settings = ModelSettings(temperature=spec.temperature, max_tokens=MAX_OUTPUT_TOKENS)
        agent = Agent(name=spec.author, instructions=spec.brief, model=model, mcp_servers=[mcp],
                      model_settings=settings)  # fmt: skip
        try:
            # A call to a tool that does not exist (small models invent names) is an error the model reads, not
            # the end of the agent.
            config = RunConfig(tool_not_found_behavior="return_error_to_model")
            start = START_SHORT if spec.tools == SHORT_TOOLS else START
            result = await Runner.run(agent, start, max_turns=spec.max_turns, hooks=Hooks(), run_config=config)
        except MaxTurnsExceeded as e:
            return "max_turns", str(e)
    return "done", str(result.final_output)[:RESULT_CHARS]


def _with_text_tool_calls(inner, tools: tuple[str, ...], transcript: Transcript):
    """The model, except that an answer which is only a tool call written as JSON text becomes that tool call
    (marked `parsed_from_text` in the transcript). Small local models often write calls this way instead of in
    their chat template's tool format, which the server's parser cannot see."""
    from agents.models.interface import Model
    from openai.types.responses import ResponseFunctionToolCall

    class TextToolCalls(Model):
        async def get_response(self, *args, **kwargs):
            resp = await inner.get_response(*args, **kwargs)
            if any(getattr(item, "type", "") == "function_call" for item in resp.output):
                return resp
            out = []
            for item in resp.output:
                text = "".join(getattr(c, "text", "") or "" for c in getattr(item, "content", []) or [])
                call = text_tool_call(text, tools) if getattr(item, "type", "") == "message" else None
                if call is None:
                    out.append(item)
                    continue
                cid = f"text_{uuid.uuid4().hex[:12]}"
                transcript.append("parsed_from_text", name=call[0], call_id=cid, text=text[:RESULT_CHARS])
                args = json.dumps(call[1])
                out.append(ResponseFunctionToolCall(type="function_call", name=call[0], call_id=cid, arguments=args,
                                                    id=cid, status="completed"))  # fmt: skip
            return replace(resp, output=out)

        def stream_response(self, *args, **kwargs):
            return inner.stream_response(*args, **kwargs)

    return TextToolCalls()


async def run_claude(spec: AgentSpec, transcript: Transcript) -> tuple[str, str]:
    """claude-agent-sdk (Claude Code's agent loop) with only the workspace's MCP tools: no shell, no file edits."""
    from claude_agent_sdk import AssistantMessage, ClaudeAgentOptions, ResultMessage, UserMessage, query
    from claude_agent_sdk.types import TextBlock, ToolResultBlock, ToolUseBlock

    if not os.environ.get("ANTHROPIC_API_KEY"):
        return "error", "the claude backend needs ANTHROPIC_API_KEY (your own key) in the environment"
    options = ClaudeAgentOptions(
        system_prompt=spec.brief,
        tools=[],  # no built-in tools: the agent acts on the workspace only through the MCP tools
        mcp_servers={
            "cdw": {
                "type": "stdio",
                "command": spec.mcp_command[0],
                "args": list(spec.mcp_command[1:]),
                "env": spec.mcp_env,
            }
        },  # fmt: skip
        strict_mcp_config=True,
        allowed_tools=[f"mcp__cdw__{t}" for t in spec.tools],
        max_turns=spec.max_turns,
        model=spec.model or None,
        cwd=str(spec.cwd),
    )
    turn, names, status, detail = 0, {}, "done", ""
    async for msg in query(prompt=START, options=options):
        if isinstance(msg, AssistantMessage):
            turn += 1
            for block in msg.content:
                if isinstance(block, TextBlock) and block.text:
                    transcript.append("message", text=block.text, turn=turn)
                elif isinstance(block, ToolUseBlock):
                    name = block.name.removeprefix("mcp__cdw__")
                    names[block.id] = name
                    transcript.append("tool_call", name=name, arguments=block.input, call_id=block.id, turn=turn)
        elif isinstance(msg, UserMessage) and isinstance(msg.content, list):
            for block in msg.content:
                if isinstance(block, ToolResultBlock):
                    text, error = _text(block.content), bool(block.is_error)
                    transcript.append("tool_result", name=names.get(block.tool_use_id), result=text[:RESULT_CHARS],
                                      error=error or is_tool_error(text), call_id=block.tool_use_id)  # fmt: skip
        elif isinstance(msg, ResultMessage):
            status = "max_turns" if msg.subtype == "error_max_turns" else "done" if not msg.is_error else "error"
            detail = str(msg.result or msg.subtype)[:RESULT_CHARS]
    return status, detail


BACKEND_RUNNERS = {"openai": run_openai, "claude": run_claude}
