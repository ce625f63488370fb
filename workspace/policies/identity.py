"""A policy's stable identity: a hash of the code that decides its behaviour, not of the files it sits in.

What is hashed, for a policy object: every class of its type's MRO outside the policy protocol, and, followed
transitively, every function, class and simple constant of the project (or of the policy's own file) that this code
names, each as its syntax tree with docstrings dropped (comments and formatting never reach the tree). Names in
annotations are not followed (they decide nothing), nor are the protocol (`protocol.py`, `registry.py` and
`structure.py`, what a policy is shown: the engine contract, versioned by the record's code commit), the standard
library and third-party packages. Module and file paths are not hashed either: moving a class to another file keeps
its id.

So adding a family, editing a comment or another class in the same file, or moving a file changes no other
policy's id; editing the class, a helper it calls or a constant it reads does. Wrappers add their inner policies'
identities (`Policy.source_hash`), and a probe adds its weights file's digest.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import sys
import textwrap
import types
from pathlib import Path

# The protocol's own modules: the contract every policy runs under, not part of any one policy's identity.
PROTOCOL_MODULES = frozenset(
    {"workspace.policies.protocol", "workspace.policies.registry", "workspace.policies.structure"}
)
_PROJECT = Path(__file__).resolve().parents[2]
_CONSTANTS = (bool, int, float, str, bytes, type(None))


def _is_constant(value) -> bool:
    if isinstance(value, tuple | frozenset):
        return all(_is_constant(v) for v in value)
    return isinstance(value, _CONSTANTS)


def _module_file(module_name: str) -> Path | None:
    module = sys.modules.get(module_name)
    f = getattr(module, "__file__", None)
    return Path(f).resolve() if f else None


def _ours(obj, home_module: str) -> bool:
    """Code whose behaviour belongs to a policy: defined in the policy's own module, or in the project outside
    the protocol (not the standard library, not a dependency)."""
    module = getattr(obj, "__module__", None)
    if not module or module in PROTOCOL_MODULES:
        return False
    if module == home_module:
        return True
    f = _module_file(module)
    return f is not None and f.is_relative_to(_PROJECT) and "site-packages" not in f.parts


def _registers(node: ast.expr) -> bool:
    """`@register("name")`: naming a family is not behaviour."""
    f = node.func if isinstance(node, ast.Call) else None
    return (isinstance(f, ast.Name) and f.id == "register") or (isinstance(f, ast.Attribute) and f.attr == "register")


class _Strip(ast.NodeTransformer):
    """Drop docstrings, annotations and registration decorators: they decide nothing."""

    def _body(self, node):
        self.generic_visit(node)
        b = node.body
        if (
            b
            and isinstance(b[0], ast.Expr)
            and isinstance(b[0].value, ast.Constant)
            and isinstance(b[0].value.value, str)
        ):
            node.body = b[1:] or [ast.Pass()]
        return node

    visit_Module = _body

    def visit_FunctionDef(self, node):
        node.returns = None
        return self._body(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        node.decorator_list = [d for d in node.decorator_list if not _registers(d)]
        return self._body(node)

    def visit_arg(self, node):
        node.annotation = None
        return node

    def visit_AnnAssign(self, node):
        self.generic_visit(node)
        node.annotation = ast.Constant(None)
        return node


def _tree(obj) -> ast.AST | None:
    try:
        source = textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        return None
    return _Strip().visit(ast.parse(source))


def _globals_of(obj) -> dict:
    if isinstance(obj, types.FunctionType):
        return obj.__globals__
    return vars(sys.modules[obj.__module__]) if obj.__module__ in sys.modules else {}


def _named(tree: ast.AST, scope: dict) -> list[tuple[str, object]]:
    """The globals a syntax tree names (`x`, and `module.x` for modules), resolved in `scope`."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in scope:
            base = scope[node.value.id]
            if isinstance(base, types.ModuleType) and hasattr(base, node.attr):
                out.append((f"{node.value.id}.{node.attr}", getattr(base, node.attr)))
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in scope:
            out.append((node.id, scope[node.id]))
    return out


def code_identity(cls: type) -> str:
    """A 16-hex-digit hash of the code a policy class runs (see the module docstring)."""
    home = cls.__module__
    h = hashlib.sha256()
    seen: set[int] = set()
    todo: list[object] = [c for c in cls.__mro__ if c is not object and _ours(c, home)]
    while todo:
        obj = todo.pop(0)
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        tree = _tree(obj)
        if tree is None:  # no source (a class made at run time): its name is all we have
            h.update(f"{getattr(obj, '__qualname__', obj)!r}\n".encode())
            continue
        h.update(ast.dump(tree, include_attributes=False).encode())
        for name, value in _named(tree, _globals_of(obj)):
            if isinstance(value, type | types.FunctionType) and _ours(value, home):
                todo.append(value)
            elif _is_constant(value) and not isinstance(value, bool | type(None)):
                h.update(f"{name}={value!r}\n".encode())
    return h.hexdigest()[:16]
