"""Where a token stands in the answer: prose or fenced code and, inside Python code, the line's structure.

The engine keeps one `Tracker` per decode and feeds it the answer as it grows; each `TokenSignal` carries the
`Where` of the text before its token (`where`) and after it (`after`). Feeding is a character-by-character fold,
so the state after a text is the same however the text was cut into pieces (tokens, drafts, strong spans), and
each character costs O(1): the answer is never parsed again.

Two levels, so another language is one class:
- `Tracker`: markdown. A line that starts (after any indentation) with three backticks is a fence line; the
  first opens a code block (its info string names the language), the next closes it. An unclosed block runs to
  the end of the answer.
- `CodeLines`, the language inside one code block: `PythonLines` for `python`, `py`, `python3` and an unnamed
  block, `IndentLines` (indentation only) for any other language.

The span rules `line`, `block` and `body` (`SpanRule` in `protocol.py`) cut strong text with `structural_cut`,
from the tracker at the span's start.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Protocol


class Where(NamedTuple):
    """Where a point of the answer stands. Fields describe what is known from the text before it: at the start of
    a line, whether the line dedents out of a block is only known once its first character is written (`after`
    of a token that writes it)."""

    code: bool = False  # inside a fenced code block (its fence lines are not code)
    fence: bool = False  # on a fence line (the opening or closing ``` line)
    lang: str = ""  # the open code block's language, lower case ("" when the fence names none)
    blocks: int = 0  # code blocks opened so far: prose after the code is `not code and blocks > 0`
    line_start: bool = True  # only whitespace before this point on its line
    indent: int = 0  # the current line's indentation in columns (tabs to the next multiple of 8); in code, the
    # statement's first line's (a continuation line or a docstring's inner line keeps its statement's)
    depth: int = 0  # indented blocks open around the current line (code)
    statement: str = ""  # the current statement's first word (`def`, `return`, `import`, `x`; `@` a decorator)
    opens_block: bool = False  # the statement so far ends with ':' (outside brackets, strings and comments)
    first_in_block: bool = False  # the previous statement opened a block: this line is its first
    continued: bool = False  # inside brackets or after a backslash: a newline here does not end the statement
    string: bool = False  # inside a string literal (or its opening quotes)
    docstring: bool = False  # inside a string that begins its statement (a docstring)
    comment: bool = False  # inside a `#` comment
    signature: bool = False  # in a `def` statement, before the ':' that ends its signature
    body: bool = False  # inside a function's body: after its signature, until a line indented at or left of the def
    def_indent: int = -1  # the innermost enclosing function's `def` indentation (-1: none)

    @property
    def part(self) -> str:
        """`prose` (outside code), `fence`, `header` (imports, decorators, `def` and `class` lines, docstrings),
        `body` (a function's body below its docstring) or `code` (the rest: other top-level statements)."""
        if not self.code:
            return "fence" if self.fence else "prose"
        if self.docstring or (not self.body and (self.signature or self.statement in HEADER_WORDS)):
            return "header"
        return "body" if self.body else "code"


HEADER_WORDS = frozenset({"import", "from", "def", "class", "async", "@"})
PYTHON_NAMES = frozenset({"", "python", "py", "python3", "py3"})
_DEF = re.compile(r"(?:async\s+)?def\W")
_ASYNC = re.compile(r"async\s*")
_WORD = re.compile(r"@|[A-Za-z_][A-Za-z0-9_]*")
_MAX_HEAD = 24  # characters of a statement kept to name it (its first word)
_MAX_INFO = 40  # characters of a fence's info string kept


class CodeLines(Protocol):
    """A language's line tracker inside one code block: fed the block's text a character at a time.

    Events, set by `feed` and cleared only by the caller: `began` (a character began a new logical line, at
    `indent`; the `indents` stack updated), `ended` (a newline ended one; `ended_opens`: that line opened a block).
    `at_start`: in the leading whitespace of a logical line. `def_indent`: the innermost function's indentation
    (-1: none). `fields` gives the code fields of `Where`."""

    began: bool
    ended: bool
    ended_opens: bool
    at_start: bool
    indent: int
    indents: list[int]

    def feed(self, ch: str) -> None: ...

    def copy(self) -> CodeLines: ...

    def fields(self, line_start: bool) -> dict: ...

    @property
    def def_indent(self) -> int: ...


class IndentLines:
    """Any language: physical lines and their indentation; a line that ends with ':' or '{' opens a block."""

    OPENERS = ":{"

    def __init__(self):
        self.indents = [0]  # indentation of each open block, outermost first
        self.at_start = True  # in the leading whitespace of a logical line
        self.cols = 0  # leading whitespace so far, in columns
        self.indent = 0  # the current (or last) logical line's indentation
        self.head = ""  # the statement's first characters (to name it)
        self.last = ""  # the statement's last significant character
        self.content = False  # the statement has content other than a comment
        self.opened = False  # the last statement with content ended by opening a block
        self.first = False  # the current line is the first of a block
        self.began = self.ended = self.ended_opens = False

    def copy(self):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.indents = list(self.indents)
        return new

    @property
    def def_indent(self) -> int:
        return -1

    def feed(self, ch: str) -> None:
        if ch == "\n":
            self._newline()
        elif self.at_start and ch in " \t\r\f":
            self._space(ch)
        else:
            if self.at_start:
                self._begin()
            self._content(ch)

    def _space(self, ch: str) -> None:
        if ch == " ":
            self.cols += 1
        elif ch == "\t":
            self.cols = self.cols // 8 * 8 + 8

    def _begin(self) -> None:
        """The first character of a logical line: its indentation closes the blocks it is left of."""
        self.at_start, self.began, self.indent = False, True, self.cols
        self.first = self.opened
        while self.indents[-1] > self.indent:
            self.indents.pop()
        if self.indent > self.indents[-1]:
            self.indents.append(self.indent)

    def _content(self, ch: str) -> None:
        if len(self.head) < _MAX_HEAD:
            self.head += ch
        if not ch.isspace():
            self.last, self.content = ch, True

    def _newline(self) -> None:
        if not self.at_start:
            self.ended = True
            self.ended_opens = self.content and self.last in self.OPENERS
            if self.content:
                self.opened = self.ended_opens
        self.at_start, self.cols, self.head, self.last, self.content = True, 0, "", "", False

    def fields(self, line_start: bool) -> dict:
        m = _WORD.match(self.head)
        return {
            "indent": self.cols if self.at_start else self.indent,
            "depth": len(self.indents) - 1,
            "statement": m.group(0) if m else "",
            "opens_block": not self.at_start and self.last in self.OPENERS and self.last != "",
            "first_in_block": self.opened if self.at_start else self.first,
        }


class PythonLines(IndentLines):
    """Python: logical lines (brackets, backslashes and strings continue a statement over newlines), strings and
    docstrings, comments, `def` signatures and the function bodies they open. A comment line counts by its own
    indentation (Python ignores it; answers rarely indent a comment left of its code)."""

    OPENERS = ":"

    def __init__(self):
        super().__init__()
        self.defs: list[int] = []  # indentation of each enclosing def whose body is open
        self.paren = 0  # bracket depth
        self.backslash = False  # the last character was a backslash outside a string
        self.quote = ""  # the open string's delimiter: ', ", ''' or \"\"\"
        self.qrun, self.qchar = 0, ""  # opening quotes seen but not yet resolved (one, two or three)
        self.crun = 0  # closing quotes of a triple-quoted string seen in a row
        self.escape = False
        self.doc = False  # the open string began its statement
        self.comment = False
        self.sig = False  # in a def statement before its ':'
        self.named = False  # the statement's first word is complete (so `sig` is decided)

    def copy(self):
        new = super().copy()
        new.defs = list(self.defs)
        return new

    @property
    def def_indent(self) -> int:
        return self.defs[-1] if self.defs else -1

    def feed(self, ch: str) -> None:
        if self.quote:
            return self._in_string(ch)
        if self.qrun:
            if ch == self.qchar:
                self.qrun += 1
                if self.qrun == 3:
                    self.quote, self.qrun, self.crun, self.escape = ch * 3, 0, 0, False
                return
            if self.qrun == 1:  # one quote then something else: a one-line string that holds `ch`
                self.quote, self.qrun, self.escape = self.qchar, 0, False
                return self._in_string(ch)
            self.qrun = 0  # two quotes: an empty string, closed
        if self.comment:
            if ch == "\n":
                self.comment = False
                self._newline()
            return
        super().feed(ch)

    def _in_string(self, ch: str) -> None:
        if self.escape:
            self.escape, self.crun = False, 0
        elif ch == "\\":
            self.escape, self.crun = True, 0
        elif len(self.quote) == 1:
            if ch == self.quote:
                self.quote = ""
            elif ch == "\n":  # an unterminated one-line string: Python's error; recover at the line's end
                self.quote = ""
                self._newline()
        elif ch == self.quote[0]:
            self.crun += 1
            if self.crun == 3:
                self.quote = ""
        else:
            self.crun = 0

    def _content(self, ch: str) -> None:
        if ch == "#":
            self.comment = True
            return
        self.content = True
        if ch in "\"'":
            self.doc = not self.head.strip() or self.head.isalpha() and len(self.head) <= 2  # r"..", rb"..", f".."
            self.qrun, self.qchar, self.last, self.named = 1, ch, ch, True
            if len(self.head) < _MAX_HEAD:
                self.head += ch
            return
        self.backslash = ch == "\\"
        if ch in "([{":
            self.paren += 1
        elif ch in ")]}":
            self.paren = max(0, self.paren - 1)
        elif ch == ":" and self.sig and self.paren == 0:
            self.sig = False  # the signature ends: the function's body begins
            self.defs.append(self.indent)
        if not ch.isspace():
            self.last = ch
        if not self.named:
            if len(self.head) < _MAX_HEAD:
                self.head += ch
            if not (ch.isalnum() or ch == "_"):
                if _DEF.match(self.head):
                    self.sig, self.named = True, True
                elif not _ASYNC.fullmatch(self.head) or len(self.head) >= _MAX_HEAD:
                    self.named = True

    def _begin(self) -> None:
        super()._begin()
        while self.defs and self.defs[-1] >= self.indent:
            self.defs.pop()

    def _newline(self) -> None:
        if self.paren or self.backslash:  # the statement goes on
            self.backslash = False
            return
        super()._newline()
        self.sig = self.named = False

    def fields(self, line_start: bool) -> dict:
        out = super().fields(line_start)
        string = bool(self.quote) or self.qrun > 0
        out.update(
            opens_block=out["opens_block"] and self.paren == 0,
            continued=self.paren > 0 or self.backslash,
            string=string,
            docstring=string and self.doc,
            comment=self.comment,
            signature=self.sig,
            body=bool(self.defs),
            def_indent=self.def_indent,
        )
        return out


def lines_for(lang: str) -> CodeLines:
    """The line tracker for a code block's language."""
    return PythonLines() if lang in PYTHON_NAMES else IndentLines()


class Tracker:
    """The answer's structure, fed incrementally (`feed`); `where()` describes the point after what was fed.

    `copy()` is cheap (a few small lists): the engine copies the committed answer's tracker once per draft."""

    def __init__(self):
        self.code = False
        self.lang = ""
        self.blocks = 0
        self.fence = False  # the current line is a fence line
        self.ticks = 0  # backticks opening the current line so far (-1: the line is something else)
        self.held = ""  # those backticks, kept from the code tracker until the line is known not to be a fence
        self.info = ""  # the opening fence's info string so far
        self.line_start = True
        self.cols = 0
        self.lines: CodeLines | None = None
        self._where: Where | None = Where()

    def copy(self) -> Tracker:
        new = object.__new__(Tracker)
        new.__dict__.update(self.__dict__)
        if self.lines is not None:
            new.lines = self.lines.copy()
        return new

    def feed(self, text: str) -> Tracker:
        """Feed more of the answer (any piece: a token, a draft, a span)."""
        if text:
            self._where = None
            for ch in text:
                self._feed(ch)
        return self

    def _feed(self, ch: str) -> None:
        if ch == "\n":
            if self.fence:
                self.fence, self.code = False, not self.code
                if self.code:
                    self.blocks += 1
                    self.lang = self.info.strip().split(" ")[0].lower() if self.info.strip() else ""
                    self.lines = lines_for(self.lang)
                else:
                    self.lines, self.lang = None, ""
                self.info = ""
            elif self.lines is not None:
                self._flush()
                self.lines.feed(ch)
            self.ticks, self.held, self.line_start, self.cols = 0, "", True, 0
            return
        if self.fence:
            if not self.code and len(self.info) < _MAX_INFO:
                self.info += ch
            return
        if self.ticks >= 0:
            if ch == "`":
                self.ticks += 1
                self.held += ch
                if self.ticks == 3:
                    self.fence, self.held = True, ""
                return
            if self.ticks == 0 and ch in " \t":
                self.cols = self.cols + 1 if ch == " " else self.cols // 8 * 8 + 8
                if self.lines is not None:
                    self.lines.feed(ch)
                return
            self.ticks = -1
            self._flush()
        self.line_start = False
        if self.lines is not None:
            self.lines.feed(ch)

    def _flush(self) -> None:
        if self.held and self.lines is not None:
            for c in self.held:
                self.lines.feed(c)
        self.held = ""

    def where(self) -> Where:
        """Where the point after everything fed stands (computed once per feed)."""
        if self._where is None:
            line_start = self.line_start and self.ticks >= 0 and not self.held
            code = self.code and not self.fence
            if code and self.lines is not None:
                self._where = Where(True, False, self.lang, self.blocks, line_start,
                                    **self.lines.fields(line_start))  # fmt: skip
            else:
                self._where = Where(False, self.fence, self.lang, self.blocks, line_start, self.cols)
        return self._where

    @property
    def in_code(self) -> bool:
        return self.code and not self.fence


def track(text: str) -> Where:
    """Where the end of `text` stands (a fresh tracker fed `text`): the batch form of what the engine tracks."""
    return Tracker().feed(text).where()


# ---------------------------------------------------------------- structural span rules


def structural_cut(kind: str, n: int, start: Tracker, text: str) -> int | None:
    """Where a `line`, `block:n` or `body` span that starts at `start` ends in its text `text` (a character
    offset), or None if it runs past the end of `text`.

    Outside code (prose, a fence line) each ends with its line. In code, the span's first logical line is the
    one it starts in (or, at a line's start, the next line with content); a later line whose indentation is at or
    left of the rule's threshold ends the span before that line, and so does the closing fence (a span that starts
    on the fence's line ends with it):
    - `line`: the first line, and when it opens a block (ends with ':') that block: threshold its indentation;
    - `block:n`: threshold the first line's indentation (n = 1), or that of the (n-1)-th block around it (n = 2:
      the rest of the enclosing block; none left: only the fence ends it);
    - `body`: the rest of the function the first line is in, or the function it defines; outside a function, as
      `block`.
    """
    if not start.in_code:
        i = text.find("\n")
        return i + 1 if i >= 0 else None
    t = start.copy()
    lines = t.lines
    first_open = not lines.at_start
    threshold: int | None = None
    line_pos = 0  # where the current physical line starts in `text`
    for k, ch in enumerate(text):
        lines.began = lines.ended = False
        t._where = None
        t._feed(ch)
        if not t.code or t.fence:  # the closing fence: the span ends before its line, or with it if it is the first
            if line_pos > 0:
                return line_pos
            i = text.find("\n", k)
            return i + 1 if i >= 0 else None
        if ch == "\n":
            line_pos = k + 1
        if lines.began:
            if threshold is not None and lines.indent <= threshold:
                return line_pos
            first_open = True
        if lines.ended and first_open and threshold is None:
            if kind == "line" and not lines.ended_opens:
                return k + 1
            threshold = _threshold(kind, n, lines)
    return None


def _threshold(kind: str, n: int, lines: CodeLines) -> int:
    """The indentation at or left of which a later line ends the span (after its first line ended)."""
    if kind == "body" and lines.def_indent >= 0:
        return lines.def_indent
    level = lines.indent
    if kind != "block" or n <= 1:
        return level
    outer = [x for x in lines.indents if x < level]
    return outer[-(n - 1)] if len(outer) >= n - 1 else -1
