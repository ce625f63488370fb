"""What a policy file written through the MCP tool `write_policy` may contain: a static allowlist.

Fast feedback, not the boundary: a file an agent writes is checked before it is saved (imports only from a short
list of pure modules, no builtins that reach files, processes or other code — `open`, `exec`, `eval`,
`__import__`, `getattr`… — no dunder attributes such as `__class__`, `__globals__`), so a careless agent hears at
once what will not work. An allowlist cannot contain Python; what contains a policy file is that it runs only in a
sandboxed policy worker (`remote.py`), never in the evaluator.
"""

from __future__ import annotations

import ast

ALLOWED_MODULES = ("__future__", "math", "statistics", "collections", "dataclasses", "functools", "itertools",
                   "re", "typing", "random", "workspace.policies")  # fmt: skip
FORBIDDEN_NAMES = frozenset({
    "open", "exec", "eval", "compile", "__import__", "globals", "locals", "vars", "getattr", "setattr", "delattr",
    "input", "breakpoint", "memoryview", "help", "exit", "quit", "__builtins__", "__loader__", "__spec__",
})  # fmt: skip
MAX_BYTES = 64_000


class PolicySourceError(ValueError):
    """A policy file that the workspace will not save (what is wrong, and where)."""


def _module_ok(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in ALLOWED_MODULES)


def check_policy_source(source: str) -> ast.Module:
    """Parse `source` and raise PolicySourceError naming the first thing outside the allowlist."""
    if len(source.encode()) > MAX_BYTES:
        raise PolicySourceError(f"a policy file is at most {MAX_BYTES} bytes")
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise PolicySourceError(f"line {e.lineno}: {e.msg}") from None
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            bad = [a.name for a in node.names if not _module_ok(a.name)]
            if bad:
                raise PolicySourceError(f"{where}: import {bad[0]} (allowed: {', '.join(ALLOWED_MODULES)})")
        elif isinstance(node, ast.ImportFrom):
            if node.level or not node.module or not _module_ok(node.module):
                raise PolicySourceError(f"{where}: from {node.module or '.'} import … "
                                        f"(allowed: {', '.join(ALLOWED_MODULES)})")  # fmt: skip
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            raise PolicySourceError(f"{where}: {node.id} is not allowed in a policy")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("__") and node.attr != "__init__":
            raise PolicySourceError(f"{where}: .{node.attr} is not allowed in a policy")
        elif isinstance(node, (ast.Global, ast.Nonlocal)) and isinstance(node, ast.Global):
            raise PolicySourceError(f"{where}: global statements are not allowed in a policy")
    return tree
