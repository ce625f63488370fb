"""Policy spec strings: parameters are data. `name(arg=value, ...)`, nested for wrappers, or a user class.

Values are Python literals (numbers, strings, lists) or bare words (`span=sentence` means "sentence").
A list value marks a sweep axis: `expand_spec` turns one spec into the grid of specs it names.

A spec naming a file (`path/to/file.py:Class(args)`) is recorded with the file's path relative to the project
(absolute outside it), however it was typed, so the CLI, notebooks and the MCP server give one policy one name.
`load_policy(spec, folder=F)` keeps specs from agents to `.py` files inside F (no modules). A class from a file
or a module never runs in this process: it is loaded into a sandboxed worker (`remote.py`).
"""

from __future__ import annotations

import ast
import itertools
import re
import sys
from pathlib import Path

from servers.settings import PROJECT_ROOT

from . import registry, remote
from .protocol import Policy


class PolicyError(ValueError):
    """A spec that does not parse, names an unknown policy, or whose arguments the policy rejects."""


def _parse(spec: str) -> ast.expr:
    # Span values such as words:3 read naturally but are not Python: quote them before parsing.
    text = re.sub(r"(?<=[=(,\s\[])([A-Za-z_]+:\d+)", r'"\1"', spec.strip())
    try:
        return ast.parse(text, mode="eval").body
    except SyntaxError as e:
        raise PolicyError(f"cannot parse policy spec {spec!r}: {e.msg}") from None


def _value(node: ast.expr, spec: str):
    if isinstance(node, ast.Name):
        return node.id  # bare word: span=sentence
    if isinstance(node, ast.Call):
        return _build(node, spec)
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise PolicyError(f"in {spec!r}: {ast.unparse(node)!r} is not a number, string, list or policy") from None


def _class_for(name: str, spec: str) -> type[Policy]:
    cls = registry.family(name)
    if cls is not None:
        return cls
    known = ", ".join(sorted(registry.families()))
    raise PolicyError(f"unknown policy {name!r} in {spec!r}; known: {known}, or path.py:Class")


def _build(node: ast.expr, spec: str) -> Policy:
    if isinstance(node, ast.Name):
        cls, args, kwargs = _class_for(node.id, spec), [], {}
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        cls = _class_for(node.func.id, spec)
        args = [_value(a, spec) for a in node.args]
        kwargs = {k.arg: _value(k.value, spec) for k in node.keywords}
    else:
        raise PolicyError(f"cannot read policy spec {spec!r}: expected name(arg=value, ...)")
    return _instantiate(cls, args, kwargs, spec)


