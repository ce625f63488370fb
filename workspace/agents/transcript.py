"""An agent's transcript: every message, tool call and tool result, appended as JSON Lines as it happens.

Each line: `t` (UTC time), `kind`, and the kind's fields:
- `start`: author, backend, model, direction, budgets, the brief's sha256
- `message`: text (what the model said), `turn` (the model call it came from)
- `tool_call`: name, arguments (the raw JSON string the model wrote), call_id, turn
- `tool_result`: name, result (text, cut to RESULT_CHARS), error (the tool refused the call), call_id
- `end`: status (`done`, `max_turns`, `time_budget`, `stopped`, `crashed`, `error`), detail
A line is written in one append (`fileio.append_lines`), so a reader never sees half of one from a live agent, and
a line torn by a killed worker is cut off before the supervisor writes the `end` line.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from ..fileio import append_lines

RESULT_CHARS = 4000
END_STATES = ("done", "max_turns", "time_budget", "stopped", "crashed", "error")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Transcript:
    def __init__(self, path: Path):
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, kind: str, **fields) -> dict:
        event = {"t": now(), "kind": kind, **fields}
        append_lines(self.path, [json.dumps(event, ensure_ascii=False, default=str).encode()])
        return event

    def events(self) -> list[dict]:
        return read(self.path)

    def ended(self) -> dict | None:
        """The `end` event, if the agent has one."""
        return next((e for e in reversed(self.events()) if e.get("kind") == "end"), None)


def read(path: Path) -> list[dict]:
    """A transcript's events (a torn last line, from an agent killed mid-write, is skipped)."""
    out = []
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def is_tool_error(text: str) -> bool:
    """MCP tool errors reach the model as text; the MCP SDK starts them like this."""
    return text.lstrip().startswith(("Error executing tool", "Error:", "An error occurred"))


def summary(event: dict) -> str:
    """One line for a live view: what the agent did last."""
    k = event.get("kind")
    if k == "tool_call":
        return f"called {event.get('name')}({str(event.get('arguments', ''))[:80]})"
    if k == "tool_result":
        head = str(event.get("result", "")).strip().replace("\n", " ")[:80]
        return f"{event.get('name')} {'refused' if event.get('error') else 'returned'}: {head}"
    if k == "message":
        return "said: " + str(event.get("text", "")).strip().replace("\n", " ")[:80]
    if k == "end":
        return f"ended: {event.get('status')} {str(event.get('detail') or '')[:70]}"
    return str(k)
