"""ARCHITECTURE.md and the code agree: every module is placed in a layer, no import goes up a layer, and there is
no import cycle anywhere (imports inside functions count: a lazy import is still a dependency)."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("servers", "workspace")


def layer_table() -> list[tuple[int, str, list[str]]]:
    """(number, name, module patterns) for each row between the layer markers of ARCHITECTURE.md."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    block = text.split("<!-- layers: begin -->")[1].split("<!-- layers: end -->")[0]
    rows = []
    for line in block.splitlines():
        m = re.match(r"\|\s*(\d+)\s+([\w ]+?)\s*\|([^|]*)\|", line)
        if m:
            rows.append((int(m[1]), m[2], re.findall(r"`([^`]+)`", m[3])))
    return rows


def modules() -> dict[str, Path]:
    """Every Python module of the project's packages, by dotted name (a package by its own name)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                where = ".".join(base + ([node.module] if node.module else []))
            else:
                where = node.module or ""
            # `from x import y`: y is a submodule or a name in x
            targets = [f"{where}.{a.name}" if f"{where}.{a.name}" in known else where for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import a.b.c` of a name inside a module: the module
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def layer_of(module: str, table) -> int | None:
    """The layer of the most specific pattern that matches (an exact name beats a wildcard, longer beats shorter)."""
    best = None
    for number, _, patterns in table:
        for p in patterns:
            if fnmatch.fnmatchcase(module, p):
                rank = (0 if "*" in p else 1, len(p))
                if best is None or rank > best[0]:
                    best = (rank, number)
    return best[1] if best else None


def graph():
    known = modules()
    return {m: imports(m, p, known) for m, p in known.items()}


def test_the_layer_table_reads():
    table = layer_table()
    assert [n for n, _, _ in table] == list(range(1, len(table) + 1)) and len(table) >= 10
    assert all(patterns for _, _, patterns in table)


def test_every_module_has_a_layer():
    table = layer_table()
    unplaced = [m for m in modules() if layer_of(m, table) is None]
    assert not unplaced, f"modules ARCHITECTURE.md does not place: {unplaced}"


def test_no_import_goes_up_a_layer():
    table = layer_table()
    up = []
    for m, deps in graph().items():
        for d in deps:
            if (layer_of(d, table) or 0) > (layer_of(m, table) or 0):
                up.append(f"{m} (layer {layer_of(m, table)}) imports {d} (layer {layer_of(d, table)})")
    assert not up, "imports that go up a layer:\n" + "\n".join(sorted(up))


def test_no_import_cycles():
    g = graph()
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_lazy_imports_and_cycles(tmp_path):
    """The checks above can fail: a function-level import is an edge, and two modules importing each other are a
    cycle."""
    (tmp_path / "a.py").write_text("def f():\n    from . import b\n")
    (tmp_path / "b.py").write_text("from .a import f\n")
    known = {"p.a": tmp_path / "a.py", "p.b": tmp_path / "b.py"}
    assert imports("p.a", known["p.a"], known) == {"p.b"}
    assert imports("p.b", known["p.b"], known) == {"p.a"}
    table = [(1, "low", ["p.b"]), (2, "high", ["p.*"])]
    assert layer_of("p.a", table) == 2 and layer_of("p.b", table) == 1
