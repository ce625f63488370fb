"""Autonomous research agents: `cdw agents run|status|stop` over the MCP tools (see AGENTS.md).

- `run.py` — a run's folder, its workers, budgets, status and stop
- `worker.py` — one agent's process
- `backends.py` — openai-agents and claude-agent-sdk
- `transcript.py` — the JSON Lines every agent's messages, tool calls and results go to
- `budget.py` — the budgets the MCP tools enforce for an agent (evaluations, prompts)
"""

from .run import (
    BACKENDS,
    AgentsError,
    Run,
    RunConfig,
    load,
    new_run,
    read_directions,
    status,
    stop,
    submit_jobs,
    supervise,
)

__all__ = ["BACKENDS", "AgentsError", "Run", "RunConfig", "load", "new_run", "read_directions", "status", "stop",
           "submit_jobs", "supervise"]  # fmt: skip
