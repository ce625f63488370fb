"""Budgets the MCP tools enforce for an agent: evaluations started and prompts evaluated.

The usage is a small JSON file, updated under an exclusive `flock`, so a budget holds across tool calls, restarts
of the MCP server and concurrent calls. A call over budget raises BudgetError before any work starts; the agent
sees the message as a tool error and its run goes on.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


class BudgetError(RuntimeError):
    """The agent's budget does not allow this call."""


@dataclass(frozen=True)
class Usage:
    evaluations: int = 0
    prompts: int = 0


@dataclass(frozen=True)
class Budget:
    path: Path  # the usage file
    max_evaluations: int | None = None  # None: unlimited
    max_prompts: int | None = None

    def usage(self) -> Usage:
        try:
            return Usage(**json.loads(self.path.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return Usage()

    def left(self) -> dict[str, int | None]:
        u = self.usage()
        return {
            "evaluations": None if self.max_evaluations is None else self.max_evaluations - u.evaluations,
            "prompts": None if self.max_prompts is None else self.max_prompts - u.prompts,
        }

    def spend(self, prompts: int, evaluations: int = 1) -> Usage:
        """Count `evaluations` evaluations (a search: every one it may run) of `prompts` prompts in all, or raise
        BudgetError (and count nothing) if that would exceed the budget."""

        def charge(u: Usage) -> Usage:
            if self.max_evaluations is not None and u.evaluations + evaluations > self.max_evaluations:
                need = "" if evaluations == 1 else f"this needs {evaluations} evaluations; "
                raise BudgetError(f"evaluation budget spent: {need}{u.evaluations} of {self.max_evaluations} used")
            if self.max_prompts is not None and u.prompts + prompts > self.max_prompts:
                left = self.max_prompts - u.prompts
                what = "evaluation" if evaluations == 1 else "search"
                raise BudgetError(f"prompt budget: this {what} needs {prompts} prompts, {left} of "
                                  f"{self.max_prompts} are left (try fewer prompts)")  # fmt: skip
            return Usage(u.evaluations + evaluations, u.prompts + prompts)

        return self._update(charge)

    def refund(self, prompts: int) -> Usage:
        """Give back prompts charged but not run (an evaluation stopped early, a search's candidates dropped)."""
        return self._update(lambda u: Usage(u.evaluations, max(0, u.prompts - max(0, prompts))))

    def _update(self, change) -> Usage:
        """Read the usage, apply `change` and write it back, all under the file's exclusive lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.read(fd, 4096)
            try:
                u = Usage(**json.loads(raw)) if raw.strip() else Usage()
            except (ValueError, TypeError):
                u = Usage()  # a damaged usage file counts from zero rather than locking the agent out
            new = change(u)
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(asdict(new)).encode())
            return new
        finally:
            os.close(fd)  # closing releases the lock
