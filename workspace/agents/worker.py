"""One agent's process: `python -m workspace.agents.worker RUN_FOLDER INDEX` (started by `cdw agents run`).

It builds the agent's MCP server command (its author, its policy folder, its budgets, its share of the model
servers), runs the backend until it ends, the time budget runs out or SIGTERM arrives, and writes the `end` line.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from servers.settings import PROJECT_ROOT, policies_environment

from .backends import BACKEND_RUNNERS, SHORT_TOOLS, TOOLS, AgentSpec
from .run import Run, brief, load


def mcp_share(n_agents: int) -> int | None:
    """Each agent's MCP server gets an equal share of the smaller model server's request capacity (None: the
    servers have no cap on record, e.g. addressed by URL)."""
    from ..endpoints import EndpointError, resolve_endpoint

    try:
        caps = [resolve_endpoint(r).max_in_flight for r in ("weak", "strong")]
    except EndpointError:
        return None
    caps = [c for c in caps if c]
    return max(1, min(caps) // n_agents) if caps else None


def spec_for(run: Run, index: int) -> tuple[AgentSpec, dict]:
    """The agent's spec, and what its transcript's `start` line says."""
    c = run.config
    a = run.agents[index]
    folder = Path(a.folder)
    text = brief(c, a.author, a.direction, folder)
    cmd = [sys.executable, "-m", "workspace.cli", "mcp", "--author", a.author, "--policies", str(folder),
           "--budget-evals", str(c.budget_evals), "--budget-prompts", str(c.budget_prompts),
           "--usage", str(run.budget(index).path)]  # fmt: skip
    share = mcp_share(c.agents)
    if share:
        cmd += ["--max-in-flight", str(share)]
    env = {k: v for k, v in os.environ.items() if k != c.api_key_env}  # the tools never see the model's key
    env |= policies_environment(folder)
    tools = SHORT_TOOLS if c.brief == "short" else TOOLS
    spec = AgentSpec(a.author, text, c.model, c.model_url, c.api_key_env, c.max_turns, c.temperature, tuple(cmd), env,
                     PROJECT_ROOT, tools, c.text_tool_calls)  # fmt: skip
    start = {"author": a.author, "backend": c.backend, "model": c.model, "model_url": c.model_url,
             "direction": a.direction, "max_turns": c.max_turns, "hours": c.hours, "budget_evals": c.budget_evals,
             "budget_prompts": c.budget_prompts, "policy_folder": str(folder), "mcp_in_flight": share, "tools": tools,
             "temperature": c.temperature, "text_tool_calls": c.text_tool_calls,
             "brief_sha256": hashlib.sha256(text.encode()).hexdigest()[:16]}  # fmt: skip
    return spec, start


async def main(run_path: Path, index: int) -> int:
    run = load(run_path.name)
    transcript = run.transcript(index)
    spec, start = spec_for(run, index)
    transcript.append("start", **start)
    task = asyncio.current_task()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    left = run.deadline - time.time()
    try:
        async with asyncio.timeout(max(0.0, left)):
            status, detail = await BACKEND_RUNNERS[run.config.backend](spec, transcript)
    except TimeoutError:
        status, detail = "time_budget", f"the run's {run.config.hours:g} h ran out"
    except asyncio.CancelledError:
        status, detail = "stopped", "stopped (SIGTERM: cdw agents stop)"
    except Exception as e:  # the agent's framework or model failed: this agent ends, the others go on
        status, detail = "error", f"{type(e).__name__}: {e}"
        traceback.print_exc()
    transcript.append("end", status=status, detail=detail)
    return 0 if status in ("done", "max_turns", "time_budget", "stopped") else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]))))
