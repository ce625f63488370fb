"""Who wrote what a benchmark scores: text that remembers where each of its characters came from (`Traced`), and
the weak model's share of the scored text (`scored_share`), the numbers behind f_weak_code and the copy share
(ARCHITECTURE.md “What is measured”).

A benchmark says which of an answer's characters it scores (`Benchmark.scored_origins`: for each character of the
scored text, its index in the answer, or `NOT_ANSWER` for one the scorer added: the prompt that completes a bare
body, the blank line between kept statements). A decode's segments say who wrote each character of the answer, so
the scored text's characters split into weak, strong and neither; the neither ones count for no one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

NOT_ANSWER = -1  # the origin of a character the answer does not hold


@dataclass(frozen=True)
class Traced:
    """A text and, for each of its characters, its index in the answer (`NOT_ANSWER`: not the answer's). Only the
    string operations extraction needs, each the same as `str`'s on `text`."""

    text: str
    origin: tuple[int, ...]

    @classmethod
    def answer(cls, text: str) -> Traced:
        """The answer itself: character i comes from index i."""
        return cls(text, tuple(range(len(text))))

    @classmethod
    def foreign(cls, text: str) -> Traced:
        """Text the answer does not hold (the prompt, a separator the scorer adds)."""
        return cls(text, (NOT_ANSWER,) * len(text))

    def __len__(self) -> int:
        return len(self.text)

    def __getitem__(self, s: slice) -> Traced:
        return Traced(self.text[s], self.origin[s])

    def __add__(self, other: Traced) -> Traced:
        return Traced(self.text + other.text, self.origin + other.origin)

    def crlf_to_lf(self) -> Traced:
        """`text.replace("\\r\\n", "\\n")`: the "\\r" of each pair dropped, the "\\n" keeps its origin."""
        t = self.text
        if "\r\n" not in t:
            return self  # (most answers: a text has no pair to drop)
        keep = [i for i, ch in enumerate(t) if not (ch == "\r" and t[i + 1 : i + 2] == "\n")]
        return Traced("".join(t[i] for i in keep), tuple(self.origin[i] for i in keep))

    def lstrip(self, chars: str) -> Traced:
        return self[len(self.text) - len(self.text.lstrip(chars)) :]

    def lines(self) -> list[tuple[Traced, Traced]]:
        """(content, line ending) per line, split as `str.splitlines` splits (the last line's ending may be
        empty)."""
        out, at = [], 0
        for piece in self.text.splitlines(keepends=True):
            content = piece.splitlines()[0]
            out.append((self[at : at + len(content)], self[at + len(content) : at + len(piece)]))
            at += len(piece)
        return out

    @staticmethod
    def join_lines(lines: Sequence[tuple[Traced, Traced]]) -> Traced:
        """`"\\n".join(contents)`: each "\\n" traced to the ending it stands for (its last character)."""
        text, origin = [], []
        for i, (content, _) in enumerate(lines):
            if i:
                text.append("\n")
                origin.append(lines[i - 1][1].origin[-1] if lines[i - 1][1].origin else NOT_ANSWER)
            text.append(content.text)
            origin.extend(content.origin)
        return Traced("".join(text), tuple(origin))

    @staticmethod
    def join(sep: str, parts: Iterable[Traced]) -> Traced:
        """`sep.join(parts)`, the separator not the answer's."""
        text, origin, gap = [], [], (NOT_ANSWER,) * len(sep)
        for i, p in enumerate(parts):
            if i:
                text.append(sep)
                origin.extend(gap)
            text.append(p.text)
            origin.extend(p.origin)
        return Traced("".join(text), tuple(origin))


@dataclass(frozen=True)
class ScoredShare:
    """Who wrote the characters of one answer's scored text (characters the answer does not hold count for no
    one)."""

    weak: int  # characters the weak model wrote
    strong: int  # characters the strong model wrote
    weak_copied: int  # of `weak`, those on a scored line that copies a line of the instruction (`copied_lines`)


def authors(segments: Iterable[tuple[str, str]], text: str) -> str:
    """One letter per character of the answer, "w" or "s", from its segments' (author, text); ValueError when the
    segments do not make up the text."""
    out = "".join(("s" if author == "strong" else "w") * len(t) for author, t in segments)
    if len(out) != len(text) or "".join(t for _, t in segments) != text:
        raise ValueError("the segments do not make up the answer's text")
    return out


def copied_lines(scored: str, instruction: str) -> list[bool]:
    """Per line of the scored text (split at "\\n"), whether it copies the instruction: a line that is not blank
    and is, character for character (indentation included, line ending not), a line of the instruction."""
    given = {line for line in instruction.splitlines() if line.strip()}
    return [bool(line.strip()) and line in given for line in scored.split("\n")]


def scored_share(origin: Sequence[int], scored: str, by: str, instruction: str) -> ScoredShare:
    """The scored text's characters by author: `origin` from `Benchmark.scored_origins`, `by` from `authors`.
    A character belongs to the line it is on, a line's "\\n" to the line it ends."""
    weak = strong = copied = 0
    lines = copied_lines(scored, instruction)
    line = 0
    for ch, at in zip(scored, origin, strict=True):
        if at != NOT_ANSWER:
            if by[at] == "w":
                weak += 1
                copied += lines[line]
            else:
                strong += 1
        line += ch == "\n"
    return ScoredShare(weak, strong, copied)
