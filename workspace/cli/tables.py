"""How the CLI prints a table: as a table where it fits the terminal, else one block per row (readable at 80 columns).

A row's key (a policy, a role, an agent, a finding's title) is never broken or dropped: in a table its column is never
wrapped, and where the table cannot fit with every column at a readable width, each row becomes a block: the key on
its own line, then `header value` items packed into lines no wider than the terminal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

READABLE = 10  # a wrapped column narrower than this breaks its cells into fragments
INDENT = "  "


@dataclass(frozen=True)
class Column:
    """A table column; `wrap=False` for values that must never break (numbers, ids, URLs)."""

    header: str
    wrap: bool = True


def _lines(cell: str) -> list[Text]:
    return [Text.from_markup(line) for line in cell.split("\n")]


def _width(cell: str) -> int:
    return max(t.cell_len for t in _lines(cell))


def _longest_word(cell: str) -> int:
    return max((len(w) for t in _lines(cell) for w in t.plain.split()), default=0)


def _column_widths(columns: Sequence[Column], rows: Sequence[Sequence[str]], key: int, room: int) -> list[int] | None:
    """Widths (without padding) that fit `room` with every wrapped column readable, or None when none do."""
    widest, least = [], []
    for i, c in enumerate(columns):
        cells = [r[i] for r in rows]
        widest.append(max([_width(x) for x in cells] + [_width(c.header), 1]))
        if i == key or not c.wrap:  # never wrapped: as wide as its widest cell and its header
            least.append(widest[-1])
        else:
            least.append(min(widest[-1], max([_longest_word(x) for x in cells] + [_longest_word(c.header), READABLE])))
    if sum(least) > room:
        return None
    widths = list(widest)
    while sum(widths) > room:  # narrow the column with the most to give
        i = max((j for j in range(len(widths)) if widths[j] > least[j]), key=lambda j: widths[j] - least[j])
        widths[i] -= 1
    return widths


def pack(items: Sequence[Text | tuple[Text, Text]], width: int, indent: str = INDENT) -> list[Text]:
    """Items joined by ` · ` into lines of at most `width` cells, each line after `indent`. An item is a text or a
    (header, value) pair; one too wide for a line of its own puts its header on a line above its value, and a value
    still too wide is broken (at spaces where it can)."""
    out: list[Text] = []
    line: Text | None = None
    room = width - len(indent)
    for item in items:
        head, value = item if isinstance(item, tuple) else (Text(), item)
        whole = Text(" ").join([head, value]) if head.cell_len else value
        if line is not None and line.cell_len + 3 + whole.cell_len <= width:
            line.append(" · ", style="dim")
            line.append_text(whole)
            continue
        if line is not None:
            out.append(line)
        if whole.cell_len > room and head.cell_len and value.cell_len <= room:
            out.append(Text(indent).append_text(head))
            whole = value
        *done, line = [Text(indent).append_text(part) for part in _fold(whole, room)]
        out += done
    return out + ([line] if line is not None else [])


def _fold(text: Text, width: int) -> list[Text]:
    """`text` wrapped to `width` cells (at spaces where it can, else mid-word)."""
    return list(text.wrap(Console(width=width), width, overflow="fold"))


def title_lines(title: str | None, width: int) -> list[Text]:
    """A title's ` · `-separated parts packed into lines of at most `width` cells (a policy in it stays whole)."""
    if not title:
        return []
    return pack([Text.from_markup(part, style="italic") for part in title.split(" · ")], width, indent="")


def blocks(columns: Sequence[Column], rows: Sequence[Sequence[str]], key: int, width: int) -> list[Text]:
    """One block per row: its key on a line of its own, then the other non-empty cells as `header value` items
    (a cell's lines joined: a value and its interval by a space, a wrapped column's separate lines by `; `)."""
    out: list[Text] = []
    for r in rows:
        out += _fold(Text.from_markup(r[key], style="bold"), width)
        items: list[Text | tuple[Text, Text]] = []
        for i, c in enumerate(columns):
            if i != key and r[i].strip():  # a cell's ` · `-separated parts are items of their own
                first, *rest = Text(" " if not c.wrap else "; ").join(_lines(r[i])).split(" · ")
                items += [(Text(c.header, style="dim"), first), *rest]
        out += pack(items, width)
    return out


def say(console: Console, parts: Sequence[str], style: str = "") -> None:
    """Print plain `parts` joined by ` · ` in lines no wider than the console (each part whole where it fits)."""
    console.print(Group(*pack([Text(p, style=style) for p in parts], console.width, indent="")))


def show(console: Console, title: str | None, columns: Sequence[Column | str], rows: Sequence[Sequence[str]],
         key: int = 0) -> None:  # fmt: skip
    """Print `table(...)` at the console's width."""
    console.print(table(title, columns, rows, console.width, key))


def table(title: str | None, columns: Sequence[Column | str], rows: Sequence[Sequence[str]], width: int,
          key: int = 0) -> Group:  # fmt: skip
    """The title, then the rows as a table no wider than `width` where one fits readably, else as blocks (see the
    module); `key` is the column that names a row."""
    cols = [c if isinstance(c, Column) else Column(c) for c in columns]
    overhead = 3 * len(cols) + 1  # a border before each column and after the last, one space of padding each side
    widths = _column_widths(cols, rows, key, width - overhead) if rows else [None] * len(cols)
    if widths is None:
        return Group(*title_lines(title, width), *blocks(cols, rows, key, width))
    t = Table()
    for i, (c, w) in enumerate(zip(cols, widths, strict=True)):
        t.add_column(c.header, width=w, no_wrap=i == key or not c.wrap, overflow="fold")
    for r in rows:
        t.add_row(*r)
    return Group(*title_lines(title, width), t)