def _instantiate(cls: type, args: list, kwargs: dict, spec: str) -> Policy:
    if any(isinstance(v, list) for v in [*args, *kwargs.values()]):
        raise PolicyError(f"{spec!r} has a list value (a sweep): expand it with expand_spec / `cdw sweep` first")
    try:
        policy = cls(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise PolicyError(f"{spec!r}: {e}") from None
    if not isinstance(policy, Policy):
        raise PolicyError(f"{spec!r}: {cls.__name__} is not a subclass of workspace.policies.Policy")
    return policy


def _source_file(where: str) -> Path:
    """The file a `path.py` or `module` target names, found without importing anything."""
    if where.endswith(".py") or "/" in where:
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise PolicyError(f"policy file {where!r} not found")
        return path
    for entry in sys.path:
        base = Path(entry or ".").joinpath(*where.split("."))
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                return path.resolve()
    raise PolicyError(f"cannot import module {where!r}: no such module file on the path")


def _plain(value) -> bool:
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return value is None or isinstance(value, bool | int | float | str)


def _sandboxed(where: str, name: str, args: list, kwargs: dict, spec: str) -> Policy:
    """A class from a file, made in a sandboxed worker (`remote.py`): its code never runs in this process."""
    file = _source_file(where)
    if any(isinstance(v, list) for v in [*args, *kwargs.values()]):
        raise PolicyError(f"{spec!r} has a list value (a sweep): expand it with expand_spec / `cdw sweep` first")
    if not all(_plain(v) for v in [*args, *kwargs.values()]):
        raise PolicyError(f"{spec!r}: a policy from a file takes plain values (numbers, strings), not policies")
    try:
        return remote.load(file, name, args, kwargs)
    except remote.LoadRefused as e:
        raise PolicyError({
            "missing": f"{where!r} has no {name!r}",
            "class": f"{spec!r}: {name} is not a subclass of workspace.policies.Policy",
            "arguments": f"{spec!r}: {e}",
        }.get(e.kind, f"importing {where!r} failed: {e}")) from None  # fmt: skip
    except remote.PolicyWorkerError as e:
        raise PolicyError(f"{spec!r}: {e}") from None


def policy_file(where: str, folder: Path) -> Path:
    """The `.py` file `where` names inside `folder`; PolicyError if it is elsewhere (`..`, a symlink out,
    an absolute path outside) or missing. `folder/x.py` and `x.py` name the same file."""
    folder = Path(folder).resolve()
    path = Path(where)
    if ".." in path.parts:
        raise PolicyError(f"policy file {where!r}: '..' is not allowed; name a file inside {folder}")
    if not path.is_absolute():
        if path.parts and path.parts[0] == folder.name:
            path = Path(*path.parts[1:])
        path = folder / path
    resolved = path.resolve()  # follows symlinks: a link pointing out of the folder is caught below
    if not resolved.is_relative_to(folder):
        raise PolicyError(f"policy file {where!r} is outside the policy folder {folder}; put your policy there")
    if resolved.suffix != ".py" or not resolved.is_file():
        raise PolicyError(f"no policy file {where!r} in {folder} (a .py file there, e.g. template.py)")
    return resolved


def _recorded_path(path: Path) -> str:
    root = PROJECT_ROOT.resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def split_head(spec: str) -> tuple[str, str]:
    """A spec's head and the rest: `("margin", "(tau=0.05)")`, `("policies/x.py:Mine", "(k=2)")`, `("never", "")`.
    Every reader of a spec's family goes through here (and `family`)."""
    spec = spec.strip()
    head = spec.split("(", 1)[0]
    return head.strip(), spec[len(head) :]


def family(spec: str) -> str:
    """The family a spec names: `margin` for `margin(tau=0.05)`, `hysteresis` for a wrapped gate, the
    `path.py:Class` of a user class."""
    return split_head(spec)[0]


def canonical_spec(spec: str, folder: Path | None = None) -> str:
    """The name records give a spec: file paths made relative to the project (absolute outside it)."""
    spec = spec.strip()
    head, rest = split_head(spec)
    paren, rest = rest[:1], rest[1:]
    if ":" not in head:
        return spec
    where, _, name = head.rpartition(":")
    where = where.strip()
    if not (where.endswith(".py") or "/" in where):
        if folder is not None:
            raise PolicyError(
                f"{spec!r}: this loads classes from .py files in the policy folder ({folder}) or built-in specs "
                "such as margin(tau=0.05), not from modules"
            )
        return spec  # an importable module: its name is already canonical
    path = policy_file(where, folder) if folder is not None else Path(where).expanduser().resolve()
    return f"{_recorded_path(path)}:{name.strip()}{paren}{rest}"


def load_policy(spec: str | Policy, folder: Path | None = None) -> Policy:
    """Build a policy from a spec string (see the package docstring); a Policy passes through.

    With `folder`, a spec may name only `.py` files inside that folder (the sandbox for agents' specs)."""
    if isinstance(spec, Policy):
        return spec
    spec = spec.strip()
    if not spec:
        raise PolicyError("empty policy spec; e.g. 'margin(tau=0.05, span=sentence)' or 'policies/template.py:Class'")
    if ":" in family(spec):  # path/to/file.py:Class(args) or module:Class(args)
        recorded = canonical_spec(spec, folder)
        head, rest = split_head(recorded)
        paren, rest = rest[:1], rest[1:]
        where, _, name = head.rpartition(":")
        if where.endswith(".py") and not Path(where).is_absolute():
            where = str(PROJECT_ROOT / where)
        call = _parse(f"X({rest}" if paren else "X()")
        args = [_value(a, spec) for a in call.args]
        kwargs = {k.arg: _value(k.value, spec) for k in call.keywords}
        policy = _sandboxed(where, name, args, kwargs, spec)
        policy._spec = recorded
    else:
        policy = _build(_parse(spec), spec)
        policy._spec = spec
    return policy


def _split_target(spec: str) -> tuple[str, str]:
    """("path.py:Class", "(args)") for user classes, ("", spec) for built-in specs."""
    head, rest = split_head(spec)
    return (head, rest) if ":" in head else ("", spec)


class _Pick(ast.NodeTransformer):
    """Replace each sweep list by its chosen element."""

    def __init__(self, chosen: dict[int, ast.expr]):
        self.chosen = chosen

    def visit_List(self, node):
        return self.chosen.get(id(node), node)


def expand_spec(spec: str) -> list[str]:
    """Expand list-valued arguments into the grid of single specs (`margin(tau=[0.02,0.05])` -> 2 specs)."""
    target, body = _split_target(spec.strip())
    text = f"X{body or '()'}" if target else body

    def lists(tree: ast.expr) -> list[ast.List]:
        return [n for n in ast.walk(tree) if isinstance(n, ast.List)]

    axes = [n.elts for n in lists(_parse(text))]
    if not axes:
        return [spec]
    out = []
    for combo in itertools.product(*[range(len(a)) for a in axes]):
        tree = _parse(text)  # fresh each time: the transformer below rewrites it
        chosen = {id(node): node.elts[k] for node, k in zip(lists(tree), combo, strict=True)}
        expr = ast.unparse(_Pick(chosen).visit(tree))
        out.append(target + expr[1:] if target else expr)
    return out
