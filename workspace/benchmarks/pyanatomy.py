"""The parts of an answer that gives a Python function: which of its characters are prose, lines copied from the
problem, comments, the function's header, its implementation or demo code after it (`anatomy`). What `cdw
headroom` counts (`workspace/headroom.py`); a benchmark that scores Python code gives it (`Benchmark.anatomy`).

Every character belongs to its line (a line's "\\n" too), and a line to the first kind that fits, in this order:

- prose: outside the code block (its fence lines included);
- blank: only whitespace;
- copied: not blank and, character for character (indentation included), a line of the problem's prompt (its
  imports, signature and docstring as given);
- comment: its first non-blank character is `#`;
- header: an import, or a line of the entry point's definition up to the end of its docstring (its signature
  when it has none): imports, signature and docstring as the answer rewrote them;
- implementation: the entry point's body after its docstring, and other statements before the entry point
  (helpers, constants);
- demo: anything after the entry point's definition (usage examples, prints, test functions);
- other: code that does not parse, or that does not define the entry point.

The header ends (`Anatomy.header_end`) after the last header line of the entry point's definition: a policy that
lets the weak model write up to there and the strong model the rest splits the answer at that character.
"""

from __future__ import annotations

import ast
import contextlib
import re
from dataclasses import dataclass

from .provenance import Traced

KINDS = ("prose", "blank", "copied", "comment", "header", "implementation", "demo", "other")
_LETTER = {k: k[0] if k != "comment" else "#" for k in KINDS}  # one letter per kind; "other" is "o"


@dataclass(frozen=True)
class Anatomy:
    """The parts of one answer (module docstring)."""

    letters: str  # one letter per character of the answer: its kind's (`letter`)
    header_end: int | None  # the answer's characters before this are its header (None: no entry point found)
    first_code_line: str  # the code's first line that is not blank ("" when there is none)
    signature: bool  # the prompt's `def <entry point>(…):` line is, verbatim, a line of the code

    def count(self, kind: str, start: int = 0, end: int | None = None) -> int:
        """How many characters of `kind` the answer has (between `start` and `end`)."""
        return self.letters.count(letter(kind), start, len(self.letters) if end is None else end)

    def positions(self, kind: str) -> list[int]:
        """The answer's character indices of one kind."""
        c = letter(kind)
        return [i for i, x in enumerate(self.letters) if x == c]


def letter(kind: str) -> str:
    """The one-letter code of a kind (`KINDS`)."""
    if kind not in _LETTER:
        raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    return _LETTER[kind]


def signature_line(prompt: str, entry_point: str) -> str | None:
    """The prompt's line that opens the entry point's definition (None when there is none on one line)."""
    return next((ln for ln in prompt.splitlines() if ln.startswith(f"def {entry_point}(")), None)


def _regions(tree: ast.Module, entry_point: str) -> tuple[dict[int, str], int | None]:
    """Per line number (1-based) of the parsed code, its region kind; and the last header line (None: no entry
    point)."""
    entry = next((n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                  and n.name == entry_point), None)  # fmt: skip
    if entry is None:
        return {}, None
    out: dict[int, str] = {}
    first = min([entry.lineno, *(d.lineno for d in entry.decorator_list)])
    for n in tree.body:
        if n.lineno >= first:
            break
        kind = "header" if isinstance(n, ast.Import | ast.ImportFrom) else "implementation"
        out.update(dict.fromkeys(range(n.lineno, n.end_lineno + 1), kind))
    body = entry.body
    has_doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and \
        isinstance(body[0].value.value, str)  # fmt: skip
    header_last = body[0].end_lineno if has_doc else body[0].lineno - 1
    out.update(dict.fromkeys(range(first, header_last + 1), "header"))
    out.update(dict.fromkeys(range(header_last + 1, entry.end_lineno + 1), "implementation"))
    return out, header_last


_DOC_OPEN = re.compile(r"""[ \t]*[rRuU]?(\"\"\"|\'\'\')""")


def _header_by_text(lines: list[str], entry_point: str) -> int | None:
    """The last header line (0-based) of code that does not parse: the entry point's `def` line up to the line
    that ends its signature with ":", then a docstring right after it when it closes (None: no such `def`)."""
    define = re.compile(rf"(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(")
    start = next((i for i, ln in enumerate(lines) if define.match(ln)), None)
    if start is None:
        return None
    end = next((i for i in range(start, len(lines)) if lines[i].rstrip().endswith(":")), None)
    if end is None:
        return None
    doc = next((i for i in range(end + 1, len(lines)) if lines[i].strip()), None)
    m = _DOC_OPEN.match(lines[doc]) if doc is not None else None
    if m is None:
        return end
    closes = [i for i in range(doc, len(lines)) if m[1] in (lines[i][m.end() :] if i == doc else lines[i])]
    return closes[0] if closes else end


def anatomy(answer: str, block: Traced | None, code: Traced | None, prompt: str, entry_point: str) -> Anatomy:
    """The parts of `answer` (module docstring): `block` is its code block (traced to the answer; None: it has
    none), `code` the longest prefix of the block's whole lines that parses, joined by "\\n" (None: none parses)."""
    kinds = ["p"] * len(answer)
    given = {ln for ln in prompt.splitlines() if ln.strip()}
    for at in block.origin if block is not None else ():
        if at >= 0:
            kinds[at] = "o"  # code, until a line below says what it is
    regions, header_last, header_end = {}, None, None
    if code is not None:
        with contextlib.suppress(SyntaxError, ValueError):  # `code` parsed already; defensive: then no regions
            regions, header_last = _regions(ast.parse(code.text), entry_point)
    block_lines = [content.text for content, _ in block.lines()] if block is not None else []
    sig_line = signature_line(prompt, entry_point)
    sig = sig_line is not None and sig_line in block_lines
    if header_last is None and block is not None:  # no parsed definition: its header found in the text
        last = _header_by_text(block_lines, entry_point)
        if last is not None:
            ending = block.lines()[last]
            header_end = max((i for i in (*ending[0].origin, *ending[1].origin) if i >= 0), default=-1) + 1
    first_line = ""
    at = 0
    for number, line in enumerate(code.text.split("\n") if code is not None else [], 1):
        span = code.origin[at : at + len(line) + 1]  # the line and its "\n"
        at += len(line) + 1
        if not first_line and line.strip():
            first_line = line
        if not line.strip():
            kind = "blank"
        elif line in given:
            kind = "copied"
        elif line.lstrip().startswith("#"):
            kind = "comment"
        else:
            kind = "demo" if header_last is not None and number not in regions else regions.get(number, "other")
        mine = [i for i in span if i >= 0]
        end = max(mine, default=-1) + 1
        brk = re.match(r"\r?\n", answer[end:]) if end else None
        if brk and kinds[end + len(brk[0]) - 1] == "o":  # the code's last line: its line break too
            mine += range(end, end + len(brk[0]))
        for i in mine:
            kinds[i] = letter(kind)
        if number == header_last:
            header_end = max(mine, default=-1) + 1
    for i in range(len(answer) - 1):  # a "\r" before a "\n" (extraction drops it) is of the line it ends
        if answer[i] == "\r" and answer[i + 1] == "\n" and kinds[i + 1] != "p":
            kinds[i] = kinds[i + 1]
    return Anatomy("".join(kinds), header_end, first_line, sig)
